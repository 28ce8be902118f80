//! The command-line flags and environment variables (clap argument groups) and their
//! conversion into the library's typed configurations ([`HubConfig`],
//! [`WatchdogConfig`](crate::watchdog::WatchdogConfig), `RabbitConfig`, `PlugitConfig`).
//! Nothing here connects to anything: building backends is [`super::wiring`]'s job.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::error::{ConfigError, NotABool};
use crate::hub::HubConfig;
use crate::stomp::Limits;

/// Parses the original's boolean spelling (`True`/`False`) and the usual others.
pub fn parse_bool(s: &str) -> Result<bool, NotABool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        other => Err(NotABool(other.to_owned())),
    }
}

/// Where the server listens.
#[derive(Debug, Clone, Args)]
pub struct StompArgs {
    /// Addresses to listen on, comma-separated.
    #[arg(
        long = "stomp-ip",
        env = "STOMP_IP",
        value_name = "STOMP_IP",
        value_delimiter = ',',
        default_value = "0.0.0.0"
    )]
    pub stomp_ip: Vec<IpAddr>,
    /// STOMP port.
    #[arg(
        long = "stomp-port",
        env = "STOMP_PORT",
        value_name = "STOMP_PORT",
        default_value_t = 61613
    )]
    pub stomp_port: u16,
}

/// RabbitMQ connection (the message bus between instances). Used when `RABBITMQ_HOST`
/// or `RABBITMQ_URL` is set; otherwise the server runs on an in-process bus.
#[derive(Debug, Clone, Args)]
pub struct RabbitArgs {
    /// RabbitMQ host; setting it selects the RabbitMQ bus (the original: 127.0.0.1).
    #[arg(
        long = "rabbitmq-host",
        env = "RABBITMQ_HOST",
        value_name = "RABBITMQ_HOST"
    )]
    pub rabbitmq_host: Option<String>,
    /// Full AMQP URL (amqp://user:pass@host:port/vhost), instead of the parts.
    #[arg(
        long = "rabbitmq-url",
        env = "RABBITMQ_URL",
        value_name = "RABBITMQ_URL",
        hide_env_values = true
    )]
    pub rabbitmq_url: Option<String>,
    /// RabbitMQ port.
    #[arg(
        long = "rabbitmq-port",
        env = "RABBITMQ_PORT",
        value_name = "RABBITMQ_PORT",
        default_value_t = 5672
    )]
    pub rabbitmq_port: u16,
    /// RabbitMQ user.
    #[arg(
        long = "rabbitmq-user",
        env = "RABBITMQ_USER",
        value_name = "RABBITMQ_USER",
        default_value = "guest"
    )]
    pub rabbitmq_user: String,
    /// RabbitMQ password.
    #[arg(
        long = "rabbitmq-password",
        env = "RABBITMQ_PASSWORD",
        value_name = "RABBITMQ_PASSWORD",
        default_value = "guest",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub rabbitmq_password: String,
    /// RabbitMQ virtual host.
    #[arg(
        long = "rabbitmq-vhost",
        env = "RABBITMQ_VHOST",
        value_name = "RABBITMQ_VHOST",
        default_value = "/"
    )]
    pub rabbitmq_vhost: String,
    /// Fanout exchange shared by all instances.
    #[arg(
        long = "rabbitmq-exchange",
        env = "RABBITMQ_EXCHANGE",
        value_name = "RABBITMQ_EXCHANGE",
        default_value = "amq.fanout"
    )]
    pub rabbitmq_exchange: String,
    /// Debug logs of the bus module (True/False; True by default, as in the original).
    #[arg(long = "rabbitmq-debug", env = "RABBITMQ_DEBUG", value_name = "RABBITMQ_DEBUG", default_value = "True", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub rabbitmq_debug: bool,
}

impl RabbitArgs {
    /// Whether a RabbitMQ bus is configured (`RABBITMQ_HOST` or `RABBITMQ_URL`).
    pub fn configured(&self) -> bool {
        self.rabbitmq_host.is_some() || self.rabbitmq_url.is_some()
    }

    /// The RabbitMQ configuration these arguments describe, consuming from `queue`.
    /// Without `RABBITMQ_HOST`/`RABBITMQ_URL` the original's default host 127.0.0.1.
    #[cfg(feature = "rabbitmq")]
    pub fn rabbit_config(
        &self,
        queue: crate::backend::rabbitmq::QueueKind,
    ) -> Result<crate::backend::rabbitmq::RabbitConfig, ConfigError> {
        use crate::backend::rabbitmq::RabbitConfig;
        let config = match &self.rabbitmq_url {
            Some(url) => {
                RabbitConfig::from_url(url).map_err(|e| ConfigError::invalid("RABBITMQ_URL", e))?
            }
            None => RabbitConfig {
                host: self
                    .rabbitmq_host
                    .clone()
                    .unwrap_or_else(|| "127.0.0.1".to_owned()),
                port: self.rabbitmq_port,
                user: self.rabbitmq_user.clone(),
                password: self.rabbitmq_password.clone(),
                vhost: self.rabbitmq_vhost.clone(),
                ..RabbitConfig::default()
            },
        };
        Ok(config
            .with_exchange(self.rabbitmq_exchange.clone())
            .with_queue(queue))
    }
}

impl MonitoringArgs {
    /// The RabbitMQ configuration of the monitoring connection: its own exchange, and
    /// the durable `MONITORING_QUEUE` bound to it so events wait for their reader.
    #[cfg(feature = "rabbitmq")]
    pub fn rabbit_config(&self) -> crate::backend::rabbitmq::RabbitConfig {
        use crate::backend::rabbitmq::{QueueKind, RabbitConfig};
        RabbitConfig {
            host: self
                .monitoring_host
                .clone()
                .unwrap_or_else(|| "127.0.0.1".to_owned()),
            port: self.monitoring_port,
            user: self.monitoring_user.clone(),
            password: self.monitoring_password.clone(),
            vhost: self.monitoring_vhost.clone(),
            // Created durable when missing, as before; an existing one is adopted.
            durable_queue: true,
            ..RabbitConfig::default()
        }
        .with_exchange(self.monitoring_exchange.clone())
        .with_queue(QueueKind::Durable(self.monitoring_queue.clone()))
    }
}

/// Directory (PlugIt API) and shared cache (memcached).
#[derive(Debug, Clone, Args)]
pub struct DirectoryArgs {
    /// PlugIt API base URL (ends with /); setting it selects the PlugIt directory.
    #[arg(
        long = "radiodns-api-url",
        env = "RADIODNS_API_URL",
        value_name = "RADIODNS_API_URL"
    )]
    pub radiodns_api_url: Option<String>,
    /// Directory file (TOML) for standalone use when no PlugIt URL is set [default:
    /// examples/directory.toml when it exists, else an empty directory: anonymous
    /// radios only].
    #[arg(
        long = "directory",
        env = "RADIOVIS_DIRECTORY",
        value_name = "RADIOVIS_DIRECTORY"
    )]
    pub directory: Option<PathBuf>,
    /// memcached host or host:port; setting it selects memcached as shared cache.
    #[arg(
        long = "memcached-host",
        env = "MEMCACHED_HOST",
        value_name = "MEMCACHED_HOST"
    )]
    pub memcached_host: Option<String>,
    /// HTTP method of PlugIt calls: GET with a form body (as the original) or POST.
    #[arg(long = "radiodns-api-method", env = "RADIODNS_API_METHOD", value_name = "RADIODNS_API_METHOD", default_value = "GET", value_parser = ["GET", "POST", "get", "post"])]
    pub radiodns_api_method: String,
    /// Timeout of each directory call, in seconds.
    #[arg(
        long = "directory-timeout",
        env = "RADIOVIS_DIRECTORY_TIMEOUT",
        value_name = "RADIOVIS_DIRECTORY_TIMEOUT",
        default_value_t = 5.0
    )]
    pub directory_timeout: f64,
}

impl DirectoryArgs {
    /// The PlugIt configuration of `RADIODNS_API_URL` (`url`), with these timeouts and
    /// method.
    #[cfg(feature = "plugit")]
    pub fn plugit_config(
        &self,
        url: &str,
    ) -> Result<crate::backend::plugit::PlugitConfig, ConfigError> {
        use crate::backend::plugit::{PlugitConfig, PlugitMethod};
        let mut config = PlugitConfig::new(url);
        let timeout = secs("RADIOVIS_DIRECTORY_TIMEOUT", self.directory_timeout)?;
        config.timeout = timeout;
        config.connect_timeout = timeout;
        config.method = self
            .radiodns_api_method
            .parse::<PlugitMethod>()
            .map_err(|e| ConfigError::invalid("RADIODNS_API_METHOD", e))?;
        Ok(config)
    }
}

/// Limits and tunables of the hub (beyond the original).
#[derive(Debug, Clone, Args)]
pub struct HubArgs {
    /// Largest frame accepted, in bytes.
    #[arg(long, env = "RADIOVIS_MAX_FRAME_SIZE", value_name = "RADIOVIS_MAX_FRAME_SIZE", default_value_t = Limits::default().max_frame_size)]
    pub max_frame_size: usize,
    /// Most headers per frame.
    #[arg(long, env = "RADIOVIS_MAX_HEADERS", value_name = "RADIOVIS_MAX_HEADERS", default_value_t = Limits::default().max_headers)]
    pub max_headers: usize,
    /// Longest header line, in bytes.
    #[arg(long, env = "RADIOVIS_MAX_HEADER_LINE", value_name = "RADIOVIS_MAX_HEADER_LINE", default_value_t = Limits::default().max_header_line)]
    pub max_header_line: usize,
    /// Messages queued per connection before it is dropped as a slow consumer.
    #[arg(
        long,
        env = "RADIOVIS_OUTBOUND_QUEUE",
        value_name = "RADIOVIS_OUTBOUND_QUEUE",
        default_value_t = 250
    )]
    pub outbound_queue: usize,
    /// Seconds a new connection has to send CONNECT.
    #[arg(
        long,
        env = "RADIOVIS_CONNECT_TIMEOUT",
        value_name = "RADIOVIS_CONNECT_TIMEOUT",
        default_value_t = 10.0
    )]
    pub connect_timeout: f64,
    /// Most simultaneous connections.
    #[arg(
        long,
        env = "RADIOVIS_MAX_CONNECTIONS",
        value_name = "RADIOVIS_MAX_CONNECTIONS",
        default_value_t = 100_000
    )]
    pub max_connections: usize,
    /// Most subscriptions per session.
    #[arg(
        long,
        env = "RADIOVIS_MAX_SUBSCRIPTIONS",
        value_name = "RADIOVIS_MAX_SUBSCRIPTIONS",
        default_value_t = 128
    )]
    pub max_subscriptions: usize,
    /// Most topics whose last message is kept for replay.
    #[arg(
        long,
        env = "RADIOVIS_MAX_LAST_MESSAGES",
        value_name = "RADIOVIS_MAX_LAST_MESSAGES",
        default_value_t = 100_000
    )]
    pub max_last_messages: usize,
    /// Heart-beat interval offered to STOMP 1.1/1.2 clients, in milliseconds (0: off).
    #[arg(
        long,
        env = "RADIOVIS_HEARTBEAT_MS",
        value_name = "RADIOVIS_HEARTBEAT_MS",
        default_value_t = 10_000
    )]
    pub heartbeat_ms: u64,
    /// Seconds a failed CC -> GCC look-up is remembered before the directory is asked
    /// again (doubling per consecutive failure, up to 60 s or this value if larger).
    #[arg(
        long,
        env = "RADIOVIS_DIRECTORY_RETRY",
        value_name = "RADIOVIS_DIRECTORY_RETRY",
        default_value_t = 5.0
    )]
    pub directory_retry: f64,
    /// Session deadlines and login throttling.
    #[command(flatten)]
    pub clients: ClientLimitArgs,
}

/// The longest period a setting may name: a year. Longer is never meant, and timer
/// arithmetic on it would overflow.
pub const MAX_PERIOD: Duration = Duration::from_secs(366 * 86_400);

/// `v` seconds as a duration, or an error naming `var`: negative or not a number, zero
/// (a timeout of nothing), or longer than [`MAX_PERIOD`].
pub fn secs(var: &'static str, v: f64) -> Result<Duration, ConfigError> {
    let d = Duration::try_from_secs_f64(v).map_err(|source| ConfigError::Seconds {
        var,
        value: v,
        source,
    })?;
    if d.is_zero() || d > MAX_PERIOD {
        return Err(ConfigError::OutOfRange {
            var,
            value: v.to_string(),
            range: format!("more than 0 and at most {} seconds", MAX_PERIOD.as_secs()),
        });
    }
    Ok(d)
}

/// A whole number of seconds of a period that drives a timer: at least 1 (the original
/// wording) and at most [`MAX_PERIOD`].
fn period_secs(var: &'static str, v: u64) -> Result<Duration, ConfigError> {
    if v == 0 {
        return Err(ConfigError::ZeroSeconds { var });
    }
    at_most_secs(var, v, MAX_PERIOD.as_secs())
}

/// A whole number of seconds, at most `max`.
fn at_most_secs(var: &'static str, v: u64, max: u64) -> Result<Duration, ConfigError> {
    if v > max {
        return Err(ConfigError::OutOfRange {
            var,
            value: v.to_string(),
            range: format!("at most {max} seconds"),
        });
    }
    Ok(Duration::from_secs(v))
}

/// A count between `min` and `max`; 0 below a minimum of 1 keeps the original wording.
fn count(var: &'static str, v: usize, min: usize, max: usize) -> Result<usize, ConfigError> {
    if v == 0 && min == 1 {
        return Err(ConfigError::Zero { var });
    }
    if v < min || v > max {
        return Err(ConfigError::OutOfRange {
            var,
            value: v.to_string(),
            range: format!("from {min} to {max}"),
        });
    }
    Ok(v)
}

/// Most connections one instance may be configured for: far above what memory allows
/// (about 2 KiB each), far below what the connection semaphore can count.
pub const MAX_CONNECTIONS: usize = 10_000_000;

impl HubArgs {
    /// The hub configuration these arguments describe.
    pub fn hub_config(&self, directory_timeout: f64) -> Result<HubConfig, ConfigError> {
        let max_frame_size = count("RADIOVIS_MAX_FRAME_SIZE", self.max_frame_size, 256, 1 << 30)?;
        let max_heartbeat = 86_400_000;
        if self.heartbeat_ms > max_heartbeat {
            return Err(ConfigError::OutOfRange {
                var: "RADIOVIS_HEARTBEAT_MS",
                value: self.heartbeat_ms.to_string(),
                range: format!("from 0 (off) to {max_heartbeat} ms"),
            });
        }
        let hb = Duration::from_millis(self.heartbeat_ms);
        Ok(HubConfig {
            limits: Limits {
                max_frame_size,
                max_headers: count("RADIOVIS_MAX_HEADERS", self.max_headers, 1, 100_000)?,
                max_header_line: count(
                    "RADIOVIS_MAX_HEADER_LINE",
                    self.max_header_line,
                    64,
                    max_frame_size.max(64),
                )?,
            },
            outbound_queue: count("RADIOVIS_OUTBOUND_QUEUE", self.outbound_queue, 1, 1_000_000)?,
            connect_timeout: secs("RADIOVIS_CONNECT_TIMEOUT", self.connect_timeout)?,
            max_connections: count(
                "RADIOVIS_MAX_CONNECTIONS",
                self.max_connections,
                1,
                MAX_CONNECTIONS,
            )?,
            max_subscriptions: count(
                "RADIOVIS_MAX_SUBSCRIPTIONS",
                self.max_subscriptions,
                1,
                100_000,
            )?,
            max_last_messages: count(
                "RADIOVIS_MAX_LAST_MESSAGES",
                self.max_last_messages,
                1,
                100_000_000,
            )?,
            heartbeat: (hb, hb),
            // The hub's own guard sits above the backend's timeout.
            directory_timeout: secs("RADIOVIS_DIRECTORY_TIMEOUT", directory_timeout)? * 2,
            directory_retry: secs("RADIOVIS_DIRECTORY_RETRY", self.directory_retry)?,
            ..HubConfig::default()
        })
        .and_then(|config| self.clients.apply(config))
    }
}

/// Monitoring (events to a RabbitMQ exchange).
#[derive(Debug, Clone, Args)]
pub struct MonitoringArgs {
    /// Publish monitoring events (True/False). Off in standalone mode unless
    /// MONITORING_HOST is set.
    #[arg(long = "monitoring-enabled", env = "MONITORING_ENABLED", value_name = "MONITORING_ENABLED", default_value = "True", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub monitoring_enabled: bool,
    /// Monitoring RabbitMQ host (the original: 127.0.0.1).
    #[arg(
        long = "monitoring-host",
        env = "MONITORING_HOST",
        value_name = "MONITORING_HOST"
    )]
    pub monitoring_host: Option<String>,
    #[arg(
        long = "monitoring-port",
        env = "MONITORING_PORT",
        value_name = "MONITORING_PORT",
        default_value_t = 5672
    )]
    /// Monitoring RabbitMQ port.
    pub monitoring_port: u16,
    #[arg(
        long = "monitoring-user",
        env = "MONITORING_USER",
        value_name = "MONITORING_USER",
        default_value = "guest"
    )]
    /// Monitoring RabbitMQ user.
    pub monitoring_user: String,
    #[arg(
        long = "monitoring-password",
        env = "MONITORING_PASSWORD",
        value_name = "MONITORING_PASSWORD",
        default_value = "guest",
        hide_env_values = true,
        hide_default_value = true
    )]
    /// Monitoring RabbitMQ password.
    pub monitoring_password: String,
    #[arg(
        long = "monitoring-vhost",
        env = "MONITORING_VHOST",
        value_name = "MONITORING_VHOST",
        default_value = "/"
    )]
    /// Monitoring RabbitMQ virtual host.
    pub monitoring_vhost: String,
    #[arg(long = "monitoring-debug", env = "MONITORING_DEBUG", value_name = "MONITORING_DEBUG", default_value = "True", value_parser = parse_bool, action = clap::ArgAction::Set)]
    /// Debug logs of the monitoring connection (True/False).
    pub monitoring_debug: bool,
    #[arg(
        long = "monitoring-exchange",
        env = "MONITORING_EXCHANGE",
        value_name = "MONITORING_EXCHANGE",
        default_value = "monitoring.buffer"
    )]
    /// Exchange monitoring events are published to.
    pub monitoring_exchange: String,
    #[arg(
        long = "monitoring-queue",
        env = "MONITORING_QUEUE",
        value_name = "MONITORING_QUEUE",
        default_value = "radiovis"
    )]
    /// Durable queue bound to the monitoring exchange.
    pub monitoring_queue: String,
    /// Server ids put in every event, comma-separated.
    #[arg(
        long = "monitoring-server-id",
        env = "MONITORING_SERVER_ID",
        value_name = "MONITORING_SERVER_ID",
        value_delimiter = ',',
        default_value = "rabbit@radiodnsrabbitmq"
    )]
    pub monitoring_server_id: Vec<String>,
}

/// The fallback watchdog's timings (seconds) and queue.
#[derive(Debug, Clone, Args)]
pub struct FallbackArgs {
    /// Seconds the channel list is cached.
    #[arg(
        long = "fb-channel-cache",
        env = "FB_CHANNEL_CACHE",
        value_name = "FB_CHANNEL_CACHE",
        default_value_t = 60
    )]
    pub fb_channel_cache: u64,
    /// Queue the watchdog consumes (shared with the original's watchdog).
    #[arg(
        long = "fb-queue",
        env = "FB_QUEUE",
        value_name = "FB_QUEUE",
        default_value = "fallbacklogs"
    )]
    pub fb_queue: String,
    /// Declare `FB_QUEUE` durable when it does not exist yet (True/False; False by
    /// default, as the original declares it). An existing queue is used as it is.
    #[arg(long = "fb-queue-durable", env = "RADIOVIS_FB_QUEUE_DURABLE", value_name = "RADIOVIS_FB_QUEUE_DURABLE", default_value = "False", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub fb_queue_durable: bool,
    /// Seconds between checks for quiet channels.
    #[arg(
        long = "fb-fallback-check",
        env = "FB_FALLBACK_CHECK",
        value_name = "FB_FALLBACK_CHECK",
        default_value_t = 15
    )]
    pub fb_fallback_check: u64,
    /// Seconds without a message before a channel gets its default.
    #[arg(
        long = "fb-fallback-time",
        env = "FB_FALLBACK_TIME",
        value_name = "FB_FALLBACK_TIME",
        default_value_t = 60
    )]
    pub fb_fallback_time: u64,
    /// Base URL of default images (empty: use the channel's public_url).
    #[arg(
        long = "fb-image-locations",
        env = "FB_IMAGE_LOCATIONS",
        value_name = "FB_IMAGE_LOCATIONS",
        default_value = ""
    )]
    pub fb_image_locations: String,
    /// Seconds a log entry is kept.
    #[arg(
        long = "fb-logs-max-age",
        env = "FB_LOGS_MAX_AGE",
        value_name = "FB_LOGS_MAX_AGE",
        default_value_t = 86_400
    )]
    pub fb_logs_max_age: u64,
    /// Seconds between log cleanups.
    #[arg(
        long = "fb-logs-cleanup",
        env = "FB_LOGS_CLEANUP",
        value_name = "FB_LOGS_CLEANUP",
        default_value_t = 3_600
    )]
    pub fb_logs_cleanup: u64,
}

impl FallbackArgs {
    /// The watchdog configuration these arguments describe.
    pub fn watchdog_config(&self) -> Result<crate::watchdog::WatchdogConfig, ConfigError> {
        Ok(crate::watchdog::WatchdogConfig {
            channel_cache: period_secs("FB_CHANNEL_CACHE", self.fb_channel_cache)?,
            fallback_check: period_secs("FB_FALLBACK_CHECK", self.fb_fallback_check)?,
            fallback_time: at_most_secs(
                "FB_FALLBACK_TIME",
                self.fb_fallback_time,
                MAX_PERIOD.as_secs(),
            )?,
            image_locations: self.fb_image_locations.clone(),
            // Sent to the log store as a number; a century is plenty.
            logs_max_age: at_most_secs(
                "FB_LOGS_MAX_AGE",
                self.fb_logs_max_age,
                100 * 366 * 86_400,
            )?,
            logs_cleanup: period_secs("FB_LOGS_CLEANUP", self.fb_logs_cleanup)?,
            ..Default::default()
        })
    }
}

mod clients;
pub use clients::ClientLimitArgs;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "http")]
pub use http::{FallbackHttpArgs, HttpArgs, OpsArgs, PortOrOff};

#[cfg(test)]
mod tests;

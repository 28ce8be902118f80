//! Where and how to connect to RabbitMQ: [`RabbitConfig`] and the [`QueueKind`] to
//! consume from.

use std::fmt;
use std::time::Duration;

use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};

use super::{RabbitError, DEFAULT_EXCHANGE};

/// AMQP frame size asked of the broker (see `RabbitConfig::uri`).
const FRAME_MAX: u32 = 16 * 1024;

/// How long an instance queue outlives its consumer: longer than any reconnection
/// (backoff is capped at seconds), short enough that a stopped instance's queue goes.
pub const INSTANCE_QUEUE_EXPIRES: std::time::Duration = std::time::Duration::from_secs(120);

/// Messages an instance queue holds while its instance is away (the oldest are
/// dropped beyond): a bound on what a dead instance costs the broker.
pub const INSTANCE_QUEUE_MAX: u32 = 10_000;

/// Which queue this instance consumes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueKind {
    /// This server instance's own queue, named `radiovis-<uuid>` by the bus once, so
    /// that a reconnection declares the same queue again: it is durable, expires
    /// [`INSTANCE_QUEUE_EXPIRES`] after its consumer is gone, and holds at most
    /// [`INSTANCE_QUEUE_MAX`] messages meanwhile (oldest dropped). Messages published
    /// while this instance reconnects (after a broker restart the instances do not come
    /// back at the same moment) are delivered late instead of lost
    /// (docs/protocol.md#rabbitmq-queues).
    Instance,
    /// A named queue that outlives its consumer (the watchdog's `FB_QUEUE`): messages
    /// wait in it while no consumer is attached. Consumption starts with the first
    /// `subscribe()`. An existing queue of that name is adopted as it is, whoever
    /// declared it and however; a missing one is declared not exclusive, not
    /// auto-delete, and durable only with [`RabbitConfig::durable_queue`] (the
    /// original declares it non-durable; docs/protocol.md#rabbitmq-queues).
    Durable(String),
}

/// Where and how to connect. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RabbitConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port (5672).
    pub port: u16,
    /// AMQP user.
    pub user: String,
    /// AMQP password (never logged).
    pub password: String,
    /// Virtual host, `/` by default.
    pub vhost: String,
    /// Fanout exchange every instance publishes to and consumes from.
    pub exchange: String,
    /// The queue this connection consumes from.
    pub queue: QueueKind,
    /// Whether a [`QueueKind::Durable`] queue that does not exist yet is declared
    /// durable (survives a broker restart). `false` by default, as the original's
    /// haigha declares `FB_QUEUE`, so that either implementation can declare it after
    /// the other. An existing queue is used as it is either way.
    pub durable_queue: bool,
    /// Bound on one connection attempt (TCP, handshake, declarations).
    pub connect_timeout: Duration,
    /// Bound on waiting for the broker's publisher confirm.
    pub confirm_timeout: Duration,
    /// AMQP heartbeat proposed to the broker, in seconds (a dead link is noticed after
    /// about twice this); 0 leaves it to the broker.
    pub heartbeat: u16,
    /// First reconnection delay; doubles on each failure up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest reconnection delay.
    pub max_backoff: Duration,
    /// Messages buffered per subscriber stream (backpressure beyond that).
    pub stream_capacity: usize,
    /// Unacknowledged deliveries the broker may push to this consumer.
    pub prefetch: u16,
}

impl Default for RabbitConfig {
    fn default() -> Self {
        RabbitConfig {
            host: "127.0.0.1".to_owned(),
            port: 5672,
            user: "guest".to_owned(),
            password: "guest".to_owned(),
            vhost: "/".to_owned(),
            exchange: DEFAULT_EXCHANGE.to_owned(),
            queue: QueueKind::Instance,
            durable_queue: false,
            connect_timeout: Duration::from_secs(10),
            confirm_timeout: Duration::from_secs(5),
            heartbeat: 10,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            stream_capacity: 1024,
            prefetch: 256,
        }
    }
}

impl fmt::Debug for RabbitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .field("vhost", &self.vhost)
            .field("exchange", &self.exchange)
            .field("queue", &self.queue)
            .field("durable_queue", &self.durable_queue)
            .field("connect_timeout", &self.connect_timeout)
            .field("confirm_timeout", &self.confirm_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("min_backoff", &self.min_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("stream_capacity", &self.stream_capacity)
            .field("prefetch", &self.prefetch)
            .finish()
    }
}

impl RabbitConfig {
    /// A configuration from an AMQP URL, `amqp://user:password@host:port/vhost`
    /// (user, password, port and vhost optional; `%2f` is `/`, an absent path is the
    /// vhost `/`). The query string and fragment are ignored. Exchange and queue keep
    /// their defaults. Errors never contain the password.
    pub fn from_url(url: &str) -> Result<RabbitConfig, RabbitError> {
        let bad = |why: &str| RabbitError::Config(format!("invalid AMQP URL: {why}").into());
        // The scheme is checked first so the messages say what this build supports
        // (lapin's parser would accept amqps and name the scheme less helpfully).
        match url.split_once("://") {
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("amqp") => {}
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("amqps") => {
                return Err(bad("amqps (TLS) is not supported by this build"))
            }
            _ => return Err(bad("it must start with amqp://")),
        }
        // Query parameters were never read from the URL (the heartbeat and frame size
        // come from the configuration), so they cannot make a URL invalid either.
        let url = url.split(['?', '#']).next().unwrap_or_default();
        // The decoder of AMQPUri keeps a malformed escape as it is; a URL with one is
        // refused instead, as it always was (it is a typo, not a vhost named "%zz").
        let malformed_escape = url.match_indices('%').any(|(i, _)| {
            !url.get(i + 1..i + 3)
                .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
        });
        if malformed_escape {
            return Err(bad("bad %-escape"));
        }
        let parsed: AMQPUri = url.parse().map_err(|e: String| {
            // The parser may quote the whole URL, password included.
            if e.contains(url) {
                bad("it cannot be parsed")
            } else {
                bad(&e)
            }
        })?;
        let mut config = RabbitConfig {
            user: parsed.authority.userinfo.username,
            password: parsed.authority.userinfo.password,
            port: parsed.authority.port,
            vhost: parsed.vhost,
            ..RabbitConfig::default()
        };
        // AMQPUri knows only domain names: it reads an IP literal or an absent host as
        // "localhost"; the host is taken from the URL itself, and an absent host keeps
        // the default (127.0.0.1).
        match url::Url::parse(url)
            .ok()
            .and_then(|u| u.host().map(|h| h.to_owned()))
        {
            Some(url::Host::Ipv6(ip)) => config.host = ip.to_string(),
            Some(url::Host::Ipv4(ip)) => config.host = ip.to_string(),
            Some(url::Host::Domain(d)) if !d.is_empty() => config.host = parsed.authority.host,
            _ => {}
        }
        Ok(config)
    }

    /// The same configuration with this exchange.
    pub fn with_exchange(mut self, exchange: impl Into<String>) -> RabbitConfig {
        self.exchange = exchange.into();
        self
    }

    /// The same configuration with this queue.
    pub fn with_queue(mut self, queue: QueueKind) -> RabbitConfig {
        self.queue = queue;
        self
    }

    /// `host:port/vhost` as user, for logs (no password).
    pub(super) fn display_target(&self) -> String {
        format!(
            "{}@{}:{} (vhost {:?})",
            self.user, self.host, self.port, self.vhost
        )
    }

    pub(super) fn uri(&self) -> AMQPUri {
        AMQPUri {
            scheme: AMQPScheme::AMQP,
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: self.user.clone(),
                    password: self.password.clone(),
                },
                host: self.host.clone(),
                port: self.port,
            },
            vhost: self.vhost.clone(),
            query: AMQPQueryString {
                heartbeat: (self.heartbeat > 0).then_some(self.heartbeat),
                // lapin keeps two zero-filled buffers of 32 frames each per connection:
                // with the broker's default 128 KiB frames that is 8 MiB resident per
                // connection (measured); RadioVis messages are a line of text, and
                // larger ones are simply split into more frames.
                frame_max: Some(FRAME_MAX),
                ..AMQPQueryString::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        let c =
            RabbitConfig::from_url("amqp://bob:s%40cret@rabbit.example:5673/%2fvh").expect("valid");
        assert_eq!(c.user, "bob");
        assert_eq!(c.password, "s@cret");
        assert_eq!(c.host, "rabbit.example");
        assert_eq!(c.port, 5673);
        assert_eq!(c.vhost, "/vh");
        let c = RabbitConfig::from_url("amqp://10.0.0.1").expect("valid");
        assert_eq!(
            (c.host.as_str(), c.port, c.vhost.as_str()),
            ("10.0.0.1", 5672, "/")
        );
        let c = RabbitConfig::from_url("amqp://[::1]:5000/").expect("valid");
        assert_eq!(
            (c.host.as_str(), c.port, c.vhost.as_str()),
            ("::1", 5000, "")
        );
        let e = RabbitConfig::from_url("amqp://u:hunter2@h:port/").expect_err("bad port");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(RabbitConfig::from_url("amqps://h").is_err());
        assert!(RabbitConfig::from_url("http://h").is_err());
        // What the hand-written parser also accepted: an absent host keeps the default,
        // a user without a password keeps the default password, the query is ignored.
        let c = RabbitConfig::from_url("amqp:///vh?heartbeat=x#f").expect("valid");
        assert_eq!((c.host.as_str(), c.vhost.as_str()), ("127.0.0.1", "vh"));
        let c = RabbitConfig::from_url("amqp://bob@h:1").expect("valid");
        assert_eq!((c.user.as_str(), c.password.as_str()), ("bob", "guest"));
        assert_eq!((c.host.as_str(), c.port), ("h", 1));
        let e = RabbitConfig::from_url("amqp://u:hunter2@h/%zz").expect_err("bad escape");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn debug_hides_password() {
        let c = RabbitConfig {
            password: "hunter2".into(),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}

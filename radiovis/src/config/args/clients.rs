//! The variables that keep one client from holding the server: deadlines of a session,
//! SUBSCRIBE limits and login throttling (docs/protocol.md#limits, docs/protocol.md#connect). Flattened
//! into [`HubArgs`](super::HubArgs).

use std::time::Duration;

use clap::Args;

use super::{count, secs, ConfigError};
use crate::hub::HubConfig;

/// Session deadlines, SUBSCRIBE limits and login throttling.
#[derive(Debug, Clone, Args)]
pub struct ClientLimitArgs {
    /// Seconds a started frame has to complete.
    #[arg(
        long,
        env = "RADIOVIS_FRAME_TIMEOUT",
        value_name = "RADIOVIS_FRAME_TIMEOUT",
        default_value_t = 30.0
    )]
    pub frame_timeout: f64,
    /// Seconds a client without heart-beats (STOMP 1.0) may send nothing (0: no limit).
    #[arg(
        long,
        env = "RADIOVIS_IDLE_TIMEOUT",
        value_name = "RADIOVIS_IDLE_TIMEOUT",
        default_value_t = 600.0
    )]
    pub idle_timeout: f64,
    /// Seconds a write may stay blocked on a client that does not read.
    #[arg(
        long,
        env = "RADIOVIS_WRITE_TIMEOUT",
        value_name = "RADIOVIS_WRITE_TIMEOUT",
        default_value_t = 30.0
    )]
    pub write_timeout: f64,
    /// Most wildcard (`*`) subscriptions per session.
    #[arg(
        long,
        env = "RADIOVIS_MAX_WILDCARDS",
        value_name = "RADIOVIS_MAX_WILDCARDS",
        default_value_t = 8
    )]
    pub max_wildcards: usize,
    /// SUBSCRIBE frames a session may send per second, sustained.
    #[arg(
        long,
        env = "RADIOVIS_SUBSCRIBE_RATE",
        value_name = "RADIOVIS_SUBSCRIBE_RATE",
        default_value_t = 20
    )]
    pub subscribe_rate: usize,
    /// SUBSCRIBE frames a session may send at once, above the sustained rate.
    #[arg(
        long,
        env = "RADIOVIS_SUBSCRIBE_BURST",
        value_name = "RADIOVIS_SUBSCRIBE_BURST",
        default_value_t = 100
    )]
    pub subscribe_burst: usize,
    /// Most simultaneous connections from one address (an IPv6 /64 counts as one).
    #[arg(
        long,
        env = "RADIOVIS_MAX_CONNECTIONS_PER_ADDRESS",
        value_name = "RADIOVIS_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 1_000
    )]
    pub max_connections_per_address: usize,
    /// Failed logins from one address before it is blocked.
    #[arg(
        long,
        env = "RADIOVIS_AUTH_MAX_FAILURES",
        value_name = "RADIOVIS_AUTH_MAX_FAILURES",
        default_value_t = 10
    )]
    pub auth_max_failures: usize,
    /// Seconds failed logins are remembered, and a blocked address stays blocked.
    #[arg(
        long,
        env = "RADIOVIS_AUTH_BLOCK",
        value_name = "RADIOVIS_AUTH_BLOCK",
        default_value_t = 300.0
    )]
    pub auth_block: f64,
    /// Seconds before the ERROR of a first failed login; doubles per failure (0: none).
    #[arg(
        long,
        env = "RADIOVIS_AUTH_DELAY",
        value_name = "RADIOVIS_AUTH_DELAY",
        default_value_t = 0.5
    )]
    pub auth_delay: f64,
    /// Most credential checks in flight at the directory at once.
    #[arg(
        long,
        env = "RADIOVIS_AUTH_CONCURRENCY",
        value_name = "RADIOVIS_AUTH_CONCURRENCY",
        default_value_t = 64
    )]
    pub auth_concurrency: usize,
}

impl ClientLimitArgs {
    /// `config` with these settings, or an error naming the first variable out of range.
    pub fn apply(&self, config: HubConfig) -> Result<HubConfig, ConfigError> {
        Ok(HubConfig {
            frame_timeout: secs("RADIOVIS_FRAME_TIMEOUT", self.frame_timeout)?,
            idle_timeout: secs_or_off("RADIOVIS_IDLE_TIMEOUT", self.idle_timeout)?,
            write_timeout: secs("RADIOVIS_WRITE_TIMEOUT", self.write_timeout)?,
            max_wildcards: count("RADIOVIS_MAX_WILDCARDS", self.max_wildcards, 0, 100_000)?,
            // At most a million a second: the interval of the rate stays at least 1 µs.
            subscribe_rate: count("RADIOVIS_SUBSCRIBE_RATE", self.subscribe_rate, 1, 1_000_000)?
                as u32,
            subscribe_burst: count(
                "RADIOVIS_SUBSCRIBE_BURST",
                self.subscribe_burst,
                1,
                1_000_000,
            )? as u32,
            max_connections_per_address: count(
                "RADIOVIS_MAX_CONNECTIONS_PER_ADDRESS",
                self.max_connections_per_address,
                1,
                super::MAX_CONNECTIONS,
            )?,
            auth_max_failures: count(
                "RADIOVIS_AUTH_MAX_FAILURES",
                self.auth_max_failures,
                1,
                1_000_000,
            )? as u32,
            auth_block: secs("RADIOVIS_AUTH_BLOCK", self.auth_block)?,
            auth_failure_delay: secs_or_off("RADIOVIS_AUTH_DELAY", self.auth_delay)?
                .unwrap_or_default(),
            auth_concurrency: count(
                "RADIOVIS_AUTH_CONCURRENCY",
                self.auth_concurrency,
                1,
                100_000,
            )?,
            ..config
        })
    }
}

/// Like [`secs`], but 0 means "off" (`None`).
fn secs_or_off(var: &'static str, v: f64) -> Result<Option<Duration>, ConfigError> {
    if v == 0.0 {
        return Ok(None);
    }
    secs(var, v).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        limits: ClientLimitArgs,
    }

    #[test]
    fn defaults_match_the_hub_and_zero_idle_is_off() {
        let cli = Cli::try_parse_from(["x"]).expect("valid");
        let c = cli.limits.apply(HubConfig::default()).expect("valid");
        let d = HubConfig::default();
        assert_eq!(c.frame_timeout, d.frame_timeout);
        assert_eq!(c.idle_timeout, d.idle_timeout);
        assert_eq!(c.write_timeout, d.write_timeout);
        assert_eq!(c.auth_max_failures, d.auth_max_failures);
        assert_eq!(c.auth_block, d.auth_block);
        assert_eq!(c.auth_failure_delay, d.auth_failure_delay);
        assert_eq!(c.auth_concurrency, d.auth_concurrency);
        let cli = Cli::try_parse_from(["x", "--idle-timeout", "0"]).expect("valid");
        let c = cli.limits.apply(HubConfig::default()).expect("valid");
        assert_eq!(c.idle_timeout, None);
    }

    #[test]
    fn out_of_range_names_the_variable() {
        for (flag, var) in [
            ("--frame-timeout=0", "RADIOVIS_FRAME_TIMEOUT"),
            ("--write-timeout=-1", "RADIOVIS_WRITE_TIMEOUT"),
            ("--auth-max-failures=0", "RADIOVIS_AUTH_MAX_FAILURES"),
            ("--auth-concurrency=0", "RADIOVIS_AUTH_CONCURRENCY"),
            ("--idle-timeout=1e12", "RADIOVIS_IDLE_TIMEOUT"),
        ] {
            let cli = Cli::try_parse_from(["x", flag]).expect("parses");
            let err = cli
                .limits
                .apply(HubConfig::default())
                .expect_err("out of range");
            assert!(err.to_string().contains(var), "{flag}: {err}");
        }
    }
}

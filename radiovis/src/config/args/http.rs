//! Where the HTTP listener listens and how its web transports behave
//! (docs/protocol.md#http-listener). Feature `http`.

use std::net::{IpAddr, SocketAddr};

use clap::Args;

use super::{secs, ConfigError, StompArgs};

mod ops;
use crate::http::HttpConfig;
pub use ops::{FallbackHttpArgs, OpsArgs};

/// A port, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortOrOff(pub Option<u16>);

fn port_or_off(s: &str) -> Result<PortOrOff, String> {
    match s.trim() {
        o if o.eq_ignore_ascii_case("off") => Ok(PortOrOff(None)),
        p => p
            .parse::<u16>()
            .map(|p| PortOrOff(Some(p)))
            .map_err(|_| format!("{s:?} is neither a port number nor `off`")),
    }
}

/// The HTTP listener: RadioVIS long-poll, server-sent events, WebSocket.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Addresses of the HTTP listener, comma-separated (default: those of STOMP_IP).
    #[arg(
        long = "http-ip",
        env = "HTTP_IP",
        value_name = "HTTP_IP",
        value_delimiter = ','
    )]
    pub http_ip: Option<Vec<IpAddr>>,
    /// HTTP port, or `off` for no HTTP listener.
    #[arg(
        long = "http-port",
        env = "HTTP_PORT",
        value_name = "HTTP_PORT",
        default_value = "8080",
        value_parser = port_or_off
    )]
    pub http_port: PortOrOff,
    /// Seconds a long-poll request is held when there is nothing newer to answer.
    #[arg(
        long = "http-poll-hold",
        env = "HTTP_POLL_HOLD",
        value_name = "HTTP_POLL_HOLD",
        default_value_t = 10.0
    )]
    pub http_poll_hold: f64,
}

impl HttpArgs {
    /// The addresses to listen on; none when the listener is off.
    pub fn addresses(&self, stomp: &StompArgs) -> Vec<SocketAddr> {
        let Some(port) = self.http_port.0 else {
            return Vec::new();
        };
        let ips = self.http_ip.as_ref().unwrap_or(&stomp.stomp_ip);
        ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect()
    }

    /// The web transports' settings.
    pub fn http_config(&self) -> Result<HttpConfig, ConfigError> {
        Ok(HttpConfig {
            poll_hold: secs("HTTP_POLL_HOLD", self.http_poll_hold)?,
            ..HttpConfig::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        stomp: StompArgs,
        #[command(flatten)]
        http: HttpArgs,
    }

    #[test]
    fn http_listens_where_stomp_does_on_8080_by_default() {
        let cli = Cli::parse_from(["x", "--stomp-ip", "127.0.0.1,::1"]);
        let addrs = cli.http.addresses(&cli.stomp);
        let want: Vec<SocketAddr> = vec![
            "127.0.0.1:8080".parse().expect("addr"),
            "[::1]:8080".parse().expect("addr"),
        ];
        assert_eq!(addrs, want);
    }

    #[test]
    fn http_port_off_disables_and_garbage_is_refused() {
        let cli = Cli::parse_from(["x", "--http-port", "OFF"]);
        assert!(cli.http.addresses(&cli.stomp).is_empty());
        let err = Cli::try_parse_from(["x", "--http-port", "http"])
            .err()
            .expect("refused");
        assert!(err.to_string().contains("HTTP_PORT"), "{err}");
        let cli = Cli::parse_from(["x", "--http-ip", "10.0.0.1", "--http-port", "80"]);
        let want: SocketAddr = "10.0.0.1:80".parse().expect("addr");
        assert_eq!(cli.http.addresses(&cli.stomp), vec![want]);
        let cli = Cli::parse_from(["x", "--http-poll-hold", "0"]);
        assert!(cli.http.http_config().is_err());
    }
}

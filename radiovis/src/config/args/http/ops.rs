//! The operations endpoints' settings (docs/protocol.md#operations): the admin
//! credentials of the status page, the watchdog's own listener. Feature `http`.

use std::net::{IpAddr, SocketAddr};

use clap::Args;

use super::PortOrOff;

use crate::http::ops_respond::AdminCredentials;

/// Admin credentials of the status page; the admin parts are off unless both are set.
#[derive(Clone, Args)]
pub struct OpsArgs {
    /// User name of the status page's admin parts (off when unset).
    #[arg(long, env = "RADIOVIS_ADMIN_USER", value_name = "RADIOVIS_ADMIN_USER")]
    pub admin_user: Option<String>,
    /// Password of the status page's admin parts (never logged).
    #[arg(
        long,
        env = "RADIOVIS_ADMIN_PASSWORD",
        value_name = "RADIOVIS_ADMIN_PASSWORD",
        hide_env_values = true
    )]
    pub admin_password: Option<String>,
}

impl std::fmt::Debug for OpsArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpsArgs")
            .field("admin_user", &self.admin_user)
            .field(
                "admin_password",
                &self.admin_password.as_ref().map(|_| "***"),
            )
            .finish()
    }
}

impl OpsArgs {
    /// The admin credentials, `None` (admin parts off) unless both are set; logs which.
    pub fn admin(&self) -> Option<AdminCredentials> {
        let admin = AdminCredentials::new(
            self.admin_user.as_deref().unwrap_or(""),
            self.admin_password.as_deref().unwrap_or(""),
        );
        match (&admin, &self.admin_user, &self.admin_password) {
            (Some(_), _, _) => tracing::info!("status page admin parts on"),
            (None, None, None) => tracing::info!("status page admin parts off (RADIOVIS_ADMIN_USER unset)"),
            (None, _, _) => tracing::warn!(
                "status page admin parts off: RADIOVIS_ADMIN_USER and RADIOVIS_ADMIN_PASSWORD must both be set"
            ),
        }
        admin
    }
}

/// Where radiovis-fallback serves its `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, Args)]
pub struct FallbackHttpArgs {
    /// Addresses of the watchdog's operations listener, comma-separated.
    #[arg(
        long = "fb-http-ip",
        env = "FB_HTTP_IP",
        value_name = "FB_HTTP_IP",
        value_delimiter = ',',
        default_value = "0.0.0.0"
    )]
    pub fb_http_ip: Vec<IpAddr>,
    /// Port of the watchdog's operations listener, or `off`.
    #[arg(
        long = "fb-http-port",
        env = "FB_HTTP_PORT",
        value_name = "FB_HTTP_PORT",
        default_value = "8081",
        value_parser = super::port_or_off
    )]
    pub fb_http_port: PortOrOff,
}

impl FallbackHttpArgs {
    /// The addresses to listen on; none when `FB_HTTP_PORT=off`.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        let Some(port) = self.fb_http_port.0 else {
            return Vec::new();
        };
        self.fb_http_ip
            .iter()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        fb: FallbackHttpArgs,
    }

    #[test]
    fn fallback_port_defaults_to_8081_and_can_be_off() {
        let cli = Cli::try_parse_from(["x"]).expect("parses");
        assert_eq!(
            cli.fb.addresses(),
            vec![SocketAddr::from(([0, 0, 0, 0], 8081))]
        );
        let cli = Cli::try_parse_from(["x", "--fb-http-port", "off"]).expect("parses");
        assert!(cli.fb.addresses().is_empty());
        let cli = Cli::try_parse_from([
            "x",
            "--fb-http-ip",
            "127.0.0.1,::1",
            "--fb-http-port",
            "9100",
        ])
        .expect("parses");
        assert_eq!(cli.fb.addresses().len(), 2);
        assert!(Cli::try_parse_from(["x", "--fb-http-port", "nope"]).is_err());
    }
}

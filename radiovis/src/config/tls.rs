//! TLS listeners from configuration (feature `tls`): `STOMP_TLS_PORT` (STOMP over TLS
//! on the `STOMP_IP` addresses) and `HTTP_TLS_PORT` (HTTPS and WSS on the `HTTP_IP`
//! addresses), both with `TLS_CERT_FILE` / `TLS_KEY_FILE`. See docs/protocol.md#tls.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Args;
use tokio::net::TcpListener;

use super::args::StompArgs;
use super::error::ConfigError;
use super::runtime::listen;
use crate::tls::{TlsError, TlsFiles, TlsReloader};

/// TLS listeners and their certificate.
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// STOMP over TLS port, on the STOMP_IP addresses [default: none].
    #[arg(
        long = "stomp-tls-port",
        env = "STOMP_TLS_PORT",
        value_name = "STOMP_TLS_PORT"
    )]
    pub stomp_tls_port: Option<u16>,
    /// HTTPS port (the HTTP listener's routes, WebSocket as WSS), on the HTTP_IP
    /// addresses [default: none].
    #[arg(
        long = "http-tls-port",
        env = "HTTP_TLS_PORT",
        value_name = "HTTP_TLS_PORT"
    )]
    pub http_tls_port: Option<u16>,
    /// Certificate chain of the TLS listeners (PEM, leaf first); read again on SIGHUP.
    #[arg(
        long = "tls-cert-file",
        env = "TLS_CERT_FILE",
        value_name = "TLS_CERT_FILE"
    )]
    pub tls_cert_file: Option<PathBuf>,
    /// Private key of TLS_CERT_FILE (PEM: PKCS#8, PKCS#1 or SEC1); read again on SIGHUP.
    #[arg(
        long = "tls-key-file",
        env = "TLS_KEY_FILE",
        value_name = "TLS_KEY_FILE"
    )]
    pub tls_key_file: Option<PathBuf>,
}

/// The bound TLS listeners and the acceptors that serve them.
#[derive(Debug, Default)]
pub struct TlsListeners {
    /// STOMP over TLS listeners (one per `STOMP_IP` address) and their acceptor.
    pub stomp: Option<(Vec<TcpListener>, TlsReloader)>,
    /// HTTPS listeners (one per `HTTP_IP` address) and their acceptor (ALPN
    /// `http/1.1`).
    pub http: Option<(Vec<TcpListener>, TlsReloader)>,
}

impl TlsListeners {
    /// Every acceptor, for [`reload_on_sighup`](crate::tls::reload_on_sighup).
    pub fn reloaders(&self) -> Vec<TlsReloader> {
        [&self.stomp, &self.http]
            .into_iter()
            .flatten()
            .map(|(_, r)| r.clone())
            .collect()
    }
}

impl TlsArgs {
    /// The certificate files: `None` when no TLS port is set; both files required when
    /// one is.
    pub fn files(&self) -> Result<Option<TlsFiles>, ConfigError> {
        if self.stomp_tls_port.is_none() && self.http_tls_port.is_none() {
            if self.tls_cert_file.is_some() || self.tls_key_file.is_some() {
                tracing::warn!("TLS_CERT_FILE/TLS_KEY_FILE set but neither STOMP_TLS_PORT nor HTTP_TLS_PORT: no TLS listener");
            }
            return Ok(None);
        }
        let needed = "required when STOMP_TLS_PORT or HTTP_TLS_PORT is set";
        let cert = self
            .tls_cert_file
            .clone()
            .ok_or_else(|| ConfigError::invalid("TLS_CERT_FILE", needed))?;
        let key = self
            .tls_key_file
            .clone()
            .ok_or_else(|| ConfigError::invalid("TLS_KEY_FILE", needed))?;
        Ok(Some(TlsFiles { cert, key }))
    }

    /// Loads the certificate and binds the TLS listeners: on the `STOMP_IP` addresses
    /// for STOMP, on `http_ips` (the HTTP listener's addresses) for HTTPS. A file that
    /// cannot be used stops start-up naming its variable and path.
    pub fn bind(
        &self,
        stomp: &StompArgs,
        http_ips: &[IpAddr],
    ) -> Result<TlsListeners, ConfigError> {
        let Some(files) = self.files()? else {
            return Ok(TlsListeners::default());
        };
        let mut out = TlsListeners::default();
        if let Some(port) = self.stomp_tls_port {
            let tls = TlsReloader::new(files.clone(), &[]).map_err(config_error)?;
            let listeners = bind_all(&stomp.stomp_ip, port, "STOMP_IP/STOMP_TLS_PORT")?;
            out.stomp = Some((listeners, tls));
        }
        if let Some(port) = self.http_tls_port {
            let tls = TlsReloader::new(files.clone(), &[b"http/1.1"]).map_err(config_error)?;
            let listeners = bind_all(http_ips, port, "HTTP_IP/HTTP_TLS_PORT")?;
            out.http = Some((listeners, tls));
        }
        Ok(out)
    }
}

fn bind_all(
    ips: &[IpAddr],
    port: u16,
    vars: &'static str,
) -> Result<Vec<TcpListener>, ConfigError> {
    ips.iter()
        .map(|ip| {
            let addr = SocketAddr::new(*ip, port);
            listen(addr).map_err(|source| ConfigError::ListenOn { addr, vars, source })
        })
        .collect()
}

/// A certificate problem as a configuration error naming the variable at fault.
fn config_error(e: TlsError) -> ConfigError {
    let var = match &e {
        TlsError::Read { kind, .. } | TlsError::NotPem { kind, .. } if *kind == "certificate" => {
            "TLS_CERT_FILE"
        }
        _ => "TLS_KEY_FILE",
    };
    ConfigError::invalid(var, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        tls: TlsArgs,
    }

    fn args(a: &[&str]) -> TlsArgs {
        Cli::try_parse_from(std::iter::once("t").chain(a.iter().copied()))
            .expect("parses")
            .tls
    }

    #[test]
    fn a_tls_port_needs_both_files_naming_the_missing_one() {
        assert!(args(&[]).files().expect("no tls").is_none());
        let e = args(&["--stomp-tls-port", "1"])
            .files()
            .expect_err("no cert");
        assert!(e.to_string().contains("TLS_CERT_FILE"), "{e}");
        let e = args(&["--http-tls-port", "1", "--tls-cert-file", "c.pem"])
            .files()
            .expect_err("no key");
        assert!(e.to_string().contains("TLS_KEY_FILE"), "{e}");
    }

    #[test]
    fn an_unreadable_file_names_its_variable_and_path() {
        let a = args(&[
            "--stomp-tls-port",
            "0",
            "--tls-cert-file",
            "/nonexistent/cert.pem",
            "--tls-key-file",
            "/nonexistent/key.pem",
        ]);
        let stomp = StompArgs {
            stomp_ip: vec![[127, 0, 0, 1].into()],
            stomp_port: 0,
        };
        let e = a.bind(&stomp, &[]).expect_err("no such file");
        let text = super::super::error_chain(&e);
        assert!(text.starts_with("TLS_CERT_FILE"), "{text}");
        assert!(text.contains("/nonexistent/cert.pem"), "{text}");
    }
}

//! Shared by the server's process tests.
#![allow(dead_code)]

use std::net::SocketAddr;

use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

use tokio::process::{Child, Command as Process};

pub use testkit::services::BROKER_URL as URL;

/// A server process, killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Starts a server on a port the kernel picks (`STOMP_PORT=0`; other processes on
/// this machine may grab any port we would pick ourselves) with the RabbitMQ bus on
/// `exchange` and `extra` environment, and waits for the log line naming its address.
pub async fn start_server(exchange: &str, extra: &[(&str, &str)]) -> Server {
    let directory = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/directory.toml");
    let mut child = Process::new(env!("CARGO_BIN_EXE_radiovis-server"))
        .env("STOMP_IP", "127.0.0.1")
        .env("STOMP_PORT", "0")
        .env("HTTP_PORT", "0")
        .env("RABBITMQ_HOST", "127.0.0.1")
        .env("RABBITMQ_EXCHANGE", exchange)
        .env("RADIOVIS_DIRECTORY", directory)
        .env("RADIOVIS_WATCHDOG", "off")
        .env("MONITORING_ENABLED", "False")
        .env("RUST_LOG", "warn,radiovis::server=info")
        .env("RABBITMQ_DEBUG", "False")
        .env("NO_COLOR", "1")
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start radiovis-server");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let line = strip_ansi(&line);
            if let Some(rest) = line.split("listening for STOMP connections addr=").nth(1) {
                return rest
                    .split_whitespace()
                    .next()
                    .and_then(|a| a.parse::<SocketAddr>().ok());
            }
        }
        None
    })
    .await;
    let Ok(Some(addr)) = found else {
        let status = child.try_wait();
        panic!("server did not report its address within 30 s (exit status: {status:?})");
    };
    // Keep draining its output so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Server { child, addr }
}

/// Removes terminal colour sequences from a log line.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

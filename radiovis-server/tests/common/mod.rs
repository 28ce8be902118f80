//! Shared by the server's process tests.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command as Process};

pub const BROKER: &str = "127.0.0.1:5672";
pub const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub async fn broker_up() -> bool {
    let up = matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(BROKER)
        )
        .await,
        Ok(Ok(_))
    );
    if !up {
        if std::env::var("RADIOVIS_REQUIRE_SERVICES").as_deref() == Ok("1") {
            panic!("RabbitMQ not reachable at {BROKER} and RADIOVIS_REQUIRE_SERVICES=1");
        }
        eprintln!("SKIPPED: RabbitMQ not reachable at {BROKER}");
    }
    up
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

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

/// Starts a server on a free port with the RabbitMQ bus on `exchange` and `extra`
/// environment, and waits until it listens.
pub async fn start_server(exchange: &str, extra: &[(&str, &str)]) -> Server {
    let port = free_port();
    let directory = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/directory.toml");
    let child = Process::new(env!("CARGO_BIN_EXE_radiovis-server"))
        .env("STOMP_IP", "127.0.0.1")
        .env("STOMP_PORT", port.to_string())
        .env("RABBITMQ_HOST", "127.0.0.1")
        .env("RABBITMQ_EXCHANGE", exchange)
        .env("RADIOVIS_DIRECTORY", directory)
        .env("RADIOVIS_WATCHDOG", "off")
        .env("MONITORING_ENABLED", "False")
        .env("RUST_LOG", "warn")
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start radiovis-server");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let start = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "server did not listen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Server { child, addr }
}

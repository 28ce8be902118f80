//! Shared by the watchdog's process tests.
#![allow(dead_code)]

use std::time::Duration;

pub const BROKER: &str = "127.0.0.1:5672";

/// Whether RabbitMQ is reachable; skips (prints why) or, with
/// RADIOVIS_REQUIRE_SERVICES=1, fails when it is not.
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

/// Deletes a test's durable queue and exchange (best effort).
pub async fn cleanup(exchange: &str, queue: &str) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let Ok(conn) = lapin::Connection::connect(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        lapin::ConnectionProperties::default(),
    )
    .await
    else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        let _ = ch
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
        let _ = ch
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
}

//! External services for the integration tests: skip when absent, unless
//! `RADIOVIS_REQUIRE_SERVICES=1` (CI), then fail.

use std::time::Duration;

/// Whether missing services must fail the tests instead of skipping them.
pub fn services_required() -> bool {
    std::env::var("RADIOVIS_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Call when a service is missing: panics when services are required, otherwise prints
/// why the test is skipped (the caller then returns).
pub fn skip(test: &str, reason: &str) {
    if services_required() {
        panic!("{test}: {reason} (RADIOVIS_REQUIRE_SERVICES=1)");
    }
    eprintln!("SKIPPED {test}: {reason}");
}

/// Whether something accepts TCP connections at `addr` within a second.
pub async fn reachable(addr: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// The RabbitMQ every broker test uses.
pub const BROKER: &str = "127.0.0.1:5672";
/// Its URL (guest/guest, default vhost).
pub const BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The memcached the cache tests use.
pub const MEMCACHED: &str = "127.0.0.1:11211";

/// Whether RabbitMQ is reachable at [`BROKER`]; when not, skips (prints why) or, with
/// `RADIOVIS_REQUIRE_SERVICES=1`, fails.
pub async fn broker_up(test: &str) -> bool {
    let up = reachable(BROKER).await;
    if !up {
        skip(test, &format!("RabbitMQ not reachable at {BROKER}"));
    }
    up
}

/// Whether memcached is reachable at [`MEMCACHED`]; when not, skips or fails as
/// [`broker_up`] does.
pub async fn memcached_up(test: &str) -> bool {
    let up = reachable(MEMCACHED).await;
    if !up {
        skip(test, &format!("memcached not reachable at {MEMCACHED}"));
    }
    up
}

/// Deletes a test's queue and exchange on the broker (best effort: a test's own names,
/// so that interrupted runs are the only ones that leave anything behind).
pub async fn cleanup_broker(exchange: &str, queue: &str) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let Ok(conn) =
        lapin::Connection::connect(BROKER_URL, lapin::ConnectionProperties::default()).await
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

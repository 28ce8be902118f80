//! `/readyz` follows the broker (docs/protocol.md#health): a hub whose RabbitMQ is
//! reached through a TCP proxy of the test's own answers 200 while the broker is
//! reachable, 503 (reason: the bus) while the proxy is cut, and 200 again once it
//! forwards again and the bus has reconnected. The shared RabbitMQ is never stopped.
//!
//! Skipped, with a message, when the broker is not reachable, unless
//! `RADIOVIS_REQUIRE_SERVICES=1`.

use std::sync::Arc;
use std::time::Duration;

use radiovis::backend::memory::MemoryCache;
use radiovis::backend::rabbitmq::{QueueKind, RabbitBus, RabbitConfig};
use radiovis::server::StompHub;
use testkit::broker::{broker_up_logged, unique};
use testkit::harness::{static_directory, test_config};
use testkit::ops::{metric, TcpProxy};
use testkit::services::BROKER;
use testkit::web::get;

const WAIT: Duration = Duration::from_secs(3);

/// Polls `/readyz` until it answers `status`, at most `within`; returns its JSON.
async fn readyz_becomes(http: &str, status: u16, within: Duration) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let r = get(http, "/readyz", WAIT).await;
        if r.status == status {
            return r.json();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz still {} after {within:?}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn readyz_follows_the_broker() {
    if !broker_up_logged("readyz_follows_the_broker").await {
        return;
    }
    let proxy = TcpProxy::start(BROKER).await;
    let url = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let mut config = RabbitConfig::from_url(&url)
        .expect("URL parses")
        .with_exchange(unique("ready"));
    config.queue = QueueKind::Instance;
    config.min_backoff = Duration::from_millis(100);
    config.max_backoff = Duration::from_millis(500);
    let bus = Arc::new(RabbitBus::connect(config).await.expect("bus"));
    assert!(
        bus.wait_connected(Duration::from_secs(10)).await,
        "bus connects through the proxy"
    );
    let hub = StompHub::new(
        bus.clone(),
        static_directory(),
        MemoryCache::new(),
        test_config(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();
    tokio::spawn({
        let hub = hub.clone();
        let stop = stop.clone();
        async move { hub.run(vec![listener], stop).await }
    });
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let http = http_listener.local_addr().expect("addr").to_string();
    let router = radiovis::http::RadiovisRouter::new(hub.clone(), Default::default());
    tokio::spawn(radiovis::http::serve(http_listener, router, stop.clone()));

    let body = readyz_becomes(&http, 200, Duration::from_secs(10)).await;
    assert_eq!(body["checks"]["bus"], "connected");

    proxy.cut();
    let body = readyz_becomes(&http, 503, Duration::from_secs(10)).await;
    assert_eq!(body["status"], "not ready");
    assert_eq!(body["reason"], "message bus not connected");
    assert_eq!(body["checks"]["bus"], "disconnected");
    let metrics = get(&http, "/metrics", WAIT).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert_eq!(metric(&text, "radiovis_bus_connected"), Some(0.0), "{text}");
    // Liveness does not depend on the broker.
    assert_eq!(get(&http, "/healthz", WAIT).await.status, 200);

    proxy.restore();
    let body = readyz_becomes(&http, 200, Duration::from_secs(20)).await;
    assert_eq!(body["status"], "ready");
    let metrics = get(&http, "/metrics", WAIT).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert_eq!(metric(&text, "radiovis_bus_connected"), Some(1.0), "{text}");
    assert!(
        metric(&text, "radiovis_bus_reconnects_total").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    bus.shutdown().await;
}

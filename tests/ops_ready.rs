//! `/readyz` follows the broker and the directory (docs/protocol.md#health): a hub whose
//! RabbitMQ is reached through a TCP proxy of the test's own answers 200 while the
//! broker is reachable, 503 (reason: the bus) while the proxy is cut, and 200 again once
//! it forwards again and the bus has reconnected (the shared RabbitMQ is never
//! stopped); a directory that fails makes it 503 only when nothing it answered before
//! is known.
//!
//! The broker test is skipped, with a message, when the broker is not reachable,
//! unless `RADIOVIS_REQUIRE_SERVICES=1`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use radiovis::backend::memory::{LocalBus, MemoryCache};
use radiovis::backend::rabbitmq::{QueueKind, RabbitBus, RabbitConfig};
use radiovis::backend::{ChannelDefault, ChannelRef, DirectoryApi, DirectoryError};
use radiovis::http::ops::Ops;
use radiovis::metrics::{Metrics, Timed};
use radiovis::server::StompHub;
use testkit::broker::{broker_up_logged, unique};
use testkit::harness::{static_directory, test_config, Conn, LOGIN, PASSCODE};
use testkit::ops::{metric, TcpProxy};
use testkit::services::BROKER;
use testkit::web::get;
use tokio_util::sync::CancellationToken;

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

/// The test directory, or failing calls while `down` is set.
struct Flaky {
    inner: testkit::harness::Dir,
    down: Arc<AtomicBool>,
}

impl Flaky {
    fn check(&self) -> Result<(), DirectoryError> {
        match self.down.load(Ordering::SeqCst) {
            true => Err(DirectoryError::Unreachable("test: directory down".into())),
            false => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl DirectoryApi for Flaky {
    async fn check_auth(&self, u: &str, p: &str, ip: IpAddr) -> Result<bool, DirectoryError> {
        self.check()?;
        self.inner.check_auth(u, p, ip).await
    }
    async fn get_channels(&self, station: &str) -> Result<Vec<String>, DirectoryError> {
        self.check()?;
        self.inner.get_channels(station).await
    }
    async fn get_gcc(&self, cc: &str) -> Result<Option<String>, DirectoryError> {
        self.check()?;
        self.inner.get_gcc(cc).await
    }
    async fn get_all_channels(&self) -> Result<Vec<ChannelRef>, DirectoryError> {
        self.check()?;
        self.inner.get_all_channels().await
    }
    async fn get_all_vis_channels(&self) -> Result<Vec<ChannelRef>, DirectoryError> {
        self.check()?;
        self.inner.get_all_vis_channels().await
    }
    async fn get_channel_default(
        &self,
        id: &str,
    ) -> Result<Option<ChannelDefault>, DirectoryError> {
        self.check()?;
        self.inner.get_channel_default(id).await
    }
}

/// A hub on the in-process bus whose directory is `Flaky` (timed into the router's
/// metrics, as the binary does), with its HTTP listener; `(stomp, http)` addresses.
async fn flaky_hub(down: Arc<AtomicBool>, stop: &CancellationToken) -> (String, String) {
    let metrics = Metrics::new();
    let directory = Timed::new(
        Flaky {
            inner: static_directory(),
            down,
        },
        metrics.directory().clone(),
    );
    let hub = StompHub::new(
        Arc::new(LocalBus::default()),
        directory,
        MemoryCache::new(),
        test_config(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let stomp = listener.local_addr().expect("addr").to_string();
    tokio::spawn({
        let hub = hub.clone();
        let stop = stop.clone();
        async move { hub.run(vec![listener], stop).await }
    });
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let http = http_listener.local_addr().expect("addr").to_string();
    let ops = Ops::new(hub.clone(), metrics, None, None);
    let router = radiovis::http::RadiovisRouter::new(hub, Default::default()).with_ops(ops);
    tokio::spawn(radiovis::http::serve(http_listener, router, stop.clone()));
    (stomp, http)
}

#[tokio::test]
async fn readyz_follows_the_directory_unless_its_answers_are_cached() {
    // Down from the start: nothing known, not ready.
    let stop = CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();
    let down = Arc::new(AtomicBool::new(true));
    let (_, http) = flaky_hub(down.clone(), &stop).await;
    let body = readyz_becomes(&http, 503, Duration::from_secs(5)).await;
    assert_eq!(body["reason"], "directory unreachable and nothing cached");
    assert_eq!(body["checks"]["directory"], "failing");

    // Up at start (the channel list is loaded), then down: still ready, on what it
    // knows, and back to plain "reachable" when the directory answers again.
    let up = Arc::new(AtomicBool::new(false));
    let (stomp, http) = flaky_hub(up.clone(), &stop).await;
    let body = readyz_becomes(&http, 200, Duration::from_secs(5)).await;
    assert_eq!(body["checks"]["directory"], "reachable");
    up.store(true, Ordering::SeqCst);
    let mut c = Conn::open(&stomp).await;
    c.send_frame("CONNECT", &[("login", LOGIN), ("passcode", PASSCODE)], b"")
        .await;
    let err = c.expect("ERROR").await;
    assert_eq!(
        err.get("message"),
        Some("Cannot check credentials: directory unavailable")
    );
    let body = readyz_becomes(&http, 200, Duration::from_secs(5)).await;
    assert_eq!(body["checks"]["directory"], "failing (cached)");
    up.store(false, Ordering::SeqCst);
    let mut c = Conn::open(&stomp).await;
    c.send_frame("CONNECT", &[("login", LOGIN), ("passcode", PASSCODE)], b"")
        .await;
    c.expect("CONNECTED").await;
    let body = readyz_becomes(&http, 200, Duration::from_secs(5)).await;
    assert_eq!(body["checks"]["directory"], "reachable");
}

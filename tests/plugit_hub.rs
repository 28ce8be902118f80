//! The hub on the PlugIt directory (real HTTP, the test PlugIt server) and memcached
//! (real, skipped when absent unless RADIOVIS_REQUIRE_SERVICES=1): docs/protocol.md#session with
//! the directory's answers, and degraded service when PlugIt fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use radiovis::backend::memcached::MemcachedCache;
use radiovis::backend::memory::{LocalBus, MemoryCache};
use radiovis::backend::plugit::{PlugitConfig, PlugitDirectory};
use radiovis::backend::{BusMessage, Cache, MessageBus};
use radiovis::client::{Client, ClientError};
use radiovis::stomp::Command;
use radiovis::{HubConfig, StompHub};
use testkit::plugit_server::{Fault, PlugitServer, PASSWORD};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_millis(400);

fn plugit(server: &PlugitServer) -> PlugitDirectory {
    let mut config = PlugitConfig::new(server.base_url());
    config.timeout = TIMEOUT;
    config.connect_timeout = TIMEOUT;
    PlugitDirectory::new(config).expect("plugit config")
}

async fn start<C: Cache>(
    directory: PlugitDirectory,
    cache: C,
    stop: &CancellationToken,
) -> (std::net::SocketAddr, Arc<LocalBus>) {
    let bus = Arc::new(LocalBus::default());
    let hub = StompHub::new(
        bus.clone(),
        directory,
        cache,
        HubConfig {
            directory_timeout: TIMEOUT * 2,
            ..HubConfig::default()
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = stop.clone();
    tokio::spawn(async move { hub.run(vec![listener], stop).await });
    (addr, bus)
}

#[tokio::test]
async fn broadcaster_and_radios_over_plugit_and_memcached() {
    if !testkit::services::memcached_up("broadcaster_and_radios_over_plugit_and_memcached").await {
        return;
    }
    let server = PlugitServer::start().await;
    let cache = Arc::new(MemcachedCache::from_host("127.0.0.1").expect("host"));
    let stop = CancellationToken::new();
    let (addr, _bus) = start(plugit(&server), cache.clone(), &stop).await;

    let mut radio = Client::connect(addr, &[]).await.expect("anonymous connect");
    radio
        .subscribe(
            "/topic/fm/ch/4001/09580/text",
            "r",
            &[("x-ebu-nofastreply", "yes")],
        )
        .await
        .expect("subscribe");
    radio.sync().await.expect("subscription in place");
    let mut broadcaster = Client::connect(addr, &[("login", "1.radio1"), ("passcode", PASSWORD)])
        .await
        .expect("login checked by PlugIt");
    let auth = server.last("check_auth").expect("check_auth called");
    assert_eq!(auth.param("username"), Some("1.radio1"));
    assert_eq!(auth.param("ip"), Some("127.0.0.1"));

    let body = format!("TEXT over plugit {}", uuid::Uuid::new_v4());
    broadcaster
        .send("/topic/fm/4e1/4001/09580/text", body.clone(), &[])
        .await
        .expect("send");
    let m = radio
        .next_frame_within(Duration::from_secs(5))
        .await
        .expect("read")
        .expect("message through the CC-form subscription");
    assert_eq!(m.command, Command::Message);
    assert_eq!(m.get("destination"), Some("/topic/fm/ch/4001/09580/text"));
    assert_eq!(std::str::from_utf8(&m.body).expect("utf8"), body);

    // Rights come from get_channels: another station's channel is refused.
    broadcaster
        .send("/topic/fm/4e1/9999/09580/text", "TEXT no", &[])
        .await
        .expect("send");
    let e = broadcaster
        .next_frame_within(Duration::from_secs(5))
        .await
        .expect("read")
        .expect("error");
    assert_eq!(e.command, Command::Error);
    assert_eq!(server.calls("get_channels"), 1, "channel list cached");

    // The CC -> GCC conversion is shared through memcached.
    let shared = cache
        .get("radiovis_isoecc_/topic/fm/ch/4001/09580/")
        .await
        .expect("memcached")
        .expect("conversion stored");
    assert_eq!(&shared[..], b"/topic/fm/4e1/4001/09580/");
    // And the known channels list.
    assert!(cache
        .get("radiovis_channels_topics")
        .await
        .expect("memcached")
        .is_some());
    stop.cancel();
}

#[tokio::test]
async fn plugit_failing_degrades_without_blocking() {
    for fault in [Fault::Status500, Fault::Slow(Duration::from_secs(30))] {
        let server = PlugitServer::start().await;
        server.set_fault(fault);
        let stop = CancellationToken::new();
        let (addr, bus) = start(plugit(&server), MemoryCache::new(), &stop).await;

        // Anonymous radios keep receiving (the GCC form needs no conversion).
        let mut radio = Client::connect(addr, &[]).await.expect("anonymous connect");
        radio
            .subscribe("/topic/fm/4e1/4001/09580/text", "r", &[])
            .await
            .expect("subscribe");
        radio.sync().await.expect("subscription in place");
        // A CC-form subscription cannot be converted: it is still accepted, no hang.
        let t = Instant::now();
        let mut cc_radio = Client::connect(addr, &[]).await.expect("anonymous connect");
        cc_radio
            .subscribe("/topic/fm/ch/4001/09580/image", "1", &[])
            .await
            .expect("subscribe");
        // Processed (not only received) within the directory timeout.
        cc_radio.sync().await.expect("subscribe processed");
        assert!(
            t.elapsed() < TIMEOUT * 2 + Duration::from_millis(700),
            "{fault:?}: {:?}",
            t.elapsed()
        );

        bus.publish(BusMessage {
            topic: "/topic/fm/4e1/4001/09580/text".into(),
            body: "TEXT still here".into(),
            headers: vec![],
        })
        .await
        .expect("publish");
        let m = radio
            .next_frame_within(Duration::from_secs(5))
            .await
            .expect("read")
            .expect("radio keeps receiving");
        assert_eq!(&m.body[..], b"TEXT still here", "{fault:?}");

        // Broadcasters get a clear ERROR within the timeout.
        let t = Instant::now();
        let refused = Client::connect(addr, &[("login", "1.radio1"), ("passcode", PASSWORD)]).await;
        let elapsed = t.elapsed();
        match refused {
            Err(ClientError::Error(msg)) => {
                assert!(msg.contains("directory unavailable"), "{fault:?}: {msg}");
                assert!(!msg.contains(PASSWORD));
            }
            other => panic!(
                "{fault:?}: expected an ERROR, got {:?}",
                other.map(|_| "CONNECTED")
            ),
        }
        assert!(
            elapsed < TIMEOUT * 2 + Duration::from_millis(700),
            "{fault:?}: {elapsed:?}"
        );
        stop.cancel();
    }
}

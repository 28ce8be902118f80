//! [beyond] A newly started instance is not blank: last messages go to the shared
//! cache and a fresh hub replays them.

use std::sync::Arc;
use std::time::Duration;

use radiovis::backend::memory::{LocalBus, MemoryCache, StaticDirectory};
use radiovis::client::Client;
use radiovis::stomp::Command;
use radiovis::{HubConfig, StompHub};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const DIR: &str = r#"
[gcc]
ch = "4e1"
[[station]]
login = "1.radio1"
passcode = "secret1"
channels = ["/topic/fm/4e1/4001/09580/"]
[[channel]]
id = "1"
topic = "/topic/fm/4e1/4001/09580/"
"#;

async fn start_hub(bus: Arc<LocalBus>, cache: Arc<MemoryCache>, stop: CancellationToken) -> String {
    let hub = StompHub::new(
        bus,
        StaticDirectory::from_toml(DIR).expect("directory"),
        cache,
        HubConfig::default(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move { hub.run(vec![listener], stop).await });
    addr
}

#[tokio::test]
async fn a_fresh_instance_replays_the_current_slide_from_the_shared_cache() {
    let cache = Arc::new(MemoryCache::new());
    let stop = CancellationToken::new();
    // Instance A, on its own bus, receives a slide.
    let a = start_hub(Arc::new(LocalBus::default()), cache.clone(), stop.clone()).await;
    let mut broadcaster = Client::connect(&a, &[("login", "1.radio1"), ("passcode", "secret1")])
        .await
        .expect("login");
    let mut radio_a = Client::connect(&a, &[]).await.expect("connect");
    radio_a
        .subscribe(
            "/topic/fm/4e1/4001/09580/image",
            "0",
            &[("x-ebu-nofastreply", "yes")],
        )
        .await
        .expect("subscribe");
    radio_a.sync().await.expect("subscription in place");
    broadcaster
        .send(
            "/topic/fm/ch/4001/09580/image",
            "SHOW https://r1.example/now.jpg",
            &[("link", "https://r1.example/")],
        )
        .await
        .expect("send");
    let live = radio_a
        .next_frame_within(Duration::from_secs(5))
        .await
        .expect("read")
        .expect("live message on A");
    assert_eq!(&live.body[..], b"SHOW https://r1.example/now.jpg");

    // Instance B starts later, sharing only the cache (its bus never saw the slide).
    let b = start_hub(Arc::new(LocalBus::default()), cache.clone(), stop.clone()).await;
    let mut replayed = None;
    for _ in 0..50 {
        let mut radio_b = Client::connect(&b, &[]).await.expect("connect");
        radio_b
            .subscribe("/topic/fm/ch/4001/09580/image", "7", &[])
            .await
            .expect("subscribe");
        if let Some(f) = radio_b
            .next_frame_within(Duration::from_millis(200))
            .await
            .expect("read")
        {
            replayed = Some(f);
            break;
        }
    }
    let f = replayed.expect("fresh instance replays the slide");
    assert_eq!(f.command, Command::Message);
    assert_eq!(f.get("destination"), Some("/topic/fm/ch/4001/09580/image"));
    assert_eq!(f.get("subscription"), Some("7"));
    assert_eq!(f.get("link"), Some("https://r1.example/"));
    assert_eq!(f.get("message-id"), live.get("message-id"));
    assert_eq!(&f.body[..], b"SHOW https://r1.example/now.jpg");
    stop.cancel();
}

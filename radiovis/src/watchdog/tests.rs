//! Unit tests of the watchdog, with paused time.

use super::*;
use crate::backend::memory::{LocalBus, MemoryCache, MemoryLogStore, StaticDirectory};
use crate::backend::BusMessage;
use crate::backend::{BusStream, LogError, MockLogStore};
use crate::hub::CHANNELS_CACHE_KEY;
use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};

const DIR: &str = r#"
    [gcc]
    ch = "4e1"
    [[channel]]
    id = "1"
    topic = "/topic/fm/ch/4001/09580/"
    radiotext = "Radio One"
    radiolink = "https://r1.example/"
    filename = "r1.png"
    public_url = "https://cdn.example/r1.png"
    [[channel]]
    id = "2"
    topic = "/topic/dab/4e1/4002/4002/0/"
    radiotext = "Radio Two"
    filename = "r2.png"
    [[channel]]
    id = "3"
    topic = "/topic/id/nodefault/x/"
"#;

fn config() -> WatchdogConfig {
    WatchdogConfig {
        channel_cache: Duration::from_secs(60),
        fallback_check: Duration::from_secs(2),
        fallback_time: Duration::from_secs(10),
        image_locations: String::new(),
        logs_max_age: Duration::from_secs(100),
        logs_cleanup: Duration::from_secs(5),
        log_buffer: 100,
        log_give_up: None,
        stats: Default::default(),
    }
}

struct Fixture {
    bus: Arc<LocalBus>,
    seen: BusStream,
    log: Arc<MemoryLogStore>,
    cache: Arc<MemoryCache>,
    stop: CancellationToken,
}

async fn start(config: WatchdogConfig) -> Fixture {
    let bus = Arc::new(LocalBus::new(1024));
    let seen = bus.subscribe().await.expect("subscribe");
    let log = Arc::new(MemoryLogStore::default());
    let cache = Arc::new(MemoryCache::new());
    let dir = StaticDirectory::from_toml(DIR).expect("directory");
    let wd = Watchdog::new(bus.clone(), dir, cache.clone(), log.clone(), config);
    let stop = CancellationToken::new();
    tokio::spawn(wd.run(stop.clone()));
    // Let the watchdog subscribe before the test publishes.
    tokio::time::sleep(Duration::from_millis(1)).await;
    Fixture {
        bus,
        seen,
        log,
        cache,
        stop,
    }
}

/// Messages published by the watchdog within `within`.
async fn collect(seen: &mut BusStream, within: Duration) -> Vec<BusMessage> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, seen.next()).await {
        out.push(m);
    }
    out
}

fn text(topic: &str, when: u64) -> BusMessage {
    BusMessage {
        topic: topic.into(),
        body: Bytes::from_static(b"TEXT live"),
        headers: vec![("when".into(), when.to_string())],
    }
}

#[tokio::test(start_paused = true)]
async fn quiet_channels_get_their_default_with_the_right_headers() {
    let mut f = start(config()).await;
    let got = collect(&mut f.seen, Duration::from_millis(2500)).await;
    let fm_text = got
        .iter()
        .find(|m| m.topic == "/topic/fm/4e1/4001/09580/text")
        .expect("default TEXT on the normalised FM channel");
    assert_eq!(&fm_text.body[..], b"TEXT Radio One");
    assert_eq!(fm_text.header("trigger-time"), Some("NOW"));
    assert_eq!(fm_text.header("link"), Some("https://r1.example/"));
    assert_eq!(fm_text.header("expires"), Some("0"));
    assert_eq!(fm_text.header("priority"), Some("0"));
    // str(uuid4().int): a decimal number below 2^128.
    let id = fm_text.header("message-id").expect("message-id");
    assert!(id.parse::<u128>().is_ok(), "{id}");
    let ts: u128 = fm_text
        .header("timestamp")
        .expect("timestamp")
        .parse()
        .expect("ms");
    let when: u128 = fm_text.header("when").expect("when").parse().expect("secs");
    assert_eq!(ts / 1000, when, "timestamp is in milliseconds");
    let fm_image = got
        .iter()
        .find(|m| m.topic == "/topic/fm/4e1/4001/09580/image")
        .expect("default SHOW");
    assert_eq!(
        &fm_image.body[..],
        b"SHOW https://cdn.example/r1.png",
        "public_url without FB_IMAGE_LOCATIONS"
    );
    // Channel 2 has a filename but no public_url and no FB_IMAGE_LOCATIONS: TEXT only.
    assert!(got
        .iter()
        .any(|m| m.topic == "/topic/dab/4e1/4002/4002/0/text"));
    assert!(!got
        .iter()
        .any(|m| m.topic == "/topic/dab/4e1/4002/4002/0/image"));
    // Channel 3 has no default picture: not a vis channel, left alone.
    assert!(!got
        .iter()
        .any(|m| m.topic.starts_with("/topic/id/nodefault/")));
    assert_eq!(got.len(), 3, "{got:?}");
    // The channel list is shared through the cache for the servers.
    let shared = f
        .cache
        .get_item(CHANNELS_CACHE_KEY)
        .await
        .expect("cache")
        .expect("set");
    // In the original's format (a pickled list, flags 1).
    assert_eq!(shared.flags, crate::backend::pyvalue::FLAG_PICKLE);
    let list = crate::backend::pyvalue::read_topic_list(&shared).expect("a list");
    assert!(list.contains(&"/topic/fm/4e1/4001/09580/".to_string()));
    f.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn image_locations_prefix_the_filename() {
    let mut f = start(WatchdogConfig {
        image_locations: "https://plugit.example/media/".into(),
        ..config()
    })
    .await;
    let got = collect(&mut f.seen, Duration::from_millis(2500)).await;
    let bodies: Vec<_> = got
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect();
    assert!(
        bodies.contains(&"SHOW https://plugit.example/media/r1.png".to_string()),
        "{bodies:?}"
    );
    assert!(
        bodies.contains(&"SHOW https://plugit.example/media/r2.png".to_string()),
        "{bodies:?}"
    );
    f.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_live_channel_gets_nothing_until_it_goes_quiet() {
    let mut f = start(config()).await;
    let clock = Clock::new();
    // Keep the FM channel alive (CC form: liveness is per normalised channel) for 20 s.
    let mut got = Vec::new();
    for _ in 0..10 {
        f.bus
            .publish(text("/topic/fm/ch/4001/09580/text", clock.secs()))
            .await
            .expect("publish");
        got.extend(collect(&mut f.seen, Duration::from_secs(2)).await);
    }
    let defaults_fm = got
        .iter()
        .filter(|m| {
            m.topic.starts_with("/topic/fm/4e1/4001/09580/")
                && m.header("trigger-time") == Some("NOW")
        })
        .count();
    assert_eq!(defaults_fm, 0, "live channel got a default: {got:?}");
    // Quiet from now on: the default arrives within FB_FALLBACK_TIME + FB_FALLBACK_CHECK.
    let later = collect(&mut f.seen, Duration::from_secs(12)).await;
    assert!(later
        .iter()
        .any(|m| m.topic == "/topic/fm/4e1/4001/09580/text" && &m.body[..] == b"TEXT Radio One"));
    f.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn every_message_is_logged_with_its_normalised_topic() {
    let mut f = start(config()).await;
    f.bus
        .publish(text("/topic/fm/CH/4001/09580/text", 1))
        .await
        .expect("publish");
    let _ = collect(&mut f.seen, Duration::from_millis(100)).await;
    let entries = f.log.entries();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].topic, "/topic/fm/4e1/4001/09580/text");
    assert_eq!(entries[0].message, "TEXT live");
    assert_eq!(
        entries[0].headers,
        vec![("when".to_string(), "1".to_string())]
    );
    f.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn log_store_outage_loses_nothing_and_cleanup_runs_on_schedule() {
    let bus = Arc::new(LocalBus::new(1024));
    let mut seen = bus.subscribe().await.expect("subscribe");
    let failures_left = Arc::new(AtomicUsize::new(5));
    let written = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let cleanups = Arc::new(AtomicUsize::new(0));
    let mut log = MockLogStore::new();
    {
        let failures_left = failures_left.clone();
        let written = written.clone();
        log.expect_add_log().returning(move |e| {
            if failures_left.load(Ordering::SeqCst) > 0 {
                failures_left.fetch_sub(1, Ordering::SeqCst);
                return Err(LogError::Unavailable("down".into()));
            }
            written
                .lock()
                .expect("lock")
                .push(String::from_utf8_lossy(e.message.as_bytes()).into_owned());
            Ok(())
        });
        let cleanups = cleanups.clone();
        log.expect_cleanup_logs()
            .withf(|age| *age == Duration::from_secs(100))
            .returning(move |_| {
                cleanups.fetch_add(1, Ordering::SeqCst);
                Ok(())
            });
    }
    let dir = StaticDirectory::from_toml("").expect("directory");
    let wd = Watchdog::new(bus.clone(), dir, MemoryCache::new(), log, config());
    let stop = CancellationToken::new();
    tokio::spawn(wd.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(1)).await;
    for i in 0..20 {
        bus.publish(BusMessage {
            topic: "/topic/id/a/b/text".into(),
            body: Bytes::from(format!("TEXT {i}")),
            headers: vec![],
        })
        .await
        .expect("publish");
    }
    let _ = collect(&mut seen, Duration::from_secs(26)).await;
    let mut written = written.lock().expect("lock").clone();
    // Entries are written a few at a time and retried aside, so order is not kept
    // (docs/protocol.md#watchdog-log); none is lost or written twice.
    written.sort_by_key(|m| {
        m.trim_start_matches("TEXT ")
            .parse::<u32>()
            .unwrap_or(u32::MAX)
    });
    let expected: Vec<String> = (0..20).map(|i| format!("TEXT {i}")).collect();
    assert_eq!(written, expected, "every entry written once");
    // Cleanup every 5 s: at 5, 10, 15, 20, 25.
    assert_eq!(cleanups.load(Ordering::SeqCst), 5);
    stop.cancel();
}

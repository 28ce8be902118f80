//! Tests of the watchdog's reliability findings, with paused time: a refused log entry,
//! a hung directory and a takeover must never make the watchdog send defaults over
//! live channels or stop logging.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::*;
use crate::backend::memory::{LocalBus, MemoryCache, StaticDirectory};
use crate::backend::{
    Ack, AckHandle, BusStream, CacheError, DeliveryStream, DirectoryError, LogError, MockCache,
};
use crate::backend::{BusMessage, ChannelDefault, ChannelRef, LogEntry};
use bytes::Bytes;

const FM: &str = "/topic/fm/4e1/4001/09580/";
const DAB: &str = "/topic/dab/4e1/4002/4002/0/";

const DIR: &str = r#"
    [[channel]]
    id = "1"
    topic = "/topic/fm/4e1/4001/09580/"
    radiotext = "Radio One"
    public_url = "https://cdn.example/r1.png"
    [[channel]]
    id = "2"
    topic = "/topic/dab/4e1/4002/4002/0/"
    radiotext = "Radio Two"
    public_url = "https://cdn.example/r2.png"
"#;

fn config() -> WatchdogConfig {
    WatchdogConfig {
        channel_cache: Duration::from_secs(60),
        fallback_check: Duration::from_secs(2),
        fallback_time: Duration::from_secs(10),
        image_locations: String::new(),
        logs_max_age: Duration::from_secs(100),
        logs_cleanup: Duration::from_secs(3600),
        log_buffer: 100,
        log_give_up: None,
        stats: Default::default(),
    }
}

/// A bus like a RabbitMQ durable queue with a prefetch: at most `prefetch` deliveries
/// are unacknowledged at a time; the next waits for an ack (or a drop, which here
/// counts as a nack and is not redelivered).
struct PrefetchBus {
    inner: LocalBus,
    prefetch: usize,
    acked: Arc<AtomicUsize>,
}

impl PrefetchBus {
    fn new(prefetch: usize) -> PrefetchBus {
        PrefetchBus {
            inner: LocalBus::new(4096),
            prefetch,
            acked: Arc::new(AtomicUsize::new(0)),
        }
    }
}

struct CountingAck {
    acked: Arc<AtomicUsize>,
    // Released when the handle is dropped, acknowledged or not.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl AckHandle for CountingAck {
    fn ack(self: Box<Self>) {
        self.acked.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl MessageBus for PrefetchBus {
    async fn publish(&self, message: BusMessage) -> Result<(), BusError> {
        self.inner.publish(message).await
    }
    async fn subscribe(&self) -> Result<BusStream, BusError> {
        self.inner.subscribe().await
    }
    async fn subscribe_acked(&self) -> Result<DeliveryStream, BusError> {
        let stream = self.inner.subscribe().await?;
        let slots = Arc::new(Semaphore::new(self.prefetch));
        let acked = self.acked.clone();
        Ok(Box::pin(futures::stream::unfold(
            (stream, slots, acked),
            |(mut stream, slots, acked)| async move {
                let slot = slots.clone().acquire_owned().await.ok()?;
                let message = stream.next().await?;
                let ack = Ack::new(Box::new(CountingAck {
                    acked: acked.clone(),
                    _slot: slot,
                }));
                Some((Delivery { message, ack }, (stream, slots, acked)))
            },
        )))
    }
}

/// A log store that refuses (HTTP 400) every entry whose body contains `poison` and
/// takes the others, noting when.
#[derive(Default)]
struct RefusingLog {
    written: Mutex<Vec<(String, Instant)>>,
    refusals: AtomicUsize,
}

#[async_trait]
impl LogStore for RefusingLog {
    async fn add_log(&self, entry: LogEntry) -> Result<(), LogError> {
        if entry.message.contains("poison") {
            self.refusals.fetch_add(1, Ordering::SeqCst);
            return Err(LogError::Refused {
                status: 400,
                reason: "Bad Request".into(),
            });
        }
        self.written
            .lock()
            .expect("lock")
            .push((entry.message, Instant::now()));
        Ok(())
    }
    async fn cleanup_logs(&self, _max_age: Duration) -> Result<(), LogError> {
        Ok(())
    }
}

fn message(topic: &str, body: &str, when: u64) -> BusMessage {
    BusMessage {
        topic: topic.into(),
        body: Bytes::from(body.to_owned()),
        headers: vec![("when".into(), when.to_string())],
    }
}

/// The watchdog's defaults among `got` on `channel`.
fn defaults_on(got: &[BusMessage], channel: &str) -> usize {
    got.iter()
        .filter(|m| m.topic.starts_with(channel) && m.header("trigger-time") == Some("NOW"))
        .count()
}

/// Messages seen on `seen` within `within`.
async fn collect(seen: &mut BusStream, within: Duration) -> Vec<BusMessage> {
    let mut out = Vec::new();
    let deadline = Instant::now() + within;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, seen.next()).await {
        out.push(m);
    }
    out
}

/// Finding 3: PlugIt refuses one entry (400). Before: the writer retried it forever,
/// nothing behind it was logged, the prefetch filled up, the bus delivered nothing more
/// and the live FM channel got defaults. Now the refusal is dropped (and acked), every
/// later entry is logged and the live channel gets no default.
#[tokio::test(start_paused = true)]
async fn a_refused_entry_is_dropped_and_the_live_channel_keeps_its_slides() {
    let bus = Arc::new(PrefetchBus::new(5));
    let mut seen = bus.subscribe().await.expect("subscribe");
    let log = Arc::new(RefusingLog::default());
    let dir = StaticDirectory::from_toml(DIR).expect("directory");
    let wd = Watchdog::new(bus.clone(), dir, MemoryCache::new(), log.clone(), config());
    let stop = CancellationToken::new();
    tokio::spawn(wd.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(1)).await;

    let clock = Clock::new();
    let fm_text = format!("{FM}text");
    bus.publish(message(&fm_text, "TEXT poison", clock.secs()))
        .await
        .expect("publish");
    let mut got = Vec::new();
    for i in 0..30 {
        bus.publish(message(&fm_text, &format!("TEXT live {i}"), clock.secs()))
            .await
            .expect("publish");
        got.extend(collect(&mut seen, Duration::from_secs(1)).await);
    }
    // The watchdog's own defaults (on DAB) come back through the bus and are logged too.
    let all_written = log.written.lock().expect("lock").len();
    let written = log
        .written
        .lock()
        .expect("lock")
        .iter()
        .filter(|(m, _)| m.starts_with("TEXT live"))
        .count();
    let defaults = defaults_on(&got, FM);
    eprintln!(
        "refused entry: {written} later entries logged of 30, {defaults} defaults over the live \
         channel, {} refusals, {} acked",
        log.refusals.load(Ordering::SeqCst),
        bus.acked.load(Ordering::SeqCst)
    );
    assert_eq!(defaults, 0, "defaults over a live channel");
    assert_eq!(written, 30, "every entry after the refused one is logged");
    assert_eq!(
        log.refusals.load(Ordering::SeqCst),
        1,
        "a refusal is not retried"
    );
    // The refused one is acked too (dropped for good), and so is every written one.
    assert_eq!(bus.acked.load(Ordering::SeqCst), all_written + 1);
    // The quiet DAB channel still gets its default.
    assert!(defaults_on(&got, DAB) > 0);
    stop.cancel();
}

/// A directory of 2,000 vis channels whose `get_channel_default` waits 5 s (its
/// timeout) and fails, as a blackholed PlugIt does. Calls are timed.
struct HungDirectory {
    calls: Mutex<Vec<(Instant, Option<Instant>)>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl HungDirectory {
    fn new() -> HungDirectory {
        HungDirectory {
            calls: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        }
    }
}

/// Notes when a call ends, by completion or cancellation.
struct CallGuard<'a> {
    dir: &'a HungDirectory,
    index: usize,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.dir.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.dir.calls.lock().expect("lock")[self.index].1 = Some(Instant::now());
    }
}

#[async_trait]
impl DirectoryApi for HungDirectory {
    async fn check_auth(
        &self,
        _: &str,
        _: &str,
        _: std::net::IpAddr,
    ) -> Result<bool, DirectoryError> {
        Ok(false)
    }
    async fn get_channels(&self, _: &str) -> Result<Vec<String>, DirectoryError> {
        Ok(Vec::new())
    }
    async fn get_gcc(&self, _: &str) -> Result<Option<String>, DirectoryError> {
        Ok(None)
    }
    async fn get_all_channels(&self) -> Result<Vec<ChannelRef>, DirectoryError> {
        self.get_all_vis_channels().await
    }
    async fn get_all_vis_channels(&self) -> Result<Vec<ChannelRef>, DirectoryError> {
        Ok((0..2000)
            .map(|i| ChannelRef {
                topic: format!("/topic/dab/4e1/{i:04x}/0001/0/"),
                id: i.to_string(),
            })
            .collect())
    }
    async fn get_channel_default(&self, _: &str) -> Result<Option<ChannelDefault>, DirectoryError> {
        let index = {
            let mut calls = self.calls.lock().expect("lock");
            calls.push((Instant::now(), None));
            calls.len() - 1
        };
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let _guard = CallGuard { dir: self, index };
        tokio::time::sleep(Duration::from_secs(5)).await;
        Err(DirectoryError::Timeout(Duration::from_secs(5)))
    }
}

/// Finding 6: with `get_channel_default` hung for 2,000 channels, messages are still
/// logged at once (before: the check ran serially inside the loop that consumes, one
/// 5 s timeout after another: a round of 10,000 s during which nothing was logged), and
/// a round is cut short by the next check.
#[tokio::test(start_paused = true)]
async fn a_hung_directory_neither_holds_up_logging_nor_overruns_a_round() {
    let bus = Arc::new(LocalBus::new(1024));
    let log = Arc::new(RefusingLog::default());
    let dir = Arc::new(HungDirectory::new());
    let wd = Watchdog::new(
        bus.clone(),
        dir.clone(),
        MemoryCache::new(),
        log.clone(),
        config(),
    );
    let stop = CancellationToken::new();
    tokio::spawn(wd.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(1)).await;

    let topic = "/topic/dab/4e1/0000/0001/0/text";
    let mut worst = Duration::ZERO;
    // The first round starts at 2 s; publish every 500 ms during the first rounds.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for i in 0..20 {
        let body = format!("TEXT {i}");
        let sent = Instant::now();
        bus.publish(message(topic, &body, Clock::new().secs()))
            .await
            .expect("publish");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let written = log.written.lock().expect("lock").clone();
        let delay = written
            .iter()
            .find(|(m, _)| *m == body)
            .map(|(_, at)| *at - sent)
            .unwrap_or(Duration::MAX);
        worst = worst.max(delay);
    }
    let calls = dir.calls.lock().expect("lock").clone();
    let max_in_flight = dir.max_in_flight.load(Ordering::SeqCst);
    // Calls of the first round (started before the second round at 4 s) ended by then.
    let round_start = calls.first().map(|c| c.0).expect("a round ran");
    let deadline = round_start + config().fallback_check;
    let overrun = calls
        .iter()
        .filter(|(start, _)| *start < deadline)
        .map(|(_, end)| end.map_or(Duration::MAX, |e| e.saturating_duration_since(deadline)))
        .max()
        .unwrap_or_default();
    eprintln!(
        "hung directory: worst logging delay {worst:?}, {} get_channel_default calls in 10 s, \
         at most {max_in_flight} at once, first round overran its deadline by {overrun:?}",
        calls.len()
    );
    assert!(
        worst <= Duration::from_millis(10),
        "a message waited {worst:?} to be logged"
    );
    assert!(
        max_in_flight > 1 && max_in_flight <= 16,
        "{max_in_flight} calls at once"
    );
    assert_eq!(
        overrun,
        Duration::ZERO,
        "the first round overran its deadline"
    );
    stop.cancel();
}

/// The last message of `topic` as a server writes it to the cache
/// (docs/protocol.md#cache), sent at `when`.
fn last_message(topic: &str, when: u64) -> (String, Bytes) {
    let json = serde_json::json!({
        "topic": topic,
        "body": "TEXT live",
        "headers": [["message-id", "x"], ["when", when.to_string()]],
    });
    (
        format!("{}{topic}", crate::hub::LAST_MESSAGE_PREFIX),
        Bytes::from(json.to_string()),
    )
}

/// Finding 10, takeover: a watchdog that just started has heard nothing yet; the FM
/// channel spoke a second ago (the servers' last-message cache says so) and speaks again
/// every 8 s. Before: the first check sent it a default. Now its liveness is seeded from
/// the cache; the DAB channel, silent, still gets its default.
#[tokio::test(start_paused = true)]
async fn after_a_takeover_the_cache_says_which_channels_are_live() {
    let bus = Arc::new(LocalBus::new(1024));
    let mut seen = bus.subscribe().await.expect("subscribe");
    let cache = MemoryCache::new();
    let clock = Clock::new();
    let (key, value) = last_message(&format!("{FM}text"), clock.secs() - 1);
    cache
        .set(&key, value, Duration::from_secs(86_400))
        .await
        .expect("cache");
    let dir = StaticDirectory::from_toml(DIR).expect("directory");
    let log = Arc::new(RefusingLog::default());
    let wd = Watchdog::new(bus.clone(), dir, cache, log, config());
    let stop = CancellationToken::new();
    tokio::spawn(wd.run(stop.clone()));
    let got = collect(&mut seen, Duration::from_millis(7500)).await;
    eprintln!(
        "takeover: {} defaults over the live FM channel in its first 7.5 s",
        defaults_on(&got, FM)
    );
    assert_eq!(defaults_on(&got, FM), 0, "{got:?}");
    assert!(defaults_on(&got, DAB) > 0);
    stop.cancel();
}

/// Finding 10, takeover with the cache down: nothing says which channels are live, so
/// no channel is declared quiet before `FB_FALLBACK_TIME` of listening (before: the
/// first check, one `FB_FALLBACK_CHECK` after start, sent defaults to all of them).
#[tokio::test(start_paused = true)]
async fn after_a_takeover_with_the_cache_down_defaults_wait_a_full_fallback_time() {
    let bus = Arc::new(LocalBus::new(1024));
    let mut seen = bus.subscribe().await.expect("subscribe");
    let mut cache = MockCache::new();
    cache
        .expect_get()
        .returning(|_| Err(CacheError::Unavailable("down".into())));
    cache
        .expect_set()
        .returning(|_, _, _| Err(CacheError::Unavailable("down".into())));
    cache
        .expect_get_item()
        .returning(|_| Err(CacheError::Unavailable("down".into())));
    cache
        .expect_set_item()
        .returning(|_, _, _| Err(CacheError::Unavailable("down".into())));
    let dir = StaticDirectory::from_toml(DIR).expect("directory");
    let log = Arc::new(RefusingLog::default());
    let wd = Watchdog::new(bus.clone(), dir, cache, log, config());
    let stop = CancellationToken::new();
    tokio::spawn(wd.run(stop.clone()));
    let early = collect(&mut seen, Duration::from_millis(9900)).await;
    assert_eq!(
        early.len(),
        0,
        "defaults before FB_FALLBACK_TIME: {early:?}"
    );
    let later = collect(&mut seen, Duration::from_secs(3)).await;
    assert!(
        defaults_on(&later, FM) > 0 && defaults_on(&later, DAB) > 0,
        "{later:?}"
    );
    stop.cancel();
}

/// Finding 10, growth: a broadcaster inventing sub-topics made the liveness table grow
/// for ever. Now a round forgets channels that are not in the list once they are quiet.
#[tokio::test(start_paused = true)]
async fn invented_sub_topics_are_forgotten_once_quiet() {
    let bus = Arc::new(LocalBus::new(4096));
    let dir = StaticDirectory::from_toml(DIR).expect("directory");
    let log = Arc::new(RefusingLog::default());
    let wd = Watchdog::new(bus.clone(), dir, MemoryCache::new(), log, config());
    let state = wd.state.clone();
    let stop = CancellationToken::new();
    tokio::spawn(wd.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(1)).await;
    let clock = Clock::new();
    for i in 0..500 {
        bus.publish(message(&format!("{DAB}x{i}/text"), "TEXT x", clock.secs()))
            .await
            .expect("publish");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let grown = state.alive.lock().len();
    // Quiet for FB_FALLBACK_TIME, then a round.
    tokio::time::sleep(Duration::from_secs(13)).await;
    let after = state.alive.lock().len();
    eprintln!("invented sub-topics: liveness table {grown} entries, {after} after they went quiet");
    assert!(grown >= 500);
    // At most the two known channels (their defaults mark them alive).
    assert!(after <= 2, "{after} entries left");
    stop.cancel();
}

/// A log store that fails (transiently) on entries containing `flaky` a few times, and
/// takes the rest.
#[derive(Default)]
struct FlakyLog {
    written: Mutex<Vec<(String, Instant)>>,
    flaky_failures: AtomicUsize,
}

#[async_trait]
impl LogStore for FlakyLog {
    async fn add_log(&self, entry: LogEntry) -> Result<(), LogError> {
        if entry.message.contains("flaky") && self.flaky_failures.fetch_add(1, Ordering::SeqCst) < 3
        {
            return Err(LogError::Unavailable("HTTP 503".into()));
        }
        self.written
            .lock()
            .expect("lock")
            .push((entry.message, Instant::now()));
        Ok(())
    }
    async fn cleanup_logs(&self, _max_age: Duration) -> Result<(), LogError> {
        Ok(())
    }
}

/// An entry the store fails on (5xx) is retried with backoff without holding up the
/// entries behind it, and is written in the end, once.
#[tokio::test(start_paused = true)]
async fn a_transient_failure_is_retried_without_holding_up_the_others() {
    let bus = Arc::new(PrefetchBus::new(5));
    let log = Arc::new(FlakyLog::default());
    let dir = StaticDirectory::from_toml("").expect("directory");
    let wd = Watchdog::new(bus.clone(), dir, MemoryCache::new(), log.clone(), config());
    let stop = CancellationToken::new();
    tokio::spawn(wd.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(1)).await;
    let topic = "/topic/id/a/b/text";
    bus.publish(message(topic, "TEXT flaky", 1))
        .await
        .expect("publish");
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let body = format!("TEXT {i}");
        let sent = Instant::now();
        bus.publish(message(topic, &body, 1))
            .await
            .expect("publish");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let delay = log
            .written
            .lock()
            .expect("lock")
            .iter()
            .find(|(m, _)| *m == body)
            .map_or(Duration::MAX, |(_, at)| *at - sent);
        worst = worst.max(delay);
    }
    let written = log.written.lock().expect("lock").clone();
    let flaky = written.iter().filter(|(m, _)| m == "TEXT flaky").count();
    eprintln!(
        "transient failure: worst delay of the others {worst:?}, flaky written {flaky} time(s)"
    );
    assert!(worst <= Duration::from_millis(10), "{worst:?}");
    assert_eq!(flaky, 1, "{written:?}");
    assert_eq!(written.len(), 21);
    assert_eq!(bus.acked.load(Ordering::SeqCst), 21);
    stop.cancel();
}

/// A leader whose log store takes nothing for `log_give_up` stops with an error (so
/// that radiovis-fallback releases its lock); its unwritten entries are not acked.
#[tokio::test(start_paused = true)]
async fn a_leader_whose_log_store_is_down_gives_up() {
    let bus = Arc::new(PrefetchBus::new(5));
    let mut log = crate::backend::MockLogStore::new();
    log.expect_add_log()
        .returning(|_| Err(LogError::Unavailable("down".into())));
    log.expect_cleanup_logs().returning(|_| Ok(()));
    let dir = StaticDirectory::from_toml("").expect("directory");
    let wd = Watchdog::new(
        bus.clone(),
        dir,
        MemoryCache::new(),
        log,
        WatchdogConfig {
            log_give_up: Some(Duration::from_secs(60)),
            ..config()
        },
    );
    let run = tokio::spawn(wd.run(CancellationToken::new()));
    tokio::time::sleep(Duration::from_millis(1)).await;
    let started = Instant::now();
    bus.publish(message("/topic/id/a/b/text", "TEXT x", 1))
        .await
        .expect("publish");
    let result = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("gave up in time")
        .expect("task");
    let after = started.elapsed();
    assert!(
        matches!(result, Err(WatchdogError::LogStoreFailing { .. })),
        "{result:?}"
    );
    assert!(
        after >= Duration::from_secs(60) && after < Duration::from_secs(95),
        "{after:?}"
    );
    assert_eq!(bus.acked.load(Ordering::SeqCst), 0);
}

//! The fallback [`Watchdog`] (behaviour.md §7): logs every bus message and sends a
//! channel's default text and image when its broadcaster goes quiet.
//!
//! One task, four clocks: bus messages (log + liveness), the channel list refresh
//! (`FB_CHANNEL_CACHE`), the check for quiet channels (`FB_FALLBACK_CHECK`, which also
//! shares the channel list through the cache) and the log cleanup (`FB_LOGS_CLEANUP`).
//! Log entries go through a bounded buffer to a writer task that retries until the
//! log store takes them; when the buffer is full the watchdog stops taking messages
//! from the bus (they wait in the durable queue), so no entry is lost and memory stays
//! bounded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backend::{
    Ack, BusError, BusMessage, Cache, ChannelDefault, ChannelRef, Delivery, DirectoryApi, LogEntry,
    LogStore, MessageBus,
};
use crate::hub::CHANNELS_CACHE_KEY;
use crate::topic::{self, Normaliser};

/// TTL of cached channel defaults and of the shared channel list.
const CACHE_TTL: Duration = Duration::from_secs(600);

/// Timings and options of the watchdog (the original's `FB_*` variables).
#[derive(Debug, Clone)]
pub struct WatchdogConfig {
    /// How often the channel list is reloaded (`FB_CHANNEL_CACHE`).
    pub channel_cache: Duration,
    /// How often quiet channels are looked for (`FB_FALLBACK_CHECK`).
    pub fallback_check: Duration,
    /// Silence after which a channel gets its default (`FB_FALLBACK_TIME`).
    pub fallback_time: Duration,
    /// Base URL of default images (`FB_IMAGE_LOCATIONS`); empty: use `public_url`.
    pub image_locations: String,
    /// Age after which log entries are cleaned up (`FB_LOGS_MAX_AGE`).
    pub logs_max_age: Duration,
    /// How often logs are cleaned up (`FB_LOGS_CLEANUP`).
    pub logs_cleanup: Duration,
    /// Log entries buffered while the log store is slow or down.
    pub log_buffer: usize,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            channel_cache: Duration::from_secs(60),
            fallback_check: Duration::from_secs(15),
            fallback_time: Duration::from_secs(60),
            image_locations: String::new(),
            logs_max_age: Duration::from_secs(86_400),
            logs_cleanup: Duration::from_secs(3_600),
            log_buffer: 10_000,
        }
    }
}

/// Why the watchdog stopped.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    #[error("cannot consume from the message bus: {0}")]
    Bus(#[from] BusError),
    #[error("the message bus stream ended")]
    BusEnded,
}

/// The fallback watchdog, generic over the four backends.
pub struct Watchdog<B, D, C, L> {
    bus: Arc<B>,
    directory: Arc<D>,
    cache: Arc<C>,
    log: Arc<L>,
    normaliser: Normaliser<D, C>,
    config: WatchdogConfig,
    /// Known channels with a default picture: normalised channel topic -> id.
    channels: Vec<ChannelRef>,
    /// Normalised channel topic -> Unix second of its last message.
    alive: HashMap<String, u64>,
    defaults: HashMap<String, (tokio::time::Instant, Option<ChannelDefault>)>,
    clock: Clock,
}

/// Wall-clock Unix time that advances with tokio's clock, so that tests with paused
/// time see liveness expire exactly as a real run would.
#[derive(Debug, Clone, Copy)]
struct Clock {
    base_unix: Duration,
    base: tokio::time::Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            base_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default(),
            base: tokio::time::Instant::now(),
        }
    }

    fn now(&self) -> Duration {
        self.base_unix + self.base.elapsed()
    }

    fn secs(&self) -> u64 {
        self.now().as_secs()
    }
}

impl<B: MessageBus, D: DirectoryApi, C: Cache, L: LogStore> Watchdog<B, D, C, L> {
    pub fn new(bus: B, directory: D, cache: C, log: L, config: WatchdogConfig) -> Self {
        let directory = Arc::new(directory);
        let cache = Arc::new(cache);
        Watchdog {
            bus: Arc::new(bus),
            normaliser: Normaliser::new(directory.clone(), cache.clone()),
            directory,
            cache,
            log: Arc::new(log),
            config,
            channels: Vec::new(),
            alive: HashMap::new(),
            defaults: HashMap::new(),
            clock: Clock::new(),
        }
    }

    /// Runs until `shutdown` is cancelled (then flushes buffered log entries, bounded
    /// in time) or the bus stream ends.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), WatchdogError> {
        // Acknowledged deliveries: a message leaves a durable queue only once its log
        // entry is written, so a watchdog killed mid-way loses nothing.
        let mut stream = self.bus.subscribe_acked().await?;
        let (log_tx, log_rx) = mpsc::channel(self.config.log_buffer.max(1));
        let writer_stop = CancellationToken::new();
        let writer = tokio::spawn(log_writer(self.log.clone(), log_rx, writer_stop.clone()));

        let mut refresh = tokio::time::interval(self.config.channel_cache);
        let mut check = tokio::time::interval(self.config.fallback_check);
        let mut cleanup = tokio::time::interval(self.config.logs_cleanup);
        for t in [&mut refresh, &mut check, &mut cleanup] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        // The first check waits one period, so that a restarted watchdog first hears
        // the channels that are alive.
        check.reset();
        cleanup.reset();
        tracing::info!(
            check = ?self.config.fallback_check,
            quiet_after = ?self.config.fallback_time,
            "watchdog running"
        );

        let result = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                delivery = stream.next() => match delivery {
                    Some(Delivery { message, ack }) => {
                        let entry = self.on_message(message).await;
                        // Waits when the buffer is full: messages stay on the bus.
                        if log_tx.send((entry, ack)).await.is_err() {
                            break Ok(());
                        }
                    }
                    None => break Err(WatchdogError::BusEnded),
                },
                _ = refresh.tick() => self.refresh_channels().await,
                _ = check.tick() => self.check().await,
                _ = cleanup.tick() => {
                    let log = self.log.clone();
                    let max_age = self.config.logs_max_age;
                    tokio::spawn(async move {
                        match log.cleanup_logs(max_age).await {
                            Ok(()) => tracing::debug!(?max_age, "old logs cleaned up"),
                            Err(e) => tracing::warn!(error = %e, "log cleanup failed"),
                        }
                    });
                }
            }
        };
        drop(log_tx);
        // The writer ends once it has written what is buffered; bound that in time.
        let mut writer = writer;
        if tokio::time::timeout(Duration::from_secs(5), &mut writer)
            .await
            .is_err()
        {
            tracing::warn!("log store did not take the buffered entries before shutdown");
            writer_stop.cancel();
            let _ = writer.await;
        }
        result
    }

    /// Records liveness and prepares the log entry of one bus message.
    async fn on_message(&mut self, msg: BusMessage) -> LogEntry {
        let normalised = self.normaliser.normalise(&msg.topic).await;
        let now = self.clock.secs();
        let when = msg
            .header("when")
            .and_then(|w| w.trim().parse::<u64>().ok())
            .unwrap_or(now);
        let channel = topic::channel_of(&normalised).to_owned();
        let seen = self.alive.entry(channel).or_insert(0);
        *seen = (*seen).max(when);
        tracing::debug!(topic = %normalised, when, "message logged");
        LogEntry {
            topic: normalised,
            message: String::from_utf8_lossy(&msg.body).into_owned(),
            headers: msg.headers,
            timestamp: now,
        }
    }

    /// Reloads the channels that have a default picture (normalised).
    async fn refresh_channels(&mut self) {
        match self.directory.get_all_vis_channels().await {
            Ok(list) => {
                let mut channels = Vec::with_capacity(list.len());
                for c in list {
                    let topic = self.normaliser.normalise(&c.topic).await;
                    channels.push(ChannelRef { topic, id: c.id });
                }
                tracing::debug!(count = channels.len(), "channel list refreshed");
                self.channels = channels;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot refresh channel list; keeping the previous one")
            }
        }
    }

    /// Shares the channel list and sends defaults to quiet channels.
    async fn check(&mut self) {
        let topics: Vec<&str> = self.channels.iter().map(|c| c.topic.as_str()).collect();
        if let Ok(json) = serde_json::to_vec(&topics) {
            if let Err(e) = self
                .cache
                .set(CHANNELS_CACHE_KEY, Bytes::from(json), CACHE_TTL)
                .await
            {
                tracing::warn!(error = %e, "cannot share the channel list through the cache");
            }
        }
        let now = self.clock.secs();
        let quiet_after = self.config.fallback_time.as_secs();
        let quiet: Vec<ChannelRef> = self
            .channels
            .iter()
            .filter(|c| {
                self.alive
                    .get(&c.topic)
                    .is_none_or(|&at| at + quiet_after <= now)
            })
            .cloned()
            .collect();
        for channel in quiet {
            let Some(default) = self.channel_default(&channel.id).await else {
                continue;
            };
            self.send_default(&channel.topic, &default, now).await;
        }
    }

    async fn channel_default(&mut self, id: &str) -> Option<ChannelDefault> {
        if let Some((at, d)) = self.defaults.get(id) {
            if at.elapsed() < CACHE_TTL {
                return d.clone();
            }
        }
        let key = format!("get_channel_default_{id}");
        if let Ok(Some(v)) = self.cache.get(&key).await {
            if let Ok(d) = serde_json::from_slice::<Option<ChannelDefault>>(&v) {
                self.defaults
                    .insert(id.to_owned(), (tokio::time::Instant::now(), d.clone()));
                return d;
            }
        }
        match self.directory.get_channel_default(id).await {
            Ok(d) => {
                if let Ok(json) = serde_json::to_vec(&d) {
                    if let Err(e) = self.cache.set(&key, Bytes::from(json), CACHE_TTL).await {
                        tracing::debug!(error = %e, "cannot cache channel default");
                    }
                }
                self.defaults
                    .insert(id.to_owned(), (tokio::time::Instant::now(), d.clone()));
                d
            }
            Err(e) => {
                tracing::warn!(channel = id, error = %e, "cannot load channel default");
                None
            }
        }
    }

    async fn send_default(&self, channel: &str, default: &ChannelDefault, now: u64) {
        let image = if !self.config.image_locations.is_empty() {
            default
                .filename
                .as_ref()
                .map(|f| format!("{}{}", self.config.image_locations, f))
        } else {
            None
        }
        .or_else(|| default.public_url.clone());
        let mut messages = Vec::with_capacity(2);
        if let Some(text) = &default.radiotext {
            messages.push((format!("{channel}text"), format!("TEXT {text}")));
        }
        match image {
            Some(url) => messages.push((format!("{channel}image"), format!("SHOW {url}"))),
            None => tracing::warn!(
                %channel,
                "channel default has no image (no FB_IMAGE_LOCATIONS + filename, no public_url): SHOW skipped"
            ),
        }
        let millis = self.clock.now().as_millis();
        for (topic, body) in messages {
            let mut headers = vec![("trigger-time".to_owned(), "NOW".to_owned())];
            if let Some(link) = &default.radiolink {
                headers.push(("link".to_owned(), link.clone()));
            }
            headers.extend([
                ("message-id".to_owned(), uuid::Uuid::new_v4().to_string()),
                ("expires".to_owned(), "0".to_owned()),
                ("priority".to_owned(), "0".to_owned()),
                ("timestamp".to_owned(), millis.to_string()),
                ("when".to_owned(), now.to_string()),
            ]);
            tracing::info!(%topic, %body, "channel quiet: sending default");
            if let Err(e) = self
                .bus
                .publish(BusMessage {
                    topic,
                    body: Bytes::from(body),
                    headers,
                })
                .await
            {
                tracing::warn!(error = %e, "cannot publish channel default");
            }
        }
    }
}

/// Writes log entries in order, retrying each until the store takes it (backoff up to
/// 30 s), then acknowledges its bus message. Stops when the channel closes and is
/// drained, or when `stop` is cancelled (unwritten entries are then not acknowledged:
/// a durable queue hands them to the next watchdog).
async fn log_writer<L: LogStore>(
    log: Arc<L>,
    mut rx: mpsc::Receiver<(LogEntry, Ack)>,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let (entry, ack) = tokio::select! {
            _ = stop.cancelled() => break,
            e = rx.recv() => match e {
                Some(e) => e,
                None => break,
            },
        };
        let mut backoff = Duration::from_millis(500);
        loop {
            match log.add_log(entry.clone()).await {
                Ok(()) => {
                    ack.ack();
                    if failures > 0 {
                        tracing::info!(
                            failures,
                            buffered = rx.len(),
                            "log store back; writing buffered entries"
                        );
                        failures = 0;
                    }
                    break;
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(20) {
                        tracing::warn!(error = %e, buffered = rx.len() + 1, "log store unavailable; retrying (nothing is dropped)");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::{LocalBus, MemoryCache, MemoryLogStore, StaticDirectory};
    use crate::backend::{BusStream, LogError, MockLogStore};
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
        assert!(fm_text.header("message-id").is_some_and(|m| m.len() == 36));
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
            .get(CHANNELS_CACHE_KEY)
            .await
            .expect("cache")
            .expect("set");
        let list: Vec<String> = serde_json::from_slice(&shared).expect("json");
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
        assert!(later.iter().any(
            |m| m.topic == "/topic/fm/4e1/4001/09580/text" && &m.body[..] == b"TEXT Radio One"
        ));
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
        let written = written.lock().expect("lock").clone();
        let expected: Vec<String> = (0..20).map(|i| format!("TEXT {i}")).collect();
        assert_eq!(written, expected, "every entry written once, in order");
        // Cleanup every 5 s: at 5, 10, 15, 20, 25.
        assert_eq!(cleanups.load(Ordering::SeqCst), 5);
        stop.cancel();
    }
}

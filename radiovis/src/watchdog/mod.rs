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
    BusError, BusMessage, Cache, ChannelDefault, ChannelRef, Delivery, DirectoryApi, LogEntry,
    LogStore, MessageBus,
};
use crate::hub::CHANNELS_CACHE_KEY;
use crate::topic::{self, Normaliser};

mod log;
use log::log_writer;

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

#[cfg(test)]
mod tests;
#[cfg(test)]
mod reliability_tests;

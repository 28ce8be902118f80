//! What the watchdog knows of the channels, and the check for quiet ones
//! (docs/protocol.md#watchdog-channels, docs/protocol.md#watchdog-defaults).
//!
//! The state is shared (behind short locks, never held across an await) between the
//! loop that consumes bus messages, which only marks channels alive, and the tasks
//! that refresh the channel list and run the check rounds, which wait for the
//! directory and the cache. So a slow or hung directory never stops the consumption of
//! messages (and so neither logging nor liveness).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;

use super::{Clock, WatchdogConfig, CACHE_TTL};
use crate::backend::{
    pyvalue, BusMessage, Cache, ChannelDefault, ChannelRef, DirectoryApi, LogEntry, MessageBus,
};
use crate::hub::{CHANNELS_CACHE_KEY, LAST_MESSAGE_PREFIX};
use crate::topic::{self, Normaliser};

/// Channels handled at once in a check round (their default may need the directory).
pub(super) const ROUND_CONCURRENCY: usize = 16;

/// The watchdog's view of the channels, shared by its tasks.
pub(super) struct Checker<B, D, C> {
    pub(super) bus: Arc<B>,
    directory: Arc<D>,
    cache: Arc<C>,
    normaliser: Normaliser<D, C>,
    pub(super) config: WatchdogConfig,
    clock: Clock,
    /// Unix second the watchdog started listening.
    started: u64,
    /// Known channels with a default picture (normalised topics).
    channels: Mutex<Arc<Vec<ChannelRef>>>,
    /// Normalised channel topic -> Unix second of its last message. Pruned every round
    /// of channels that are not in the list and quiet (see [`Checker::prune`]).
    pub(super) alive: Mutex<HashMap<String, u64>>,
    /// Channel id -> its default, and when it was loaded.
    defaults: Mutex<HashMap<String, (tokio::time::Instant, Option<ChannelDefault>)>>,
    /// Where in the list of quiet channels the next round starts: a round cut short by
    /// a slow directory leaves the rest to the next ones instead of starting over.
    cursor: AtomicUsize,
}

/// The part of a last message the servers write to the cache (docs/protocol.md#cache)
/// that says when it was sent.
#[derive(serde::Deserialize)]
struct CachedLast {
    headers: Vec<(String, String)>,
}

impl<B: MessageBus, D: DirectoryApi, C: Cache> Checker<B, D, C> {
    pub(super) fn new(
        bus: Arc<B>,
        directory: Arc<D>,
        cache: Arc<C>,
        config: WatchdogConfig,
    ) -> Self {
        let clock = Clock::new();
        Checker {
            bus,
            normaliser: Normaliser::new(directory.clone(), cache.clone()),
            directory,
            cache,
            config,
            started: clock.secs(),
            clock,
            channels: Mutex::new(Arc::new(Vec::new())),
            alive: Mutex::new(HashMap::new()),
            defaults: Mutex::new(HashMap::new()),
            cursor: AtomicUsize::new(0),
        }
    }

    fn quiet_after(&self) -> u64 {
        self.config.fallback_time.as_secs()
    }

    /// Whether a channel last heard at `at` is quiet at `now`.
    fn is_quiet(&self, at: u64, now: u64) -> bool {
        // `when` comes from the bus: saturate rather than overflow on a huge one.
        at.saturating_add(self.quiet_after()) <= now
    }

    /// Marks `channel` alive at `at` (the latest time seen wins).
    fn heard(&self, channel: &str, at: u64) {
        let mut alive = self.alive.lock();
        match alive.get_mut(channel) {
            Some(seen) => *seen = (*seen).max(at),
            None => {
                alive.insert(channel.to_owned(), at);
            }
        }
    }

    /// Records liveness and prepares the log entry of one bus message. Liveness is
    /// recorded here, when the message arrives, whatever becomes of its log entry.
    pub(super) async fn on_message(&self, msg: BusMessage) -> LogEntry {
        let normalised = self.normaliser.normalise(&msg.topic).await;
        let now = self.clock.secs();
        let when = msg
            .header("when")
            .and_then(|w| w.trim().parse::<u64>().ok())
            .unwrap_or(now);
        self.heard(topic::channel_of(&normalised), when);
        tracing::debug!(topic = %normalised, when, "message logged");
        LogEntry {
            topic: normalised,
            message: String::from_utf8_lossy(&msg.body).into_owned(),
            headers: msg.headers,
            timestamp: now,
        }
    }

    /// Reloads the channels that have a default picture (normalised).
    pub(super) async fn refresh_channels(self: Arc<Self>) {
        match self.directory.get_all_vis_channels().await {
            Ok(list) => {
                let mut channels = Vec::with_capacity(list.len());
                for c in list {
                    let topic = self.normaliser.normalise(&c.topic).await;
                    channels.push(ChannelRef { topic, id: c.id });
                }
                tracing::debug!(count = channels.len(), "channel list refreshed");
                *self.channels.lock() = Arc::new(channels);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot refresh channel list; keeping the previous one")
            }
        }
    }

    /// Forgets channels that are not in the list and have been quiet for
    /// `FB_FALLBACK_TIME`: no decision depends on them (a channel added to the list
    /// later with such an old time would be quiet anyway), and a broadcaster inventing
    /// sub-topics would otherwise grow the table for ever.
    fn prune(&self, channels: &[ChannelRef], now: u64) {
        let known: HashSet<&str> = channels.iter().map(|c| c.topic.as_str()).collect();
        self.alive
            .lock()
            .retain(|channel, &mut at| known.contains(channel.as_str()) || !self.is_quiet(at, now));
    }

    /// One check: shares the channel list and sends defaults to quiet channels, at
    /// most [`ROUND_CONCURRENCY`] at a time, within `deadline` (a round still running
    /// then is cut short with a warning; the next one goes on from there).
    pub(super) async fn check_round(self: Arc<Self>, deadline: Duration) {
        let channels = self.channels.lock().clone();
        let topics: Vec<String> = channels.iter().map(|c| c.topic.clone()).collect();
        // In the original's format, which its servers read (docs/protocol.md#cache-values).
        if let Err(e) = self
            .cache
            .set_item(CHANNELS_CACHE_KEY, pyvalue::topic_list(&topics), CACHE_TTL)
            .await
        {
            tracing::warn!(error = %e, "cannot share the channel list through the cache");
        }
        let now = self.clock.secs();
        self.prune(&channels, now);
        let mut quiet: Vec<(ChannelRef, Option<u64>)> = {
            let alive = self.alive.lock();
            channels
                .iter()
                .filter_map(|c| {
                    let heard = alive.get(&c.topic).copied();
                    match heard {
                        Some(at) if !self.is_quiet(at, now) => None,
                        _ => Some((c.clone(), heard)),
                    }
                })
                .collect()
        };
        if quiet.is_empty() {
            return;
        }
        let total = quiet.len();
        let start = self.cursor.load(Ordering::Relaxed) % total;
        quiet.rotate_left(start);
        let done = AtomicUsize::new(0);
        let round = futures::stream::iter(quiet)
            .map(|(channel, heard)| {
                let this = &self;
                let done = &done;
                async move {
                    this.check_channel(&channel, heard).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
            .buffer_unordered(ROUND_CONCURRENCY)
            .collect::<()>();
        let finished = tokio::time::timeout(deadline, round).await.is_ok();
        let done = done.load(Ordering::Relaxed);
        self.cursor.fetch_add(done, Ordering::Relaxed);
        if !finished {
            tracing::warn!(
                checked = done,
                quiet = total,
                ?deadline,
                "check round cut short at its deadline (directory slow?); the next round goes on"
            );
        }
    }

    /// Sends `channel` its default unless it turns out to be alive. `heard`: when the
    /// round saw it last (`None`: never since the start).
    async fn check_channel(&self, channel: &ChannelRef, heard: Option<u64>) {
        let Some(default) = self.channel_default(&channel.id).await else {
            return;
        };
        let now = self.clock.secs();
        // What this watchdog has not heard (it just started or took over, or the bus
        // held its messages back) the servers may have: they write every channel's
        // last text and image to the cache.
        match self.last_heard_in_cache(&channel.topic).await {
            Ok(Some(at)) => {
                self.heard(&channel.topic, at);
                if !self.is_quiet(at, now) {
                    return;
                }
            }
            Ok(None) => {}
            // Nothing says whether the channel is live: a channel never heard gets
            // `FB_FALLBACK_TIME` of listening after the start before it is quiet.
            Err(()) if heard.is_none() && !self.is_quiet(self.started, now) => return,
            Err(()) => {}
        }
        // It may have spoken while the round waited for the directory or the cache.
        let latest = self.alive.lock().get(&channel.topic).copied();
        if latest.is_some_and(|at| !self.is_quiet(at, now)) {
            return;
        }
        self.send_default(&channel.topic, &default, now).await;
    }

    /// The latest `when` of the last text and image of `channel` in the cache;
    /// `Err(())` when the cache could not say.
    async fn last_heard_in_cache(&self, channel: &str) -> Result<Option<u64>, ()> {
        let mut latest = None;
        let mut answered = false;
        for kind in ["text", "image"] {
            let key = format!("{LAST_MESSAGE_PREFIX}{channel}{kind}");
            match self.cache.get(&key).await {
                Ok(Some(v)) => {
                    answered = true;
                    let when = serde_json::from_slice::<CachedLast>(&v).ok().and_then(|m| {
                        m.headers
                            .into_iter()
                            .find(|(k, _)| k == "when")
                            .and_then(|(_, w)| w.trim().parse::<u64>().ok())
                    });
                    latest = latest.max(when);
                }
                Ok(None) => answered = true,
                Err(e) => tracing::debug!(error = %e, "cannot read a last message from the cache"),
            }
        }
        if answered {
            Ok(latest)
        } else {
            Err(())
        }
    }

    async fn channel_default(&self, id: &str) -> Option<ChannelDefault> {
        if let Some((at, d)) = self.defaults.lock().get(id) {
            if at.elapsed() < CACHE_TTL {
                return d.clone();
            }
        }
        let key = format!("get_channel_default_{id}");
        if let Ok(Some(v)) = self.cache.get_item(&key).await {
            if let Some(d) = pyvalue::read_channel_default(&v) {
                self.defaults
                    .lock()
                    .insert(id.to_owned(), (tokio::time::Instant::now(), d.clone()));
                return d;
            }
        }
        match self.directory.get_channel_default(id).await {
            Ok(d) => {
                // In the original's format: its watchdog reads it (docs/protocol.md#cache-values).
                let item = pyvalue::channel_default(d.as_ref());
                if let Err(e) = self.cache.set_item(&key, item, CACHE_TTL).await {
                    tracing::debug!(error = %e, "cannot cache channel default");
                }
                self.defaults
                    .lock()
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
                // A random UUID as a decimal number, as the original's newest version
                // writes it (`str(uuid4().int)`; docs/protocol.md#watchdog-defaults).
                (
                    "message-id".to_owned(),
                    uuid::Uuid::new_v4().as_u128().to_string(),
                ),
                ("expires".to_owned(), "0".to_owned()),
                ("priority".to_owned(), "0".to_owned()),
                ("timestamp".to_owned(), millis.to_string()),
                ("when".to_owned(), now.to_string()),
            ]);
            tracing::info!(%topic, %body, "channel quiet: sending default");
            match self
                .bus
                .publish(BusMessage {
                    topic,
                    body: Bytes::from(body),
                    headers,
                })
                .await
            {
                Ok(()) => {
                    self.config
                        .stats
                        .defaults_sent
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(error = %e, "cannot publish channel default"),
            }
        }
    }
}

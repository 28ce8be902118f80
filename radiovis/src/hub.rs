//! [`StompHub`]: accepts STOMP connections, runs one [`session`](crate::session) per
//! connection, publishes SENDs to the bus and fans bus messages out to local subscribers.
//!
//! Data path of one message: session SEND -> [`MessageBus::publish`] -> (every instance)
//! bus stream -> `Shared::on_bus_message` (normalise topic, record as last message,
//! encode once) -> subscription index lookup (exact topic, then `*` patterns) ->
//! `try_send` into each subscriber's bounded queue -> that subscriber's session writes
//! it to its socket. A full queue disconnects that subscriber; the fan-out never waits.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{
    BusError, BusMessage, Cache, DirectoryApi, DirectoryError, LogStore, MessageBus,
};
use crate::monitoring::{Event, Monitor, SessionInfo};
use crate::outbound::{Outbound, OutboundQueue, Published, PushError};
use crate::singleflight::SingleFlight;
use crate::stomp::{Frame, Limits, Version};
use crate::topic::{self, Normaliser};

/// Cache key of the known channel topics (written by the watchdog and at server start).
pub const CHANNELS_CACHE_KEY: &str = "radiovis_channels_topics";

/// Prefix of the cache keys holding the last message of a normalised topic, so that a
/// newly started instance can replay the current slide.
pub const LAST_MESSAGE_PREFIX: &str = "radiovis_last_";

/// How long a last message stays in the shared cache.
const LAST_MESSAGE_TTL: Duration = Duration::from_secs(86_400);

/// Last-message cache writes waiting for the cache (excess ones are skipped: the next
/// message of the topic writes again).
const LAST_MESSAGE_QUEUE: usize = 1024;

/// A last message as stored in the shared cache (JSON).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct CachedMessage {
    topic: String,
    body: String,
    headers: Vec<(String, String)>,
}

/// Tunables of a hub. `Default` gives production values.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Frame size, header count and header line limits.
    pub limits: Limits,
    /// MESSAGE frames a connection may have queued before it counts as a slow consumer
    /// and is disconnected (the original: 250).
    pub outbound_queue: usize,
    /// Time a new connection has to send CONNECT.
    pub connect_timeout: Duration,
    /// Most simultaneous connections; one more gets an ERROR and is closed.
    pub max_connections: usize,
    /// Most subscriptions per session.
    pub max_subscriptions: usize,
    /// Heart-beats the server offers to 1.1/1.2 clients: (can send every, wants to
    /// receive every). Zero disables that direction.
    pub heartbeat: (Duration, Duration),
    /// How long the directory may take on behalf of one frame before the session gives
    /// up (on top of the directory's own timeouts).
    pub directory_timeout: Duration,
    /// How long a station's channel list is cached.
    pub channel_cache_ttl: Duration,
    /// How often the known channel list (FM any-frequency fallback) is refreshed.
    pub known_channels_refresh: Duration,
    /// How long shutdown waits for sessions to flush and close.
    pub shutdown_grace: Duration,
    /// The `server` header of CONNECTED (1.1/1.2).
    pub server_name: String,
    /// Where monitoring events go (disabled by default).
    pub monitor: Arc<Monitor>,
    /// Most topics whose last message is kept for replay; beyond it the oldest tenth
    /// is forgotten (broadcasters may invent sub-topics without end).
    pub max_last_messages: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            limits: Limits::default(),
            outbound_queue: 250,
            connect_timeout: Duration::from_secs(10),
            max_connections: 100_000,
            max_subscriptions: 128,
            heartbeat: (Duration::from_secs(10), Duration::from_secs(10)),
            directory_timeout: Duration::from_secs(10),
            channel_cache_ttl: Duration::from_secs(60),
            known_channels_refresh: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
            server_name: format!("radiovis/{}", env!("CARGO_PKG_VERSION")),
            monitor: Arc::new(Monitor::disabled()),
            max_last_messages: 100_000,
        }
    }
}

/// Why the hub could not run.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("cannot consume from the message bus: {0}")]
    Bus(#[from] BusError),
}

/// Counters of a running hub.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicUsize,
    pub subscriptions: AtomicUsize,
    pub bus_messages: AtomicU64,
    pub deliveries: AtomicU64,
    pub slow_consumers: AtomicU64,
    pub refused_connections: AtomicU64,
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub connections: usize,
    pub subscriptions: usize,
    pub bus_messages: u64,
    pub deliveries: u64,
    pub slow_consumers: u64,
    pub refused_connections: u64,
}

/// The STOMP server, generic over its backends. Cheap to clone (one shared state).
pub struct StompHub<B, D, C, L> {
    shared: Arc<Shared<B, D, C, L>>,
}

impl<B, D, C, L> Clone for StompHub<B, D, C, L> {
    fn clone(&self) -> Self {
        StompHub {
            shared: self.shared.clone(),
        }
    }
}

impl<B: MessageBus, D: DirectoryApi, C: Cache, L: LogStore> StompHub<B, D, C, L> {
    /// A hub on these backends. Nothing runs until [`StompHub::run`].
    pub fn new(bus: B, directory: D, cache: C, log: L, config: HubConfig) -> Self {
        let channel_ttl = config.channel_cache_ttl;
        let directory = Arc::new(directory);
        let cache = Arc::new(cache);
        StompHub {
            shared: Arc::new(Shared {
                bus,
                normaliser: Normaliser::new(directory.clone(), cache.clone()),
                directory,
                cache,
                log: Arc::new(log),
                connections: Arc::new(Semaphore::new(config.max_connections)),
                config,
                index: RwLock::new(SubIndex::default()),
                last: RwLock::new(HashMap::new()),
                known_channels: RwLock::new(Arc::new(HashSet::new())),
                station_channels: SingleFlight::new(channel_ttl),
                seq: AtomicU64::new(0),
                next_id: AtomicU64::new(1),
                last_writer: OnceLock::new(),
                stats: Stats::default(),
                shutdown: CancellationToken::new(),
                tracker: TaskTracker::new(),
            }),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.shared.stats;
        StatsSnapshot {
            connections: s.connections.load(Ordering::Relaxed),
            subscriptions: s.subscriptions.load(Ordering::Relaxed),
            bus_messages: s.bus_messages.load(Ordering::Relaxed),
            deliveries: s.deliveries.load(Ordering::Relaxed),
            slow_consumers: s.slow_consumers.load(Ordering::Relaxed),
            refused_connections: s.refused_connections.load(Ordering::Relaxed),
        }
    }

    /// The bus, directory, cache and log store the hub was built with.
    pub fn backends(&self) -> (&B, &D, &C, &L) {
        let s = &*self.shared;
        (&s.bus, &s.directory, &s.cache, &s.log)
    }

    /// Serves STOMP on `listeners` until `shutdown` completes, then stops accepting,
    /// lets sessions flush their queues and close (within `shutdown_grace`) and returns.
    pub async fn run(
        &self,
        listeners: Vec<TcpListener>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), HubError> {
        let shared = &self.shared;
        let stream = shared.bus.subscribe().await?;
        shared.refresh_known_channels(true).await;
        shared.restore_last_messages().await;
        let (last_tx, mut last_rx) =
            tokio::sync::mpsc::channel::<Arc<Published>>(LAST_MESSAGE_QUEUE);
        let _ = shared.last_writer.set(last_tx);
        let writer = shared.clone();
        shared.tracker.spawn(async move {
            loop {
                let p = tokio::select! {
                    _ = writer.shutdown.cancelled() => break,
                    p = last_rx.recv() => match p { Some(p) => p, None => break },
                };
                writer.store_last_message(&p).await;
            }
        });
        shared.config.monitor.emit(Event::Server);

        let consumer = shared.clone();
        shared.tracker.spawn(async move {
            let mut stream = stream;
            loop {
                tokio::select! {
                    _ = consumer.shutdown.cancelled() => break,
                    msg = stream.next() => match msg {
                        Some(msg) => consumer.on_bus_message(msg).await,
                        None => {
                            tracing::error!("message bus stream ended: no more messages will be delivered");
                            break;
                        }
                    },
                }
            }
        });

        let refresher = shared.clone();
        shared.tracker.spawn(async move {
            let period = refresher.config.known_channels_refresh;
            loop {
                tokio::select! {
                    _ = refresher.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(period) => refresher.refresh_known_channels(false).await,
                }
            }
        });

        for listener in listeners {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "listening for STOMP connections");
            }
            let hub = self.clone();
            shared
                .tracker
                .spawn(async move { hub.accept_loop(listener).await });
        }

        shutdown.await;
        tracing::info!("shutting down: no new connections, closing sessions");
        shared.shutdown.cancel();
        shared.tracker.close();
        if tokio::time::timeout(shared.config.shutdown_grace, shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = shared.stats.connections.load(Ordering::Relaxed),
                "shutdown grace elapsed with sessions still open"
            );
        }
        Ok(())
    }

    async fn accept_loop(&self, listener: TcpListener) {
        let mut backoff = Duration::from_millis(10);
        loop {
            let accepted = tokio::select! {
                _ = self.shared.shutdown.cancelled() => return,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(10);
                    self.handle_connection(stream, peer);
                }
                Err(e) => {
                    // Typically out of file descriptors: wait, then try again.
                    tracing::warn!(error = %e, "accept failed; retrying in {:?}", backoff);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Runs a session on an already accepted connection (for embedders that accept
    /// connections themselves). Counts against `max_connections`.
    pub fn handle_connection(&self, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let shared = self.shared.clone();
        match shared.connections.clone().try_acquire_owned() {
            Ok(permit) => {
                self.shared.tracker.spawn(async move {
                    crate::session::run(shared, stream, peer).await;
                    drop(permit);
                });
            }
            Err(_) => {
                shared
                    .stats
                    .refused_connections
                    .fetch_add(1, Ordering::Relaxed);
                let limit = shared.config.max_connections;
                tracing::warn!(%peer, limit, "connection refused: too many connections");
                self.shared.tracker.spawn(async move {
                    let mut stream = stream;
                    let frame = Frame::error(format!("too many connections: limit is {limit}"));
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        stream.write_all(&frame.to_bytes(Version::V1_0)),
                    )
                    .await;
                });
            }
        }
    }
}

/// Where a subscription sits in the index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum IndexKey {
    /// Receives messages whose normalised topic is exactly this.
    Exact(String),
    /// Receives messages whose normalised topic matches this `*` pattern.
    Pattern(String),
}

/// One subscription as the fan-out sees it.
pub(crate) struct SubEntry {
    pub head: Bytes,
    pub version: Version,
    pub queue: Arc<OutboundQueue>,
    pub kill: CancellationToken,
    /// Session and destination, for monitoring events (only when monitoring is on).
    pub monitor: Option<(Arc<SessionInfo>, Arc<str>)>,
}

/// Subscription id unique in the hub: (connection, subscription within it).
pub(crate) type SubKey = (u64, u64);

#[derive(Default)]
struct SubIndex {
    exact: HashMap<String, HashMap<SubKey, SubEntry>>,
    patterns: HashMap<String, HashMap<SubKey, SubEntry>>,
}

impl SubIndex {
    fn map<'a, 'k>(
        &'a mut self,
        key: &'k IndexKey,
    ) -> (&'a mut HashMap<String, HashMap<SubKey, SubEntry>>, &'k str) {
        match key {
            IndexKey::Exact(k) => (&mut self.exact, k),
            IndexKey::Pattern(k) => (&mut self.patterns, k),
        }
    }
}

/// State shared by the hub's tasks and sessions.
pub(crate) struct Shared<B, D, C, L> {
    pub bus: B,
    pub directory: Arc<D>,
    pub cache: Arc<C>,
    /// Not used by the hub itself; handed back by [`StompHub::backends`] so that an
    /// embedder keeps one set of backends.
    pub log: Arc<L>,
    pub normaliser: Normaliser<D, C>,
    pub config: HubConfig,
    pub stats: Stats,
    pub shutdown: CancellationToken,
    connections: Arc<Semaphore>,
    tracker: TaskTracker,
    index: RwLock<SubIndex>,
    last: RwLock<HashMap<String, Arc<Published>>>,
    known_channels: RwLock<Arc<HashSet<String>>>,
    station_channels: SingleFlight<Arc<Vec<StationChannel>>>,
    seq: AtomicU64,
    next_id: AtomicU64,
    last_writer: OnceLock<tokio::sync::mpsc::Sender<Arc<Published>>>,
}

/// A channel a station may publish to, as the directory wrote it and normalised.
#[derive(Debug, Clone)]
pub(crate) struct StationChannel {
    pub raw: String,
    pub normalised: String,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl<B: MessageBus, D: DirectoryApi, C: Cache, L: LogStore> Shared<B, D, C, L> {
    /// A fresh id for a connection or a subscription.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Records a bus message as the last of its topic and hands it to every matching
    /// local subscriber.
    pub async fn on_bus_message(&self, msg: BusMessage) {
        self.stats.bus_messages.fetch_add(1, Ordering::Relaxed);
        let normalised = self.normaliser.normalise(&msg.topic).await;
        let mut headers = msg.headers;
        if !headers.iter().any(|(k, _)| k == "message-id") {
            headers.push(("message-id".into(), uuid::Uuid::new_v4().to_string()));
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(topic = %msg.topic, %normalised, seq, "bus message");
        let published = Arc::new(Published::new(seq, normalised.clone(), msg.body, headers));
        {
            let mut last = write(&self.last);
            last.insert(normalised, published.clone());
            let max = self.config.max_last_messages.max(1);
            if last.len() > max {
                // Forget the oldest tenth at once, so eviction stays rare.
                let mut seqs: Vec<u64> = last.values().map(|m| m.seq).collect();
                let cut = (last.len() - max + max / 10).min(seqs.len() - 1);
                let (_, &mut threshold, _) = seqs.select_nth_unstable(cut);
                last.retain(|_, m| m.seq >= threshold);
                tracing::warn!(
                    kept = last.len(),
                    max,
                    "too many topics: oldest last messages forgotten"
                );
            }
        }
        self.fan_out(&published);
        if let Some(tx) = self.last_writer.get() {
            if tx.try_send(published).is_err() {
                tracing::debug!("last-message cache writer busy; skipped");
            }
        }
    }

    async fn store_last_message(&self, p: &Published) {
        let cached = CachedMessage {
            topic: p.topic.clone(),
            body: String::from_utf8_lossy(&p.body).into_owned(),
            headers: p.headers.clone(),
        };
        let Ok(json) = serde_json::to_vec(&cached) else {
            return;
        };
        let key = format!("{LAST_MESSAGE_PREFIX}{}", p.topic);
        if let Err(e) = self
            .cache
            .set(&key, Bytes::from(json), LAST_MESSAGE_TTL)
            .await
        {
            tracing::debug!(error = %e, "cannot store last message in cache");
        }
    }

    /// Reads back from the shared cache the last `text` and `image` messages of every
    /// known channel, so that a fresh instance replays the current slide.
    async fn restore_last_messages(&self) {
        let known = read(&self.known_channels).clone();
        let keys: Vec<String> = known
            .iter()
            .flat_map(|c| [format!("{c}text"), format!("{c}image")])
            .collect();
        let found: Vec<CachedMessage> = futures::stream::iter(keys)
            .map(|topic| async move {
                let key = format!("{LAST_MESSAGE_PREFIX}{topic}");
                match self.cache.get(&key).await {
                    Ok(Some(v)) => serde_json::from_slice::<CachedMessage>(&v).ok(),
                    _ => None,
                }
            })
            .buffer_unordered(32)
            .filter_map(|m| async move { m })
            .collect()
            .await;
        let restored = found.len();
        let mut last = write(&self.last);
        for m in found {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            last.entry(m.topic.clone()).or_insert_with(|| {
                Arc::new(Published::new(seq, m.topic, Bytes::from(m.body), m.headers))
            });
        }
        if restored > 0 {
            tracing::info!(restored, "last messages restored from the shared cache");
        }
    }

    fn fan_out(&self, published: &Published) {
        let index = read(&self.index);
        let mut delivered = 0u64;
        let mut deliver = |entry: &SubEntry| {
            let item = Outbound {
                head: entry.head.clone(),
                tail: published.tail(entry.version),
            };
            match entry.queue.try_push(item) {
                Ok(()) => {
                    delivered += 1;
                    if let Some((info, destination)) = &entry.monitor {
                        self.config.monitor.emit(Event::Message(
                            info.clone(),
                            destination.clone(),
                            published.body.clone(),
                        ));
                    }
                }
                Err(PushError::Full) => {
                    if !entry.kill.is_cancelled() {
                        self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                        entry.kill.cancel();
                    }
                }
                Err(PushError::Closed) => {}
            }
        };
        if let Some(subs) = index.exact.get(&published.topic) {
            subs.values().for_each(&mut deliver);
        }
        for (pattern, subs) in &index.patterns {
            if topic::matches(pattern, &published.topic) {
                subs.values().for_each(&mut deliver);
            }
        }
        self.stats
            .deliveries
            .fetch_add(delivered, Ordering::Relaxed);
    }

    /// Where a SUBSCRIBE destination goes in the index: its normalised form, or a `*`
    /// pattern for wildcards and for FM channels the directory does not know (then the
    /// radio gets that PI on any frequency).
    pub async fn index_key_for(&self, destination: &str) -> IndexKey {
        if topic::is_wildcard(destination) {
            return IndexKey::Pattern(self.normaliser.normalise(destination).await);
        }
        let normalised = self.normaliser.normalise(destination).await;
        if topic::is_fm(&normalised) {
            let known = read(&self.known_channels).clone();
            if !known.contains(topic::channel_of(&normalised)) {
                if let Some(any) = topic::fm_any_frequency(&normalised) {
                    tracing::debug!(%destination, pattern = %any, "unknown FM channel: any-frequency fallback");
                    return IndexKey::Pattern(any);
                }
            }
        }
        IndexKey::Exact(normalised)
    }

    pub fn add_subscription(&self, key: &IndexKey, sub: SubKey, entry: SubEntry) {
        let mut index = write(&self.index);
        let (map, k) = index.map(key);
        if map
            .entry(k.to_owned())
            .or_default()
            .insert(sub, entry)
            .is_none()
        {
            self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn remove_subscription(&self, key: &IndexKey, sub: SubKey) {
        let mut index = write(&self.index);
        let (map, k) = index.map(key);
        if let Some(subs) = map.get_mut(k) {
            if subs.remove(&sub).is_some() {
                self.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
            }
            if subs.is_empty() {
                map.remove(k);
            }
        }
    }

    /// The message to replay to a new subscription: the last of its topic, or for a
    /// pattern the newest of the matching topics.
    pub fn last_for(&self, key: &IndexKey) -> Option<Arc<Published>> {
        let last = read(&self.last);
        match key {
            IndexKey::Exact(t) => last.get(t).cloned(),
            IndexKey::Pattern(p) => last
                .iter()
                .filter(|(t, _)| topic::matches(p, t))
                .max_by_key(|(_, m)| m.seq)
                .map(|(_, m)| m.clone()),
        }
    }

    /// The channels a station may publish to (cached for `channel_cache_ttl`).
    pub async fn station_channels(
        &self,
        station: &str,
    ) -> Result<Arc<Vec<StationChannel>>, DirectoryError> {
        self.station_channels
            .get_or_fetch(station, || async {
                let raw = tokio::time::timeout(
                    self.config.directory_timeout,
                    self.directory.get_channels(station),
                )
                .await
                .map_err(|_| DirectoryError::Timeout(self.config.directory_timeout))??;
                let mut list = Vec::with_capacity(raw.len());
                for r in raw {
                    let normalised = self.normaliser.normalise(&r).await;
                    list.push(StationChannel { raw: r, normalised });
                }
                Ok(Arc::new(list))
            })
            .await
    }

    /// Reloads the known channel topics: from the directory at start-up (and then
    /// shares them through the cache), from the cache afterwards (the watchdog keeps it
    /// fresh), falling back to the directory. On failure the previous list stays.
    async fn refresh_known_channels(&self, at_start: bool) {
        let mut topics: Option<Vec<String>> = None;
        if !at_start {
            match self.cache.get(CHANNELS_CACHE_KEY).await {
                Ok(Some(v)) => topics = serde_json::from_slice(&v).ok(),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read known channels from cache"),
            }
        }
        if topics.is_none() {
            match tokio::time::timeout(
                self.config.directory_timeout,
                self.directory.get_all_channels(),
            )
            .await
            {
                Ok(Ok(list)) => {
                    let t: Vec<String> = list.into_iter().map(|c| c.topic).collect();
                    if let Ok(json) = serde_json::to_vec(&t) {
                        if let Err(e) = self
                            .cache
                            .set(CHANNELS_CACHE_KEY, Bytes::from(json), topic::GCC_TTL)
                            .await
                        {
                            tracing::warn!(error = %e, "cannot share known channels through cache");
                        }
                    }
                    topics = Some(t);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot load known channels from directory")
                }
                Err(_) => tracing::warn!("directory timed out loading known channels"),
            }
        }
        let Some(topics) = topics else { return };
        let mut set = HashSet::with_capacity(topics.len());
        for t in topics {
            set.insert(self.normaliser.normalise(&t).await);
        }
        tracing::debug!(count = set.len(), "known channels refreshed");
        *write(&self.known_channels) = Arc::new(set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::{LocalBus, MemoryCache, MemoryLogStore, StaticDirectory};

    #[tokio::test]
    async fn last_messages_are_bounded_and_the_newest_kept() {
        let hub = StompHub::new(
            LocalBus::default(),
            StaticDirectory::default(),
            MemoryCache::new(),
            MemoryLogStore::default(),
            HubConfig {
                max_last_messages: 100,
                ..HubConfig::default()
            },
        );
        for i in 0..1000 {
            hub.shared
                .on_bus_message(BusMessage {
                    topic: format!("/topic/id/x/{i}/text"),
                    body: Bytes::from(format!("TEXT {i}")),
                    headers: vec![],
                })
                .await;
        }
        let last = read(&hub.shared.last);
        assert!(last.len() <= 100, "{}", last.len());
        assert!(last.len() >= 80, "{}", last.len());
        assert!(
            last.contains_key("/topic/id/x/999/text"),
            "the newest is kept"
        );
        assert!(
            !last.contains_key("/topic/id/x/0/text"),
            "the oldest is forgotten"
        );
    }
}

//! The hub: the state every session of an instance shares, and nothing about
//! sessions themselves. Sessions reach it through the methods of `Hub` (subscribe,
//! unsubscribe, last message, publish, station channels); the
//! [`server`](crate::server) owns it and starts its background tasks.
//!
//! Data path of one message: session SEND -> `Hub::publish` -> [`MessageBus`] ->
//! (every instance) bus stream -> `Hub::on_bus_message` (normalise topic without
//! waiting: a CC-form topic whose conversion is not known waits in `pending` while a
//! task asks the directory; record as last message, encode once) -> subscription index lookup (exact topic, then `*`
//! patterns) -> `try_push` into each subscriber's bounded queue -> that subscriber's
//! session writes it to its socket. A full queue disconnects that subscriber; the
//! fan-out never waits.
//!
//! | module | job |
//! |---|---|
//! | `index` | subscription index: exact topics and `*` patterns |
//! | `last` | last message per topic: bounded, replayed, shared through the cache |
//! | `channels` | known channels (FM fallback) and stations' channel rights |
//! | `pending` | bus messages waiting for a CC -> GCC conversion: bounded, in order |
//! | `throttle` | failed logins per address, credential checks in flight |
//! | `admission` | per-session SUBSCRIBE limits: wildcards held, frames per second |
//! | `resync` | last messages re-read from the cache after the bus reconnected |

mod admission;
mod channels;
mod index;
mod last;
mod login;
mod pending;
mod publish;
mod resync;
mod stats;
mod status;
mod throttle;
pub(crate) use throttle::address_key;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{BusError, BusMessage, Cache, DirectoryApi, DirectoryError, MessageBus};
use crate::monitoring::{Event, Monitor};
use crate::outbound::{Kill, Outbound, OutboundQueue, Published, PushError};
use crate::singleflight::SingleFlight;
use crate::stomp::Limits;
use crate::topic::{self, Normaliser};

pub(crate) use admission::{SubscribeBudget, SubscribeLimit};
pub(crate) use channels::StationChannel;
pub use index::PatternTrie;
pub(crate) use index::{IndexKey, SubEntry, SubKey};
pub use last::LAST_MESSAGE_PREFIX;
pub use login::LoginRefused;
pub use publish::{Publication, PublishError};
pub use stats::{Stats, StatsSnapshot, Transport, TransportStats};
pub use status::TopicStatus;
pub(crate) use throttle::LoginThrottle;

use index::SubIndex;
use last::LastMessages;
use pending::{Parked, Pending};

/// Cache key of the known channel topics (written by the watchdog and at server start).
pub const CHANNELS_CACHE_KEY: &str = "radiovis_channels_topics";

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
    /// Most simultaneous connections from one address (an IPv6 /64 counts as one);
    /// one more gets an ERROR and is closed (docs/protocol.md#limits).
    pub max_connections_per_address: usize,
    /// Most subscriptions per session.
    pub max_subscriptions: usize,
    /// Most wildcard (`*`) subscriptions per session (docs/protocol.md#limits).
    pub max_wildcards: usize,
    /// SUBSCRIBE frames a session may send per second, sustained.
    pub subscribe_rate: u32,
    /// SUBSCRIBE frames a session may send at once, above the sustained rate.
    pub subscribe_burst: u32,
    /// Heart-beats the server offers to 1.1/1.2 clients: (can send every, wants to
    /// receive every). Zero disables that direction.
    pub heartbeat: (Duration, Duration),
    /// How long the directory may take on behalf of one frame before the session gives
    /// up (on top of the directory's own timeouts).
    pub directory_timeout: Duration,
    /// How long a failed CC -> GCC look-up is remembered before the directory is asked
    /// again for that country code; doubles with each consecutive failure, up to
    /// [`crate::topic::MAX_RETRY`] (or this value when larger). Meanwhile the CC form
    /// stays as it is (docs/protocol.md#topic-normalisation).
    pub directory_retry: Duration,
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
    /// Time a frame has to complete once its first byte arrived (slow senders hold a
    /// read buffer meanwhile).
    pub frame_timeout: Duration,
    /// Time a session without heart-beats from its client (STOMP 1.0, or none
    /// negotiated) may stay silent; any byte counts, EOLs included. `None`: no limit.
    pub idle_timeout: Option<Duration>,
    /// Time one write may stay blocked on a client that does not read before the
    /// session is dropped as a slow consumer.
    pub write_timeout: Duration,
    /// Failed logins from one address within `auth_block` after which its logins are
    /// refused without asking the directory, until `auth_block` has passed.
    pub auth_max_failures: u32,
    /// How long failed logins are remembered, and how long an address is blocked.
    pub auth_block: Duration,
    /// Delay of the ERROR after an address's first failed login; it doubles with each
    /// further failure (at most 8 s).
    pub auth_failure_delay: Duration,
    /// Most credential checks in flight at the directory at once.
    pub auth_concurrency: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            limits: Limits::default(),
            outbound_queue: 250,
            connect_timeout: Duration::from_secs(10),
            max_connections: 100_000,
            // Generous: radios behind a carrier's NAT share one address.
            max_connections_per_address: 1_000,
            max_subscriptions: 128,
            max_wildcards: 8,
            subscribe_rate: 20,
            subscribe_burst: 100,
            heartbeat: (Duration::from_secs(10), Duration::from_secs(10)),
            directory_timeout: Duration::from_secs(10),
            directory_retry: Duration::from_secs(5),
            channel_cache_ttl: Duration::from_secs(60),
            known_channels_refresh: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
            server_name: format!("radiovis/{}", env!("CARGO_PKG_VERSION")),
            monitor: Arc::new(Monitor::disabled()),
            max_last_messages: 100_000,
            frame_timeout: Duration::from_secs(30),
            idle_timeout: Some(Duration::from_secs(600)),
            write_timeout: Duration::from_secs(30),
            auth_max_failures: 10,
            auth_block: Duration::from_secs(300),
            auth_failure_delay: Duration::from_millis(500),
            auth_concurrency: 64,
        }
    }
}

/// Why the hub could not run.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The bus refused the subscription the fan-out consumes.
    #[error("cannot consume from the message bus: {0}")]
    Bus(#[from] BusError),
}

/// The state shared by the hub's tasks and every session, behind one `Arc`.
pub(crate) struct Hub<B, D, C> {
    bus: B,
    directory: Arc<D>,
    cache: Arc<C>,
    normaliser: Normaliser<D, C>,
    config: HubConfig,
    stats: Arc<Stats>,
    /// Cancelled when the server stops (the hub's tasks and the accept loops).
    shutdown: CancellationToken,
    /// Every open session's queue, through which [`Hub::stop`] tells each to close: a
    /// slot of 16 bytes per session instead of a child token (over 100 bytes) each.
    sessions: parking_lot::Mutex<slab::Slab<Arc<OutboundQueue>>>,
    index: RwLock<SubIndex>,
    last: LastMessages,
    known_channels: RwLock<Arc<HashSet<String>>>,
    station_channels: SingleFlight<Arc<Vec<StationChannel>>>,
    /// Bus messages waiting for a CC -> GCC conversion.
    pending: Pending,
    /// Where the hub's own tasks run (set by [`Hub::start`]): the server waits for them
    /// at shutdown with the sessions.
    tasks: std::sync::OnceLock<TaskTracker>,
    next_id: AtomicU64,
    throttle: LoginThrottle,
}

impl<B: MessageBus, D: DirectoryApi, C: Cache> Hub<B, D, C> {
    /// A hub on these backends; nothing runs until [`Hub::start`].
    pub fn new(bus: B, directory: D, cache: C, config: HubConfig) -> Hub<B, D, C> {
        let directory = Arc::new(directory);
        let cache = Arc::new(cache);
        Hub {
            bus,
            normaliser: Normaliser::with_timeouts(
                directory.clone(),
                cache.clone(),
                config.directory_timeout,
                config.directory_retry,
            ),
            directory,
            cache,
            index: RwLock::new(SubIndex::default()),
            last: LastMessages::new(config.max_last_messages),
            known_channels: RwLock::new(Arc::new(HashSet::new())),
            station_channels: SingleFlight::new(config.channel_cache_ttl),
            pending: Pending::default(),
            tasks: std::sync::OnceLock::new(),
            next_id: AtomicU64::new(1),
            throttle: LoginThrottle::new(&config),
            stats: Arc::default(),
            shutdown: CancellationToken::new(),
            sessions: parking_lot::Mutex::new(slab::Slab::new()),
            config,
        }
    }

    /// Subscribes to the bus, loads the known channels and the cached last messages,
    /// and spawns on `tracker` the tasks that run until [`Hub::stop`]: the bus
    /// consumer (fan-out), the last-message cache writer and the known-channel
    /// refresher.
    pub async fn start(self: &Arc<Self>, tracker: &TaskTracker) -> Result<(), HubError> {
        let _ = self.tasks.set(tracker.clone());
        let stream = self.bus.subscribe().await?;
        let mut generations = self.bus.connection_generations();
        generations.borrow_and_update();
        self.refresh_known_channels(true).await;
        self.last
            .restore(&*self.cache, &self.known_channels())
            .await;
        tracker.spawn(self.last.writer(self.cache.clone(), self.shutdown.clone()));
        self.config.monitor.emit(Event::Server);

        let consumer = self.clone();
        tracker.spawn(async move {
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

        // After each reconnection of the bus, the last messages converge through the
        // cache (docs/protocol.md#rabbitmq-queues).
        let resync = self.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = resync.shutdown.cancelled() => break,
                    changed = generations.changed() => match changed {
                        Ok(()) => {
                            resync.stats.bus_reconnects.fetch_add(1, Ordering::Relaxed);
                            resync.resync_last_messages().await
                        }
                        // This bus never reconnects.
                        Err(_) => break,
                    },
                }
            }
        });

        let refresher = self.clone();
        tracker.spawn(async move {
            let period = refresher.config.known_channels_refresh;
            loop {
                tokio::select! {
                    _ = refresher.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(period) => refresher.refresh_known_channels(false).await,
                }
            }
        });
        Ok(())
    }

    /// Stops the background tasks and tells every session to flush and close.
    pub fn stop(&self) {
        self.shutdown.cancel();
        for (_, queue) in self.sessions.lock().iter() {
            queue.kill(Kill::Shutdown);
        }
    }

    /// Completes when [`Hub::stop`] is called.
    pub async fn stopped(&self) {
        self.shutdown.cancelled().await
    }

    /// A token for a web client's writer: cancelled when the hub stops (STOMP sessions
    /// are told through their queue, see [`Hub::register_session`]).
    #[cfg(feature = "http")]
    pub fn session_token(&self) -> CancellationToken {
        self.shutdown.child_token()
    }

    /// Registers a session's queue, killed ([`Kill::Shutdown`]) when the hub stops (at
    /// once when it has stopped already); returns the key to [`Hub::unregister_session`].
    pub fn register_session(&self, queue: &Arc<OutboundQueue>) -> usize {
        let mut sessions = self.sessions.lock();
        // Under the lock that `stop` iterates with: no session slips between the two.
        if self.shutdown.is_cancelled() {
            queue.kill(Kill::Shutdown);
        }
        sessions.insert(queue.clone())
    }

    /// Forgets a session registered with [`Hub::register_session`].
    pub fn unregister_session(&self, key: usize) {
        self.sessions.lock().try_remove(key);
    }

    /// The hub's settings.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Where monitoring events go.
    pub fn monitor(&self) -> &Monitor {
        &self.config.monitor
    }

    /// Whether the server is stopping (readiness).
    pub fn is_stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The counters, shared (for the metrics collector).
    pub fn shared_stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Whether the bus carries messages between instances now.
    pub fn bus_connected(&self) -> bool {
        self.bus.is_connected()
    }

    /// A fresh id for a connection or a subscription.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Checks a station's credentials with the directory, bounded by
    /// `directory_timeout` (`None` when it took longer).
    pub async fn check_auth(
        &self,
        login: &str,
        passcode: &str,
        ip: IpAddr,
    ) -> Option<Result<bool, DirectoryError>> {
        tokio::time::timeout(
            self.config.directory_timeout,
            self.directory.check_auth(login, passcode, ip),
        )
        .await
        .ok()
    }

    /// Failed logins per address and the bound on credential checks in flight.
    pub fn login_throttle(&self) -> &LoginThrottle {
        &self.throttle
    }

    /// The normalised form of a topic (CC -> GCC).
    pub async fn normalise(&self, topic: &str) -> String {
        self.normaliser.normalise(topic).await
    }

    /// Publishes a message on the bus (every instance, this one included, fans it out).
    pub async fn publish(&self, message: BusMessage) -> Result<(), BusError> {
        self.bus.publish(message).await
    }

    /// Adds a subscription to the fan-out; an exact `key` becomes the index's own
    /// (shared) key of its topic.
    ///
    /// With `replay`, returns the message to replay to it: the last of its topic, or for
    /// a pattern the newest of the matching topics. It is looked up under the index
    /// lock, under which a message is recorded and fanned out: the new subscription
    /// gets each message either as its replay or live, never both and never neither
    /// (docs/protocol.md#replay).
    pub fn subscribe(
        &self,
        key: &mut IndexKey,
        sub: SubKey,
        entry: SubEntry,
        replay: bool,
    ) -> Option<Arc<Published>> {
        let mut index = self.index.write();
        if index.insert(key, sub, entry) {
            self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
        }
        replay.then(|| self.last.for_key(key)).flatten()
    }

    /// Removes a subscription from the fan-out.
    pub fn unsubscribe(&self, key: &IndexKey, sub: SubKey) {
        if self.index.write().remove(key, sub) {
            self.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Records a bus message as the last of its topic and hands it to every matching
    /// local subscriber. Never waits on the network (docs/protocol.md#delivery): a
    /// CC-form topic whose conversion is not known yet is parked, with the messages of
    /// its country code that follow, while a task asks the directory; everything else
    /// is delivered at once.
    pub async fn on_bus_message(self: &Arc<Self>, msg: BusMessage) {
        self.stats.bus_messages.fetch_add(1, Ordering::Relaxed);
        let Some(cc) = topic::fm_cc(&msg.topic) else {
            let normalised = self.normaliser.normalise(&msg.topic).await;
            self.deliver(msg, normalised);
            return;
        };
        let msg = match self.pending.push_if_waiting(&cc, msg) {
            Parked::NotWaiting(msg) => msg,
            Parked::Queued => return,
            Parked::Dropped { first } => return self.dropped_unconverted(&cc, first),
        };
        if let Some(normalised) = self.normaliser.normalise_cached(&msg.topic).await {
            self.deliver(msg, normalised);
            return;
        }
        tracing::debug!(cc, topic = %msg.topic, "conversion not known: message parked");
        match self.pending.start(&cc, msg) {
            Parked::Queued => {}
            Parked::Dropped { first } => return self.dropped_unconverted(&cc, first),
            Parked::NotWaiting(_) => return,
        }
        let hub = self.clone();
        let task = async move {
            tokio::select! {
                _ = hub.shutdown.cancelled() => {}
                _ = hub.deliver_parked(&cc) => {}
            }
        };
        match self.tasks.get() {
            Some(tracker) => drop(tracker.spawn(task)),
            // Not started by a server (a unit test driving the hub directly).
            None => drop(tokio::spawn(task)),
        }
    }

    /// Delivers the messages parked for `cc` in order, converting (or, when the
    /// directory fails, falling back to the CC form) as it goes; the first conversion
    /// asks the directory (bounded by `directory_timeout`), the others find its answer.
    async fn deliver_parked(&self, cc: &str) {
        loop {
            let (batch, dropped) = self.pending.take(cc);
            if dropped > 0 {
                tracing::warn!(
                    cc,
                    dropped,
                    "bus messages dropped while waiting for the directory to convert their country code"
                );
            }
            if batch.is_empty() {
                return;
            }
            for msg in batch {
                let normalised = self.normaliser.normalise(&msg.topic).await;
                self.deliver(msg, normalised);
            }
        }
    }

    fn dropped_unconverted(&self, cc: &str, first: bool) {
        self.stats
            .unconverted_dropped
            .fetch_add(1, Ordering::Relaxed);
        if first {
            tracing::warn!(
                cc,
                "too many bus messages waiting for the directory to convert their country code: dropping"
            );
        }
    }

    /// Records `msg` (topic `normalised`) as the last of its topic and fans it out.
    fn deliver(&self, msg: BusMessage, normalised: String) {
        let mut headers = msg.headers;
        if !headers.iter().any(|(k, _)| k == "message-id") {
            headers.push(("message-id".into(), uuid::Uuid::new_v4().to_string()));
        }
        let seq = self.last.next_seq();
        tracing::debug!(topic = %msg.topic, %normalised, seq, "bus message");
        let published = Arc::new(Published::new(seq, normalised, msg.body, headers));
        // Recorded and fanned out under one read lock of the index, which a new
        // subscription takes to look up its replay: see `subscribe`.
        let index = self.index.read();
        let over = self.last.record(published.clone());
        self.fan_out(&index, &published);
        drop(index);
        if over {
            self.last.evict();
        }
        self.last.share(published);
    }

    /// Queues `published` to every matching subscriber: two `Bytes` clones and a
    /// queue push each, never a wait. A full queue kills its session.
    fn fan_out(&self, index: &SubIndex, published: &Published) {
        let mut delivered = 0u64;
        index.for_each_match(&published.topic, |entry| {
            let item = Outbound {
                head: entry.head.clone(),
                tail: published.tail(entry.form),
            };
            match entry.queue.try_push(item) {
                Ok(()) => {
                    delivered += 1;
                    if let Some((info, destination)) = entry.monitor.as_deref() {
                        self.config.monitor.emit(Event::Message(
                            info.clone(),
                            destination.clone(),
                            published.body.clone(),
                        ));
                    }
                }
                Err(PushError::Full) => {
                    if entry.queue.kill(Kill::SlowConsumer) {
                        self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(PushError::Closed) => {}
            }
        });
        self.stats
            .deliveries
            .fetch_add(delivered, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;

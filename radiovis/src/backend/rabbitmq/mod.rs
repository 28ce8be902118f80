//! The RabbitMQ message bus ([`RabbitBus`]), wire-compatible with the original Python
//! RadioVisServer so that mixed fleets work during a migration (docs/protocol.md#rabbitmq).
//!
//! Wire format: every message is published to the configured exchange (default
//! `amq.fanout`) with an empty routing key; the AMQP body is the STOMP body and the AMQP
//! `application_headers` are the forwarded headers plus `topic`, all long strings. On
//! the way in, long strings, short strings and byte arrays are accepted (the original's
//! AMQP library may write either), `topic` becomes [`BusMessage::topic`] and a message
//! without it is logged and dropped.
//!
//! Faults: [`RabbitBus::connect`] does not fail because the broker is down. Two
//! background tasks, one per AMQP connection, connect with jittered, capped exponential
//! backoff: the publishing one opens a confirm-mode channel; the consuming one declares
//! the exchange and the queue, binds them, and consumes; on connection loss each starts
//! over, and the consuming one keeps feeding the streams returned by
//! [`MessageBus::subscribe`]. Publishing and consuming have their own connections
//! because a broker under a memory or disk alarm stops reading the connections that
//! publish: consumption goes on meanwhile. While the publishing connection is down,
//! `publish` fails promptly with [`BusError::Unavailable`]; while it is blocked, after
//! the confirm timeout. Publisher confirms are on: `publish` returns `Ok` only once the
//! broker acked the message. Each (re)connection of the consuming connection is a new
//! generation ([`MessageBus::connection_generations`]), so that the hub can
//! resynchronise what it missed.
//!
//! A configuration error found on the first attempt (exchange of another type,
//! access refused on the vhost, bad credentials) is returned by `connect` as
//! [`RabbitError::Config`]; found later, it is logged as an error and retried.
//!
//! The code is split along its seams: `config` (what to connect to, parsed from an
//! AMQP URL), `wire` (the original's AMQP message shape), `supervisor` (the background
//! task: connect, reconnect, consume), `topology` (declaring and checking the exchange
//! and the queue) and `leader` ([`LeaderLock`], used only by the watchdog binary).

mod ack;
mod attempt;
mod config;
mod leader;
mod supervisor;
mod topology;
mod wire;

pub use config::{QueueKind, RabbitConfig, INSTANCE_QUEUE_EXPIRES, INSTANCE_QUEUE_MAX};
pub use leader::LeaderLock;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{BusError, BusMessage, BusStream, Delivery, DeliveryStream, MessageBus, Reason};
use attempt::AttemptError;
use supervisor::{supervise, Role, CLOSE_TIMEOUT};
use wire::encode_headers;

/// Default exchange, as the original (`RABBITMQ_EXCHANGE`).
pub const DEFAULT_EXCHANGE: &str = "amq.fanout";
/// Default queue of the watchdog (`FB_QUEUE`).
pub const DEFAULT_FALLBACK_QUEUE: &str = "fallbacklogs";

/// Why [`RabbitBus::connect`] refused to start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RabbitError {
    /// The configuration cannot work against this broker (exchange of another type,
    /// access refused, bad URL). Retrying will not help; the message says what to fix.
    #[error("RabbitMQ configuration error: {0}")]
    Config(#[source] Reason),
}

impl From<RabbitError> for BusError {
    fn from(e: RabbitError) -> BusError {
        BusError::Unavailable(Reason::caused_by(e.to_string(), e))
    }
}

/// What the background task shares with the handles.
pub(super) struct Shared {
    config: RabbitConfig,
    /// The name of this bus's instance queue (`QueueKind::Instance`), the same for
    /// every reconnection.
    instance_queue: String,
    /// The confirm-mode channel to publish on, `None` while disconnected.
    publisher: watch::Sender<Option<Channel>>,
    /// Live subscriber streams.
    subscribers: Mutex<Vec<mpsc::Sender<BusMessage>>>,
    /// Live streams that acknowledge each delivery themselves.
    acked_subscribers: Mutex<Vec<mpsc::Sender<Delivery>>>,
    /// Acknowledgements being sent (shutdown waits for them).
    acks: tokio_util::task::TaskTracker,
    /// Bumped on each `subscribe()`, so a durable queue starts consuming.
    subscribed: watch::Sender<u64>,
    shutdown: CancellationToken,
    /// Successful connections of the consuming connection so far.
    connects: AtomicU64,
    /// Whether the consuming connection is up.
    consuming: watch::Sender<bool>,
    /// The consuming connection's generation once it consumes (see
    /// [`MessageBus::connection_generations`]).
    generation: watch::Sender<u64>,
    /// Bumped whenever a consuming channel closes, so that acknowledgements of its
    /// deliveries are not sent on a later channel.
    channel_epoch: Arc<AtomicU64>,
}

impl Shared {
    fn live_subscribers(&self) -> Vec<mpsc::Sender<BusMessage>> {
        let mut subs = self.subscribers.lock();
        subs.retain(|s| !s.is_closed());
        subs.clone()
    }

    fn live_acked_subscribers(&self) -> Vec<mpsc::Sender<Delivery>> {
        let mut subs = self.acked_subscribers.lock();
        subs.retain(|s| !s.is_closed());
        subs.clone()
    }

    fn has_subscribers(&self) -> bool {
        !self.live_subscribers().is_empty() || !self.live_acked_subscribers().is_empty()
    }
}

/// The RabbitMQ bus. Cheap to share behind an `Arc`; dropping it (or
/// [`RabbitBus::shutdown`]) closes the connection and ends the subscriber streams.
pub struct RabbitBus {
    shared: Arc<Shared>,
    /// The consuming and the publishing connections' tasks.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl fmt::Debug for RabbitBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitBus")
            .field("config", &self.shared.config)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl RabbitBus {
    /// Starts the bus: spawns the background task (needs a Tokio runtime) and waits for
    /// the outcome of its first connection attempt (at most `connect_timeout`).
    ///
    /// Returns `Ok` when connected, and also when the broker is unreachable (the task
    /// keeps retrying; `publish` says `Unavailable` meanwhile). Returns
    /// [`RabbitError::Config`] when the broker answered that the configuration cannot
    /// work (exchange of another type, access refused, ...).
    pub async fn connect(config: RabbitConfig) -> Result<RabbitBus, RabbitError> {
        if config.exchange.is_empty() {
            return Err(RabbitError::Config(
                "the exchange name is empty (the default exchange cannot fan out)".into(),
            ));
        }
        if let QueueKind::Durable(name) = &config.queue {
            if name.is_empty() {
                return Err(RabbitError::Config(
                    "the durable queue name is empty".into(),
                ));
            }
        }
        let (publisher, _) = watch::channel(None);
        let (subscribed, _) = watch::channel(0);
        let (consuming, _) = watch::channel(false);
        let (generation, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            instance_queue: format!("radiovis-{}", uuid::Uuid::new_v4()),
            config,
            publisher,
            subscribers: Mutex::new(Vec::new()),
            acked_subscribers: Mutex::new(Vec::new()),
            acks: tokio_util::task::TaskTracker::new(),
            subscribed,
            shutdown: CancellationToken::new(),
            connects: AtomicU64::new(0),
            consuming,
            generation,
            channel_epoch: Arc::new(AtomicU64::new(0)),
        });
        let (consume_tx, consume_rx) = oneshot::channel();
        let (publish_tx, publish_rx) = oneshot::channel();
        let tasks = vec![
            tokio::spawn(supervise(shared.clone(), Role::Consume, consume_tx)),
            tokio::spawn(supervise(shared.clone(), Role::Publish, publish_tx)),
        ];
        let bus = RabbitBus {
            shared,
            tasks: Mutex::new(tasks),
        };
        let (consume, publish) = tokio::join!(consume_rx, publish_rx);
        for first in [consume, publish] {
            if let Ok(Err(AttemptError::Config(m))) = first {
                bus.shared.shutdown.cancel();
                return Err(RabbitError::Config(m));
            }
        }
        // Connected, or a transient failure the tasks keep retrying.
        Ok(bus)
    }

    /// Whether the bus is connected now: both its publishing and its consuming
    /// connections are up.
    pub fn is_connected(&self) -> bool {
        self.shared.publisher.borrow().is_some() && *self.shared.consuming.borrow()
    }

    /// How many times the consuming connection connected so far (1 after the first
    /// connection, +1 on each reconnection).
    pub fn connects(&self) -> u64 {
        self.shared.connects.load(Ordering::Relaxed)
    }

    /// Waits until connected (both connections), at most `timeout`; whether it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut publisher = self.shared.publisher.subscribe();
        let mut consuming = self.shared.consuming.subscribe();
        let both = async {
            publisher.wait_for(Option::is_some).await.is_ok()
                && consuming.wait_for(|up| *up).await.is_ok()
        };
        tokio::time::timeout(timeout, both).await.unwrap_or(false) && self.is_connected()
    }

    /// The configuration (its `Debug` hides the password).
    pub fn config(&self) -> &RabbitConfig {
        &self.shared.config
    }

    /// Closes the connection and ends the subscriber streams. Later `publish` and
    /// `subscribe` calls fail with [`BusError::Closed`].
    pub async fn shutdown(&self) {
        // Acknowledgements already decided go out before the channel closes, or the
        // broker would redeliver messages that were processed.
        self.shared.acks.close();
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.shared.acks.wait()).await;
        self.shared.shutdown.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for task in tasks {
            let _ = task.await;
        }
    }
}

impl Drop for RabbitBus {
    fn drop(&mut self) {
        // The task sees it, closes the connection and exits.
        self.shared.shutdown.cancel();
    }
}

#[async_trait]
impl MessageBus for RabbitBus {
    async fn publish(&self, message: BusMessage) -> Result<(), BusError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(BusError::Closed);
        }
        let Some(channel) = self.shared.publisher.borrow().clone() else {
            return Err(BusError::Unavailable(
                "not connected to RabbitMQ (reconnecting)".into(),
            ));
        };
        let config = &self.shared.config;
        let properties = BasicProperties::default().with_headers(encode_headers(&message));
        let confirm = async {
            channel
                .basic_publish(
                    ShortString::from(config.exchange.as_str()),
                    ShortString::from(""),
                    BasicPublishOptions::default(),
                    &message.body,
                    properties,
                )
                .await?
                .await
        };
        match tokio::time::timeout(config.confirm_timeout, confirm).await {
            Ok(Ok(Confirmation::Ack(_) | Confirmation::NotRequested)) => Ok(()),
            Ok(Ok(Confirmation::Nack(_))) => Err(BusError::Rejected(format!(
                "RabbitMQ nacked the message to exchange {:?}",
                config.exchange
            ))),
            Ok(Err(e)) => Err(BusError::Unavailable(Reason::caused_by(
                format!("RabbitMQ publish failed: {e}"),
                e,
            ))),
            Err(elapsed) => Err(BusError::Unavailable(Reason::caused_by(
                format!(
                    "no publisher confirm from RabbitMQ within {:?}",
                    config.confirm_timeout
                ),
                elapsed,
            ))),
        }
    }

    async fn subscribe(&self) -> Result<BusStream, BusError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(BusError::Closed);
        }
        let (tx, rx) = mpsc::channel(self.shared.config.stream_capacity.max(1));
        self.shared.subscribers.lock().push(tx);
        self.shared.subscribed.send_modify(|n| *n += 1);
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        })))
    }

    fn connection_generations(&self) -> watch::Receiver<u64> {
        self.shared.generation.subscribe()
    }

    fn is_connected(&self) -> bool {
        RabbitBus::is_connected(self)
    }

    async fn subscribe_acked(&self) -> Result<DeliveryStream, BusError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(BusError::Closed);
        }
        let (tx, rx) = mpsc::channel(self.shared.config.stream_capacity.max(1));
        self.shared.acked_subscribers.lock().push(tx);
        self.shared.subscribed.send_modify(|n| *n += 1);
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        })))
    }
}

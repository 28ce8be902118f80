//! The RabbitMQ message bus ([`RabbitBus`]), wire-compatible with the original Python
//! RadioVisServer so that mixed fleets work during a migration (behaviour.md §4).
//!
//! Wire format: every message is published to the configured exchange (default
//! `amq.fanout`) with an empty routing key; the AMQP body is the STOMP body and the AMQP
//! `application_headers` are the forwarded headers plus `topic`, all long strings. On
//! the way in, long strings, short strings and byte arrays are accepted (the original's
//! AMQP library may write either), `topic` becomes [`BusMessage::topic`] and a message
//! without it is logged and dropped.
//!
//! Faults: [`RabbitBus::connect`] does not fail because the broker is down. A background
//! task connects with jittered, capped exponential backoff, declares the exchange and the
//! queue, binds them, and consumes; on connection loss it starts over and keeps feeding
//! the streams returned by [`MessageBus::subscribe`]. While disconnected, `publish`
//! fails promptly with [`BusError::Unavailable`]. Publisher confirms are on: `publish`
//! returns `Ok` only once the broker acked the message.
//!
//! A configuration error found on the first attempt (exchange of another type,
//! access refused on the vhost, bad credentials) is returned by `connect` as
//! [`RabbitError::Config`]; found later, it is logged as an error and retried.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{
    Ack, AckHandle, BusError, BusMessage, BusStream, Delivery, DeliveryStream, MessageBus,
};

/// Default exchange, as the original (`RABBITMQ_EXCHANGE`).
pub const DEFAULT_EXCHANGE: &str = "amq.fanout";
/// Default durable queue of the watchdog (`FB_QUEUE`).
pub const DEFAULT_FALLBACK_QUEUE: &str = "fallbacklogs";

/// AMQP reply codes that mean "fix the configuration", not "try again later".
const ACCESS_REFUSED: u16 = 403;
const NOT_FOUND: u16 = 404;
const PRECONDITION_FAILED: u16 = 406;
const NOT_ALLOWED: u16 = 530;

/// A connection that lived this long resets the reconnection backoff.
const STABLE_SESSION: Duration = Duration::from_secs(30);

/// AMQP frame size asked of the broker (see `RabbitConfig::uri`).
const FRAME_MAX: u32 = 16 * 1024;

/// Bound on a polite close (connection or channel).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Which queue this instance consumes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueKind {
    /// A server-named, exclusive, auto-delete queue of this instance (servers). Messages
    /// published while it is disconnected are not seen.
    Exclusive,
    /// A named durable queue (the watchdog's `FB_QUEUE`): messages wait in it while no
    /// consumer is attached. Consumption starts with the first `subscribe()`.
    Durable(String),
}

impl QueueKind {
    /// The watchdog's durable queue with its default name (`fallbacklogs`).
    pub fn fallback() -> QueueKind {
        QueueKind::Durable(DEFAULT_FALLBACK_QUEUE.to_owned())
    }
}

/// Where and how to connect. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RabbitConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    /// Virtual host, `/` by default.
    pub vhost: String,
    /// Fanout exchange every instance publishes to and consumes from.
    pub exchange: String,
    pub queue: QueueKind,
    /// Bound on one connection attempt (TCP, handshake, declarations).
    pub connect_timeout: Duration,
    /// Bound on waiting for the broker's publisher confirm.
    pub confirm_timeout: Duration,
    /// AMQP heartbeat proposed to the broker, in seconds (a dead link is noticed after
    /// about twice this); 0 leaves it to the broker.
    pub heartbeat: u16,
    /// First reconnection delay; doubles on each failure up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Messages buffered per subscriber stream (backpressure beyond that).
    pub stream_capacity: usize,
    /// Unacknowledged deliveries the broker may push to this consumer.
    pub prefetch: u16,
}

impl Default for RabbitConfig {
    fn default() -> Self {
        RabbitConfig {
            host: "127.0.0.1".to_owned(),
            port: 5672,
            user: "guest".to_owned(),
            password: "guest".to_owned(),
            vhost: "/".to_owned(),
            exchange: DEFAULT_EXCHANGE.to_owned(),
            queue: QueueKind::Exclusive,
            connect_timeout: Duration::from_secs(10),
            confirm_timeout: Duration::from_secs(5),
            heartbeat: 10,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            stream_capacity: 1024,
            prefetch: 256,
        }
    }
}

impl fmt::Debug for RabbitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .field("vhost", &self.vhost)
            .field("exchange", &self.exchange)
            .field("queue", &self.queue)
            .field("connect_timeout", &self.connect_timeout)
            .field("confirm_timeout", &self.confirm_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("min_backoff", &self.min_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("stream_capacity", &self.stream_capacity)
            .field("prefetch", &self.prefetch)
            .finish()
    }
}

impl RabbitConfig {
    /// A configuration from an AMQP URL, `amqp://user:password@host:port/vhost`
    /// (user, password, port and vhost optional; `%2f` is `/`, an absent path is the
    /// vhost `/`). Exchange and queue keep their defaults. Errors never contain the
    /// password.
    pub fn from_url(url: &str) -> Result<RabbitConfig, RabbitError> {
        let bad = |why: &str| RabbitError::Config(format!("invalid AMQP URL: {why}"));
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("amqp") => rest,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("amqps") => {
                return Err(bad("amqps (TLS) is not supported by this build"))
            }
            _ => return Err(bad("it must start with amqp://")),
        };
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let mut config = RabbitConfig::default();
        let hostport = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => {
                let (user, password) = match userinfo.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (userinfo, None),
                };
                config.user = percent_decode(user).ok_or_else(|| bad("bad escape in user"))?;
                if let Some(p) = password {
                    config.password =
                        percent_decode(p).ok_or_else(|| bad("bad escape in password"))?;
                }
                hostport
            }
            None => authority,
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unterminated IPv6 address"))?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if !host.is_empty() {
            config.host = percent_decode(host).ok_or_else(|| bad("bad escape in host"))?;
        }
        if let Some(p) = port.filter(|p| !p.is_empty()) {
            config.port = p.parse().map_err(|_| bad("the port is not a number"))?;
        }
        if let Some(path) = path {
            config.vhost = percent_decode(path).ok_or_else(|| bad("bad escape in vhost"))?;
        }
        Ok(config)
    }

    /// The same configuration with this exchange.
    pub fn with_exchange(mut self, exchange: impl Into<String>) -> RabbitConfig {
        self.exchange = exchange.into();
        self
    }

    /// The same configuration with this queue.
    pub fn with_queue(mut self, queue: QueueKind) -> RabbitConfig {
        self.queue = queue;
        self
    }

    /// `host:port/vhost` as user, for logs (no password).
    fn display_target(&self) -> String {
        format!(
            "{}@{}:{} (vhost {:?})",
            self.user, self.host, self.port, self.vhost
        )
    }

    fn uri(&self) -> AMQPUri {
        AMQPUri {
            scheme: AMQPScheme::AMQP,
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: self.user.clone(),
                    password: self.password.clone(),
                },
                host: self.host.clone(),
                port: self.port,
            },
            vhost: self.vhost.clone(),
            query: AMQPQueryString {
                heartbeat: (self.heartbeat > 0).then_some(self.heartbeat),
                // lapin keeps two zero-filled buffers of 32 frames each per connection:
                // with the broker's default 128 KiB frames that is 8 MiB resident per
                // connection (measured); RadioVis messages are a line of text, and
                // larger ones are simply split into more frames.
                frame_max: Some(FRAME_MAX),
                ..AMQPQueryString::default()
            },
        }
    }
}

/// Decodes `%XX` escapes; `None` on a bad escape or invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Why [`RabbitBus::connect`] refused to start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RabbitError {
    /// The configuration cannot work against this broker (exchange of another type,
    /// access refused, bad URL). Retrying will not help; the message says what to fix.
    #[error("RabbitMQ configuration error: {0}")]
    Config(String),
}

impl From<RabbitError> for BusError {
    fn from(e: RabbitError) -> BusError {
        BusError::Unavailable(e.to_string())
    }
}

/// One failed attempt of the background task.
#[derive(Debug)]
enum AttemptError {
    /// Will not get better by itself.
    Config(String),
    /// Broker down, network, timeout: retry.
    Transient(String),
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptError::Config(m) | AttemptError::Transient(m) => f.write_str(m),
        }
    }
}

/// The AMQP reply code of a protocol error.
fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => Some(p.get_id()),
        _ => None,
    }
}

/// Classifies an error of the connection or of a declaration.
fn classify(context: &str, e: &lapin::Error) -> AttemptError {
    let text = format!("{context}: {e}");
    match reply_code(e) {
        Some(ACCESS_REFUSED | NOT_ALLOWED | PRECONDITION_FAILED) => AttemptError::Config(text),
        _ => AttemptError::Transient(text),
    }
}

/// What the background task shares with the handles.
struct Shared {
    config: RabbitConfig,
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
    /// Successful connections so far.
    connects: AtomicU64,
}

impl Shared {
    fn live_subscribers(&self) -> Vec<mpsc::Sender<BusMessage>> {
        let mut subs = lock(&self.subscribers);
        subs.retain(|s| !s.is_closed());
        subs.clone()
    }

    fn live_acked_subscribers(&self) -> Vec<mpsc::Sender<Delivery>> {
        let mut subs = lock(&self.acked_subscribers);
        subs.retain(|s| !s.is_closed());
        subs.clone()
    }

    fn has_subscribers(&self) -> bool {
        !self.live_subscribers().is_empty() || !self.live_acked_subscribers().is_empty()
    }
}

/// Acknowledges a RabbitMQ delivery once every acked stream that got it acknowledged
/// it; dropped unacknowledged, the delivery is rejected with requeue, so the broker
/// redelivers it (to this consumer after a reconnection, or to another).
struct RabbitAck {
    acker: lapin::Acker,
    acked: AtomicBool,
    tracker: tokio_util::task::TaskTracker,
}

impl Drop for RabbitAck {
    fn drop(&mut self) {
        let acker = self.acker.clone();
        let acked = self.acked.load(Ordering::SeqCst);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            self.tracker.spawn_on(
                async move {
                    let r = if acked {
                        acker.ack(BasicAckOptions::default()).await
                    } else {
                        acker
                            .nack(BasicNackOptions {
                                requeue: true,
                                ..Default::default()
                            })
                            .await
                    };
                    if let Err(e) = r {
                        // The channel closed meanwhile: the broker requeues it anyway.
                        debug!(error = %e, acked, "delivery acknowledgement not sent");
                    }
                },
                &handle,
            );
        }
    }
}

/// One acked stream's share of a [`RabbitAck`].
struct RabbitAckHandle(Arc<RabbitAck>);

impl AckHandle for RabbitAckHandle {
    fn ack(self: Box<Self>) {
        self.0.acked.store(true, Ordering::SeqCst);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The RabbitMQ bus. Cheap to share behind an `Arc`; dropping it (or
/// [`RabbitBus::shutdown`]) closes the connection and ends the subscriber streams.
pub struct RabbitBus {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
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
        let shared = Arc::new(Shared {
            config,
            publisher,
            subscribers: Mutex::new(Vec::new()),
            acked_subscribers: Mutex::new(Vec::new()),
            acks: tokio_util::task::TaskTracker::new(),
            subscribed,
            shutdown: CancellationToken::new(),
            connects: AtomicU64::new(0),
        });
        let (first_tx, first_rx) = oneshot::channel();
        let task = tokio::spawn(supervise(shared.clone(), first_tx));
        let bus = RabbitBus {
            shared,
            task: Mutex::new(Some(task)),
        };
        match first_rx.await {
            Ok(Err(AttemptError::Config(m))) => {
                bus.shared.shutdown.cancel();
                Err(RabbitError::Config(m))
            }
            // Connected, or a transient failure the task keeps retrying.
            _ => Ok(bus),
        }
    }

    /// Whether the bus is connected now (publishing may work).
    pub fn is_connected(&self) -> bool {
        self.shared.publisher.borrow().is_some()
    }

    /// How many times the bus connected so far (1 after the first connection, +1 on
    /// each reconnection).
    pub fn connects(&self) -> u64 {
        self.shared.connects.load(Ordering::Relaxed)
    }

    /// Waits until connected, at most `timeout`; whether it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.publisher.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(Option::is_some))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
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
        let task = lock(&self.task).take();
        if let Some(task) = task {
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
            Ok(Err(e)) => Err(BusError::Unavailable(format!(
                "RabbitMQ publish failed: {e}"
            ))),
            Err(_) => Err(BusError::Unavailable(format!(
                "no publisher confirm from RabbitMQ within {:?}",
                config.confirm_timeout
            ))),
        }
    }

    async fn subscribe(&self) -> Result<BusStream, BusError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(BusError::Closed);
        }
        let (tx, rx) = mpsc::channel(self.shared.config.stream_capacity.max(1));
        lock(&self.shared.subscribers).push(tx);
        self.shared.subscribed.send_modify(|n| *n += 1);
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        })))
    }

    async fn subscribe_acked(&self) -> Result<DeliveryStream, BusError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(BusError::Closed);
        }
        let (tx, rx) = mpsc::channel(self.shared.config.stream_capacity.max(1));
        lock(&self.shared.acked_subscribers).push(tx);
        self.shared.subscribed.send_modify(|n| *n += 1);
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        })))
    }
}

/// The AMQP headers of a message: the forwarded headers and `topic`, long strings.
fn encode_headers(message: &BusMessage) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in &message.headers {
        // The topic is the message's; for a repeated header the first wins (STOMP).
        if k == "topic" || table.contains_key(k) {
            continue;
        }
        match ShortString::try_new(k.as_str()) {
            Ok(name) => {
                table.insert(name, AMQPValue::LongString(LongString::from(v.as_str())));
            }
            Err(_) => warn!(header = %k, "header name too long for AMQP, dropped"),
        }
    }
    table.insert(
        ShortString::from("topic"),
        AMQPValue::LongString(LongString::from(message.topic.as_str())),
    );
    table
}

/// A string from an AMQP header value the original may have written.
fn value_to_string(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        _ => return None,
    })
}

/// The bus message of a delivery; `None` (logged) when it has no `topic`.
fn decode(properties: &BasicProperties, body: &[u8]) -> Option<BusMessage> {
    let mut topic = None;
    let mut headers = Vec::new();
    if let Some(table) = properties.headers() {
        for (k, v) in table.inner() {
            let Some(value) = value_to_string(v) else {
                debug!(header = %k.as_str(), "AMQP header of an unsupported type, dropped");
                continue;
            };
            if k.as_str() == "topic" {
                topic = Some(value);
            } else {
                headers.push((k.as_str().to_owned(), value));
            }
        }
    }
    match topic {
        Some(topic) if !topic.is_empty() => Some(BusMessage {
            topic,
            body: Bytes::copy_from_slice(body),
            headers,
        }),
        _ => {
            warn!(
                body_len = body.len(),
                "RabbitMQ message without a topic header, dropped"
            );
            None
        }
    }
}

/// Jittered capped exponential backoff.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        let min = min.max(Duration::from_millis(1));
        let max = max.max(min);
        Backoff {
            min,
            max,
            next: min,
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    /// The delay before the next attempt: uniformly in [next/2, next], then doubles.
    fn delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let mut h = RandomState::new().build_hasher();
        h.write_u64(0);
        let frac = (h.finish() % 1000) as u32;
        base / 2 + base / 2 * frac / 1000
    }
}

/// A live connection with everything declared.
struct Session {
    connection: Connection,
    publisher: Channel,
    consumer_channel: Channel,
    queue: ShortString,
}

/// The background task: connect, run, reconnect, until shutdown.
async fn supervise(shared: Arc<Shared>, first: oneshot::Sender<Result<(), AttemptError>>) {
    let config = &shared.config;
    let target = config.display_target();
    let mut first = Some(first);
    let mut backoff = Backoff::new(config.min_backoff, config.max_backoff);
    let mut failures: u32 = 0;
    loop {
        let attempt = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            r = tokio::time::timeout(config.connect_timeout, open_session(config)) => r,
        };
        let attempt = attempt.unwrap_or_else(|_| {
            Err(AttemptError::Transient(format!(
                "no answer within {:?}",
                config.connect_timeout
            )))
        });
        match attempt {
            Ok(session) => {
                info!(
                    broker = %target,
                    exchange = %config.exchange,
                    queue = %session.queue.as_str(),
                    "connected to RabbitMQ"
                );
                shared.connects.fetch_add(1, Ordering::Relaxed);
                shared
                    .publisher
                    .send_replace(Some(session.publisher.clone()));
                if let Some(first) = first.take() {
                    let _ = first.send(Ok(()));
                }
                failures = 0;
                let since = tokio::time::Instant::now();
                let mut session = session;
                let reason = run_session(&shared, &mut session).await;
                shared.publisher.send_replace(None);
                match reason {
                    None => {
                        close_connection(&session.connection, "shutdown").await;
                        break;
                    }
                    Some(reason) => {
                        // A connection that lived a while starts over from the shortest
                        // delay; one that keeps dropping at once backs off.
                        if since.elapsed() >= STABLE_SESSION {
                            backoff.reset();
                        }
                        let delay = backoff.delay();
                        warn!(
                            broker = %target,
                            error = %reason,
                            retry_in = ?delay,
                            "lost RabbitMQ connection, reconnecting"
                        );
                        close_connection(&session.connection, "reconnecting").await;
                        tokio::select! {
                            _ = shared.shutdown.cancelled() => break,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
            Err(AttemptError::Config(m)) if first.is_some() => {
                error!(broker = %target, error = %m, "RabbitMQ configuration error, not starting");
                if let Some(first) = first.take() {
                    let _ = first.send(Err(AttemptError::Config(m)));
                }
                break;
            }
            Err(e) => {
                failures += 1;
                let delay = backoff.delay();
                match &e {
                    AttemptError::Config(m) => error!(
                        broker = %target,
                        error = %m,
                        retry_in = ?delay,
                        "RabbitMQ configuration error"
                    ),
                    AttemptError::Transient(m) => warn!(
                        broker = %target,
                        error = %m,
                        attempt = failures,
                        retry_in = ?delay,
                        "cannot connect to RabbitMQ, retrying"
                    ),
                }
                if let Some(first) = first.take() {
                    let _ = first.send(Err(e));
                }
                tokio::select! {
                    _ = shared.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    shared.publisher.send_replace(None);
    // Ends the subscriber streams.
    lock(&shared.subscribers).clear();
    debug!("RabbitMQ bus task stopped");
}

/// Closes a connection politely, without waiting long for a dead broker.
async fn close_connection(connection: &Connection, why: &str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, why.into())).await;
}

/// Connects, declares the exchange and the queue, binds, opens the publishing channel.
async fn open_session(config: &RabbitConfig) -> Result<Session, AttemptError> {
    let connection = Connection::connect_uri(config.uri(), ConnectionProperties::default())
        .await
        .map_err(|e| classify("connect", &e))?;
    match declare(config, &connection).await {
        Ok((publisher, consumer_channel, queue)) => Ok(Session {
            connection,
            publisher,
            consumer_channel,
            queue,
        }),
        Err(e) => {
            close_connection(&connection, "setup failed").await;
            Err(e)
        }
    }
}

async fn declare(
    config: &RabbitConfig,
    connection: &Connection,
) -> Result<(Channel, Channel, ShortString), AttemptError> {
    let channel = || async {
        connection
            .create_channel()
            .await
            .map_err(|e| classify("open channel", &e))
    };
    declare_exchange(config, connection).await?;

    let consumer_channel = open_consumer_channel(config, connection).await?;
    let queue = match &config.queue {
        QueueKind::Exclusive => consumer_channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| classify("declare the exclusive queue", &e))?,
        QueueKind::Durable(name) => consumer_channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| match reply_code(&e) {
                Some(PRECONDITION_FAILED) => AttemptError::Config(format!(
                    "queue {name:?} exists with other properties than a durable queue: {e}"
                )),
                _ => classify(&format!("declare the durable queue {name:?}"), &e),
            })?,
    };
    let queue = queue.name().clone();
    consumer_channel
        .queue_bind(
            queue.clone(),
            config.exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| classify(&format!("bind queue {:?}", queue.as_str()), &e))?;

    let publisher = channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| classify("enable publisher confirms", &e))?;
    Ok((publisher, consumer_channel, queue))
}

/// A channel to consume on, with the prefetch set.
async fn open_consumer_channel(
    config: &RabbitConfig,
    connection: &Connection,
) -> Result<Channel, AttemptError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| classify("open channel", &e))?;
    channel
        .basic_qos(config.prefetch.max(1), BasicQosOptions::default())
        .await
        .map_err(|e| classify("set the prefetch", &e))?;
    Ok(channel)
}

/// Makes sure the exchange exists and is a fanout. Each check runs on a throwaway
/// channel since a failed declare closes its channel.
async fn declare_exchange(
    config: &RabbitConfig,
    connection: &Connection,
) -> Result<(), AttemptError> {
    let name = config.exchange.as_str();
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let new_channel = || async {
        connection
            .create_channel()
            .await
            .map_err(|e| classify("open channel", &e))
    };

    if name.starts_with("amq.") {
        // Predeclared: clients may only declare them passively, and their type is
        // given by their name.
        let kind = match name {
            "amq.fanout" => "fanout",
            "amq.direct" => "direct",
            "amq.topic" => "topic",
            "amq.headers" | "amq.match" => "headers",
            _ => "unknown",
        };
        if kind != "fanout" {
            return Err(AttemptError::Config(format!(
                "exchange {name:?} is a {kind} exchange, a fanout exchange is required"
            )));
        }
        let ch = new_channel().await?;
        ch.exchange_declare(
            name.into(),
            ExchangeKind::Fanout,
            passive,
            FieldTable::default(),
        )
        .await
        .map_err(|e| classify(&format!("check exchange {name:?}"), &e))?;
        let _ = ch.close(200, "ok".into()).await;
        return Ok(());
    }

    let ch = new_channel().await?;
    match ch
        .exchange_declare(
            name.into(),
            ExchangeKind::Fanout,
            passive,
            FieldTable::default(),
        )
        .await
    {
        Ok(()) => {
            let _ = ch.close(200, "ok".into()).await;
            // It exists: an equivalent declare checks its type.
            let ch = new_channel().await?;
            match ch
                .exchange_declare(
                    name.into(),
                    ExchangeKind::Fanout,
                    durable,
                    FieldTable::default(),
                )
                .await
            {
                Ok(()) => {
                    let _ = ch.close(200, "ok".into()).await;
                    Ok(())
                }
                Err(e) if reply_code(&e) == Some(PRECONDITION_FAILED) => {
                    let text = e.to_string();
                    if text.contains("'type'") {
                        Err(AttemptError::Config(format!(
                            "exchange {name:?} exists with another type than fanout: {text}"
                        )))
                    } else {
                        // A fanout with other flags (e.g. not durable): usable.
                        debug!(exchange = name, error = %text, "existing fanout exchange has other flags, using it");
                        Ok(())
                    }
                }
                Err(e) => Err(classify(&format!("check exchange {name:?}"), &e)),
            }
        }
        Err(e) if reply_code(&e) == Some(NOT_FOUND) => {
            let ch = new_channel().await?;
            ch.exchange_declare(
                name.into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(|e| classify(&format!("declare exchange {name:?}"), &e))?;
            info!(exchange = name, "declared durable fanout exchange");
            let _ = ch.close(200, "ok".into()).await;
            Ok(())
        }
        Err(e) => Err(classify(&format!("check exchange {name:?}"), &e)),
    }
}

/// Consumes and dispatches until shutdown (`None`) or connection loss (`Some(reason)`).
async fn run_session(shared: &Shared, session: &mut Session) -> Option<String> {
    let config = &shared.config;
    let durable = matches!(config.queue, QueueKind::Durable(_));
    let mut subscribed = shared.subscribed.subscribe();
    let mut consumer: Option<Consumer> = None;
    let mut check = tokio::time::interval(Duration::from_millis(500));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A durable queue keeps its messages until someone subscribes.
        if consumer.is_none() && (!durable || shared.has_subscribers()) {
            match session
                .consumer_channel
                .basic_consume(
                    session.queue.clone(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
            {
                Ok(c) => consumer = Some(c),
                Err(e) => return Some(format!("consume from {:?}: {e}", session.queue.as_str())),
            }
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return None,
            _ = check.tick() => {
                if !session.connection.status().connected() {
                    return Some("connection closed".into());
                }
                if !session.publisher.status().connected() {
                    return Some("publishing channel closed".into());
                }
                if !session.consumer_channel.status().connected() {
                    return Some("consuming channel closed".into());
                }
            }
            _ = subscribed.changed(), if consumer.is_none() => {}
            delivery = next_delivery(&mut consumer), if consumer.is_some() => {
                let delivery = match delivery {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => return Some(e.to_string()),
                    None => return Some("the broker cancelled the consumer".into()),
                };
                let subscribers = shared.live_subscribers();
                let acked_subscribers = shared.live_acked_subscribers();
                if durable && subscribers.is_empty() && acked_subscribers.is_empty() {
                    // Nobody to hand it to: this one and the prefetched ones go back to
                    // the queue (closing the channel requeues them), and consuming
                    // resumes with the next subscriber.
                    let _ = delivery
                        .nack(BasicNackOptions { requeue: true, ..Default::default() })
                        .await;
                    consumer = None;
                    let _ = tokio::time::timeout(
                        CLOSE_TIMEOUT,
                        session.consumer_channel.close(200, "no subscriber".into()),
                    )
                    .await;
                    match open_consumer_channel(config, &session.connection).await {
                        Ok(ch) => session.consumer_channel = ch,
                        Err(e) => return Some(e.to_string()),
                    }
                    debug!(queue = %session.queue.as_str(), "no subscriber left, paused consuming");
                    continue;
                }
                let Some(message) = decode(&delivery.properties, &delivery.data) else {
                    // No topic: logged by `decode`, dropped.
                    if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                        return Some(format!("ack: {e}"));
                    }
                    continue;
                };
                for s in subscribers {
                    tokio::select! {
                        _ = shared.shutdown.cancelled() => return None,
                        // A stream dropped meanwhile is not an error.
                        _ = s.send(message.clone()) => {}
                    }
                }
                if acked_subscribers.is_empty() {
                    if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                        return Some(format!("ack: {e}"));
                    }
                    continue;
                }
                // Acknowledged when the acked streams are done with it (or requeued
                // when they drop it unacknowledged).
                let ack = Arc::new(RabbitAck {
                    acker: delivery.acker.clone(),
                    acked: AtomicBool::new(false),
                    tracker: shared.acks.clone(),
                });
                for s in acked_subscribers {
                    let d = Delivery {
                        message: message.clone(),
                        ack: Ack::new(Box::new(RabbitAckHandle(ack.clone()))),
                    };
                    tokio::select! {
                        _ = shared.shutdown.cancelled() => return None,
                        _ = s.send(d) => {}
                    }
                }
            }
        }
    }
}

async fn next_delivery(
    consumer: &mut Option<Consumer>,
) -> Option<lapin::Result<lapin::message::Delivery>> {
    match consumer {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

/// Leadership among watchdogs sharing one broker: the holder of the exclusive queue
/// `<name>` is the active one. The broker deletes an exclusive queue when its
/// connection dies, so a standby that keeps trying to declare it takes over within one
/// retry period after the active process stops, however it stops.
pub struct LeaderLock {
    connection: Connection,
    lost: CancellationToken,
    watcher: JoinHandle<()>,
}

impl LeaderLock {
    /// Waits until this process holds the lock (retrying every `retry`), or `None` when
    /// `shutdown` is cancelled first.
    pub async fn acquire(
        config: &RabbitConfig,
        name: &str,
        retry: Duration,
        shutdown: &CancellationToken,
    ) -> Option<LeaderLock> {
        let mut waiting_logged = false;
        loop {
            match Self::try_acquire(config, name).await {
                Ok(lock) => {
                    info!(lock = name, "leadership acquired: this watchdog is active");
                    return Some(lock);
                }
                Err(why) => {
                    if !waiting_logged {
                        info!(lock = name, reason = %why, "standing by: another watchdog is active or the broker is unreachable");
                        waiting_logged = true;
                    } else {
                        tracing::trace!(lock = name, reason = %why, "still standing by");
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(retry) => {}
            }
        }
    }

    async fn try_acquire(config: &RabbitConfig, name: &str) -> Result<LeaderLock, String> {
        let connect = Connection::connect_uri(config.uri(), ConnectionProperties::default());
        let connection = tokio::time::timeout(config.connect_timeout, connect)
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| format!("connect: {e}"))?;
        let declared = async {
            let ch = connection.create_channel().await?;
            ch.queue_declare(
                name.into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
        };
        match tokio::time::timeout(config.connect_timeout, declared).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                close_connection(&connection, "lock held elsewhere").await;
                return Err(format!("lock queue: {e}"));
            }
            Err(_) => {
                close_connection(&connection, "lock timeout").await;
                return Err("lock queue declaration timed out".to_owned());
            }
        }
        let lost = CancellationToken::new();
        let status = connection.status().clone();
        let watcher = {
            let lost = lost.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                loop {
                    tick.tick().await;
                    if !status.connected() {
                        warn!("leadership lost: the lock connection closed");
                        lost.cancel();
                        return;
                    }
                }
            })
        };
        Ok(LeaderLock {
            connection,
            lost,
            watcher,
        })
    }

    /// Completes when the lock is lost (its connection closed); the holder must stop
    /// acting as the leader then.
    pub async fn lost(&self) {
        self.lost.cancelled().await
    }

    /// Gives the lock up.
    pub async fn release(self) {
        self.watcher.abort();
        close_connection(&self.connection, "released").await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        let c =
            RabbitConfig::from_url("amqp://bob:s%40cret@rabbit.example:5673/%2fvh").expect("valid");
        assert_eq!(c.user, "bob");
        assert_eq!(c.password, "s@cret");
        assert_eq!(c.host, "rabbit.example");
        assert_eq!(c.port, 5673);
        assert_eq!(c.vhost, "/vh");
        let c = RabbitConfig::from_url("amqp://10.0.0.1").expect("valid");
        assert_eq!(
            (c.host.as_str(), c.port, c.vhost.as_str()),
            ("10.0.0.1", 5672, "/")
        );
        let c = RabbitConfig::from_url("amqp://[::1]:5000/").expect("valid");
        assert_eq!(
            (c.host.as_str(), c.port, c.vhost.as_str()),
            ("::1", 5000, "")
        );
        let e = RabbitConfig::from_url("amqp://u:hunter2@h:port/").expect_err("bad port");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(RabbitConfig::from_url("amqps://h").is_err());
        assert!(RabbitConfig::from_url("http://h").is_err());
    }

    #[test]
    fn debug_hides_password() {
        let c = RabbitConfig {
            password: "hunter2".into(),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn headers_round_trip() {
        let m = BusMessage {
            topic: "/topic/fm/4e1/4001/09580/text".into(),
            body: Bytes::from_static(b"TEXT hi"),
            headers: vec![
                ("message-id".into(), "1".into()),
                ("when".into(), "1700000000".into()),
            ],
        };
        let props = BasicProperties::default().with_headers(encode_headers(&m));
        let back = decode(&props, b"TEXT hi").expect("has topic");
        assert_eq!(back.topic, m.topic);
        assert_eq!(back.header("message-id"), Some("1"));
        assert_eq!(back.header("when"), Some("1700000000"));
        assert_eq!(back.header("topic"), None);
        assert!(decode(&BasicProperties::default(), b"x").is_none());
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            last = b.delay();
            assert!(last <= Duration::from_secs(10));
        }
        assert!(last >= Duration::from_secs(5));
        b.reset();
        assert!(b.delay() <= Duration::from_millis(100));
    }
}

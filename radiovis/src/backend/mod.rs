//! The contract between the library and the world: four small async traits.
//!
//! * [`MessageBus`]: what crosses between server instances (RabbitMQ in production,
//!   [`memory::LocalBus`] in one process).
//! * [`DirectoryApi`]: the station directory (PlugIt HTTP API in production,
//!   [`memory::StaticDirectory`] from a file).
//! * [`Cache`]: state shared between instances (memcached in production,
//!   [`memory::MemoryCache`]).
//! * [`LogStore`]: the message log of the watchdog (PlugIt in production,
//!   [`memory::MemoryLogStore`]).
//!
//! Every method may fail with its layer's typed error; callers treat a failure as
//! "no answer" and degrade as docs/protocol.md#faults says (auth refused, empty list, topic not
//! converted, cache skipped), never panic. Implementations must bound every call in
//! time (their own timeouts), so that no caller hangs on a dead service.
//!
//! With the `mock` feature, each trait has a `mockall` mock (`MockMessageBus`, ...).

#[cfg(feature = "memcached")]
pub mod memcached;
pub mod memory;
#[cfg(feature = "plugit")]
pub mod plugit;
pub mod pyvalue;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

/// One message on the bus: the topic it was sent to (as the broadcaster wrote it, CC or
/// GCC form), the STOMP body, and the forwarded headers (`trigger-time`, `link`,
/// `message-id`, `when`, ...). The topic is not among the headers; a bus that carries it
/// as a header (RabbitMQ) adds and removes it itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    /// The destination as the publisher wrote it (not normalised).
    pub topic: String,
    /// The STOMP body, unchanged (`TEXT ...`, `SHOW ...`).
    pub body: Bytes,
    /// The forwarded headers, in order.
    pub headers: Vec<(String, String)>,
}

impl BusMessage {
    /// The value of the first header with this name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every message published on the bus, in order, for as long as the bus lives. A bus
/// that reconnects keeps feeding the same stream.
pub type BusStream = BoxStream<'static, BusMessage>;

/// How a bus learns that a consumer finished with a message.
pub trait AckHandle: Send {
    /// The message was processed: the bus may forget it.
    fn ack(self: Box<Self>);
}

/// The acknowledgement of one [`Delivery`]. [`Ack::ack`] once the message is safely
/// processed; dropping it unacknowledged hands the message back to the bus (a durable
/// queue redelivers it), so a consumer that stops early loses nothing.
pub struct Ack(Option<Box<dyn AckHandle>>);

impl Ack {
    /// An acknowledgement that does nothing (buses without redelivery).
    pub fn none() -> Ack {
        Ack(None)
    }

    /// Wraps a bus's acknowledgement.
    pub fn new(handle: Box<dyn AckHandle>) -> Ack {
        Ack(Some(handle))
    }

    /// Acknowledges the message.
    pub fn ack(mut self) {
        if let Some(h) = self.0.take() {
            h.ack();
        }
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Ack(pending)"
        } else {
            "Ack(none)"
        })
    }
}

/// A bus message and its acknowledgement.
#[derive(Debug)]
pub struct Delivery {
    /// The message.
    pub message: BusMessage,
    /// Acknowledge once the message is handled for good (dropping it leaves the
    /// message to be redelivered, on a bus that redelivers).
    pub ack: Ack,
}

/// Deliveries to acknowledge one by one (see [`MessageBus::subscribe_acked`]).
pub type DeliveryStream = BoxStream<'static, Delivery>;

/// The text of a backend error for people, and the error that caused it (when there
/// is one) for programs: [`std::error::Error::source`] returns it, so the underlying
/// `io::Error`, `lapin::Error`, `hyper_util` or `serde_json` error can be inspected
/// or downcast.
///
/// The text is the whole message shown to users (it already includes the cause's text,
/// as before the cause was kept), so `Display` is unchanged; equality compares the
/// text only. It derefs to `str`, and `"text".into()` makes one without a cause (what
/// mocks and tests use).
#[derive(Clone)]
pub struct Reason {
    text: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Reason {
    /// A reason without an underlying error.
    pub fn new(text: impl Into<String>) -> Reason {
        Reason {
            text: text.into(),
            source: None,
        }
    }

    /// A reason caused by `source`. `text` should say what failed, with the cause's
    /// text when people need it (it is all they see).
    pub fn caused_by(
        text: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Reason {
        Reason {
            text: text.into(),
            source: Some(Arc::from(source.into())),
        }
    }

    /// The same reason, its text prefixed with `context: ` (the cause is kept).
    pub fn context(self, context: impl std::fmt::Display) -> Reason {
        Reason {
            text: format!("{context}: {}", self.text),
            source: self.source,
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::ops::Deref for Reason {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::fmt::Debug for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Some(source) => f
                .debug_struct("Reason")
                .field("text", &self.text)
                .field("source", source)
                .finish(),
            None => self.text.fmt(f),
        }
    }
}

impl PartialEq for Reason {
    fn eq(&self, other: &Reason) -> bool {
        self.text == other.text
    }
}

impl Eq for Reason {}

impl std::error::Error for Reason {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<String> for Reason {
    fn from(text: String) -> Reason {
        Reason::new(text)
    }
}

impl From<&str> for Reason {
    fn from(text: &str) -> Reason {
        Reason::new(text)
    }
}

/// Errors of the message bus layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The bus cannot take messages now (broker down, reconnecting).
    #[error("message bus unavailable: {0}")]
    Unavailable(#[source] Reason),
    /// The broker refused the message (negative publisher confirm).
    #[error("message bus rejected the message: {0}")]
    Rejected(String),
    /// The bus was shut down.
    #[error("message bus closed")]
    Closed,
}

/// The bus connecting all server instances and the watchdog.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait MessageBus: Send + Sync + 'static {
    /// Publishes a message to every consumer, this instance included. Returns once the
    /// bus has taken responsibility for it (a broker's publisher confirm); an error means
    /// the message was not taken and the publisher must be told.
    async fn publish(&self, message: BusMessage) -> Result<(), BusError>;

    /// Starts consuming. Each call returns a stream that sees every message published
    /// after it (and, for a durable queue, those waiting in it).
    async fn subscribe(&self) -> Result<BusStream, BusError>;

    /// Generations of the bus's connection to what carries messages between instances:
    /// the value changes each time the bus (re)connects and consumes again, after which
    /// messages published while it was disconnected were not seen by this instance (the
    /// hub then re-reads the last messages from the shared cache,
    /// docs/protocol.md#rabbitmq-queues). The default never changes (buses that never
    /// disconnect).
    fn connection_generations(&self) -> tokio::sync::watch::Receiver<u64> {
        tokio::sync::watch::channel(0).1
    }

    /// Whether the bus can carry messages between instances now (readiness,
    /// docs/protocol.md#health). The default: always (buses that never disconnect).
    fn is_connected(&self) -> bool {
        true
    }

    /// Like [`MessageBus::subscribe`], for consumers that must not lose a message even
    /// when they crash: a bus with redelivery (a durable RabbitMQ queue) forgets a
    /// message only when its [`Ack`] is acknowledged. The default acknowledges nothing
    /// (for buses without redelivery).
    async fn subscribe_acked(&self) -> Result<DeliveryStream, BusError> {
        use futures::StreamExt;
        let stream = self.subscribe().await?;
        Ok(Box::pin(stream.map(|message| Delivery {
            message,
            ack: Ack::none(),
        })))
    }
}

/// Errors of the directory layer. Messages never contain a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// The directory could not be reached (connection refused, DNS, TLS).
    #[error("directory unreachable: {0}")]
    Unreachable(#[source] Reason),
    /// No answer within the configured timeout.
    #[error("directory did not answer within {0:?}")]
    Timeout(Duration),
    /// An HTTP status other than success.
    #[error("directory answered HTTP {0}")]
    Status(u16),
    /// An answer that does not decode (docs/protocol.md#directory).
    #[error("directory answer not understood: {0}")]
    BadAnswer(#[source] Reason),
}

/// A channel known to the directory: its topic (ending with `/`) and its id (what
/// [`DirectoryApi::get_channel_default`] takes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRef {
    /// The channel topic, ending with `/`.
    pub topic: String,
    /// The directory's id of the channel.
    pub id: String,
}

/// A channel's default slide, sent by the watchdog when the broadcaster goes quiet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelDefault {
    /// Image file name, appended to `FB_IMAGE_LOCATIONS` when that is set.
    #[serde(default)]
    pub filename: Option<String>,
    /// Default text (sent as `TEXT <radiotext>`).
    #[serde(default)]
    pub radiotext: Option<String>,
    /// Default link (`link` header).
    #[serde(default)]
    pub radiolink: Option<String>,
    /// Public URL of the image, used when `FB_IMAGE_LOCATIONS` is not set.
    #[serde(default)]
    pub public_url: Option<String>,
}

/// The station directory (docs/protocol.md#directory).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait DirectoryApi: Send + Sync + 'static {
    /// Whether `username`/`password` may log in from `ip`. `Ok(false)` for wrong
    /// credentials; an error when the directory could not answer.
    async fn check_auth(
        &self,
        username: &str,
        password: &str,
        ip: IpAddr,
    ) -> Result<bool, DirectoryError>;

    /// Channel topics (ending with `/`) a station may publish to. Unknown station: empty.
    async fn get_channels(&self, station_id: &str) -> Result<Vec<String>, DirectoryError>;

    /// The GCC (`4e1`) of an ISO country code (`ch`), `None` when unknown.
    async fn get_gcc(&self, cc: &str) -> Result<Option<String>, DirectoryError>;

    /// Every channel.
    async fn get_all_channels(&self) -> Result<Vec<ChannelRef>, DirectoryError>;

    /// Every channel that has a default picture.
    async fn get_all_vis_channels(&self) -> Result<Vec<ChannelRef>, DirectoryError>;

    /// The default slide of a channel, `None` when it has none.
    async fn get_channel_default(&self, id: &str)
        -> Result<Option<ChannelDefault>, DirectoryError>;
}

/// Errors of the shared cache layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// The cache could not be reached or did not answer in time.
    #[error("cache unavailable: {0}")]
    Unavailable(#[source] Reason),
    /// An answer outside the protocol.
    #[error("cache answer not understood: {0}")]
    BadAnswer(#[source] Reason),
}

/// A cache value as memcached keeps it: the bytes and the client's flags, which say how
/// the bytes encode the value. The keys shared with the original Python server use
/// pylibmc's flags (docs/protocol.md#cache-values, [`pyvalue`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheItem {
    /// The client's flags (pylibmc's for the shared keys).
    pub flags: u32,
    /// The stored bytes.
    pub data: Bytes,
}

/// State shared between instances and the watchdog (docs/protocol.md#cache). Values are
/// bytes with flags: radiovis's own keys hold JSON with flags 0 ([`Cache::get`],
/// [`Cache::set`]); the keys shared with the original hold what pylibmc wrote
/// ([`Cache::get_item`], [`Cache::set_item`]).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait Cache: Send + Sync + 'static {
    /// The value under `key`, `None` when absent or expired.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError>;

    /// Stores `value` under `key` for `ttl`, with flags 0.
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), CacheError>;

    /// The value under `key` with its flags. A cache that keeps no flags (this default)
    /// answers flags 0; the readers of [`pyvalue`] also recognise a pickle by its bytes.
    async fn get_item(&self, key: &str) -> Result<Option<CacheItem>, CacheError> {
        Ok(self
            .get(key)
            .await?
            .map(|data| CacheItem { flags: 0, data }))
    }

    /// Stores `item` under `key` for `ttl`. A cache that keeps no flags (this default)
    /// drops them.
    async fn set_item(&self, key: &str, item: CacheItem, ttl: Duration) -> Result<(), CacheError> {
        self.set(key, item.data, ttl).await
    }
}

/// One entry of the message log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Normalised (GCC form) topic.
    pub topic: String,
    /// The message body as text.
    pub message: String,
    /// The message's headers.
    pub headers: Vec<(String, String)>,
    /// Unix seconds when the watchdog saw it.
    pub timestamp: u64,
}

/// Errors of the log store layer. The kind says what a writer should do with the entry:
/// retry it later ([`LogError::Unavailable`]) or drop it ([`LogError::Refused`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The store could not answer now (down, timeout, HTTP 5xx, 408, 429): the same
    /// entry may be taken later.
    #[error("log store unavailable: {0}")]
    Unavailable(#[source] Reason),
    /// The store refused this entry (HTTP 4xx): sending it again gets the same answer.
    /// `reason` is the status's reason phrase, never the entry or the answer's body.
    #[error("log store refused the entry: HTTP {status} {reason}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Its reason phrase.
        reason: String,
    },
}

impl LogError {
    /// Whether retrying the same entry cannot succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(self, LogError::Refused { .. })
    }
}

/// Where the watchdog keeps the message log.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait LogStore: Send + Sync + 'static {
    /// Appends one entry.
    async fn add_log(&self, entry: LogEntry) -> Result<(), LogError>;

    /// Drops entries older than `max_age`.
    async fn cleanup_logs(&self, max_age: Duration) -> Result<(), LogError>;
}

#[async_trait]
impl<T: MessageBus + ?Sized> MessageBus for std::sync::Arc<T> {
    async fn publish(&self, message: BusMessage) -> Result<(), BusError> {
        (**self).publish(message).await
    }
    async fn subscribe(&self) -> Result<BusStream, BusError> {
        (**self).subscribe().await
    }
    async fn subscribe_acked(&self) -> Result<DeliveryStream, BusError> {
        (**self).subscribe_acked().await
    }
    fn connection_generations(&self) -> tokio::sync::watch::Receiver<u64> {
        (**self).connection_generations()
    }
    fn is_connected(&self) -> bool {
        (**self).is_connected()
    }
}

#[async_trait]
impl<T: DirectoryApi + ?Sized> DirectoryApi for std::sync::Arc<T> {
    async fn check_auth(
        &self,
        username: &str,
        password: &str,
        ip: IpAddr,
    ) -> Result<bool, DirectoryError> {
        (**self).check_auth(username, password, ip).await
    }
    async fn get_channels(&self, station_id: &str) -> Result<Vec<String>, DirectoryError> {
        (**self).get_channels(station_id).await
    }
    async fn get_gcc(&self, cc: &str) -> Result<Option<String>, DirectoryError> {
        (**self).get_gcc(cc).await
    }
    async fn get_all_channels(&self) -> Result<Vec<ChannelRef>, DirectoryError> {
        (**self).get_all_channels().await
    }
    async fn get_all_vis_channels(&self) -> Result<Vec<ChannelRef>, DirectoryError> {
        (**self).get_all_vis_channels().await
    }
    async fn get_channel_default(
        &self,
        id: &str,
    ) -> Result<Option<ChannelDefault>, DirectoryError> {
        (**self).get_channel_default(id).await
    }
}

#[async_trait]
impl<T: Cache + ?Sized> Cache for std::sync::Arc<T> {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        (**self).get(key).await
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), CacheError> {
        (**self).set(key, value, ttl).await
    }
    async fn get_item(&self, key: &str) -> Result<Option<CacheItem>, CacheError> {
        (**self).get_item(key).await
    }
    async fn set_item(&self, key: &str, item: CacheItem, ttl: Duration) -> Result<(), CacheError> {
        (**self).set_item(key, item, ttl).await
    }
}

#[async_trait]
impl<T: LogStore + ?Sized> LogStore for std::sync::Arc<T> {
    async fn add_log(&self, entry: LogEntry) -> Result<(), LogError> {
        (**self).add_log(entry).await
    }
    async fn cleanup_logs(&self, max_age: Duration) -> Result<(), LogError> {
        (**self).cleanup_logs(max_age).await
    }
}

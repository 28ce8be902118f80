//! A web client's subscriptions on the hub (long-poll, server-sent events, EBU
//! WebSocket mode): what a STOMP session does for SUBSCRIBE, without the STOMP. The
//! same destination checks, limits, CC/GCC normalisation, FM fallback and replay (the
//! hub's own `index_key_for` and `subscribe`), one bounded outbound queue whose
//! overflow kills the client (slow consumer), counted as a connection and reported
//! to monitoring like a session (docs/protocol.md#http).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio_util::sync::CancellationToken;

use crate::backend::{Cache, DirectoryApi, MessageBus};
use crate::hub::{Hub, IndexKey, SubEntry, SubscribeBudget, SubscribeLimit, Transport};
use crate::monitoring::{Event, SessionInfo};
use crate::outbound::{encode_head, encode_json_head, Form, Kill, Outbound, OutboundQueue};
use crate::stomp::{Decoder, Frame, Version};
use crate::topic::{self, TopicError};

/// Why a destination was refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum WatchError {
    #[error("{0}")]
    BadDestination(#[from] TopicError),
    #[error("too many subscriptions: limit is {0}")]
    TooMany(usize),
    #[error("{0}")]
    OverLimit(#[from] SubscribeLimit),
}

/// What ended the wait for a message.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ended {
    /// The queue overflowed: the client does not keep up.
    SlowConsumer,
    /// The server is stopping.
    Shutdown,
}

/// One web client on the hub; dropping it removes its subscriptions.
pub(super) struct Watch<B: MessageBus, D: DirectoryApi, C: Cache> {
    /// How the client is connected (metrics), and so the form of its messages.
    transport: Transport,
    hub: Arc<Hub<B, D, C>>,
    conn: u64,
    queue: Arc<OutboundQueue>,
    subs: Vec<(IndexKey, u64, Arc<str>)>,
    wildcards: usize,
    budget: SubscribeBudget,
    info: Option<Arc<SessionInfo>>,
    /// The queue's key among the hub's sessions, which a stopping hub tells through
    /// their queues.
    registered: usize,
}

impl<B: MessageBus, D: DirectoryApi, C: Cache> Watch<B, D, C> {
    /// A new client from `peer`, counted as an open connection. The fan-out cancels
    /// `kill` when the client's queue overflows: for a client answered over an HTTP
    /// connection, the connection's [`Abort`](super::Abort) token, which closes it
    /// even while a write to it is blocked. A long-poll's queue keeps only the newest
    /// message, the only one it answers, and never overflows.
    pub fn new(
        hub: Arc<Hub<B, D, C>>,
        peer: SocketAddr,
        kill: CancellationToken,
        transport: Transport,
    ) -> Self {
        hub.stats().connections.fetch_add(1, Ordering::Relaxed);
        hub.stats().opened(transport);
        let info = hub.monitor().enabled().then(|| {
            let info = Arc::new(SessionInfo {
                session_id: uuid::Uuid::new_v4().to_string().into(),
                peer,
            });
            hub.monitor().emit(Event::Connection(info.clone()));
            info
        });
        // The fan-out kills the queue on overflow, which cancels `kill`.
        let queue = Arc::new(match transport {
            Transport::LongPoll => OutboundQueue::newest(kill),
            _ => OutboundQueue::with_abort(hub.config().outbound_queue, kill),
        });
        let registered = hub.register_session(&queue);
        Watch {
            transport,
            conn: hub.next_id(),
            queue,
            registered,
            subs: Vec::new(),
            wildcards: 0,
            budget: SubscribeBudget::default(),
            info,
            hub,
        }
    }

    /// Subscribes to `destination` (a full `/topic/...` name) and returns its replay:
    /// the last message of the topic with its arrival order, if any.
    pub async fn subscribe(
        &mut self,
        destination: &str,
    ) -> Result<Option<(u64, Outbound)>, WatchError> {
        topic::check_shape(destination)?;
        let wildcard = topic::is_wildcard(destination);
        self.hub
            .admit_subscribe(&mut self.budget, wildcard, self.wildcards)?;
        let max = self.hub.config().max_subscriptions;
        if self.subs.len() >= max {
            return Err(WatchError::TooMany(max));
        }
        let mut key = match tokio::time::timeout(
            self.hub.config().directory_timeout,
            self.hub.index_key_for(destination),
        )
        .await
        {
            Ok(key) => key,
            Err(_) => self.hub.unconverted_index_key(destination),
        };
        let head = match self.form() {
            Form::Json => encode_json_head(destination),
            Form::Stomp(version) => encode_head(destination, None, version),
        };
        let sub = self.hub.next_id();
        let destination: Arc<str> = Arc::from(destination);
        let last = self.hub.subscribe(
            &mut key,
            (self.conn, sub),
            SubEntry {
                head: head.clone(),
                form: self.form(),
                queue: self.queue.clone(),
                monitor: self
                    .info
                    .as_ref()
                    .map(|i| Box::new((i.clone(), destination.clone()))),
            },
            true,
        );
        if let Some(info) = &self.info {
            self.hub
                .monitor()
                .emit(Event::Subscription(info.clone(), destination.clone()));
        }
        tracing::debug!(%destination, key = ?key, "web client subscribed");
        self.wildcards += usize::from(wildcard);
        // Grown one at a time: a web client follows one or two topics, and a doubling
        // Vec would hold room for four.
        self.subs.reserve_exact(1);
        self.subs.push((key, sub, destination));
        Ok(last.map(|p| {
            (
                p.seq,
                Outbound {
                    head,
                    tail: p.tail(self.form()),
                },
            )
        }))
    }

    /// How the client receives messages: a long-poll's answers, or STOMP 1.0 frames
    /// (the other web transports re-frame them).
    fn form(&self) -> Form {
        match self.transport {
            Transport::LongPoll => Form::Json,
            _ => Form::Stomp(Version::V1_0),
        }
    }

    /// Waits for the next queued message (or the end of the client). Both ends come
    /// through the queue, like a STOMP session's: an overflow (which also cancels the
    /// connection's token) and the hub's stop. Waiting on a token as well would take
    /// its lock on every message.
    pub async fn next(&self) -> Result<(), Ended> {
        match self.queue.ready().await {
            None => Ok(()),
            Some(Kill::SlowConsumer) => Err(Ended::SlowConsumer),
            Some(Kill::Shutdown) => Err(Ended::Shutdown),
        }
    }

    /// The destinations the client follows, in the order it subscribed to them.
    pub fn destinations(&self) -> impl ExactSizeIterator<Item = &str> {
        self.subs.iter().map(|(_, _, d)| &**d)
    }

    /// Takes the queued messages and returns the newest.
    pub fn take_newest(&self) -> Option<Outbound> {
        self.queue.take_newest()
    }

    /// Takes every queued message, oldest first, as 1.0 MESSAGE frames (each ending
    /// with its NUL; not for a long-poll, whose messages are JSON).
    pub fn take(&self) -> BytesMut {
        let mut out = BytesMut::new();
        self.queue.drain_into(&mut out, usize::MAX);
        out
    }
}

impl<B: MessageBus, D: DirectoryApi, C: Cache> Drop for Watch<B, D, C> {
    fn drop(&mut self) {
        self.hub.unregister_session(self.registered);
        self.queue.close();
        for (key, sub, destination) in self.subs.drain(..) {
            self.hub.unsubscribe(&key, (self.conn, sub));
            if let Some(info) = &self.info {
                self.hub
                    .monitor()
                    .emit(Event::Unsubscription(info.clone(), destination));
            }
        }
        if let Some(info) = self.info.take() {
            self.hub.monitor().emit(Event::Disconnection(info));
        }
        self.hub.stats().connections.fetch_sub(1, Ordering::Relaxed);
        self.hub.stats().closed(self.transport);
    }
}

/// Splits 1.0 MESSAGE frames (as [`Watch::take`] gives them) into frames.
pub(super) fn frames(mut bytes: BytesMut) -> Vec<Frame> {
    let mut decoder = hub_decoder();
    let mut out = Vec::new();
    while let Ok(Some(frame)) = decoder.decode(&mut bytes) {
        out.push(frame);
    }
    out
}

/// The frames queued in `bytes`, each as the hub encoded it (with its NUL): what a
/// STOMP 1.0 radio receives, passed on without decoding it into a [`Frame`] to encode
/// it again.
pub(super) fn raw_frames(bytes: BytesMut) -> Vec<Bytes> {
    let all = bytes.freeze();
    let mut rest = BytesMut::from(&all[..]);
    let mut decoder = hub_decoder();
    let (mut out, mut start) = (Vec::new(), 0);
    while let Ok(Some(_)) = decoder.decode(&mut rest) {
        let end = all.len() - rest.len();
        out.push(all.slice(start..end));
        start = end;
    }
    out
}

/// A decoder for frames the hub encoded (not sent by a client): generous limits.
fn hub_decoder() -> Decoder {
    Decoder::new(crate::stomp::Limits {
        max_frame_size: usize::MAX / 2,
        max_headers: usize::MAX / 2,
        max_header_line: usize::MAX / 2,
    })
}

/// The value of a frame's `message-id`, or "".
pub(super) fn message_id(frame: &Frame) -> &str {
    frame.get("message-id").unwrap_or("")
}

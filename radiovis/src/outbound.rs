//! What the hub hands to a connection, and the per-message encoding shared by all
//! subscribers.
//!
//! A MESSAGE frame is `head + tail`: the head (`MESSAGE`, `destination`, `subscription`)
//! is fixed per subscription and encoded once when it is made; the tail (forwarded
//! headers, `content-length`, blank line, body, NUL) is fixed per message and STOMP
//! version and encoded once per message. Delivering to a subscriber is two reference
//! count increments and a bounded-queue push: no encoding, no allocation per
//! subscriber.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::task::{Poll, Waker};

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::stomp::frame::{needs_content_length, put_header_part};
use crate::stomp::Version;

/// One MESSAGE frame queued for a connection.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Per-subscription part: `MESSAGE`, `destination`, `subscription`.
    pub head: Arc<[u8]>,
    /// Per-message part: forwarded headers, blank line, body, NUL.
    pub tail: Bytes,
}

/// Why a session must close at once, signalled through its queue (the one thing both
/// the fan-out and the server hold of a session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kill {
    /// The queue overflowed: the client does not read fast enough.
    SlowConsumer,
    /// The server is stopping: write what is queued and close.
    Shutdown,
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The connection has `capacity` frames waiting: a slow consumer.
    Full,
    /// The session is closing (or was killed).
    Closed,
}

/// A connection's bounded outbound queue: many producers (the fan-out), one consumer
/// (the session). It holds no buffer while nothing waits (unlike a channel that
/// preallocates blocks, or a queue that keeps what a burst made it grow to), and wakes
/// its consumer only when it stops being empty: a burst of N messages is one wake-up.
/// It also carries the [`Kill`] signal to its session, which then needs no token (and no
/// waiting future) of its own.
#[derive(Debug)]
pub struct OutboundQueue {
    inner: Mutex<Inner>,
    capacity: usize,
    /// Cancelled on a kill too: a web client's connection, closed even while a write to
    /// it is blocked (STOMP sessions wait on the queue itself and have none).
    abort: Option<CancellationToken>,
}

#[derive(Debug, Default)]
struct Inner {
    items: VecDeque<Outbound>,
    /// The consumer waiting in [`OutboundQueue::ready`].
    waker: Option<Waker>,
    closed: bool,
    killed: Option<Kill>,
}

impl OutboundQueue {
    /// A queue that holds at most `capacity` frames.
    pub fn new(capacity: usize) -> OutboundQueue {
        OutboundQueue {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
            abort: None,
        }
    }

    /// A queue that also cancels `abort` when it is killed.
    pub fn with_abort(capacity: usize, abort: CancellationToken) -> OutboundQueue {
        OutboundQueue {
            abort: Some(abort),
            ..OutboundQueue::new(capacity)
        }
    }

    /// Queues a frame without waiting.
    pub fn try_push(&self, item: Outbound) -> Result<(), PushError> {
        let waker = {
            let mut inner = self.inner.lock();
            if inner.closed || inner.killed.is_some() {
                return Err(PushError::Closed);
            }
            if inner.items.len() >= self.capacity {
                return Err(PushError::Full);
            }
            inner.items.push_back(item);
            if inner.items.len() > 1 {
                // The consumer was woken for the first one and has not taken it yet.
                return Ok(());
            }
            inner.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Completes when frames are waiting or the session is killed (cancel-safe);
    /// returns the kill, if any. The future is two pointers: every idle session holds
    /// one.
    pub fn ready(&self) -> impl Future<Output = Option<Kill>> + '_ {
        self.wait(|inner| !inner.items.is_empty() || inner.killed.is_some())
    }

    /// Completes when the session is killed (cancel-safe).
    pub async fn killed(&self) -> Kill {
        loop {
            if let Some(kill) = self.wait(|inner| inner.killed.is_some()).await {
                return kill;
            }
        }
    }

    /// Waits until `done` holds, then returns the kill (if any); the consumer's waker
    /// is kept for the producers.
    fn wait<'a>(
        &'a self,
        done: impl Fn(&Inner) -> bool + 'a,
    ) -> impl Future<Output = Option<Kill>> + 'a {
        std::future::poll_fn(move |cx| {
            let mut inner = self.inner.lock();
            if done(&inner) {
                return Poll::Ready(inner.killed);
            }
            match &inner.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => inner.waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
    }

    /// Tells the session to close (`reason`); true when this call killed it, false
    /// when it was killed before. Queued frames stay for a shutdown flush.
    pub fn kill(&self, reason: Kill) -> bool {
        let waker = {
            let mut inner = self.inner.lock();
            if inner.killed.is_some() {
                return false;
            }
            inner.killed = Some(reason);
            inner.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        if let Some(abort) = &self.abort {
            abort.cancel();
        }
        true
    }

    /// Why the session was killed, if it was.
    pub fn kill_reason(&self) -> Option<Kill> {
        self.inner.lock().killed
    }

    /// Appends waiting frames to `out` until it holds `max_bytes` or the queue is
    /// empty; returns how many were taken.
    pub fn drain_into(&self, out: &mut BytesMut, max_bytes: usize) -> usize {
        let mut inner = self.inner.lock();
        let mut n = 0;
        while out.len() < max_bytes {
            let Some(item) = inner.items.pop_front() else {
                break;
            };
            if n == 0 {
                out.reserve(
                    inner.items.len().saturating_add(1) * (item.head.len() + item.tail.len()),
                );
            }
            out.extend_from_slice(&item.head);
            out.extend_from_slice(&item.tail);
            n += 1;
        }
        if inner.items.is_empty() && inner.items.capacity() > 0 {
            // An idle connection holds no queue buffer.
            inner.items = VecDeque::new();
        }
        n
    }

    /// Refuses further pushes and drops what is queued.
    pub fn close(&self) {
        let mut inner = self.inner.lock();
        inner.closed = true;
        inner.items = VecDeque::new();
        inner.waker = None;
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.inner.lock().items.len()
    }

    /// True when no frame is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Encodes the per-subscription head of a MESSAGE frame: one exact-size block that
/// every queued copy shares (a `Bytes` would add a second block on its first clone).
pub fn encode_head(destination: &str, subscription: Option<&str>, version: Version) -> Arc<[u8]> {
    let escape = version.escapes();
    let mut out = BytesMut::with_capacity(32 + destination.len());
    out.put_slice(b"MESSAGE\ndestination:");
    put_header_part(&mut out, destination, escape, version);
    out.put_u8(b'\n');
    if let Some(id) = subscription {
        out.put_slice(b"subscription:");
        put_header_part(&mut out, id, escape, version);
        out.put_u8(b'\n');
    }
    Arc::from(&out[..])
}

/// A message as published on the bus, with its lazily encoded tails (one per STOMP
/// version), shared by the fan-out and the last-message store.
#[derive(Debug)]
pub struct Published {
    /// Order of arrival on this instance, to find the newest of several topics.
    pub seq: u64,
    /// Normalised topic.
    pub topic: String,
    /// The message body as published.
    pub body: Bytes,
    /// Forwarded headers (`message-id` always among them).
    pub headers: Vec<(String, String)>,
    tails: [OnceLock<Bytes>; 3],
}

impl Published {
    /// A message whose tails are encoded on first use.
    pub fn new(seq: u64, topic: String, body: Bytes, headers: Vec<(String, String)>) -> Published {
        Published {
            seq,
            topic,
            body,
            headers,
            tails: Default::default(),
        }
    }

    /// The encoded tail for subscribers speaking `version`.
    pub fn tail(&self, version: Version) -> Bytes {
        let slot = match version {
            Version::V1_0 => &self.tails[0],
            Version::V1_1 => &self.tails[1],
            Version::V1_2 => &self.tails[2],
        };
        slot.get_or_init(|| self.encode_tail(version)).clone()
    }

    fn encode_tail(&self, version: Version) -> Bytes {
        let escape = version.escapes();
        let mut out = BytesMut::with_capacity(128 + self.body.len());
        for (k, v) in &self.headers {
            put_header_part(&mut out, k, escape, version);
            out.put_u8(b':');
            put_header_part(&mut out, v, escape, version);
            out.put_u8(b'\n');
        }
        if needs_content_length(version, &self.body) {
            out.put_slice(format!("content-length:{}\n", self.body.len()).as_bytes());
        }
        out.put_u8(b'\n');
        out.put_slice(&self.body);
        out.put_u8(0);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stomp::{Decoder, Limits};

    #[tokio::test]
    async fn queue_is_bounded_and_wakes_its_consumer() {
        let q = std::sync::Arc::new(OutboundQueue::new(2));
        let item = || Outbound {
            head: Arc::from(&b"H"[..]),
            tail: Bytes::from_static(b"T"),
        };
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.ready().await })
        };
        tokio::task::yield_now().await;
        assert_eq!(q.try_push(item()), Ok(()));
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(q.try_push(item()), Ok(()));
        assert_eq!(q.try_push(item()), Err(PushError::Full));
        assert_eq!(q.kill_reason(), None);
        let mut out = BytesMut::new();
        assert_eq!(q.drain_into(&mut out, 1), 1, "stops at max_bytes");
        assert_eq!(q.drain_into(&mut out, 1024), 1);
        assert_eq!(&out[..], b"HTHT");
        q.close();
        assert_eq!(q.try_push(item()), Err(PushError::Closed));
    }

    #[tokio::test]
    async fn a_kill_wakes_the_consumer_once_and_keeps_what_is_queued() {
        let q = std::sync::Arc::new(OutboundQueue::new(4));
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.killed().await })
        };
        tokio::task::yield_now().await;
        assert_eq!(
            q.try_push(Outbound {
                head: Arc::from(&b"H"[..]),
                tail: Bytes::from_static(b"T"),
            }),
            Ok(())
        );
        assert!(q.kill(Kill::Shutdown), "first kill");
        assert!(!q.kill(Kill::SlowConsumer), "killed already");
        let reason = tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(reason, Kill::Shutdown);
        let ready = tokio::time::timeout(std::time::Duration::from_secs(1), q.ready()).await;
        assert_eq!(ready, Ok(Some(Kill::Shutdown)), "a killed queue is ready");
        let mut out = BytesMut::new();
        assert_eq!(
            q.drain_into(&mut out, 1024),
            1,
            "kept for the shutdown flush"
        );
        let refused = q.try_push(Outbound {
            head: Arc::from(&b"H"[..]),
            tail: Bytes::from_static(b"T"),
        });
        assert_eq!(refused, Err(PushError::Closed));
    }

    #[test]
    fn head_and_tail_make_a_valid_frame() {
        let p = Published::new(
            1,
            "/topic/a/text".into(),
            Bytes::from_static(b"TEXT hi: there"),
            vec![
                ("message-id".into(), "m:1".into()),
                ("when".into(), "12".into()),
            ],
        );
        for version in [Version::V1_0, Version::V1_1, Version::V1_2] {
            let mut buf = BytesMut::new();
            buf.extend_from_slice(&encode_head("/topic/ch:x", Some("s1"), version));
            buf.extend_from_slice(&p.tail(version));
            let mut dec = Decoder::new(Limits::default());
            dec.set_version(version);
            let f = dec.decode(&mut buf).expect("valid").expect("complete");
            assert_eq!(f.get("destination"), Some("/topic/ch:x"));
            assert_eq!(f.get("subscription"), Some("s1"));
            assert_eq!(f.get("message-id"), Some("m:1"));
            assert_eq!(&f.body[..], b"TEXT hi: there");
            assert!(buf.is_empty());
        }
    }
}

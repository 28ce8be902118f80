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
    /// Whether a push to a full queue replaces its oldest frame instead of failing:
    /// a client that is only ever sent the newest message (a long-poll) cannot be a
    /// slow consumer.
    keep_newest: bool,
    /// Cancelled when the queue overflows too: a web client's connection, closed even
    /// while a write to it is blocked (STOMP sessions wait on the queue itself and have none).
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
            keep_newest: false,
            abort: None,
        }
    }

    /// A queue that holds only the newest frame pushed to it (a push replaces the one
    /// waiting) and never overflows (a long-poll, answered with the
    /// newest message: docs/protocol.md#http-long-poll).
    pub fn newest(abort: CancellationToken) -> OutboundQueue {
        OutboundQueue {
            keep_newest: true,
            ..OutboundQueue::with_abort(1, abort)
        }
    }

    /// A queue that also cancels `abort` when it overflows (a slow consumer).
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
                if !self.keep_newest {
                    return Err(PushError::Full);
                }
                // The consumer was woken for the one replaced.
                inner.items.pop_front();
                inner.items.push_back(item);
                return Ok(());
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
        // A slow consumer's connection is closed even in the middle of a write; at a
        // shutdown its client gets what it is owed first.
        if let (Kill::SlowConsumer, Some(abort)) = (reason, &self.abort) {
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

    /// Takes the waiting frames and returns the newest (the one a long-poll answers).
    pub fn take_newest(&self) -> Option<Outbound> {
        let mut inner = self.inner.lock();
        let newest = inner.items.pop_back();
        // An idle client holds no queue buffer.
        inner.items = VecDeque::new();
        newest
    }

    /// Takes every waiting frame when there are at most `max`; `None` (and nothing
    /// taken) when there are more.
    pub fn take_up_to(&self, max: usize) -> Option<VecDeque<Outbound>> {
        let mut inner = self.inner.lock();
        (inner.items.len() <= max).then(|| std::mem::take(&mut inner.items))
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

/// How a subscriber receives a message: the head of its subscription and the tail
/// of the message, each encoded once, in one of these forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// A STOMP MESSAGE frame of this version.
    Stomp(Version),
    /// A RadioVIS HTTP long-poll answer, a JSON document
    /// (docs/protocol.md#http-long-poll): [`encode_json_head`] and the message's tail.
    Json,
}

impl From<Version> for Form {
    fn from(version: Version) -> Form {
        Form::Stomp(version)
    }
}

/// How a long-poll answer starts: its head, then its tail.
const JSON_HEAD: &[u8] = b"{\"headers\": {\"RadioVIS-Destination\": ";
const JSON_TAIL: &[u8] = b"\"RadioVIS-Message-ID\": ";

/// The per-subscription head of a long-poll answer: `{"headers":
/// {"RadioVIS-Destination": "<destination>", ` (the message's tail completes it).
pub fn encode_json_head(destination: &str) -> Arc<[u8]> {
    let mut out = Vec::with_capacity(48 + destination.len());
    out.extend_from_slice(JSON_HEAD);
    put_json_str(&mut out, destination);
    out.extend_from_slice(b", ");
    Arc::from(out)
}

impl Outbound {
    /// Of a long-poll answer ([`Form::Json`]): its message id, as a JSON string
    /// (quotes included, as it was written).
    pub fn json_id(&self) -> Option<&[u8]> {
        json_str_after(&self.tail, JSON_TAIL)
    }

    /// Of a long-poll answer ([`Form::Json`]): its destination, as a JSON string.
    pub fn json_destination(&self) -> Option<&[u8]> {
        json_str_after(&self.head, JSON_HEAD)
    }
}

/// The JSON string that `bytes` has right after `key`, quotes included.
fn json_str_after<'a>(bytes: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let rest = bytes.strip_prefix(key)?;
    if rest.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    while let Some(&b) = rest.get(i) {
        match b {
            b'\\' => i += 2,
            b'"' => return Some(&rest[..=i]),
            _ => i += 1,
        }
    }
    None
}

/// `s` as a JSON string, quotes included.
fn put_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a string to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A message as published on the bus, with its lazily encoded tails (one per
/// [`Form`]), shared by the fan-out and the last-message store.
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
    tails: [OnceLock<Bytes>; 4],
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

    /// The encoded tail for subscribers receiving `form` (a STOMP version).
    pub fn tail(&self, form: impl Into<Form>) -> Bytes {
        let form = form.into();
        let slot = match form {
            Form::Stomp(Version::V1_0) => &self.tails[0],
            Form::Stomp(Version::V1_1) => &self.tails[1],
            Form::Stomp(Version::V1_2) => &self.tails[2],
            Form::Json => &self.tails[3],
        };
        slot.get_or_init(|| match form {
            Form::Stomp(version) => self.encode_tail(version),
            Form::Json => self.encode_json_tail(),
        })
        .clone()
    }

    /// The first value of header `name`, as a MESSAGE frame would carry it.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The rest of a long-poll answer after [`encode_json_head`]: the message id,
    /// trigger time and link (the last two when the message has them), and the body.
    fn encode_json_tail(&self) -> Bytes {
        let mut out = Vec::with_capacity(96 + self.body.len());
        out.extend_from_slice(JSON_TAIL);
        put_json_str(&mut out, self.header("message-id").unwrap_or(""));
        for (stomp, json) in [
            ("trigger-time", &b", \"RadioVIS-Trigger-Time\": "[..]),
            ("link", b", \"RadioVIS-Link\": "),
        ] {
            if let Some(v) = self.header(stomp) {
                out.extend_from_slice(json);
                put_json_str(&mut out, v);
            }
        }
        out.extend_from_slice(b"}, \"body\": ");
        put_json_str(&mut out, &String::from_utf8_lossy(&self.body));
        out.push(b'}');
        Bytes::from(out)
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
    async fn a_newest_queue_keeps_only_the_newest_frame_and_is_never_full() {
        let abort = CancellationToken::new();
        let q = std::sync::Arc::new(OutboundQueue::newest(abort.clone()));
        let item = |tail: &'static [u8]| Outbound {
            head: Arc::from(&b"H"[..]),
            tail: Bytes::from_static(tail),
        };
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.ready().await })
        };
        tokio::task::yield_now().await;
        for tail in [&b"1"[..], b"2", b"3"] {
            assert_eq!(q.try_push(item(tail)), Ok(()));
        }
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(q.len(), 1);
        assert_eq!(q.kill_reason(), None, "never a slow consumer");
        assert!(!abort.is_cancelled());
        let newest = q.take_newest().expect("a frame");
        assert_eq!(&newest.tail[..], b"3");
        assert!(q.take_newest().is_none(), "taken");
        assert!(q.kill(Kill::Shutdown));
        assert!(
            !abort.is_cancelled(),
            "a shutdown lets the client have its answer"
        );
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
    fn a_json_head_and_tail_make_a_long_poll_answer() {
        let p = Published::new(
            1,
            "/topic/a/text".into(),
            Bytes::from_static(b"TEXT \"quoted\"\n\\ caf\xc3\xa9"),
            vec![
                ("message-id".into(), "ID:m\"1".into()),
                ("link".into(), "https://example.org/?a=1&b=2".into()),
                ("link".into(), "second link, not sent".into()),
            ],
        );
        let item = Outbound {
            head: encode_json_head("/topic/fm/4e1/4001/09580/text"),
            tail: p.tail(Form::Json),
        };
        let mut json = item.head.to_vec();
        json.extend_from_slice(&item.tail);
        let v: serde_json::Value = serde_json::from_slice(&json).expect("valid JSON");
        assert_eq!(
            v,
            serde_json::json!({
                "headers": {
                    "RadioVIS-Destination": "/topic/fm/4e1/4001/09580/text",
                    "RadioVIS-Message-ID": "ID:m\"1",
                    "RadioVIS-Link": "https://example.org/?a=1&b=2",
                },
                "body": "TEXT \"quoted\"\n\\ café",
            })
        );
        assert_eq!(item.json_id(), Some(&br#""ID:m\"1""#[..]));
        assert_eq!(
            item.json_destination(),
            Some(&br#""/topic/fm/4e1/4001/09580/text""#[..])
        );
        // Encoded once per message.
        assert_eq!(p.tail(Form::Json).as_ptr(), item.tail.as_ptr());
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

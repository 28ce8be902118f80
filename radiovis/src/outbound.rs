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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::stomp::frame::{needs_content_length, put_header_part};
use crate::stomp::Version;

/// One MESSAGE frame queued for a connection.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Per-subscription part: `MESSAGE`, `destination`, `subscription`.
    pub head: Bytes,
    /// Per-message part: forwarded headers, blank line, body, NUL.
    pub tail: Bytes,
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The connection has `capacity` frames waiting: a slow consumer.
    Full,
    /// The session is closing.
    Closed,
}

/// A connection's bounded outbound queue: many producers (the fan-out), one consumer
/// (the session). An idle connection's queue holds no buffer (unlike a channel that
/// preallocates blocks), which keeps per-connection memory small.
#[derive(Debug)]
pub struct OutboundQueue {
    items: Mutex<VecDeque<Outbound>>,
    notify: Notify,
    capacity: usize,
    closed: AtomicBool,
}

impl OutboundQueue {
    /// A queue that holds at most `capacity` frames.
    pub fn new(capacity: usize) -> OutboundQueue {
        OutboundQueue {
            items: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            capacity: capacity.max(1),
            closed: AtomicBool::new(false),
        }
    }

    /// Queues a frame without waiting.
    pub fn try_push(&self, item: Outbound) -> Result<(), PushError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(PushError::Closed);
        }
        {
            let mut items = self.items.lock();
            if items.len() >= self.capacity {
                return Err(PushError::Full);
            }
            items.push_back(item);
        }
        self.notify.notify_one();
        Ok(())
    }

    /// Completes when frames are waiting (cancel-safe).
    pub async fn ready(&self) {
        loop {
            if !self.items.lock().is_empty() {
                return;
            }
            self.notify.notified().await;
        }
    }

    /// Appends waiting frames to `out` until it holds `max_bytes` or the queue is
    /// empty; returns how many were taken.
    pub fn drain_into(&self, out: &mut BytesMut, max_bytes: usize) -> usize {
        let mut items = self.items.lock();
        let mut n = 0;
        while out.len() < max_bytes {
            let Some(item) = items.pop_front() else { break };
            out.extend_from_slice(&item.head);
            out.extend_from_slice(&item.tail);
            n += 1;
        }
        if items.is_empty() && items.capacity() > 16 {
            // Give back what a burst made the queue grow to.
            items.shrink_to(0);
        }
        n
    }

    /// Refuses further pushes and drops what is queued.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.items.lock().clear();
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.items.lock().len()
    }

    /// True when no frame is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Encodes the per-subscription head of a MESSAGE frame.
pub fn encode_head(destination: &str, subscription: Option<&str>, version: Version) -> Bytes {
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
    out.freeze()
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
            head: Bytes::from_static(b"H"),
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
        let mut out = BytesMut::new();
        assert_eq!(q.drain_into(&mut out, 1), 1, "stops at max_bytes");
        assert_eq!(q.drain_into(&mut out, 1024), 1);
        assert_eq!(&out[..], b"HTHT");
        q.close();
        assert_eq!(q.try_push(item()), Err(PushError::Closed));
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

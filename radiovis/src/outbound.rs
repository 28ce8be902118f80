//! What the hub hands to a connection, and the per-message encoding shared by all
//! subscribers.
//!
//! A MESSAGE frame is `head + tail`: the head (`MESSAGE`, `destination`, `subscription`)
//! is fixed per subscription and encoded once when it is made; the tail (forwarded
//! headers, `content-length`, blank line, body, NUL) is fixed per message and STOMP
//! version and encoded once per message. Delivering to a subscriber is two reference
//! count increments and a bounded-queue `try_send`: no encoding, no allocation per
//! subscriber.

use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::stomp::frame::{needs_content_length, put_header_part};
use crate::stomp::Version;

/// One MESSAGE frame queued for a connection.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub head: Bytes,
    pub tail: Bytes,
}

/// The sending side of a connection's bounded outbound queue.
pub type OutboundTx = mpsc::Sender<Outbound>;
/// The receiving side, owned by the session.
pub type OutboundRx = mpsc::Receiver<Outbound>;

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
    pub body: Bytes,
    /// Forwarded headers (`message-id` always among them).
    pub headers: Vec<(String, String)>,
    tails: [OnceLock<Bytes>; 3],
}

impl Published {
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

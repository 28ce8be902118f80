//! Each message encoded once per form: MESSAGE heads per subscription, tails per
//! message and STOMP version, and the long-poll's JSON (docs/protocol.md#http-long-poll).

use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};

use super::Outbound;
use crate::stomp::frame::{needs_content_length, put_header_part};
use crate::stomp::Version;

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

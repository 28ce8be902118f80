//! The values of the cache keys shared with the original Python server, in the format
//! its memcached client (pylibmc 1.6 under Python 2) reads and writes
//! (docs/protocol.md#cache-values), so that a mixed fleet shares one memcached.
//!
//! pylibmc stores a byte string as is with flags 0, a unicode string as UTF-8 with
//! flags 16, an integer as its decimal text with flags 2, and anything else pickled
//! (protocol 2, the highest Python 2 knows) with flags 1. So:
//!
//! | key | written | read |
//! |---|---|---|
//! | `radiovis_isoecc_<topic>` | the GCC-form topic, flags 16 | flags 0 or 16 (text), or a pickled string |
//! | `radiovis_channels_topics` | pickled list of unicode strings | a pickled list or tuple of strings; radiovis's earlier JSON array (flags 0) |
//! | `get_channel_default_<id>` | pickled dict of unicode strings, or pickled `None` | the same; radiovis's earlier JSON (flags 0) |
//!
//! Why `serde-pickle`: pickle is Python's format and the crate (by a CPython core
//! developer) reads every opcode of protocols 0 to 5 and writes protocol 2 without the
//! opcodes Python 2 lacks; it never runs code from a pickle (a `GLOBAL` it does not know is
//! an error). Earlier radiovis releases wrote JSON with flags 0; those values are still
//! read, for one release, so that upgrading a radiovis-only fleet breaks nothing.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_pickle::{DeOptions, HashableValue, SerOptions, Value};

use super::{CacheItem, ChannelDefault};

/// pylibmc's flags (docs/protocol.md#cache-values).
pub const FLAG_BYTES: u32 = 0;
/// A pickled value.
pub const FLAG_PICKLE: u32 = 1;
/// An integer as decimal text.
pub const FLAG_INTEGER: u32 = 2;
/// A unicode string as UTF-8.
pub const FLAG_TEXT: u32 = 16;

/// Largest value decoded (memcached's default item size limit).
const MAX_DECODED: usize = 1024 * 1024;

/// Whether the item holds a pickle: flagged so, or (from a cache that keeps no flags)
/// starting with the protocol 2+ `PROTO` opcode, which no JSON or topic text starts with.
fn is_pickle(item: &CacheItem) -> bool {
    item.flags & FLAG_PICKLE != 0 || item.data.first() == Some(&0x80)
}

fn unpickle(data: &[u8]) -> Option<Value> {
    if data.len() > MAX_DECODED {
        return None;
    }
    serde_pickle::value_from_slice(data, DeOptions::new()).ok()
}

fn pickle(value: &Value) -> CacheItem {
    // Serialising a value tree of strings, lists, dicts and None into a Vec cannot
    // fail; an empty item (read back as "not understood") is the safe answer if it did.
    let data = serde_pickle::value_to_vec(value, SerOptions::new().proto_v2()).unwrap_or_default();
    CacheItem {
        flags: FLAG_PICKLE,
        data: Bytes::from(data),
    }
}

/// A Python 2 `str` (bytes, read as UTF-8) or `unicode`.
fn string_of(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        Value::Bytes(b) => String::from_utf8(b).ok(),
        _ => None,
    }
}

/// A unicode string, as pylibmc stores one: UTF-8 with flags 16.
pub fn text(s: &str) -> CacheItem {
    CacheItem {
        flags: FLAG_TEXT,
        data: Bytes::copy_from_slice(s.as_bytes()),
    }
}

/// A string written by either implementation (flags 0 or 16, or a pickled string).
pub fn read_text(item: &CacheItem) -> Option<String> {
    if is_pickle(item) {
        return string_of(unpickle(&item.data)?);
    }
    std::str::from_utf8(&item.data).ok().map(str::to_owned)
}

/// A list of topics as the original stores `radiovis_channels_topics`: a pickled list
/// of unicode strings.
pub fn topic_list(topics: &[String]) -> CacheItem {
    pickle(&Value::List(
        topics.iter().cloned().map(Value::String).collect(),
    ))
}

/// A list of topics written by either implementation; `None` when not understood.
pub fn read_topic_list(item: &CacheItem) -> Option<Vec<String>> {
    if !is_pickle(item) {
        // radiovis's earlier JSON array.
        return serde_json::from_slice(&item.data).ok();
    }
    match unpickle(&item.data)? {
        Value::List(l) | Value::Tuple(l) => l.into_iter().map(string_of).collect(),
        _ => None,
    }
}

/// The fields of a channel default, in the `info` dict the original caches.
const DEFAULT_FIELDS: [&str; 4] = ["filename", "radiotext", "radiolink", "public_url"];

/// A channel default as the original stores `get_channel_default_<id>`: the pickled
/// `info` dict (unicode strings; a field radiovis does not have is left out), or a
/// pickled `None` when the channel has no default.
pub fn channel_default(default: Option<&ChannelDefault>) -> CacheItem {
    let Some(d) = default else {
        return pickle(&Value::None);
    };
    let values = [&d.filename, &d.radiotext, &d.radiolink, &d.public_url];
    let dict: BTreeMap<HashableValue, Value> = DEFAULT_FIELDS
        .iter()
        .zip(values)
        .filter_map(|(k, v)| {
            v.as_ref().map(|v| {
                (
                    HashableValue::String((*k).to_owned()),
                    Value::String(v.clone()),
                )
            })
        })
        .collect();
    pickle(&Value::Dict(dict))
}

/// A field of a cached `info` dict as PlugIt's answer is read: a string, or a number as
/// its decimal text; anything else is absent (docs/protocol.md#directory).
fn info_field(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bytes(b) => String::from_utf8(b.clone()).ok(),
        Value::I64(i) => Some(i.to_string()),
        Value::Int(i) => Some(i.to_string()),
        Value::F64(f) => Some(f.to_string()),
        _ => None,
    }
}

/// A channel default written by either implementation: `Some(None)` for "no default",
/// `None` when the value is not understood (the caller asks the directory).
pub fn read_channel_default(item: &CacheItem) -> Option<Option<ChannelDefault>> {
    if !is_pickle(item) {
        // radiovis's earlier JSON (an object or null).
        return serde_json::from_slice(&item.data).ok();
    }
    let dict = match unpickle(&item.data)? {
        Value::None => return Some(None),
        Value::Dict(d) => d,
        _ => return None,
    };
    let mut fields = BTreeMap::new();
    for (k, v) in dict {
        let name = match k {
            HashableValue::String(s) => s,
            HashableValue::Bytes(b) => match String::from_utf8(b) {
                Ok(s) => s,
                Err(_) => continue,
            },
            _ => continue,
        };
        if let Some(v) = info_field(&v) {
            fields.insert(name, v);
        }
    }
    let mut take = |name: &str| fields.remove(name);
    Some(Some(ChannelDefault {
        filename: take("filename"),
        radiotext: take("radiotext"),
        radiolink: take("radiolink"),
        public_url: take("public_url"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(flags: u32, data: &[u8]) -> CacheItem {
        CacheItem {
            flags,
            data: Bytes::copy_from_slice(data),
        }
    }

    #[test]
    fn writes_use_protocol_2_and_python_2_opcodes_only() {
        let l = topic_list(&["/topic/a/".to_owned()]);
        assert_eq!(l.flags, FLAG_PICKLE);
        assert_eq!(&l.data[..2], b"\x80\x02");
        assert_eq!(*l.data.last().expect("stop"), b'.');
        let none = channel_default(None);
        assert_eq!(&none.data[..], b"\x80\x02N.");
    }

    #[test]
    fn text_round_trips_in_every_form() {
        let t = text("/topic/fm/4e1/4001/09580/");
        assert_eq!(t.flags, FLAG_TEXT);
        for it in [
            t.clone(),
            item(0, &t.data),
            // pickle.dumps(u"/x/", 2) and a Python 2 str pickle.
            item(1, b"\x80\x02X\x03\x00\x00\x00/x/q\x00."),
            item(1, b"\x80\x02U\x03/x/q\x00."),
        ] {
            let got = read_text(&it).expect("read");
            assert!(got == "/topic/fm/4e1/4001/09580/" || got == "/x/", "{got}");
        }
    }

    #[test]
    fn topic_lists_read_pickle_and_earlier_json() {
        let topics = vec!["/topic/a/".to_owned(), "/topic/é/".to_owned()];
        assert_eq!(read_topic_list(&topic_list(&topics)), Some(topics.clone()));
        let json = serde_json::to_vec(&topics).expect("json");
        assert_eq!(read_topic_list(&item(0, &json)), Some(topics));
        assert_eq!(read_topic_list(&item(1, b"\x80\x02N.")), None);
        assert_eq!(read_topic_list(&item(1, b"garbage")), None);
    }

    #[test]
    fn channel_defaults_read_pickle_and_earlier_json() {
        let d = ChannelDefault {
            filename: Some("f.png".into()),
            radiotext: Some("Hello".into()),
            radiolink: None,
            public_url: Some("https://x/f.png".into()),
        };
        assert_eq!(
            read_channel_default(&channel_default(Some(&d))),
            Some(Some(d.clone()))
        );
        assert_eq!(read_channel_default(&channel_default(None)), Some(None));
        let json = serde_json::to_vec(&Some(&d)).expect("json");
        assert_eq!(read_channel_default(&item(0, &json)), Some(Some(d)));
        assert_eq!(read_channel_default(&item(0, b"null")), Some(None));
        assert_eq!(read_channel_default(&item(1, b"\x80\x02]q\x00.")), None);
    }

    #[test]
    fn a_pickle_with_code_is_refused_not_run() {
        // cos\nsystem\n(S'true'\ntR. : protocol 0 "call os.system".
        let evil = item(1, b"cos\nsystem\n(S'true'\ntR.");
        assert_eq!(read_text(&evil), None);
        assert_eq!(read_channel_default(&evil), None);
    }
}

//! PlugIt answers for the `plugit_json` fuzz target and its stable smoke version
//! (radiovis/tests/plugit_fuzz_smoke.rs): a generator of answers (arbitrary JSON, or
//! an answer of the right shape with arbitrary contents, then byte mutations) and the
//! check of one decoding against docs/protocol.md#directory.

use radiovis::backend::plugit::answer::{self, Action, Answer, AuthAnswer};
use radiovis::backend::{ChannelDefault, ChannelRef, DirectoryError};
use serde_json::{Map, Number, Value};

use crate::source::Source;

/// A string the generator plants in answers: no error text may repeat it.
pub const MARKER: &str = "s3cret-M4rker";

/// Field names of the answers, and a few others.
const KEYS: &[&str] = &[
    "result",
    "error",
    "list",
    "gcc",
    "info",
    "filename",
    "radiotext",
    "radiolink",
    "public_url",
    "id",
    "",
    MARKER,
];

/// Strings worth having: escapes, multi-byte characters, the marker.
const STRINGS: &[&str] = &[
    "",
    "/topic/fm/4e1/4001/09580/",
    "4e1",
    "\"",
    "\\",
    "\u{0}",
    "\n\r\t",
    "é",
    "\u{2028}",
    "\u{1F600}",
    MARKER,
];

/// Bytes that matter to JSON, inserted by the mutations.
const INTERESTING: &[u8] = b"{}[],:\"\\ -+.eE0123456789tfnu\x00\xff";

/// Deepest nesting of a generated value (serde_json itself refuses more than 128).
const MAX_DEPTH: usize = 5;

fn string(src: &mut Source) -> String {
    if src.one_in(3) {
        (*src.pick(STRINGS)).to_owned()
    } else {
        String::from_utf8_lossy(src.bytes(24)).into_owned()
    }
}

fn number(src: &mut Source) -> Number {
    let float = |f: f64| Number::from_f64(f).unwrap_or_else(|| Number::from(0));
    match src.below(5) {
        0 => Number::from(src.u64() as i64),
        1 => Number::from(src.u64()),
        2 => Number::from(src.below(3) as i64 - 1),
        // Exact binary fractions: 0.5, -0.25, ... and 0.0.
        3 => float(f64::from(src.byte() as i8) / f64::from(1u32 << src.below(8))),
        _ => float(*src.pick(&[0.0, -0.0, 1e300, -1e-300, 0.1, f64::MAX])),
    }
}

/// An arbitrary JSON value.
pub fn value(src: &mut Source, depth: usize) -> Value {
    let kinds = if depth >= MAX_DEPTH { 4 } else { 6 };
    match src.below(kinds) {
        0 => Value::Null,
        1 => Value::Bool(src.byte() & 1 == 1),
        2 => Value::Number(number(src)),
        3 => Value::String(string(src)),
        4 => Value::Array((0..src.below(5)).map(|_| value(src, depth + 1)).collect()),
        _ => {
            let mut map = Map::new();
            for _ in 0..src.below(5) {
                let key = if src.one_in(2) {
                    (*src.pick(KEYS)).to_owned()
                } else {
                    string(src)
                };
                map.insert(key, value(src, depth + 1));
            }
            Value::Object(map)
        }
    }
}

/// A value that is usually of the shape `action` expects, with arbitrary contents.
fn shaped(src: &mut Source, action: Action) -> Value {
    let mut object = match value(src, MAX_DEPTH - 1) {
        Value::Object(extra) => extra,
        _ => Map::new(),
    };
    let (name, field) = match action {
        Action::CheckAuth => {
            if src.one_in(2) {
                object.insert("error".into(), Value::String(string(src)));
            }
            let result = match src.below(4) {
                0 => Value::Bool(src.byte() & 1 == 1),
                1 => Value::Number(number(src)),
                2 => Value::Null,
                _ => value(src, 2),
            };
            ("result", result)
        }
        Action::GetChannels => {
            let list = (0..src.below(6))
                .map(|_| match src.below(8) {
                    0 => value(src, 3),
                    _ => Value::String(string(src)),
                })
                .collect();
            ("list", Value::Array(list))
        }
        Action::GetGcc => ("gcc", Value::String(string(src))),
        Action::GetAllChannels | Action::GetAllVisChannels => {
            let list = (0..src.below(6))
                .map(|_| {
                    let mut pair = vec![Value::String(string(src))];
                    pair.push(match src.below(3) {
                        0 => Value::Number(number(src)),
                        1 => Value::String(string(src)),
                        _ => value(src, 3),
                    });
                    if src.one_in(8) {
                        pair.truncate(src.below(2));
                    }
                    for _ in 0..src.below(2) {
                        pair.push(value(src, 3));
                    }
                    Value::Array(pair)
                })
                .collect();
            ("list", Value::Array(list))
        }
        Action::GetChannelDefault => {
            let mut info = Map::new();
            for name in ["filename", "radiotext", "radiolink", "public_url"] {
                match src.below(4) {
                    0 => {}
                    1 => drop(info.insert(name.into(), Value::String(string(src)))),
                    2 => drop(info.insert(name.into(), Value::Number(number(src)))),
                    _ => drop(info.insert(name.into(), value(src, 3))),
                }
            }
            ("info", Value::Object(info))
        }
        Action::AddLog | Action::CleanupLogs => ("ok", Value::Bool(true)),
    };
    if !src.one_in(8) {
        object.insert(name.into(), field);
    }
    Value::Object(object)
}

/// Applies a few byte-level mutations to `body`.
fn mutate(src: &mut Source, body: &mut Vec<u8>) {
    for _ in 0..src.below(4) {
        let at = src.below(body.len() + 1);
        match src.below(7) {
            0 if at < body.len() => body[at] ^= 1 << src.below(8),
            1 => body.insert(at, *src.pick(INTERESTING)),
            2 => body.truncate(at),
            3 => {
                let end = (at + src.below(8)).min(body.len());
                body.drain(at..end);
            }
            4 => {
                let end = (at + src.below(16)).min(body.len());
                let copy = body[at..end].to_vec();
                body.splice(at..at, copy);
            }
            5 => {
                // Deep nesting: serde_json must refuse it, not overflow the stack.
                let depth = src.below(4096);
                let mut deep = vec![b'['; depth];
                deep.append(body);
                deep.extend(std::iter::repeat_n(b']', depth));
                *body = deep;
            }
            _ => {
                let mut prefixed = src.pick(&[&b" \n\t"[..], b"\xef\xbb\xbf"]).to_vec();
                prefixed.append(body);
                *body = prefixed;
            }
        }
    }
}

/// An answer body for `action`: JSON of the expected shape or of any shape, maybe
/// mutated.
pub fn body(src: &mut Source, action: Action) -> Vec<u8> {
    let v = if src.one_in(4) {
        value(src, 0)
    } else {
        shaped(src, action)
    };
    let mut body = match src.below(2) {
        0 => serde_json::to_vec(&v),
        _ => serde_json::to_vec_pretty(&v),
    }
    .unwrap_or_default();
    if src.one_in(2) {
        mutate(src, &mut body);
    }
    body
}

/// docs/protocol.md#directory, written out for a parsed answer: what decoding it must
/// give (`None`: an error).
fn expected(action: Action, answer: &Value) -> Option<Answer> {
    if matches!(action, Action::AddLog | Action::CleanupLogs) {
        // "ignored": any JSON will do.
        return Some(Answer::Done);
    }
    let object = answer.as_object()?;
    let field = |name: &str| object.get(name).unwrap_or(&Value::Null);
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    Some(match action {
        Action::CheckAuth => {
            let ok = match field("result") {
                Value::Bool(b) => *b,
                // "a non-zero number is true", whatever its type or size.
                Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                    (Some(u), _, _) => u != 0,
                    (_, Some(i), _) => i != 0,
                    (_, _, Some(f)) => f != 0.0,
                    _ => true,
                },
                Value::Null => false,
                _ => return None,
            };
            let error = object.get("error").and_then(Value::as_str).map(Into::into);
            Answer::CheckAuth(AuthAnswer { ok, error })
        }
        Action::GetChannels => Answer::GetChannels(match field("list") {
            Value::Null => Vec::new(),
            Value::Array(items) => items
                .iter()
                .map(|t| t.as_str().map(Into::into))
                .collect::<Option<_>>()?,
            _ => return None,
        }),
        Action::GetGcc => Answer::GetGcc(match field("gcc") {
            Value::Null => None,
            Value::String(s) => Some(s.clone()).filter(|s| !s.is_empty()),
            _ => return None,
        }),
        Action::GetAllChannels | Action::GetAllVisChannels => Answer::ChannelList(
            field("list")
                .as_array()?
                .iter()
                .map(|item| {
                    let pair = item.as_array()?;
                    Some(ChannelRef {
                        topic: pair.first()?.as_str()?.to_owned(),
                        id: text(pair.get(1)?)?,
                    })
                })
                .collect::<Option<_>>()?,
        ),
        Action::GetChannelDefault => Answer::GetChannelDefault(match field("info") {
            Value::Null => None,
            Value::Object(info) => {
                let get = |name: &str| info.get(name).and_then(text);
                Some(ChannelDefault {
                    filename: get("filename"),
                    radiotext: get("radiotext"),
                    radiolink: get("radiolink"),
                    public_url: get("public_url"),
                })
            }
            _ => return None,
        }),
        Action::AddLog | Action::CleanupLogs => Answer::Done,
    })
}

/// Decodes `body` as the answer of `action` and checks the outcome: no panic; an
/// error is a [`DirectoryError::BadAnswer`] naming the action and not repeating the
/// body's contents; the result is what docs/protocol.md#directory says.
pub fn check(action: Action, body: &[u8]) {
    let decoded = answer::decode_answer(action, body);
    let want = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| expected(action, &v));
    match (&decoded, &want) {
        (Ok(got), Some(want)) => assert_eq!(got, want, "{}: {:?}", action.name(), lossy(body)),
        (Err(e), None) => {
            assert!(
                matches!(e, DirectoryError::BadAnswer(_)),
                "{}: not a BadAnswer: {e:?}",
                action.name()
            );
            let text = e.to_string();
            assert!(text.contains(action.name()), "{text}");
            assert!(!text.contains(MARKER), "the error repeats the body: {text}");
        }
        _ => panic!(
            "{}: decoded {decoded:?}, docs/protocol.md#directory says {want:?}, body {:?}",
            action.name(),
            lossy(body)
        ),
    }
}

fn lossy(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(2000)]).into_owned()
}

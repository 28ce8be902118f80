//! Decoding of the PlugIt API's JSON answers (docs/protocol.md#directory): pure
//! functions from an answer body to typed values. [`super::PlugitDirectory`] calls them
//! on every answer it receives; the fuzz target `plugit_json` (fuzz/) and
//! `radiovis/tests/plugit_fuzz_smoke.rs` call them on arbitrary bytes.
//!
//! Every failure is a [`DirectoryError::BadAnswer`] naming the action, never the body
//! (which may echo what was sent). The work is bounded by the body's size: serde_json
//! refuses nesting deeper than 128 levels instead of recursing without end.

use serde_json::Value;

use crate::backend::{ChannelDefault, ChannelRef, DirectoryError, Reason};

/// A PlugIt action whose answer this module decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `check_auth`: a login and passcode.
    CheckAuth,
    /// `get_channels`: a station's channels.
    GetChannels,
    /// `get_gcc`: a country code's GCC.
    GetGcc,
    /// `get_all_channels`: every channel.
    GetAllChannels,
    /// `get_all_vis_channels`: channels with a default picture.
    GetAllVisChannels,
    /// `get_channel_default`: a channel's default slide.
    GetChannelDefault,
    /// `add_log`: one message log entry.
    AddLog,
    /// `cleanup_logs`: forget old log entries.
    CleanupLogs,
}

impl Action {
    /// Every action, in the order of docs/protocol.md#directory.
    pub const ALL: [Action; 8] = [
        Action::CheckAuth,
        Action::GetChannels,
        Action::GetGcc,
        Action::GetAllChannels,
        Action::GetAllVisChannels,
        Action::GetChannelDefault,
        Action::AddLog,
        Action::CleanupLogs,
    ];

    /// The action's name: the last segment of its URL.
    pub fn name(self) -> &'static str {
        match self {
            Action::CheckAuth => "check_auth",
            Action::GetChannels => "get_channels",
            Action::GetGcc => "get_gcc",
            Action::GetAllChannels => "get_all_channels",
            Action::GetAllVisChannels => "get_all_vis_channels",
            Action::GetChannelDefault => "get_channel_default",
            Action::AddLog => "add_log",
            Action::CleanupLogs => "cleanup_logs",
        }
    }
}

/// The answer of `check_auth`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthAnswer {
    /// Whether the credentials are accepted.
    pub ok: bool,
    /// The `error` text PlugIt gave with its answer, if any (for a debug log).
    pub error: Option<String>,
}

/// Any decoded answer, by action (see [`decode_answer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `check_auth`.
    CheckAuth(AuthAnswer),
    /// `get_channels`: channel topics.
    GetChannels(Vec<String>),
    /// `get_gcc`: the GCC, when the code is known.
    GetGcc(Option<String>),
    /// `get_all_channels` and `get_all_vis_channels`.
    ChannelList(Vec<ChannelRef>),
    /// `get_channel_default`: the default, when the channel has one.
    GetChannelDefault(Option<ChannelDefault>),
    /// `add_log` and `cleanup_logs`: any JSON value.
    Done,
}

/// Decodes the answer of `action`: what the HTTP client does with a 2xx body.
pub fn decode_answer(action: Action, body: &[u8]) -> Result<Answer, DirectoryError> {
    Ok(match action {
        Action::CheckAuth => Answer::CheckAuth(check_auth(body)?),
        Action::GetChannels => Answer::GetChannels(get_channels(body)?),
        Action::GetGcc => Answer::GetGcc(get_gcc(body)?),
        Action::GetAllChannels | Action::GetAllVisChannels => {
            Answer::ChannelList(channel_list(action, body)?)
        }
        Action::GetChannelDefault => Answer::GetChannelDefault(get_channel_default(body)?),
        Action::AddLog | Action::CleanupLogs => {
            json(action, body)?;
            Answer::Done
        }
    })
}

/// The JSON value of a body.
pub fn json(action: Action, body: &[u8]) -> Result<Value, DirectoryError> {
    serde_json::from_slice(body).map_err(|e| {
        DirectoryError::BadAnswer(Reason::caused_by(
            format!("{}: invalid JSON: {e}", action.name()),
            e,
        ))
    })
}

fn bad(action: Action, what: &str) -> DirectoryError {
    DirectoryError::BadAnswer(format!("{}: {what}", action.name()).into())
}

/// The JSON object of a body and the value of its field `name` (null when absent).
fn field(action: Action, body: &[u8], name: &str) -> Result<(Value, Value), DirectoryError> {
    let mut answer = json(action, body)?;
    let value = answer
        .as_object_mut()
        .ok_or_else(|| bad(action, "answer is not an object"))?
        .remove(name)
        .unwrap_or(Value::Null);
    Ok((answer, value))
}

/// `check_auth`: `result` is a boolean; a non-zero number is true, null or absent
/// false, like the original's truth test.
pub fn check_auth(body: &[u8]) -> Result<AuthAnswer, DirectoryError> {
    let action = Action::CheckAuth;
    let (answer, result) = field(action, body, "result")?;
    let ok = match result {
        Value::Bool(b) => b,
        // Any number, integer or not, of any size (`as_f64` reads them all): the
        // original's truth test, and the spec's "a non-zero number is true".
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::Null => false,
        _ => return Err(bad(action, "\"result\" is not a boolean")),
    };
    let error = answer
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(AuthAnswer { ok, error })
}

/// `get_channels`: `list` of topics; null or absent is an empty list.
pub fn get_channels(body: &[u8]) -> Result<Vec<String>, DirectoryError> {
    let action = Action::GetChannels;
    match field(action, body, "list")?.1 {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .into_iter()
            .map(|t| match t {
                Value::String(s) => Ok(s),
                _ => Err(bad(action, "a topic is not a string")),
            })
            .collect(),
        _ => Err(bad(action, "\"list\" is not a list")),
    }
}

/// `get_gcc`: `gcc`; empty, null or absent is unknown.
pub fn get_gcc(body: &[u8]) -> Result<Option<String>, DirectoryError> {
    let action = Action::GetGcc;
    match field(action, body, "gcc")?.1 {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => Ok(Some(s)),
        _ => Err(bad(action, "\"gcc\" is not a string")),
    }
}

/// `get_all_channels`, `get_all_vis_channels`: a `[[topic, id], ...]` list; ids may be
/// numbers or strings; items after the id are ignored.
pub fn channel_list(action: Action, body: &[u8]) -> Result<Vec<ChannelRef>, DirectoryError> {
    let list = match field(action, body, "list")?.1 {
        Value::Array(list) => list,
        _ => return Err(bad(action, "\"list\" is not a list")),
    };
    list.into_iter()
        .map(|item| match item {
            Value::Array(pair) => {
                let mut pair = pair.into_iter();
                match (pair.next(), pair.next()) {
                    (Some(Value::String(topic)), Some(id)) => {
                        let id = match id {
                            Value::String(s) => s,
                            Value::Number(n) => n.to_string(),
                            _ => {
                                return Err(bad(
                                    action,
                                    "a channel id is neither a string nor a number",
                                ))
                            }
                        };
                        Ok(ChannelRef { topic, id })
                    }
                    (Some(_), Some(_)) => Err(bad(action, "a channel topic is not a string")),
                    _ => Err(bad(action, "a channel is not a [topic, id] pair")),
                }
            }
            _ => Err(bad(action, "a channel is not a [topic, id] pair")),
        })
        .collect()
}

/// A string field of a channel's `info`, `None` when absent, null or not a string (a
/// number is given as its decimal text).
fn info_str(info: &serde_json::Map<String, Value>, name: &str) -> Option<String> {
    match info.get(name) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// `get_channel_default`: `info` object, or null.
pub fn get_channel_default(body: &[u8]) -> Result<Option<ChannelDefault>, DirectoryError> {
    let action = Action::GetChannelDefault;
    match field(action, body, "info")?.1 {
        Value::Null => Ok(None),
        Value::Object(info) => Ok(Some(ChannelDefault {
            filename: info_str(&info, "filename"),
            radiotext: info_str(&info, "radiotext"),
            radiolink: info_str(&info, "radiolink"),
            public_url: info_str(&info, "public_url"),
        })),
        _ => Err(bad(action, "\"info\" is not an object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_lists_take_string_and_number_ids() {
        let body = br#"{"list": [["/topic/a/", 7], ["/topic/b/", "x"]]}"#;
        let l = channel_list(Action::GetAllChannels, body).expect("ok");
        assert_eq!(l[0].id, "7");
        assert_eq!(l[1].id, "x");
        let body = br#"{"list": [["/topic/a/"]]}"#;
        assert!(channel_list(Action::GetAllChannels, body).is_err());
    }

    #[test]
    fn errors_name_the_action_not_the_body() {
        let e = get_gcc(br#"{"gcc": ["s3cret"]}"#).expect_err("not a string");
        let text = e.to_string();
        assert!(text.contains("get_gcc"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }
}

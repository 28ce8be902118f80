//! RadioVIS HTTP long-poll, `GET /radiodns/vis/vis.json?topic=...&last_id=...`
//! (docs/protocol.md#http-long-poll): the newest message of the topics at once, unless
//! the client has it already; then a wait on the hub's fan-out (no polling), answered
//! by the next message or, after the hold time, by an empty `200` ("poll again").

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::{Request, Response, StatusCode};
use serde_json::{json, Map, Value};

use super::watch::{frames, message_id, Watch, WatchError};
use super::{Abort, Body, HttpConfig};
use crate::backend::{Cache, DirectoryApi, MessageBus};
use crate::hub::{Hub, Transport};
use crate::stomp::Frame;

/// Most `topic=` parameters of one request.
const MAX_TOPICS: usize = 16;

/// Answers one long-poll request.
pub(super) async fn handle<T, B: MessageBus, D: DirectoryApi, C: Cache>(
    hub: &Arc<Hub<B, D, C>>,
    config: &HttpConfig,
    req: &Request<T>,
    peer: SocketAddr,
) -> Response<Body> {
    let mut topics = Vec::new();
    let mut last_id = None;
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match &*k {
            "topic" => topics.push(v.into_owned()),
            "last_id" if !v.is_empty() => last_id = Some(v.into_owned()),
            _ => {}
        }
    }
    if topics.is_empty() {
        return super::error(StatusCode::BAD_REQUEST, "a topic= parameter is required");
    }
    if topics.len() > MAX_TOPICS {
        return super::error(
            StatusCode::BAD_REQUEST,
            &format!("too many topic= parameters: limit is {MAX_TOPICS}"),
        );
    }
    let mut watch = Watch::new(hub.clone(), peer, Abort::of(req), Transport::LongPoll);
    let mut newest: Option<(u64, Frame)> = None;
    for topic in &topics {
        match watch.subscribe(topic).await {
            Ok(Some((seq, item))) => {
                let mut bytes = bytes::BytesMut::from(&item.head[..]);
                bytes.extend_from_slice(&item.tail);
                if let Some(frame) = frames(bytes).pop() {
                    if newest.as_ref().is_none_or(|(s, _)| seq > *s) {
                        newest = Some((seq, frame));
                    }
                }
            }
            Ok(None) => {}
            Err(e @ WatchError::BadDestination(_)) => {
                return super::error(StatusCode::BAD_REQUEST, &e.to_string())
            }
            Err(e) => return super::error(StatusCode::TOO_MANY_REQUESTS, &e.to_string()),
        }
    }
    if let Some((_, frame)) = newest {
        if !same_id(last_id.as_deref(), message_id(&frame)) {
            return answer(&frame);
        }
    }
    // The client has the newest (or there is none): hold until a newer one.
    let held = tokio::time::timeout(config.poll_hold, async {
        loop {
            if watch.next().await.is_err() {
                return None;
            }
            // The newest of what arrived together; one the client has is no news.
            if let Some(frame) = frames(watch.take())
                .into_iter()
                .rev()
                .find(|f| !same_id(last_id.as_deref(), message_id(f)))
            {
                return Some(frame);
            }
        }
    })
    .await;
    match held {
        Ok(Some(frame)) => answer(&frame),
        // Hold time over, server stopping or client too slow: poll again.
        _ => poll_again(),
    }
}

/// Whether the client's `last_id` names this message. Some handsets strip an `ID:`
/// prefix from the id they were given, so it is ignored on both sides.
fn same_id(last_id: Option<&str>, id: &str) -> bool {
    let strip = |s: &str| s.strip_prefix("ID:").unwrap_or(s).to_owned();
    last_id.is_some_and(|l| strip(l) == strip(id))
}

/// A message as RadioVIS HTTP clients read it.
fn answer(frame: &Frame) -> Response<Body> {
    let mut headers = Map::new();
    let id = message_id(frame).to_owned();
    let destination = frame.get("destination").unwrap_or("").to_owned();
    headers.insert("RadioVIS-Message-ID".into(), Value::from(id.clone()));
    headers.insert(
        "RadioVIS-Destination".into(),
        Value::from(destination.clone()),
    );
    for (stomp, http) in [
        ("trigger-time", "RadioVIS-Trigger-Time"),
        ("link", "RadioVIS-Link"),
    ] {
        if let Some(v) = frame.get(stomp) {
            headers.insert(http.into(), Value::from(v));
        }
    }
    let body = String::from_utf8_lossy(&frame.body);
    let mut response = super::json(StatusCode::OK, &json!({ "headers": headers, "body": body }));
    // Also as HTTP headers, for clients that read them there.
    for (name, value) in [
        ("RadioVIS-Message-ID", id),
        ("RadioVIS-Destination", destination),
    ] {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, v);
        }
    }
    response
}

/// Nothing new within the hold time: `200` with an empty body, which handsets treat as
/// "no message, ask again" (docs/protocol.md#http-long-poll).
fn poll_again() -> Response<Body> {
    let mut response = super::json(StatusCode::OK, &Value::Null);
    *response.body_mut() = super::full(bytes::Bytes::new());
    response
}

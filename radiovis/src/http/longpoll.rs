//! RadioVIS HTTP long-poll, `GET /radiodns/vis/vis.json?topic=...&last_id=...`
//! (docs/protocol.md#http-long-poll): the newest message of the topics at once, unless
//! the client has it already; then a wait on the hub's fan-out (no polling), answered
//! by the next message or, after the hold time, by an empty `200` ("poll again").

use std::future::{ready, Future};

use futures::future::Either;
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

/// What a long-poll asks for.
struct Query {
    topics: Vec<String>,
    last_id: Option<String>,
}

impl Query {
    /// The `topic=` and `last_id=` parameters, or why the query is bad.
    fn of<T>(req: &Request<T>) -> Result<Query, String> {
        let mut query = Query {
            topics: Vec::new(),
            last_id: None,
        };
        for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
            match &*k {
                "topic" => query.topics.push(v.into_owned()),
                "last_id" if !v.is_empty() => query.last_id = Some(v.into_owned()),
                _ => {}
            }
        }
        if query.topics.is_empty() {
            return Err("a topic= parameter is required".into());
        }
        if query.topics.len() > MAX_TOPICS {
            return Err(format!("too many topic= parameters: limit is {MAX_TOPICS}"));
        }
        Ok(query)
    }
}

/// Answers one long-poll request. The request is read here and dropped: the future
/// a held request is (all it costs besides its subscriptions) holds only what the
/// wait needs.
pub(super) fn handle<T, B: MessageBus, D: DirectoryApi, C: Cache>(
    hub: &Arc<Hub<B, D, C>>,
    config: &HttpConfig,
    req: Request<T>,
    peer: SocketAddr,
) -> impl Future<Output = Response<Body>> + Send + 'static {
    let query = match Query::of(&req) {
        Ok(query) => query,
        Err(e) => return Either::Left(ready(super::error(StatusCode::BAD_REQUEST, &e))),
    };
    let abort = Abort::of(&req);
    drop(req);
    let (hub, hold) = (hub.clone(), config.poll_hold);
    Either::Right(async move {
        // Boxed: subscribing is a moment, the wait is long.
        let subscribed = subscribe(hub, peer, abort, query.topics, query.last_id.as_deref());
        let watch = match Box::pin(subscribed).await {
            Ok(watch) => watch,
            Err(answer) => return *answer,
        };
        // The client has the newest (or there is none): hold until a newer one.
        match tokio::time::timeout(hold, wait(&watch, query.last_id.as_deref())).await {
            Ok(Some(frame)) => answer(&frame),
            // Hold time over, server stopping or client too slow: poll again.
            _ => poll_again(),
        }
    })
}

/// Subscribes a new web client to `topics`, to wait for a message newer than
/// `last_id`; or the answer at once: the newest of the topics' last messages when the
/// client does not have it, a refusal for a bad topic.
async fn subscribe<B: MessageBus, D: DirectoryApi, C: Cache>(
    hub: Arc<Hub<B, D, C>>,
    peer: SocketAddr,
    abort: tokio_util::sync::CancellationToken,
    topics: Vec<String>,
    last_id: Option<&str>,
) -> Result<Watch<B, D, C>, Box<Response<Body>>> {
    let mut watch = Watch::new(hub, peer, abort, Transport::LongPoll);
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
                return Err(Box::new(super::error(
                    StatusCode::BAD_REQUEST,
                    &e.to_string(),
                )))
            }
            Err(e) => {
                return Err(Box::new(super::error(
                    StatusCode::TOO_MANY_REQUESTS,
                    &e.to_string(),
                )))
            }
        }
    }
    match newest {
        Some((_, frame)) if !same_id(last_id, message_id(&frame)) => Err(Box::new(answer(&frame))),
        _ => Ok(watch),
    }
}

/// The first message newer than `last_id` (of several that arrive together, the
/// newest), or `None` when the client is gone or the server stops.
async fn wait<B: MessageBus, D: DirectoryApi, C: Cache>(
    watch: &Watch<B, D, C>,
    last_id: Option<&str>,
) -> Option<Frame> {
    loop {
        watch.next().await.ok()?;
        // One the client has is no news.
        if let Some(frame) = frames(watch.take())
            .into_iter()
            .rev()
            .find(|f| !same_id(last_id, message_id(f)))
        {
            return Some(frame);
        }
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

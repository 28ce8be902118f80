//! Server-sent events, `GET /radiodns/push/1.0/<path>` (docs/protocol.md#server-sent-events):
//! the topics `/topic/<path>/text` and `/topic/<path>/image` as `event: text` and
//! `event: image`, the last message of each first (unless `Last-Event-ID` says the
//! client has it), a comment as keep-alive when nothing else was sent for a while.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, StreamBody};
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use super::watch::{frames, message_id, Watch, WatchError};
use super::{Abort, Body, HttpConfig};
use crate::backend::{Cache, DirectoryApi, MessageBus};
use crate::hub::{Hub, Transport};
use crate::stomp::Frame;

/// Where the event streams are.
pub(super) const PREFIX: &str = "/radiodns/push/1.0/";

/// Milliseconds an `EventSource` waits before reconnecting.
const RETRY_MS: u32 = 3000;

/// The two kinds of event, and the topic suffix of each.
const KINDS: [(&str, &str); 2] = [("text", "/text"), ("image", "/image")];

/// Opens an event stream for the service at `path` (after [`PREFIX`]). The request
/// is read here and dropped; the subscriptions are made in a future of their own.
pub(super) fn handle<T, B: MessageBus, D: DirectoryApi, C: Cache>(
    hub: &Arc<Hub<B, D, C>>,
    config: &HttpConfig,
    req: Request<T>,
    peer: SocketAddr,
) -> impl Future<Output = Response<Body>> + Send + 'static {
    let service = req.uri().path()[PREFIX.len()..].trim_end_matches('/');
    let base = format!("/topic/{service}");
    // `Last-Event-ID` is the `id:` we sent last: the ids of the last text and image.
    let seen: Vec<String> = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split('|').map(str::to_owned).collect())
        .unwrap_or_default();
    let abort = Abort::of(&req);
    drop(req);
    Box::pin(open(
        hub.clone(),
        config.sse_keepalive,
        base,
        seen,
        abort,
        peer,
    ))
}

async fn open<B: MessageBus, D: DirectoryApi, C: Cache>(
    hub: Arc<Hub<B, D, C>>,
    keepalive: Duration,
    base: String,
    seen: Vec<String>,
    abort: tokio_util::sync::CancellationToken,
    peer: SocketAddr,
) -> Response<Body> {
    let mut watch = Watch::new(hub, peer, abort, Transport::Sse);
    let mut ids = [String::new(), String::new()];
    let mut replays = Vec::new();
    for (i, (_, suffix)) in KINDS.iter().enumerate() {
        match watch.subscribe(&format!("{base}{suffix}")).await {
            Ok(Some((seq, item))) => {
                let mut bytes = BytesMut::from(&item.head[..]);
                bytes.extend_from_slice(&item.tail);
                if let Some(frame) = frames(bytes).pop() {
                    let id = message_id(&frame).to_owned();
                    if seen.get(i).is_some_and(|s| *s == id) {
                        ids[i] = id;
                    } else {
                        replays.push((seq, frame));
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
    tracing::info!(%peer, %base, "event stream opened");
    let mut stream = EventStream {
        watch,
        base,
        ids,
        out: VecDeque::new(),
        keepalive,
    };
    stream
        .out
        .push_back(Bytes::from(format!(": radiovis\nretry: {RETRY_MS}\n\n")));
    replays.sort_by_key(|(seq, _)| *seq);
    for (_, frame) in replays {
        stream.event(&frame);
    }
    let body = futures::stream::unfold(stream, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, Infallible>(hyper::body::Frame::data(chunk)), s))
    });
    let mut response = Response::new(StreamBody::new(body).boxed_unsync());
    let headers = response.headers_mut();
    for (name, value) in [
        (hyper::header::CONTENT_TYPE, "text/event-stream"),
        (hyper::header::CACHE_CONTROL, "no-store"),
        (hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
    ] {
        headers.insert(name, hyper::header::HeaderValue::from_static(value));
    }
    // Proxies must not hold the stream back.
    headers.insert(
        "x-accel-buffering",
        hyper::header::HeaderValue::from_static("no"),
    );
    response
}

/// One open event stream: the client's subscriptions and what is ready to send.
struct EventStream<B: MessageBus, D: DirectoryApi, C: Cache> {
    watch: Watch<B, D, C>,
    base: String,
    /// Message ids of the last text and image sent (the `id:` line).
    ids: [String; 2],
    out: VecDeque<Bytes>,
    keepalive: Duration,
}

impl<B: MessageBus, D: DirectoryApi, C: Cache> EventStream<B, D, C> {
    /// The next piece of the stream; `None` ends it (server stopping, slow client).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.out.pop_front() {
                if self.out.is_empty() {
                    // An idle stream holds no queue buffer.
                    self.out = VecDeque::new();
                }
                return Some(chunk);
            }
            let woke = tokio::time::timeout(self.keepalive, self.watch.next()).await;
            match woke {
                Ok(Ok(())) => {
                    for frame in frames(self.watch.take()) {
                        self.event(&frame);
                    }
                }
                Ok(Err(ended)) => {
                    tracing::info!(base = %self.base, ?ended, "event stream closed");
                    return None;
                }
                Err(_) => return Some(Bytes::from_static(b": keep-alive\n\n")),
            }
        }
    }

    /// Queues the event of one MESSAGE frame.
    fn event(&mut self, frame: &Frame) {
        let destination = frame.get("destination").unwrap_or("");
        let Some(i) = KINDS
            .iter()
            .position(|(_, suffix)| destination.ends_with(suffix))
        else {
            return;
        };
        let id = message_id(frame).to_owned();
        let body = String::from_utf8_lossy(&frame.body);
        let data = match KINDS[i].0 {
            "text" => json!({
                "body": body.strip_prefix("TEXT ").unwrap_or(&body),
                "id": id,
            }),
            _ => json!({
                "src": body.strip_prefix("SHOW ").unwrap_or(&body),
                "link": frame.get("link"),
                "id": id,
            }),
        };
        self.ids[i] = id;
        let event = format!(
            "event: {}\nid: {}\ndata: {}\n\n",
            KINDS[i].0,
            // An id cannot hold a line break: ids with one are not resumable.
            self.ids.join("|").replace(['\n', '\r'], ""),
            data
        );
        self.out.push_back(Bytes::from(event));
    }
}

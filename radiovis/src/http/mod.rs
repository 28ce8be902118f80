//! The HTTP listener (feature `http`): one listener per address, serving a
//! [`Router`] on every connection it accepts, with graceful shutdown. Requests
//! without a body (every web transport) are read and answered by `connection`, with
//! no buffer larger than the request; the first request with a body hands its
//! connection to hyper.
//!
//! [`serve`] accepts on a `TcpListener`; [`serve_connection`] serves one already
//! accepted stream of any kind (a TLS stream, for instance). Both take any
//! [`Router`]: [`RadiovisRouter`] serves the radio and web transports of a
//! [`StompHub`](crate::StompHub); other binaries can bring their own.
//!
//! | module | job |
//! |---|---|
//! | `connection` | one connection's life: request heads (`httparse`), answers, upgrades, the hand-over to hyper |
//! | `wire` | HTTP/1 heads in (`httparse`) and out |
//! | `router` | [`RadiovisRouter`]: one `match` on (method, path) -> handler modules |
//! | `longpoll` | RadioVIS HTTP long-poll `/radiodns/vis/vis.json` (docs/protocol.md#http-long-poll) |
//! | `sse` | server-sent events `/radiodns/push/1.0/<path>` (docs/protocol.md#server-sent-events) |
//! | `websocket` | EBU player mode on `/topic/...` and STOMP over WebSocket on `/stomp` |
//! | `ws_bytes` | a WebSocket as a byte stream, for a STOMP session |
//! | `watch` | a web client's subscriptions on the hub: the same topic rules, replay and slow-consumer rule as a STOMP session |
//! | [`ops`] | operations endpoints: `/metrics`, `/healthz`, `/readyz`, HTTP publish, status page (docs/protocol.md#operations) |
//! | `ops_publish` | `POST /publish`, `POST /services/<channel>` (docs/protocol.md#http-publish) |
//! | `ops_status` | the status page, its snapshot and live events (docs/protocol.md#status-page) |
//! | [`ops_respond`] | whole responses, `/metrics`, `/healthz`, `/readyz`, HTTP Basic credentials |
//! | [`ops_process`] | [`ProcessRouter`]: `/metrics` and health of a process without a hub (radiovis-fallback) |

mod connection;
mod longpoll;
pub mod ops;
pub mod ops_process;
mod ops_publish;
pub mod ops_respond;
mod ops_status;
mod router;
mod sse;
mod watch;
mod websocket;
mod wire;
mod ws_bytes;

pub use connection::{serve_connection, Io};
pub use ops_process::ProcessRouter;
pub use router::{HttpConfig, RadiovisRouter};

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::server::Refused;

/// The body of every response: whole (JSON, text) or streamed (server-sent events).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Time a client has to send a request's headers, and that an idle keep-alive
/// connection is kept (docs/protocol.md#http-listener).
pub(super) const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of a request's head the server buffers.
pub(super) const MAX_HEAD: usize = 16 * 1024;
/// How long [`serve`] waits at shutdown for open connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Answers the requests of an HTTP listener. Cheap to clone (one per connection).
pub trait Router: Clone + Send + Sync + 'static {
    /// Held for as long as a connection is open (the connection limits).
    type Guard: Send + 'static;
    /// Admits a new connection from `peer`, or refuses it (it is closed at once).
    fn admit(&self, peer: SocketAddr) -> Result<Self::Guard, Refused>;
    /// Answers one request (its body, if any, is read from `T`).
    fn route<T>(
        &self,
        req: Request<T>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Body>> + Send
    where
        T: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        T::Error: std::error::Error + Send + Sync + 'static;

    /// Answers a `GET` without a body from its request `target` alone, before an
    /// `http::Request` is made of it: the fast path of the most frequent request (a
    /// radio's long-poll, once per radio per message). `None` (the default): the
    /// request is made and given to [`Router::route`].
    fn route_get(
        &self,
        target: &str,
        conn: &Connection,
        peer: SocketAddr,
    ) -> Option<impl Future<Output = Reply> + Send + use<Self>> {
        let _ = (target, conn, peer);
        None::<std::future::Ready<Reply>>
    }
}

/// A router's answer: an `http::Response`, or a long-poll's answer written straight
/// from the message the hub encoded (it is the listener's most frequent answer).
pub struct Reply(ReplyKind);

enum ReplyKind {
    Response(Response<Body>),
    Poll(longpoll::Answer),
}

impl Reply {
    /// The answer as an `http::Response` (for hyper, which writes those).
    pub fn into_response(self) -> Response<Body> {
        match self.0 {
            ReplyKind::Response(response) => response,
            ReplyKind::Poll(answer) => answer.into_response(),
        }
    }
}

impl From<Response<Body>> for Reply {
    fn from(response: Response<Body>) -> Self {
        Reply(ReplyKind::Response(response))
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops accepting,
/// lets open connections finish their requests (at most 5 s) and returns.
pub async fn serve<R: Router>(listener: TcpListener, router: R, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "listening for HTTP connections");
    }
    let tracker = TaskTracker::new();
    let shards = ShutdownShards::new(&shutdown);
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                let _ = stream.set_nodelay(true);
                let router = router.clone();
                tracker.spawn(serve_connection(router, stream, peer, shards.next()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed; retrying in {:?}", backoff);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("HTTP shutdown grace elapsed with connections still open");
    }
}

/// Children of a shutdown token that connections are spread over, for
/// [`serve_connection`]: waiting on a token and checking it take its lock, on every
/// request of every connection, which would all take the one lock.
#[derive(Clone)]
pub struct ShutdownShards {
    shards: Arc<[CancellationToken]>,
    next: Arc<std::sync::atomic::AtomicUsize>,
}

impl ShutdownShards {
    /// 32 children of `shutdown`, cancelled with it.
    pub fn new(shutdown: &CancellationToken) -> Self {
        ShutdownShards {
            shards: (0..32).map(|_| shutdown.child_token()).collect(),
            next: Arc::default(),
        }
    }

    /// The token of the next connection.
    pub fn next(&self) -> CancellationToken {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.shards[i % self.shards.len()].clone()
    }
}

/// Serves the rest of a connection with hyper (requests with a body), from the
/// request `io` starts with, with the connection's place and abort token.
async fn serve_hyper<R, S>(
    router: R,
    io: S,
    peer: SocketAddr,
    shutdown: CancellationToken,
    connection: Connection,
) where
    R: Router,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let abort = connection.abort.clone();
    let service = hyper::service::service_fn({
        let connection = connection.clone();
        move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(connection.clone());
            let router = router.clone();
            async move { Ok::<_, Infallible>(router.route(req, peer).await) }
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = abort.0.cancelled() => {
            tracing::info!(%peer, "HTTP connection dropped: slow consumer");
            Ok(())
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn => r,
                _ = abort.0.cancelled() => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HTTP connection ended");
    }
    // The connection's place, unless an upgraded connection took it along.
    drop(connection);
}

/// Cancelling it closes the HTTP connection at once, even while a response is being
/// written to a client that does not read (the slow-consumer rule). Every request
/// carries its connection's token in its extensions.
#[derive(Debug, Clone)]
pub struct Abort(pub CancellationToken);

impl Abort {
    /// The token of the request's connection (a fresh one outside [`serve_connection`]).
    pub fn of<T>(req: &Request<T>) -> CancellationToken {
        Connection::of(req)
            .map(|c| c.abort.0.clone())
            .unwrap_or_default()
    }
}

/// What a request has of its connection: its abort token and its place. A request
/// made for [`Router::route`] carries it in its extensions (one entry: every request
/// pays for each); [`Router::route_get`] is given it.
#[derive(Clone)]
pub struct Connection {
    pub(super) abort: Abort,
    pub(super) place: Place,
}

impl Connection {
    pub(super) fn of<T>(req: &Request<T>) -> Option<&Connection> {
        req.extensions().get::<Connection>()
    }
}

type AnyBox = Box<dyn std::any::Any + Send>;

/// The connection's place under the connection limits (what [`Router::admit`] gave),
/// and what a request leaves on the connection for the next request on it (a
/// long-poll's subscriptions, docs/protocol.md#http-long-poll), dropped with it. A
/// request that upgrades the connection takes the place along, so that the upgraded
/// connection stays counted and is never counted twice.
#[derive(Clone)]
pub struct Place(Arc<parking_lot::Mutex<Seat>>);

struct Seat {
    guard: Option<AnyBox>,
    kept: Option<AnyBox>,
}

impl Place {
    /// The place `guard` holds.
    pub(super) fn new(guard: AnyBox) -> Self {
        Place(Arc::new(parking_lot::Mutex::new(Seat {
            guard: Some(guard),
            kept: None,
        })))
    }

    /// Takes the place of the request's connection (`None` outside
    /// [`serve_connection`], or when taken already).
    pub fn take<T>(req: &Request<T>) -> Option<AnyBox> {
        Connection::of(req).and_then(|c| c.place.0.lock().guard.take())
    }

    /// Takes what the last request left, if it is a `V` (anything else is dropped).
    pub(super) fn take_kept<V: Send + 'static>(&self) -> Option<Box<V>> {
        self.0.lock().kept.take()?.downcast().ok()
    }

    /// Leaves `value` for the next request (what was left before is dropped).
    pub(super) fn keep<V: Send + 'static>(&self, value: Box<V>) {
        let before = self.0.lock().kept.replace(value);
        drop(before);
    }

    /// Drops what the last request left.
    pub(super) fn forget_kept(&self) {
        let before = self.0.lock().kept.take();
        drop(before);
    }
}

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// A JSON response with the headers every answer to a web client carries.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    json_bytes(status, value.to_string().into_bytes())
}

/// A response whose body is `json`, already encoded, with the headers every answer
/// to a web client carries.
pub fn json_bytes(status: StatusCode, json: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(full(json));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, value) in JSON_FIELDS {
        headers.insert(name, hyper::header::HeaderValue::from_static(value));
    }
    response
}

/// The header fields of every JSON answer to a web client.
pub(super) const JSON_FIELDS: [(&str, &str); 3] = [
    ("content-type", "application/json"),
    ("cache-control", "no-store"),
    ("access-control-allow-origin", "*"),
];

/// `{"error": message}` with `status` (docs/protocol.md#http-listener).
pub fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

/// The answer to a path no handler serves.
pub fn not_found() -> Response<Body> {
    error(StatusCode::NOT_FOUND, "not found")
}

/// The answer to a CORS preflight: any origin may call the listener's endpoints
/// (docs/protocol.md#http-listener).
pub fn preflight() -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    for (name, value) in [
        (hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        (
            hyper::header::ACCESS_CONTROL_ALLOW_METHODS,
            "GET, POST, OPTIONS",
        ),
        (
            hyper::header::ACCESS_CONTROL_ALLOW_HEADERS,
            "Content-Type, Authorization, Last-Event-ID",
        ),
        (hyper::header::ACCESS_CONTROL_MAX_AGE, "86400"),
    ] {
        headers.insert(name, hyper::header::HeaderValue::from_static(value));
    }
    response
}

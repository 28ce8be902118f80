//! One HTTP connection's life (docs/protocol.md#http-listener).
//!
//! Radios and players hold their requests for a long time: a long-poll waits for the
//! next slide, an event stream and a WebSocket never end. hyper keeps two 8 KiB buffers
//! per connection for as long as it serves it, which made a held long-poll cost more
//! than ten times a STOMP radio (BENCHMARKS.md). So a connection is read here first, into a
//! buffer no larger than what the client sent:
//!
//! 1. the request head is read (30 s, 16 KiB at most) and parsed with `httparse`;
//! 2. a request without a body (every request of the web transports, every `GET` of
//!    the operations endpoints) is answered by the [`Router`] and its answer written
//!    here: with `content-length` when the body's size is known, chunked otherwise
//!    (close-delimited for HTTP/1.0); while the answer is pending the socket is still
//!    read, so that a client that leaves ends its request at once;
//! 3. a `101` answer hands the socket, with anything read after the head, to the
//!    upgrade (the WebSocket transports) through [`RawUpgrade`];
//! 4. the first request with a body (HTTP publish) hands the connection, with what was
//!    read of it, to hyper, which serves it from then on.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Empty};
use hyper::body::Body as _;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{Abort, Body, Place, Router, HEADER_TIMEOUT, MAX_HEAD};

/// How long writing one piece of an answer may take: a client that does not read
/// its answer is dropped (docs/protocol.md#http-listener).
const WRITE_TIMEOUT: std::time::Duration = HEADER_TIMEOUT;

/// Most headers in a request head.
const MAX_HEADERS: usize = 64;
/// Longest a closed connection is read (and what is read dropped) after its last
/// answer, so that the close does not reset it.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// A byte stream an HTTP connection runs on (TCP, TLS, an upgraded connection).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// An upgraded connection: the socket and what the client sent after its request head.
pub(super) struct Upgraded {
    pub io: Box<dyn Io>,
    pub read: Vec<u8>,
}

/// How a handler answering `101` gets the connection: taken from the request's
/// extensions (present on requests read here, not on those hyper serves).
#[derive(Clone)]
pub(super) struct RawUpgrade(Arc<parking_lot::Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl RawUpgrade {
    /// The upgrade of this request, if it was read here and not taken yet.
    pub fn take<T>(req: &Request<T>) -> Option<oneshot::Receiver<Upgraded>> {
        req.extensions()
            .get::<RawUpgrade>()
            .and_then(|u| u.0.lock().take())
    }
}

/// Serves HTTP/1.1 (with upgrades to WebSocket) on one accepted stream until the
/// client closes it or `shutdown` is cancelled (requests in progress finish first).
/// The connection is admitted under the limits when this is called.
pub fn serve_connection<R, S>(
    router: R,
    stream: S,
    peer: SocketAddr,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send
where
    R: Router,
    S: Io,
{
    // Logged and counted by `admit`; a refused client sees the connection closed.
    let place = router
        .admit(peer)
        .ok()
        .map(|guard| Place::new(Box::new(guard)));
    // Made here and moved into the future whole: made inside it, each would be held
    // twice (as the future's captured argument and as its local).
    let abort = Abort(CancellationToken::new());
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
    };
    async move {
        let Some(place) = place else {
            return;
        };
        loop {
            let Some(head) = Box::pin(conn.next_head(&shutdown, &abort, peer)).await else {
                return;
            };
            if head.has_body {
                // The whole connection, what was read of it first, goes to hyper.
                let io = Prefixed {
                    prefix: Bytes::from(std::mem::take(&mut conn.buf)),
                    inner: conn.stream,
                };
                Box::pin(super::serve_hyper(router, io, peer, shutdown, place, abort)).await;
                return;
            }
            conn.consume(head.len);
            let (request, answer) = prepare(head, &abort, &place);
            let response = tokio::select! {
                r = router.route(request, peer) => r,
                _ = conn.until_closed() => {
                    tracing::debug!(%peer, "HTTP client left before its answer");
                    return;
                }
            };
            if let (StatusCode::SWITCHING_PROTOCOLS, Some(tx)) = (response.status(), answer.upgrade)
            {
                let written =
                    Box::pin(conn.respond(response, answer.version, true, true, &abort)).await;
                if written.is_ok() {
                    let _ = tx.send(Upgraded {
                        io: Box::new(conn.stream),
                        read: conn.buf,
                    });
                }
                return;
            }
            let written = Box::pin(conn.respond(
                response,
                answer.version,
                answer.head_only,
                answer.keep_alive,
                &abort,
            ))
            .await;
            match written {
                Ok(true) if !shutdown.is_cancelled() => {}
                Ok(_) => {
                    Box::pin(conn.linger()).await;
                    return;
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended while answering");
                    return;
                }
            }
        }
    }
}

/// How to write the answer to a request.
struct Answer {
    version: Version,
    head_only: bool,
    keep_alive: bool,
    /// Where a `101` answer sends the connection.
    upgrade: Option<oneshot::Sender<Upgraded>>,
}

/// The request for the router, with the connection's abort token and place (and its
/// upgrade, for a handshake) in its extensions.
fn prepare(head: Head, abort: &Abort, place: &Place) -> (Request<Empty<Bytes>>, Answer) {
    let mut request = head.request.map(|()| Empty::<Bytes>::new());
    request.extensions_mut().insert(abort.clone());
    request.extensions_mut().insert(place.clone());
    let upgrade = wants_upgrade(&request).then(|| {
        let (tx, rx) = oneshot::channel();
        request
            .extensions_mut()
            .insert(RawUpgrade(Arc::new(parking_lot::Mutex::new(Some(rx)))));
        tx
    });
    let head_only = request.method() == Method::HEAD;
    if head_only {
        // The head of what a GET gets (docs/protocol.md#http-listener).
        *request.method_mut() = Method::GET;
    }
    let answer = Answer {
        version: request.version(),
        head_only,
        keep_alive: head.keep_alive,
        upgrade,
    };
    (request, answer)
}

/// Whether the request asks to switch protocols (a WebSocket handshake).
fn wants_upgrade<T>(request: &Request<T>) -> bool {
    request.headers().contains_key(header::UPGRADE)
}

/// A request head, parsed.
struct Head {
    request: Request<()>,
    /// Bytes of the head in the buffer.
    len: usize,
    /// A body follows (`content-length` above 0 or `transfer-encoding`).
    has_body: bool,
    /// The client keeps the connection open after the answer.
    keep_alive: bool,
}

#[derive(Debug)]
enum HeadError {
    /// The client closed the connection between requests.
    Closed,
    TooLarge,
    Bad(&'static str),
    Io(io::Error),
}

impl From<io::Error> for HeadError {
    fn from(e: io::Error) -> Self {
        HeadError::Io(e)
    }
}

/// The socket and the bytes read from it and not consumed yet.
struct Conn<S> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: Io> Conn<S> {
    /// The next request head; `None` when the connection is over (the client closed
    /// it, sent something that is not HTTP, was idle too long, or the server stops).
    async fn next_head(
        &mut self,
        shutdown: &CancellationToken,
        abort: &Abort,
        peer: SocketAddr,
    ) -> Option<Head> {
        let read = tokio::select! {
            r = tokio::time::timeout(HEADER_TIMEOUT, self.read_head()) => r,
            _ = shutdown.cancelled(), if self.buf.is_empty() => return None,
        };
        let refusal = match read {
            Ok(Ok(head)) => return Some(head),
            Ok(Err(HeadError::Closed)) => return None,
            Ok(Err(HeadError::Io(e))) => {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
                return None;
            }
            Ok(Err(HeadError::TooLarge)) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Ok(Err(HeadError::Bad(reason))) => {
                tracing::debug!(%peer, reason, "bad HTTP request");
                StatusCode::BAD_REQUEST
            }
            // No request within the time: an idle keep-alive connection is closed
            // without a word.
            Err(_) if self.buf.is_empty() => return None,
            Err(_) => StatusCode::REQUEST_TIMEOUT,
        };
        let mut response = Response::new(super::full(Bytes::new()));
        *response.status_mut() = refusal;
        if let Ok(false) = self
            .respond(response, Version::HTTP_11, false, false, abort)
            .await
        {
            self.linger().await;
        }
        None
    }

    /// Closes the connection after its last answer: the write side is shut, then what
    /// the client still sends is read and dropped, for [`LINGER`] at most. Closed with
    /// bytes unread, the socket would be reset, and a client still sending (a head over
    /// the limit) could lose the answer (RFC 9112, 9.6).
    async fn linger(&mut self) {
        if let Ok(Ok(())) = tokio::time::timeout(HEADER_TIMEOUT, self.stream.shutdown()).await {
            self.buf = Vec::new();
            let _ = tokio::time::timeout(LINGER, async {
                loop {
                    self.buf.clear();
                    self.buf.reserve(4096);
                    match self.stream.read_buf(&mut self.buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
    }

    /// Reads until the buffer holds a whole request head.
    async fn read_head(&mut self) -> Result<Head, HeadError> {
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = parse(&self.buf)? {
                    return Ok(head);
                }
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
            self.buf.reserve(512);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(match self.buf.is_empty() {
                    true => HeadError::Closed,
                    false => HeadError::Bad("connection closed within a request head"),
                });
            }
        }
    }

    /// Drops the first `n` bytes read, and the buffer itself when nothing is left.
    fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
    }

    /// Reads (and keeps, up to the head limit) what the client sends while its answer
    /// is pending; returns once it has closed the connection or it failed.
    async fn until_closed(&mut self) {
        loop {
            if self.buf.len() >= MAX_HEAD {
                return std::future::pending().await;
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Writes `bytes`, unless the connection is aborted first (slow consumer) or the
    /// client takes none of them for [`WRITE_TIMEOUT`].
    async fn write(&mut self, bytes: &[u8], abort: &Abort) -> io::Result<()> {
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        tokio::select! {
            r = tokio::time::timeout(WRITE_TIMEOUT, write) => r.unwrap_or_else(|_| {
                Err(io::Error::new(io::ErrorKind::TimedOut, "client does not read its answer"))
            }),
            _ = abort.0.cancelled() => Err(io::Error::other("aborted: slow consumer")),
        }
    }

    /// Writes `response`; whether the connection stays open for another request.
    async fn respond(
        &mut self,
        response: Response<Body>,
        version: Version,
        head_only: bool,
        mut keep_alive: bool,
        abort: &Abort,
    ) -> io::Result<bool> {
        let (parts, mut body) = response.into_parts();
        let status = parts.status;
        let bodiless = head_only
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let length = body.size_hint().exact();
        let chunked = !bodiless && length.is_none() && version == Version::HTTP_11;
        if !bodiless && length.is_none() && !chunked {
            // HTTP/1.0 and a body of unknown length: it ends with the connection.
            keep_alive = false;
        }
        let mut out = encode_head(parts, version, length, chunked, keep_alive);
        if bodiless {
            self.write(&out, abort).await?;
            return Ok(keep_alive);
        }
        if length.is_some() {
            // A whole body: one write with the head.
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            self.write(&out, abort).await?;
            return Ok(keep_alive);
        }
        // A stream (server-sent events): each piece as soon as it is ready.
        self.write(&out, abort).await?;
        drop(out);
        loop {
            let next = tokio::select! {
                f = body.frame() => f,
                _ = abort.0.cancelled() => return Err(io::Error::other("aborted: slow consumer")),
            };
            let Some(Ok(frame)) = next else { break };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            if chunked {
                let mut piece = Vec::with_capacity(data.len() + 12);
                piece.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                piece.extend_from_slice(&data);
                piece.extend_from_slice(b"\r\n");
                self.write(&piece, abort).await?;
            } else {
                self.write(&data, abort).await?;
            }
        }
        if chunked {
            self.write(b"0\r\n\r\n", abort).await?;
        }
        Ok(keep_alive)
    }
}

/// The status line and headers of an answer, with the framing headers this writer
/// adds (`content-length` or chunked, `connection`, `date`).
fn encode_head(
    parts: hyper::http::response::Parts,
    version: Version,
    length: Option<u64>,
    chunked: bool,
    keep_alive: bool,
) -> Vec<u8> {
    let status = parts.status;
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        header_line(&mut out, name.as_str(), value.as_bytes());
    }
    if !parts.headers.contains_key(header::DATE) {
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        header_line(&mut out, "date", date.as_bytes());
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // The upgrade's own headers say the rest.
        out.extend_from_slice(b"\r\n");
        return out;
    }
    let no_length = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if let (Some(n), false) = (length, no_length) {
        header_line(&mut out, "content-length", n.to_string().as_bytes());
    }
    if chunked {
        header_line(&mut out, "transfer-encoding", b"chunked");
    }
    if !keep_alive {
        header_line(&mut out, "connection", b"close");
    } else if version == Version::HTTP_10 {
        header_line(&mut out, "connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn header_line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Parses the head at the start of `buf`; `None` while it is incomplete.
fn parse(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Bad("malformed request head")),
    };
    let method = Method::from_bytes(parsed.method.unwrap_or("").as_bytes())
        .map_err(|_| HeadError::Bad("bad method"))?;
    let uri: Uri = parsed
        .path
        .unwrap_or("")
        .parse()
        .map_err(|_| HeadError::Bad("bad request target"))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    let map = request.headers_mut();
    let mut has_body = false;
    for h in parsed.headers.iter() {
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| HeadError::Bad("bad header"))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| HeadError::Bad("bad header"))?;
        if name == header::TRANSFER_ENCODING
            || (name == header::CONTENT_LENGTH && value.as_bytes() != b"0")
        {
            has_body = true;
        }
        map.append(name, value);
    }
    let tokens = |token: &str| {
        map.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let keep_alive = match version {
        Version::HTTP_10 => tokens("keep-alive"),
        _ => !tokens("close"),
    };
    Ok(Some(Head {
        request,
        len,
        has_body,
        keep_alive,
    }))
}

/// A stream with bytes already read from it put back in front.
struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

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
//!    the operations endpoints) is answered by the [`Router`] (a plain `GET` from its
//!    target alone when the router can: the long-poll, [`Router::route_get`]; any
//!    other made whole first) and its answer written here: with `content-length`
//!    when the body's size is known, chunked otherwise (close-delimited for
//!    HTTP/1.0); while the answer is pending the socket is still read, so that a
//!    client that leaves ends its request at once;
//! 3. a `101` answer hands the socket, with anything read after the head, to the
//!    upgrade (the WebSocket transports) through [`RawUpgrade`];
//! 4. the first request with a body (HTTP publish) hands the connection, with what was
//!    read of it, to hyper, which serves it from then on.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Body as _;
use hyper::{Method, Request, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::wire::{encode_head, parse, Framing, Head, HeadError};
use super::{Abort, Body, Connection, Place, Reply, ReplyKind, Router, HEADER_TIMEOUT, MAX_HEAD};

/// How long writing one piece of an answer may take: a client that does not read
/// its answer is dropped (docs/protocol.md#http-listener).
const WRITE_TIMEOUT: std::time::Duration = HEADER_TIMEOUT;

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
    // Made here and moved into the future whole: made inside it, each would be held
    // twice (as the future's captured argument and as its local).
    let connection = router.admit(peer).ok().map(|guard| Connection {
        abort: Abort(CancellationToken::new()),
        place: Place::new(Box::new(guard)),
    });
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
    };
    async move {
        let Some(connection) = connection else {
            return;
        };
        loop {
            let Some(head) = Box::pin(conn.next_head(&shutdown, &connection.abort, peer)).await
            else {
                return;
            };
            if head.has_body {
                // What a request left is given up: hyper's requests do not see it.
                connection.place.forget_kept();
                // The whole connection, what was read of it first put back in front,
                // goes to hyper (tokio's split, chain and join: this is the rare path).
                let read = std::io::Cursor::new(std::mem::take(&mut conn.buf));
                let (reader, writer) = tokio::io::split(conn.stream);
                let io = tokio::io::join(read.chain(reader), writer);
                Box::pin(super::serve_hyper(router, io, peer, shutdown, connection)).await;
                return;
            }
            // A long-poll is answered from its request target alone; any other
            // request is made whole for the router. The fast path's future is made
            // in place (moved, it would be held twice: its future is what a held
            // long-poll costs); the other path is boxed (its futures are larger).
            let mut fast = std::pin::pin!(head
                .get_target(&conn.buf)
                .and_then(|target| router.route_get(target, &connection, peer)));
            let (reply, answer) = match fast.as_mut().as_pin_mut() {
                Some(reply) => {
                    conn.consume(head.len);
                    let answer = Answer::plain(head);
                    (conn.unless_closed(reply).await, answer)
                }
                None => match Box::pin(conn.route_whole(&router, head, &connection, peer)).await {
                    Some(routed) => routed,
                    None => return,
                },
            };
            let Some(reply) = reply else {
                tracing::debug!(%peer, "HTTP client left before its answer");
                return;
            };
            let (out, switching) = Outgoing::new(reply, &answer);
            if switching || out.is_stream() {
                // The connection's last answer: what a request left is given up.
                connection.place.forget_kept();
            }
            if let (true, Some(tx)) = (switching, answer.upgrade) {
                if Box::pin(conn.respond(out, &connection.abort)).await.is_ok() {
                    let _ = tx.send(Upgraded {
                        io: Box::new(conn.stream),
                        read: conn.buf,
                    });
                }
                return;
            }
            if out.is_stream() {
                // A stream (an event stream) is written by a task of its own, which
                // holds only what writing it needs (this future is sized for a held
                // long-poll), with the connection's place; the connection ends with it.
                conn.forget_reader();
                tokio::spawn(async move {
                    if let Err(e) = conn.respond(out, &connection.abort).await {
                        tracing::debug!(%peer, error = %e, "HTTP stream ended");
                    }
                    Box::pin(conn.linger()).await;
                    drop(connection);
                });
                return;
            }
            let written = Box::pin(conn.respond(out, &connection.abort)).await;
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

impl Answer {
    /// The answer to a `GET` (no upgrade).
    fn plain(head: Head) -> Answer {
        Answer {
            version: head.version,
            head_only: false,
            keep_alive: head.keep_alive,
            upgrade: None,
        }
    }
}

/// The request for the router, with its connection (and its upgrade, for a
/// handshake) in its extensions.
fn prepare(
    request: Request<()>,
    head: Head,
    connection: &Connection,
) -> (Request<Empty<Bytes>>, Answer) {
    let mut request = request.map(|()| Empty::<Bytes>::new());
    request.extensions_mut().insert(connection.clone());
    let upgrade = head.upgrade.then(|| {
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
        version: head.version,
        head_only,
        keep_alive: head.keep_alive,
        upgrade,
    };
    (request, answer)
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
        match read {
            Ok(Ok(head)) => Some(head),
            // No request within the time: an idle keep-alive connection is closed
            // without a word.
            Err(_) if self.buf.is_empty() => None,
            Err(_) => {
                self.refuse_with(StatusCode::REQUEST_TIMEOUT, abort).await;
                None
            }
            Ok(Err(e)) => {
                self.refuse(e, abort, peer).await;
                None
            }
        }
    }

    /// Ends the connection after a request head that could not be read: with the
    /// refusal its error calls for, if any.
    async fn refuse(&mut self, error: HeadError, abort: &Abort, peer: SocketAddr) {
        if let Some(status) = error.refusal(peer) {
            self.refuse_with(status, abort).await;
        }
    }

    /// Answers `status` with an empty body and closes the connection.
    async fn refuse_with(&mut self, status: StatusCode, abort: &Abort) {
        let mut response = Response::new(super::full(Bytes::new()));
        *response.status_mut() = status;
        let (out, _) = Outgoing::new(
            response.into(),
            &Answer {
                version: Version::HTTP_11,
                head_only: false,
                keep_alive: false,
                upgrade: None,
            },
        );
        if let Ok(false) = self.respond(out, abort).await {
            self.linger().await;
        }
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
            if self.read_more().await? == 0 {
                return Err(match self.buf.is_empty() {
                    true => HeadError::Closed,
                    false => HeadError::Bad("connection closed within a request head"),
                });
            }
        }
    }

    /// Reads what the client has sent so far (kept, up to the head limit) until the
    /// socket would block, with a waker that wakes nothing. The socket keeps the waker
    /// of the last task that waited to read it; a stream written by another task never
    /// reads, and without this the socket would keep this finished task's memory
    /// (about 1 KiB) alive for the stream's life.
    fn forget_reader(&mut self) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while self.buf.len() < MAX_HEAD {
            match self.poll_read_more(&mut cx) {
                Poll::Ready(Ok(n)) if n > 0 => {}
                // Closed, failed or would block (the waker that wakes nothing is kept).
                _ => return,
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

    /// Makes the whole request of `head` and has the router answer it (unless the
    /// client leaves first: no reply); `None` when the request is refused (the
    /// connection is over).
    async fn route_whole<R: Router>(
        &mut self,
        router: &R,
        head: Head,
        connection: &Connection,
        peer: SocketAddr,
    ) -> Option<(Option<Reply>, Answer)> {
        let request = match super::wire::request(&self.buf[..head.len]) {
            Ok(request) => request,
            Err(e) => {
                self.refuse(e, &connection.abort, peer).await;
                return None;
            }
        };
        self.consume(head.len);
        let (request, answer) = prepare(request, head, connection);
        let response = self.unless_closed(router.route(request, peer)).await;
        Some((response.map(Reply::from), answer))
    }

    /// What `answer` gives, unless the client closes the connection first (`None`).
    async fn unless_closed<F: Future>(&mut self, answer: F) -> Option<F::Output> {
        tokio::select! {
            r = answer => Some(r),
            _ = self.until_closed() => None,
        }
    }

    /// Reads (and keeps, up to the head limit) what the client sends while its answer
    /// is pending; returns once it has closed the connection or it failed.
    async fn until_closed(&mut self) {
        loop {
            if self.buf.len() >= MAX_HEAD {
                return std::future::pending().await;
            }
            match self.read_more().await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Reads what the client sent and appends it to the buffer; 0 when the client
    /// closed the connection.
    async fn read_more(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_more(cx)).await
    }

    /// Reads into a chunk on the stack, then appends what was read: the buffer holds
    /// only what the client sent. Room reserved in it for a read that waits would be
    /// kept by every held or idle connection, and allocated again for every request.
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut chunk = [0u8; 1024];
        let mut read = tokio::io::ReadBuf::new(&mut chunk);
        std::task::ready!(std::pin::Pin::new(&mut self.stream).poll_read(cx, &mut read))?;
        self.buf.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    }

    /// Writes `bytes`, unless the connection is aborted first (slow consumer) or the
    /// client takes none of them for [`WRITE_TIMEOUT`].
    async fn write(&mut self, mut bytes: &[u8], abort: &Abort) -> io::Result<()> {
        if let Some(done) = self.write_now(&mut bytes) {
            return done;
        }
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

    /// Writes what the socket takes at once (nearly every answer), which needs no
    /// timer and no wait on the abort token; `None` when the rest has to wait.
    fn write_now(&mut self, bytes: &mut &[u8]) -> Option<io::Result<()>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut stream = std::pin::Pin::new(&mut self.stream);
        while !bytes.is_empty() {
            match stream.as_mut().poll_write(&mut cx, bytes) {
                Poll::Ready(Ok(0)) => return Some(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *bytes = &bytes[n..],
                Poll::Ready(Err(e)) => return Some(Err(e)),
                Poll::Pending => return None,
            }
        }
        match stream.poll_flush(&mut cx) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }
    }

    /// Writes an answer; whether the connection stays open for another request.
    async fn respond(&mut self, mut out: Outgoing, abort: &Abort) -> io::Result<bool> {
        match out.framing {
            Framing::None => self.write(&out.head, abort).await?,
            Framing::Length => {
                // A whole body: one write with the head.
                while let Some(Ok(frame)) = out.body.frame().await {
                    if let Ok(data) = frame.into_data() {
                        out.head.extend_from_slice(&data);
                    }
                }
                self.write(&out.head, abort).await?;
            }
            Framing::Chunked | Framing::Close => {
                let chunked = out.framing == Framing::Chunked;
                self.stream(out.head, out.body, chunked, abort).await?;
            }
        }
        Ok(out.keep_alive)
    }

    /// Writes the head of a stream (server-sent events), then each piece of its body
    /// as soon as it is ready, chunked or as it is, until the body ends.
    async fn stream(
        &mut self,
        head: Vec<u8>,
        mut body: Body,
        chunked: bool,
        abort: &Abort,
    ) -> io::Result<()> {
        self.write(&head, abort).await?;
        drop(head);
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
        Ok(())
    }
}

/// An answer ready to write: its head encoded, its body, how the body is framed.
struct Outgoing {
    head: Vec<u8>,
    body: Body,
    framing: Framing,
    keep_alive: bool,
}

impl Outgoing {
    /// Whether the body is a stream, written as it comes.
    fn is_stream(&self) -> bool {
        self.framing.is_stream()
    }

    /// The answer `reply` makes to a request; whether it switches protocols.
    fn new(reply: Reply, answer: &Answer) -> (Self, bool) {
        match reply.0 {
            ReplyKind::Response(response) => {
                let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                let head_only = answer.head_only || switching;
                let out = Self::of(response, answer.version, head_only, answer.keep_alive);
                (out, switching)
            }
            ReplyKind::Poll(poll) => {
                let out = Outgoing {
                    head: poll.encode(answer.version, answer.keep_alive),
                    body: Body::default(),
                    framing: Framing::Length,
                    keep_alive: answer.keep_alive,
                };
                (out, false)
            }
        }
    }

    fn of(response: Response<Body>, version: Version, head_only: bool, keep_alive: bool) -> Self {
        let (parts, body) = response.into_parts();
        let status = parts.status;
        let length = body.size_hint().exact();
        let framing = if head_only
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Framing::None
        } else if length.is_some() {
            Framing::Length
        } else if version == Version::HTTP_11 {
            Framing::Chunked
        } else {
            Framing::Close
        };
        // A stream ends its connection (docs/protocol.md#http-listener).
        let keep_alive = keep_alive && !framing.is_stream();
        let head = encode_head(
            parts,
            version,
            length,
            framing == Framing::Chunked,
            keep_alive,
        );
        Outgoing {
            head,
            body,
            framing,
            keep_alive,
        }
    }
}

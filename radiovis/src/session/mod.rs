//! One STOMP connection's life: CONNECT (version, credentials, heart-beats) -> loop over
//! { client frame | queued MESSAGE | heart-beat due } -> close.
//!
//! The session is a single task that owns both halves of its socket. It reads only when
//! the socket is readable (no read buffer is held by an idle connection), writes its
//! own replies (CONNECTED, RECEIPT, ERROR, replayed last message) directly, and drains
//! its bounded outbound queue, coalescing queued MESSAGE frames into one write. The hub
//! cancels `kill` when the queue overflows: the session then closes at once, even in
//! the middle of a blocked write.
//!
//! Version rules (docs/protocol.md#receipts-and-errors): in a 1.0 session a `receipt` is answered before the
//! frame takes effect and an ERROR leaves the connection open; in 1.1/1.2 the RECEIPT
//! follows success, and a failing frame gets an ERROR (carrying `receipt-id`) and the
//! connection closes.

//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | the connection loop: read, write, heart-beats, kill, close |
//! | `connect.rs` | CONNECT negotiation: version, credentials, heart-beats |
//! | `commands.rs` | SUBSCRIBE, UNSUBSCRIBE, SEND and their receipts and ERRORs |
//! | `subscriptions.rs` | the session's own list of subscriptions |

mod commands;
mod connect;
mod subscriptions;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backend::{Cache, DirectoryApi, MessageBus};
use crate::hub::Hub;
use crate::monitoring::{Event, SessionInfo};
use crate::outbound::{Outbound, OutboundQueue};
use crate::stomp::{CodecError, Decoder, Frame, Version};

use commands::Flow;
use subscriptions::Subscriptions;

/// Why a session ended (logged when it closes).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The client closed its side of the connection.
    #[error("client closed the connection")]
    PeerClosed,
    /// The client sent DISCONNECT.
    #[error("client disconnected")]
    Disconnected,
    /// Reading or writing the socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke the protocol or a limit.
    #[error("protocol error: {0}")]
    Codec(#[from] CodecError),
    /// No CONNECT within `connect_timeout`.
    #[error("no CONNECT within {0:?}")]
    ConnectTimeout(Duration),
    /// CONNECT was answered with an ERROR (version, credentials, directory).
    #[error("CONNECT refused: {0}")]
    ConnectRefused(String),
    /// The client's heart-beats stopped.
    #[error("no heart-beat from client within {0:?}")]
    HeartbeatTimeout(Duration),
    /// The outbound queue overflowed.
    #[error("slow consumer: outbound queue full")]
    SlowConsumer,
    /// The server is stopping.
    #[error("server shutting down")]
    Shutdown,
    /// A frame failed and the STOMP version (or a limit) closes the connection.
    #[error("closed after ERROR: {0}")]
    FrameFailed(String),
}

/// Runs a session to its end and cleans up after it.
pub(crate) async fn run<B, D, C>(hub: Arc<Hub<B, D, C>>, mut stream: TcpStream, peer: SocketAddr)
where
    B: MessageBus,
    D: DirectoryApi,
    C: Cache,
{
    let conn = hub.next_id();
    let span = tracing::info_span!("session", %peer, conn);
    hub.stats().connections.fetch_add(1, Ordering::Relaxed);
    async {
        let (reader, writer) = stream.split();
        let mut session = Session {
            decoder: Decoder::new(hub.config().limits),
            hub: hub.clone(),
            reader,
            writer,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            version: Version::V1_0,
            peer,
            conn,
            station: None,
            subs: Subscriptions::default(),
            queue: Arc::new(OutboundQueue::new(hub.config().outbound_queue)),
            kill: hub.session_token(),
            hb_send: None,
            hb_recv: None,
            last_read: Instant::now(),
            last_write: Instant::now(),
            info: None,
            connected: false,
        };
        let reason = session.run().await;
        session.queue.close();
        session.unsubscribe_all();
        if let Some(info) = session.info.take() {
            hub.monitor().emit(Event::Disconnection(info));
        }
        match &reason {
            SessionError::PeerClosed | SessionError::Disconnected | SessionError::Shutdown => {
                tracing::info!(reason = %reason, "session closed")
            }
            _ => tracing::warn!(reason = %reason, "session closed"),
        }
    }
    .instrument(span)
    .await;
    hub.stats().connections.fetch_sub(1, Ordering::Relaxed);
}

/// One connection: its socket halves, buffers, negotiated settings and subscriptions.
struct Session<'a, B, D, C> {
    hub: Arc<Hub<B, D, C>>,
    reader: ReadHalf<'a>,
    writer: WriteHalf<'a>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: Decoder,
    version: Version,
    peer: SocketAddr,
    conn: u64,
    /// Station id when logged in as a broadcaster.
    station: Option<String>,
    /// Subscriptions by id (or by destination when the client gave no id).
    subs: Subscriptions,
    /// MESSAGE frames the fan-out queued for this connection.
    queue: Arc<OutboundQueue>,
    kill: CancellationToken,
    /// Heart-beat intervals negotiated with a 1.1/1.2 client.
    hb_send: Option<Duration>,
    hb_recv: Option<Duration>,
    last_read: Instant,
    last_write: Instant,
    /// Who this session is, for monitoring events (only when monitoring is on).
    info: Option<Arc<SessionInfo>>,
    /// CONNECTED was sent.
    connected: bool,
}

/// Largest chunk written at once when draining the queue.
const WRITE_BATCH: usize = 64 * 1024;

impl<B: MessageBus, D: DirectoryApi, C: Cache> Session<'_, B, D, C> {
    async fn run(&mut self) -> SessionError {
        // Boxed: the CONNECT phase (directory calls) is large and runs once; keeping it
        // out of the session's future keeps every idle connection small.
        let result = match Box::pin(self.connect_phase()).await {
            Ok(()) => self.main_loop().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => SessionError::Disconnected,
            Err(e) => {
                Box::pin(self.close_after(&e)).await;
                e
            }
        }
    }

    async fn main_loop(&mut self) -> Result<(), SessionError> {
        // `kill` is a child of the hub's shutdown token: one wait covers both.
        // `kill` is waited on by one future for the whole loop, not one per turn.
        let kill = self.kill.clone();
        let killed = kill.cancelled();
        tokio::pin!(killed);
        // Heart-beat sessions get one boxed timer (next send or receive deadline);
        // 1.0 sessions, the bulk of radios, hold none.
        let mut timer = (self.hb_send.is_some() || self.hb_recv.is_some())
            .then(|| Box::pin(tokio::time::sleep_until(Instant::now())));
        loop {
            while let Some(frame) = self.decoder.decode(&mut self.rbuf)? {
                // Boxed: frames are rare for a radio, and the idle wait below is what
                // every connection holds in memory.
                if Box::pin(self.handle(frame)).await? == Flow::Close {
                    return Ok(());
                }
            }
            if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
                // Idle connections hold no read buffer.
                self.rbuf = BytesMut::new();
            }
            let send_at = self.hb_send.map(|d| self.last_write + d);
            let recv_deadline = self.hb_recv.map(|d| self.last_read + d + d / 2);
            if let Some(t) = timer.as_mut() {
                let next = match (send_at, recv_deadline) {
                    (Some(a), Some(b)) => a.min(b),
                    (Some(a), None) | (None, Some(a)) => a,
                    (None, None) => Instant::now() + Duration::from_secs(3600),
                };
                t.as_mut().reset(next);
            }
            // The select only decides; the work happens after it, so the session's
            // future never holds the waiting futures and a write at the same time.
            let event = tokio::select! {
                biased;
                _ = &mut killed => Wake::Killed,
                _ = self.queue.ready() => Wake::Queued,
                r = self.reader.readable() => Wake::Readable(r),
                _ = wait_timer(&mut timer) => Wake::Timer,
            };
            match event {
                Wake::Killed => {
                    if self.hub.is_stopping() {
                        self.flush_queue_on_shutdown().await;
                        return Err(SessionError::Shutdown);
                    }
                    return Err(SessionError::SlowConsumer);
                }
                Wake::Queued => self.write_queued().await?,
                Wake::Readable(r) => {
                    r?;
                    self.read_some()?;
                }
                Wake::Timer => {
                    let now = Instant::now();
                    if recv_deadline.is_some_and(|d| now >= d) {
                        let d = self.hb_recv.unwrap_or_default();
                        return Err(SessionError::HeartbeatTimeout(d + d / 2));
                    }
                    if send_at.is_some_and(|a| now >= a) {
                        self.write_raw(b"\n").await?;
                    }
                }
            }
        }
    }

    /// Reads what the socket has (it reported readable). EOF ends the session.
    fn read_some(&mut self) -> Result<(), SessionError> {
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(4096);
        }
        match self.reader.try_read_buf(&mut self.rbuf) {
            Ok(0) => Err(SessionError::PeerClosed),
            Ok(_) => {
                self.last_read = Instant::now();
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads until one whole frame is buffered (used before CONNECT).
    async fn read_frame(&mut self) -> Result<Frame, SessionError> {
        loop {
            if let Some(f) = self.decoder.decode(&mut self.rbuf)? {
                return Ok(f);
            }
            self.reader.readable().await?;
            self.read_some()?;
        }
    }

    /// Tells a client that broke the protocol or a limit why it is closed (an ERROR
    /// naming the limit), then closes gracefully: our side first, discarding what the
    /// client still sends for a moment, so that its kernel does not answer our close
    /// with a reset that would destroy the ERROR before the client reads it.
    async fn close_after(&mut self, reason: &SessionError) {
        if let SessionError::FrameFailed(_) = reason {
            // Its ERROR is written already.
            return self.linger().await;
        }
        let SessionError::Codec(e) = reason else {
            return;
        };
        if !self.connected {
            // The CONNECT phase already answered.
            return self.linger().await;
        }
        let error = Frame::error(e.to_string());
        let _ = tokio::time::timeout(Duration::from_secs(1), self.write_frame(&error)).await;
        self.linger().await;
    }

    /// Closes our side, then discards what the client still sends (at most 1 s, 16 MiB).
    async fn linger(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.writer.shutdown()).await;
        let mut sink = [0u8; 8192];
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut discarded = 0usize;
        while discarded < 16 * 1024 * 1024 {
            match tokio::time::timeout_at(deadline, self.reader.readable()).await {
                Ok(Ok(())) => {}
                _ => return,
            }
            match self.reader.try_read(&mut sink) {
                Ok(0) => return,
                Ok(n) => discarded += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }

    /// Writes queued MESSAGE frames, coalesced into one write (up to `WRITE_BATCH`).
    async fn write_queued(&mut self) -> Result<(), SessionError> {
        if self.queue.drain_into(&mut self.wbuf, WRITE_BATCH) == 0 {
            return Ok(());
        }
        self.flush_wbuf().await
    }

    /// Writes one MESSAGE (a replay) directly.
    async fn write_message(&mut self, item: Outbound) -> Result<(), SessionError> {
        self.wbuf.extend_from_slice(&item.head);
        self.wbuf.extend_from_slice(&item.tail);
        self.flush_wbuf().await
    }

    async fn write_frame(&mut self, frame: &Frame) -> Result<(), SessionError> {
        frame.encode(self.version, &mut self.wbuf);
        self.flush_wbuf().await
    }

    async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        self.wbuf.extend_from_slice(bytes);
        self.flush_wbuf().await
    }

    /// Writes the write buffer out; abandons the write when the hub declares this
    /// connection a slow consumer or the server shuts down.
    async fn flush_wbuf(&mut self) -> Result<(), SessionError> {
        // Fast path: the socket usually has room, and a write that completes at once
        // needs no waiting future (this runs once per delivery batch).
        let mut written = 0;
        let result = loop {
            match self.writer.try_write(&self.wbuf[written..]) {
                Ok(n) => {
                    written += n;
                    if written >= self.wbuf.len() {
                        break Ok(());
                    }
                    if n == 0 {
                        break Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    break tokio::select! {
                        r = self.writer.write_all(&self.wbuf[written..]) => r.map_err(SessionError::from),
                        _ = self.kill.cancelled() => Err(if self.hub.is_stopping() {
                            SessionError::Shutdown
                        } else {
                            SessionError::SlowConsumer
                        }),
                    };
                }
                Err(e) => break Err(e.into()),
            }
        };
        self.wbuf.clear();
        if self.wbuf.capacity() > 2 * WRITE_BATCH {
            self.wbuf = BytesMut::new();
        }
        self.last_write = Instant::now();
        result
    }

    /// Best effort at shutdown: write what is queued, bounded in time.
    async fn flush_queue_on_shutdown(&mut self) {
        let mut buf = std::mem::take(&mut self.wbuf);
        self.queue.drain_into(&mut buf, usize::MAX);
        if !buf.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.writer.write_all(&buf)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.writer.shutdown()).await;
    }
}

/// What woke the idle session up.
enum Wake {
    Killed,
    Queued,
    Readable(std::io::Result<()>),
    Timer,
}

/// Waits for the heart-beat timer; never completes for a session without one.
async fn wait_timer(timer: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::{LocalBus, MemoryCache, StaticDirectory};
    use crate::hub::HubConfig;

    /// Every connection holds one such future: it must stay small (about 1.1 KiB).
    #[tokio::test]
    async fn the_session_future_stays_small() {
        let hub = Arc::new(Hub::new(
            LocalBus::default(),
            StaticDirectory::default(),
            MemoryCache::new(),
            HubConfig::default(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stream = TcpStream::connect(addr).await.expect("connect");
        let future = run(hub, stream, addr);
        let size = std::mem::size_of_val(&future);
        println!("session future: {size} bytes");
        assert!(size <= 1536, "session future grew to {size} bytes");
    }
}

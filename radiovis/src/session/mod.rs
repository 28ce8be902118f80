//! One STOMP connection's life: CONNECT (version, credentials, heart-beats) -> loop over
//! { client frame | queued MESSAGE | heart-beat due } -> close.
//!
//! The session is a single task that owns both halves of its socket. It reads only when
//! the socket is readable (no read buffer is held by an idle connection), writes its
//! own replies (CONNECTED, RECEIPT, ERROR, replayed last message) directly, and drains
//! its bounded outbound queue, coalescing queued MESSAGE frames into one write. The hub
//! kills the session through its queue when the queue overflows or the server stops
//! ([`Kill`]): the session then closes at once, even in the middle of a blocked write.
//!
//! Version rules (docs/protocol.md#receipts-and-errors): in a 1.0 session a `receipt` is answered before the
//! frame takes effect and an ERROR leaves the connection open; in 1.1/1.2 the RECEIPT
//! follows success, and a failing frame gets an ERROR (carrying `receipt-id`) and the
//! connection closes.

//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | the connection loop: read, heart-beats, kill, close |
//! | `connect.rs` | CONNECT negotiation: version, credentials, heart-beats |
//! | `commands.rs` | SUBSCRIBE, UNSUBSCRIBE, SEND and their receipts and ERRORs |
//! | `subscriptions.rs` | the session's own list of subscriptions |
//! | `io.rs` | the connection: a TCP socket, or any byte stream (TLS, WebSocket) |
//! | `write.rs` | writes: coalesced queued frames, replies, blocked writes, linger |

mod commands;
mod connect;
mod io;
mod subscriptions;
mod write;

pub use io::{Generic, SessionIo};
pub(crate) use write::linger;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, Sleep};
use tracing::Instrument;

use crate::backend::{Cache, DirectoryApi, MessageBus};
use crate::hub::{Hub, Transport};
use crate::monitoring::{Event, SessionInfo};
use crate::outbound::{Kill, OutboundQueue};
use crate::stomp::{CodecError, Decoder, Frame, Version};

use commands::Flow;
#[cfg(feature = "http")]
pub(crate) use connect::canonical_ip;
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
    /// A frame was started and not finished within `frame_timeout`.
    #[error("frame not complete within {0:?}")]
    FrameTimeout(Duration),
    /// A session without heart-beats received nothing within `idle_timeout`.
    #[error("nothing received within {0:?}")]
    IdleTimeout(Duration),
    /// A write stayed blocked for `write_timeout`: the client does not read.
    #[error("slow consumer: no write progress within {0:?}")]
    WriteTimeout(Duration),
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

/// Runs a session to its end and cleans up after it. `transport` names the
/// connection's kind in the logs (`tcp`, `tls`, `websocket`).
///
/// Not an `async fn`: its arguments would be held twice in the future (as arguments and
/// as the body's locals), and every connection holds this future.
pub(crate) fn run<I, B, D, C>(
    hub: Arc<Hub<B, D, C>>,
    io: I,
    peer: SocketAddr,
    transport: &'static str,
) -> impl Future<Output = ()>
where
    I: SessionIo,
    B: MessageBus,
    D: DirectoryApi,
    C: Cache,
{
    let conn = hub.next_id();
    let span = tracing::info_span!("session", %peer, conn, transport);
    // Made here and moved into the future whole: built inside it, its parts would be
    // held twice (as captured values and as the struct's fields).
    let counted = Transport::of_stream(transport);
    let mut session = Session {
        transport: counted,
        decoder: Decoder::new(hub.config().limits),
        queue: Arc::new(OutboundQueue::new(hub.config().outbound_queue)),
        hub,
        io,
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        version: Version::V1_0,
        peer,
        conn,
        station: None,
        subs: Subscriptions::default(),
        hb_send: None,
        hb_recv: None,
        last_read: Instant::now(),
        last_write: Instant::now(),
        frame_started: None,
        info: None,
        connected: false,
    };
    async move {
        session
            .hub
            .stats()
            .connections
            .fetch_add(1, Ordering::Relaxed);
        session.hub.stats().opened(counted);
        let registered = session.hub.register_session(&session.queue);
        let reason = session.run().await;
        session.queue.close();
        session.unsubscribe_all();
        if let Some(info) = session.info.take() {
            session.hub.monitor().emit(Event::Disconnection(info));
        }
        match &reason {
            SessionError::PeerClosed | SessionError::Disconnected | SessionError::Shutdown => {
                tracing::info!(reason = %reason, "session closed")
            }
            _ => tracing::warn!(reason = %reason, "session closed"),
        }
        session.hub.unregister_session(registered);
        session
            .hub
            .stats()
            .connections
            .fetch_sub(1, Ordering::Relaxed);
        session.hub.stats().closed(counted);
    }
    .instrument(span)
}

/// One connection: its socket, buffers, negotiated settings and subscriptions.
struct Session<I, B, D, C> {
    /// How the client reached the server (metrics).
    transport: Transport,
    hub: Arc<Hub<B, D, C>>,
    io: I,
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
    /// MESSAGE frames the fan-out queued for this connection; also how the hub kills
    /// the session.
    queue: Arc<OutboundQueue>,
    /// Heart-beat intervals negotiated with a 1.1/1.2 client.
    hb_send: Option<Duration>,
    hb_recv: Option<Duration>,
    /// When last a byte arrived (heart-beat and idle deadlines).
    last_read: Instant,
    last_write: Instant,
    /// When the frame now partly in `rbuf` started (its deadline runs from there).
    frame_started: Option<Instant>,
    /// Who this session is, for monitoring events (only when monitoring is on).
    info: Option<Arc<SessionInfo>>,
    /// CONNECTED was sent.
    connected: bool,
}

/// Largest chunk written at once when draining the queue.
const WRITE_BATCH: usize = 64 * 1024;

impl<I: SessionIo, B: MessageBus, D: DirectoryApi, C: Cache> Session<I, B, D, C> {
    async fn run(&mut self) -> SessionError {
        // Boxed: the CONNECT phase (directory calls) is large and runs once; keeping it
        // out of the session's future keeps every idle connection small.
        let result = match Box::pin(self.connect_phase()).await {
            Ok(()) => self.main_loop().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                // DISCONNECT (its RECEIPT written): close our side cleanly, bounded. On
                // TLS this sends close_notify, without which clients see a truncation.
                let _ = tokio::time::timeout(Duration::from_secs(1), self.io.shutdown()).await;
                SessionError::Disconnected
            }
            Err(e) => {
                Box::pin(self.close_after(&e)).await;
                e
            }
        }
    }

    async fn main_loop(&mut self) -> Result<(), SessionError> {
        // One boxed timer for every deadline (heart-beat send and receive, idle,
        // frame), made when a deadline first applies; a session with none (idle
        // timeout off, no heart-beats) holds no timer.
        let mut timer: Option<Pin<Box<Sleep>>> = None;
        loop {
            let mut decoded = false;
            // (An empty buffer holds no frame: most wake-ups are queued messages.)
            while !self.rbuf.is_empty() {
                let Some(frame) = self.decoder.decode(&mut self.rbuf)? else {
                    break;
                };
                decoded = true;
                // Boxed: frames are rare for a radio, and the idle wait below is what
                // every connection holds in memory.
                if Box::pin(self.handle(frame)).await? == Flow::Close {
                    return Ok(());
                }
            }
            // The decoder has consumed leading EOLs: bytes left are a started frame.
            if self.rbuf.is_empty() {
                self.frame_started = None;
                if self.rbuf.capacity() > 0 {
                    // Idle connections hold no read buffer.
                    self.rbuf = BytesMut::new();
                }
            } else if decoded || self.frame_started.is_none() {
                self.frame_started = Some(Instant::now());
            }
            if let Some(next) = self.deadlines().next() {
                match timer.as_mut() {
                    // Reset only when the deadline came closer or the timer went off: a
                    // reset touches the shared timer wheel, and every write moves the
                    // heart-beat deadline later. A timer that fires early finds
                    // nothing due and is set again here.
                    Some(t) if next < t.deadline() || t.is_elapsed() => t.as_mut().reset(next),
                    Some(_) => {}
                    None => timer = Some(Box::pin(tokio::time::sleep_until(next))),
                }
            } else {
                // No deadline left: hold no timer.
                timer = None;
            }
            // The select only decides; the work happens after it, so the session's
            // future never holds the waiting futures and a write at the same time.
            let event = tokio::select! {
                biased;
                kill = self.queue.ready() => match kill {
                    Some(kill) => Wake::Killed(kill),
                    None => Wake::Queued,
                },
                // Readiness polled in place: TcpStream::readable() would hold a future
                // of ~150 bytes in every idle session.
                r = std::future::poll_fn(|cx| self.io.poll_readable(cx)) => Wake::Readable(r),
                _ = wait_timer(&mut timer) => Wake::Timer,
            };
            match event {
                Wake::Killed(Kill::Shutdown) => {
                    self.flush_queue_on_shutdown().await;
                    return Err(SessionError::Shutdown);
                }
                Wake::Killed(Kill::SlowConsumer) => return Err(SessionError::SlowConsumer),
                Wake::Queued => self.write_queued().await?,
                Wake::Readable(r) => {
                    r?;
                    self.read_some()?;
                }
                Wake::Timer => {
                    // Recomputed rather than held across the wait (a smaller future):
                    // nothing moves the deadlines while the session waits.
                    let deadlines = self.deadlines();
                    let now = Instant::now();
                    let config = self.hub.config();
                    if deadlines.frame.is_some_and(|d| now >= d) {
                        return Err(SessionError::FrameTimeout(config.frame_timeout));
                    }
                    if deadlines.recv.is_some_and(|d| now >= d) {
                        return Err(match self.hb_recv {
                            Some(d) => SessionError::HeartbeatTimeout(d + d / 2),
                            None => {
                                SessionError::IdleTimeout(config.idle_timeout.unwrap_or_default())
                            }
                        });
                    }
                    if deadlines.send.is_some_and(|a| now >= a) {
                        self.write_raw(b"\n").await?;
                    }
                }
            }
        }
    }

    /// The session's deadlines now (docs/protocol.md#limits, docs/protocol.md#heart-beats).
    fn deadlines(&self) -> Deadlines {
        let config = self.hub.config();
        Deadlines {
            send: self.hb_send.map(|d| self.last_write + d),
            // Heart-beats, when the client sends them; otherwise the idle limit. Any
            // byte counts: radios may send nothing but EOLs.
            recv: match self.hb_recv {
                Some(d) => Some(self.last_read + d + d / 2),
                None => config.idle_timeout.map(|d| self.last_read + d),
            },
            frame: self.frame_started.map(|t| t + config.frame_timeout),
        }
    }

    /// Reads what the socket has (it reported readable). EOF ends the session.
    fn read_some(&mut self) -> Result<(), SessionError> {
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            // A frame's start (a CONNECT, a SUBSCRIBE) fits in 1 KiB; a long frame
            // grows the buffer 4 KiB at a time.
            self.rbuf
                .reserve(if self.rbuf.is_empty() { 1024 } else { 4096 });
        }
        match self.io.try_read_buf(&mut self.rbuf) {
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
            self.io.readable().await?;
            self.read_some()?;
        }
    }

    /// Tells a client that broke the protocol or a limit why it is closed (an ERROR
    /// naming the limit), then closes gracefully: our side first, discarding what the
    /// client still sends for a moment, so that its kernel does not answer our close
    /// with a reset that would destroy the ERROR before the client reads it.
    async fn close_after(&mut self, reason: &SessionError) {
        let message = match reason {
            // Their ERROR is written already (a refused CONNECT included).
            SessionError::FrameFailed(_)
            | SessionError::ConnectRefused(_)
            | SessionError::ConnectTimeout(_) => None,
            // Before CONNECTED the CONNECT phase answered already.
            SessionError::Codec(e) => self.connected.then(|| e.to_string()),
            SessionError::FrameTimeout(d) => Some(format!(
                "timed out waiting for the rest of a frame: limit is {} s",
                d.as_secs_f64()
            )),
            SessionError::IdleTimeout(d) => Some(format!(
                "idle timeout, nothing received: limit is {} s",
                d.as_secs_f64()
            )),
            // The client is gone, not reading, or we are: nothing to tell it.
            _ => return,
        };
        if let Some(message) = message {
            let error = Frame::error(message);
            let _ = tokio::time::timeout(Duration::from_secs(1), self.write_frame(&error)).await;
        }
        linger(&mut self.io).await;
    }
}

/// The instants at which the session must act; `None`: no such deadline.
#[derive(Clone, Copy)]
struct Deadlines {
    /// A heart-beat is due.
    send: Option<Instant>,
    /// The client's heart-beat or idle limit runs out.
    recv: Option<Instant>,
    /// The partly received frame's time is up.
    frame: Option<Instant>,
}

impl Deadlines {
    /// The earliest of them.
    fn next(&self) -> Option<Instant> {
        [self.send, self.recv, self.frame]
            .into_iter()
            .flatten()
            .min()
    }
}

/// What woke the idle session up.
enum Wake {
    Killed(Kill),
    Queued,
    Readable(std::io::Result<()>),
    Timer,
}

/// Waits for the session's timer; never completes for a session without one.
async fn wait_timer(timer: &mut Option<Pin<Box<Sleep>>>) {
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
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let future = run(hub, stream, addr, "tcp");
        let size = std::mem::size_of_val(&future);
        // Plus, on the heap, one boxed `Sleep` once a deadline applies (idle timeout on).
        println!(
            "session future: {size} bytes; timer: {} bytes",
            std::mem::size_of::<Sleep>()
        );
        assert!(size <= 1536, "session future grew to {size} bytes");
    }
}

//! The session's writes: queued MESSAGE frames coalesced through the runtime thread's
//! write buffer, its own replies, writes that block (bounded by `write_timeout` and
//! cut short by a kill), and the linger after an ERROR.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::backend::{Cache, DirectoryApi, MessageBus};
use crate::outbound::{Kill, Outbound};
use crate::stomp::Frame;

use super::{Session, SessionError, SessionIo, WRITE_BATCH};

impl<I: SessionIo, B: MessageBus, D: DirectoryApi, C: Cache> Session<I, B, D, C> {
    /// Writes queued MESSAGE frames, coalesced into one write (up to `WRITE_BATCH`).
    ///
    /// The frames are copied into the runtime thread's write buffer and written from
    /// there; only what the socket does not take at once is kept in the session's own
    /// buffer. So no connection holds a write buffer between writes, and a write
    /// allocates nothing.
    pub(super) async fn write_queued(&mut self) -> Result<(), SessionError> {
        if I::BUFFERED {
            // TLS, WebSocket: written and flushed through the session's buffer.
            if self.queue.drain_into(&mut self.wbuf, WRITE_BATCH) == 0 {
                return Ok(());
            }
            return self.flush_wbuf().await;
        }
        let queue = &self.queue;
        let writer = &mut self.io;
        let written = with_write_buf(|buf| {
            if queue.drain_into(buf, WRITE_BATCH) == 0 {
                return Ok(None);
            }
            let mut written = 0;
            while written < buf.len() {
                match writer.try_write(&buf[written..]) {
                    Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero)),
                    Ok(n) => written += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            Ok(Some(
                (written < buf.len()).then(|| BytesMut::from(&buf[written..])),
            ))
        })?;
        match written {
            None => Ok(()),
            Some(None) => {
                self.wrote();
                Ok(())
            }
            // The socket is full: the rest waits in the session's buffer.
            Some(Some(rest)) => {
                self.wbuf = rest;
                self.flush_wbuf().await
            }
        }
    }

    /// Writes one MESSAGE (a replay) directly.
    pub(super) async fn write_message(&mut self, item: Outbound) -> Result<(), SessionError> {
        self.wbuf.extend_from_slice(&item.head);
        self.wbuf.extend_from_slice(&item.tail);
        self.flush_wbuf().await
    }

    pub(super) async fn write_frame(&mut self, frame: &Frame) -> Result<(), SessionError> {
        frame.encode(self.version, &mut self.wbuf);
        self.flush_wbuf().await
    }

    pub(super) async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        self.wbuf.extend_from_slice(bytes);
        self.flush_wbuf().await
    }

    /// Writes the write buffer out; abandons the write when the hub declares this
    /// connection a slow consumer or the server shuts down.
    pub(super) async fn flush_wbuf(&mut self) -> Result<(), SessionError> {
        // Fast path: the socket usually has room, and a write that completes at once
        // needs no waiting future (this runs once per delivery batch).
        let mut written = 0;
        let result = loop {
            match self.io.try_write(&self.wbuf[written..]) {
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
                    // Boxed: only a full socket gets here, and its timer stays out of
                    // every idle session's future.
                    break Box::pin(self.write_blocked(written)).await;
                }
                Err(e) => break Err(e.into()),
            }
        };
        // TLS and WebSocket streams hold what they accepted until flushed.
        let result = match result {
            Ok(()) if I::BUFFERED => Box::pin(self.flush_blocked()).await,
            r => r,
        };
        // An idle connection holds no write buffer (a burst left it kilobytes large).
        self.wbuf = BytesMut::new();
        self.wrote();
        result
    }

    /// Notes a write, for the heart-beat we owe (only then: reading the clock on every
    /// write costs more than the rest of an idle wake-up's bookkeeping).
    pub(super) fn wrote(&mut self) {
        if self.hb_send.is_some() {
            self.last_write = Instant::now();
        }
    }

    /// Writes the rest of the write buffer (from `written`) to a full socket, giving up
    /// when no byte goes out for `write_timeout` (docs/protocol.md#limits) or when the
    /// session is killed.
    pub(super) async fn write_blocked(&mut self, mut written: usize) -> Result<(), SessionError> {
        let limit = self.hub.config().write_timeout;
        while written < self.wbuf.len() {
            let step = tokio::select! {
                r = tokio::time::timeout(limit, self.io.write(&self.wbuf[written..])) => r,
                kill = self.queue.killed() => return Err(match kill {
                    Kill::Shutdown => SessionError::Shutdown,
                    Kill::SlowConsumer => SessionError::SlowConsumer,
                }),
            };
            match step {
                Ok(Ok(0)) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into()),
                Ok(Ok(n)) => written += n,
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    self.hub
                        .stats()
                        .slow_consumers
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(SessionError::WriteTimeout(limit));
                }
            }
        }
        Ok(())
    }

    /// Flushes a buffered stream, within `write_timeout` and unless killed.
    pub(super) async fn flush_blocked(&mut self) -> Result<(), SessionError> {
        let limit = self.hub.config().write_timeout;
        let step = tokio::select! {
            r = tokio::time::timeout(limit, self.io.flush()) => r,
            kill = self.queue.killed() => return Err(match kill {
                Kill::Shutdown => SessionError::Shutdown,
                Kill::SlowConsumer => SessionError::SlowConsumer,
            }),
        };
        match step {
            Ok(r) => Ok(r?),
            Err(_) => {
                self.hub
                    .stats()
                    .slow_consumers
                    .fetch_add(1, Ordering::Relaxed);
                Err(SessionError::WriteTimeout(limit))
            }
        }
    }

    /// Best effort at shutdown: write what is queued, bounded in time.
    pub(super) async fn flush_queue_on_shutdown(&mut self) {
        let mut buf = std::mem::take(&mut self.wbuf);
        self.queue.drain_into(&mut buf, usize::MAX);
        if !buf.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.io.write_all(&buf)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.io.shutdown()).await;
    }
}

thread_local! {
    /// The write buffer of the sessions a runtime thread runs (see
    /// `Session::write_queued`).
    static WRITE_BUF: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// Runs `f` on this thread's write buffer, emptied first (on a fresh buffer if it is in
/// use, which `write_queued` never leaves it).
fn with_write_buf<R>(f: impl FnOnce(&mut BytesMut) -> R) -> R {
    WRITE_BUF.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            let r = f(&mut buf);
            if buf.capacity() > 2 * WRITE_BATCH {
                // A frame larger than a batch made it grow: give that back.
                *buf = BytesMut::new();
            }
            r
        }
        Err(_) => f(&mut BytesMut::new()),
    })
}

/// Closes our side, then discards what the client still sends (at most 1 s, 16 MiB),
/// so that its kernel does not answer our close with a reset that destroys the ERROR
/// we wrote last (docs/protocol.md#limits). Also used by the server for the
/// connections it refuses.
pub(crate) async fn linger<I: SessionIo>(io: &mut I) {
    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
    let mut sink = BytesMut::with_capacity(8192);
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut discarded = 0usize;
    while discarded < 16 * 1024 * 1024 {
        match tokio::time::timeout_at(deadline, io.readable()).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        sink.clear();
        match io.try_read_buf(&mut sink) {
            Ok(0) => return,
            Ok(n) => discarded += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

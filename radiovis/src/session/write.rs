//! The session's writes: queued MESSAGE frames (a few vectored from their shared
//! buffers, a backlog coalesced through the session's buffer), its own replies, writes
//! that block (bounded by `write_timeout` and cut short by a kill), and the linger after
//! an ERROR.

use std::io::IoSlice;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::backend::{Cache, DirectoryApi, MessageBus};
use crate::outbound::{Kill, Outbound};
use crate::stomp::Frame;

use super::{Session, SessionError, SessionIo, WRITE_BATCH};

/// Most frames written by one vectored write (two buffers each); more waiting are
/// copied into one buffer instead (the slices live on the stack, set up on every write).
const WRITE_FRAMES: usize = 8;

impl<I: SessionIo, B: MessageBus, D: DirectoryApi, C: Cache> Session<I, B, D, C> {
    /// Writes queued MESSAGE frames, coalesced into one write.
    ///
    /// On a socket, up to `WRITE_FRAMES` frames go out in one vectored write straight
    /// from their shared heads and tails (no copy, no buffer); only what the socket
    /// does not take at once is copied into the session's buffer, written as the socket
    /// drains. So no connection holds a write buffer between writes, and the usual
    /// write allocates nothing.
    pub(super) async fn write_queued(&mut self) -> Result<(), SessionError> {
        // A few frames (the usual case: radios get a message every few seconds) go
        // out vectored; a backlog, or a TLS or WebSocket stream, through the session's
        // buffer (one large write, then flushed).
        let items = match I::BUFFERED {
            true => None,
            false => self.queue.take_up_to(WRITE_FRAMES),
        };
        let Some(items) = items else {
            if self.queue.drain_into(&mut self.wbuf, WRITE_BATCH) == 0 {
                return Ok(());
            }
            return self.flush_wbuf().await;
        };
        if items.is_empty() {
            return Ok(());
        }
        let rest = {
            let mut slices = [IoSlice::new(&[]); 2 * WRITE_FRAMES];
            let mut n = 0;
            for item in &items {
                slices[n] = IoSlice::new(&item.head);
                slices[n + 1] = IoSlice::new(&item.tail);
                n += 2;
            }
            let total: usize = slices[..n].iter().map(|s| s.len()).sum();
            let written = match self.io.try_write_vectored(&slices[..n]) {
                Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into()),
                Ok(written) => written,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e.into()),
            };
            (written < total).then(|| {
                // The socket took part: the rest waits in the session's buffer.
                let mut rest = BytesMut::with_capacity(total - written);
                let mut skip = written;
                for s in &slices[..n] {
                    let from = skip.min(s.len());
                    rest.extend_from_slice(&s[from..]);
                    skip -= from;
                }
                rest
            })
        };
        drop(items);
        match rest {
            None => {
                self.wrote();
                Ok(())
            }
            Some(rest) => {
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

//! What a session needs of its connection: wait until readable, take what arrived
//! without waiting, write without waiting, and the ordinary async writes.
//!
//! TCP uses the socket's own readiness (an idle connection holds no read buffer);
//! any other byte stream (TLS, a WebSocket's payloads) goes through [`Generic`],
//! which reads into a stack buffer when polled and keeps only what arrived.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A connection a session can run on.
pub trait SessionIo: AsyncWrite + Unpin + Send + 'static {
    /// Whether writes may stay buffered until flushed (TLS, WebSocket); a TCP
    /// socket's writes are on their way once accepted.
    const BUFFERED: bool;
    /// Ready when [`SessionIo::try_read_buf`] has something (or end of stream); polled
    /// in place by the session, so that an idle session holds no waiting future.
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Completes when [`SessionIo::try_read_buf`] has something (or end of stream).
    fn readable(&mut self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        poll_fn(move |cx| self.poll_readable(cx))
    }
    /// Appends what arrived to `buf` without waiting: `Ok(0)` at end of stream,
    /// `WouldBlock` when nothing is there.
    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize>;
    /// Writes what fits without waiting (`WouldBlock` when nothing does).
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize>;
}

impl SessionIo for TcpStream {
    const BUFFERED: bool = false;
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        TcpStream::try_read_buf(self, buf)
    }
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, buf)
    }
}

/// Bytes read at most per wake-up of a [`Generic`] stream.
const READ_CHUNK: usize = 4096;

/// Any byte stream as a [`SessionIo`]: TLS, a WebSocket byte adapter, an in-memory
/// pipe. Reads go through a stack buffer; only bytes not yet taken are kept.
pub struct Generic<S> {
    inner: S,
    /// Read and not yet taken by the session (no allocation while empty).
    pending: BytesMut,
    eof: bool,
}

impl<S> Generic<S> {
    /// Wraps a stream.
    pub fn new(inner: S) -> Generic<S> {
        Generic {
            inner,
            pending: BytesMut::new(),
            eof: false,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Generic<S> {
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.pending.is_empty() || self.eof {
            return Poll::Ready(Ok(()));
        }
        let mut chunk = [0u8; READ_CHUNK];
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                match buf.filled() {
                    [] => self.eof = true,
                    data => self.pending.extend_from_slice(data),
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> SessionIo for Generic<S> {
    const BUFFERED: bool = true;
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_fill(cx)
    }

    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        if !self.pending.is_empty() {
            let n = self.pending.len();
            buf.extend_from_slice(&self.pending);
            self.pending = BytesMut::new();
            return Ok(n);
        }
        if self.eof {
            return Ok(0);
        }
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A stream has no write readiness of its own: poll once without a waker. On
        // `WouldBlock` the session writes with its own waker (and deadline).
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(&mut self.inner).poll_write(&mut cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Generic<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

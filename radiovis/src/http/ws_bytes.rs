//! A WebSocket as a byte stream, so that a STOMP session runs over it unchanged
//! (docs/protocol.md#stomp-over-websocket): the payloads of text and binary messages
//! are read as one stream of bytes (frames may span messages, one message may hold
//! several), each write goes out as one message (text when it is UTF-8), a close is
//! the end of the stream. Pings are answered by tungstenite.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// The byte stream of one WebSocket.
pub(super) struct WsBytes<S> {
    ws: WebSocketStream<S>,
    /// Payload received and not read yet.
    unread: Bytes,
}

impl<S> WsBytes<S> {
    pub fn new(ws: WebSocketStream<S>) -> Self {
        WsBytes {
            ws,
            unread: Bytes::new(),
        }
    }
}

fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsBytes<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.unread.is_empty() {
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Text(t))) => self.unread = Bytes::from(t),
                Some(Ok(Message::Binary(b))) => self.unread = b,
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Ok(_)) => {}
                Some(Err(WsError::ConnectionClosed)) => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
        let n = self.unread.len().min(buf.remaining());
        let chunk = self.unread.split_to(n);
        buf.put_slice(&chunk);
        if self.unread.is_empty() {
            // An empty slice still holds the message's buffer (tungstenite's read
            // buffer, which then has to allocate another): let it go.
            self.unread = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsBytes<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io_error)?;
        let message = match std::str::from_utf8(buf) {
            Ok(text) => Message::text(text),
            Err(_) => Message::binary(Bytes::copy_from_slice(buf)),
        };
        Pin::new(&mut self.ws)
            .start_send(message)
            .map_err(io_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => {
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }
}

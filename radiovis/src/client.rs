//! A minimal STOMP client: enough for the examples, the benchmark and tools that talk to
//! a RadioVis server (subscribe to a station, publish a slide).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::stomp::{CodecError, Command, Decoder, Frame, Limits, Version};

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The server sent bytes that are not STOMP.
    #[error("protocol error: {0}")]
    Codec(#[from] CodecError),
    /// The server closed the connection.
    #[error("connection closed by the server")]
    Closed,
    /// The server answered with an ERROR frame (its `message`).
    #[error("server answered ERROR: {0}")]
    Error(String),
    /// A frame of another command than the one awaited.
    #[error("unexpected {0} frame")]
    Unexpected(String),
}

/// A connected STOMP session.
pub struct Client {
    stream: TcpStream,
    rbuf: BytesMut,
    decoder: Decoder,
    version: Version,
    /// Headers of the CONNECTED frame.
    pub connected: Frame,
}

impl Client {
    /// Connects and sends CONNECT with these extra headers (e.g. `login`, `passcode`,
    /// `accept-version`); fails on ERROR.
    pub async fn connect(
        addr: impl ToSocketAddrs,
        headers: &[(&str, &str)],
    ) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut client = Client {
            stream,
            rbuf: BytesMut::with_capacity(4096),
            decoder: Decoder::new(Limits {
                max_frame_size: 16 * 1024 * 1024,
                ..Limits::default()
            }),
            version: Version::V1_0,
            connected: Frame::new(Command::Connected),
        };
        let mut connect = Frame::new(Command::Connect);
        for (k, v) in headers {
            connect = connect.header(*k, *v);
        }
        client.send_frame(&connect).await?;
        let reply = client.next_frame().await?;
        match reply.command {
            Command::Connected => {
                client.version = match reply.get("version") {
                    Some("1.1") => Version::V1_1,
                    Some("1.2") => Version::V1_2,
                    _ => Version::V1_0,
                };
                client.decoder.set_version(client.version);
                client.connected = reply;
                Ok(client)
            }
            Command::Error => Err(ClientError::Error(
                reply.get("message").unwrap_or("").to_owned(),
            )),
            other => Err(ClientError::Unexpected(other.as_str().to_owned())),
        }
    }

    /// The negotiated version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Sends one frame.
    pub async fn send_frame(&mut self, frame: &Frame) -> Result<(), ClientError> {
        let bytes = frame.to_bytes(self.version);
        self.stream.write_all(&bytes).await?;
        Ok(())
    }

    /// Subscribes to `destination` with subscription `id`.
    pub async fn subscribe(
        &mut self,
        destination: &str,
        id: &str,
        extra: &[(&str, &str)],
    ) -> Result<(), ClientError> {
        let mut f = Frame::new(Command::Subscribe)
            .header("destination", destination)
            .header("id", id);
        for (k, v) in extra {
            f = f.header(*k, *v);
        }
        self.send_frame(&f).await
    }

    /// Sends `body` to `destination`.
    pub async fn send(
        &mut self,
        destination: &str,
        body: impl Into<bytes::Bytes>,
        extra: &[(&str, &str)],
    ) -> Result<(), ClientError> {
        let mut f = Frame::new(Command::Send)
            .header("destination", destination)
            .body(body);
        for (k, v) in extra {
            f = f.header(*k, *v);
        }
        self.send_frame(&f).await
    }

    /// Sends a frame with a `receipt` header and waits for its RECEIPT (failing on
    /// ERROR), so the caller knows the server processed it.
    pub async fn send_with_receipt(&mut self, frame: Frame) -> Result<(), ClientError> {
        let id = uuid::Uuid::new_v4().to_string();
        self.send_frame(&frame.header("receipt", id.clone()))
            .await?;
        loop {
            let f = self.next_frame().await?;
            match f.command {
                Command::Receipt if f.get("receipt-id") == Some(id.as_str()) => {
                    // In 1.0 the RECEIPT comes before the frame's effect; an ERROR may follow.
                    return Ok(());
                }
                Command::Error => {
                    return Err(ClientError::Error(
                        f.get("message").unwrap_or("").to_owned(),
                    ))
                }
                _ => {}
            }
        }
    }

    /// Returns once the server has processed every frame sent before: it handles a
    /// session's frames in order, so the RECEIPT of a no-op frame sent now comes after
    /// their effects. (In STOMP 1.0 a frame's own RECEIPT precedes its effect, so a
    /// receipt on the SUBSCRIBE itself does not say that the subscription is in place.)
    /// Frames other than that RECEIPT arriving meanwhile are dropped.
    pub async fn sync(&mut self) -> Result<(), ClientError> {
        self.send_with_receipt(Frame::new(Command::Other("NOOP".into())))
            .await
    }

    /// The next frame from the server (heart-beats skipped).
    pub async fn next_frame(&mut self) -> Result<Frame, ClientError> {
        loop {
            if let Some(f) = self.decoder.decode(&mut self.rbuf)? {
                return Ok(f);
            }
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(8192);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ClientError::Closed);
            }
        }
    }

    /// The next frame, or `None` when nothing arrives within `wait`.
    pub async fn next_frame_within(
        &mut self,
        wait: Duration,
    ) -> Result<Option<Frame>, ClientError> {
        match tokio::time::timeout(wait, self.next_frame()).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Sends DISCONNECT and closes.
    pub async fn disconnect(mut self) -> Result<(), ClientError> {
        self.send_frame(&Frame::new(Command::Disconnect)).await?;
        self.stream.shutdown().await?;
        Ok(())
    }
}

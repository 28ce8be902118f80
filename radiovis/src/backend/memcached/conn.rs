//! One connection to memcached and the two commands radiovis uses (`get`, `set`) in the
//! text protocol, flags included (docs/protocol.md#cache-values).

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::backend::{CacheItem, Reason};

/// Longest reply line read (a `VALUE` line with a 250-byte key is ~290 bytes).
const MAX_LINE_LEN: usize = 2048;
/// Largest value read back (memcached's default item limit is 1 MiB).
const MAX_VALUE_LEN: usize = 64 * 1024 * 1024;

/// One connection to memcached.
pub(super) struct Conn {
    pub(super) stream: BufReader<TcpStream>,
}

/// What went wrong in one operation.
pub(super) enum OpError {
    /// Connection-level failure: the connection is dropped, the cache may be down.
    Io(Reason),
    /// memcached answered with an error; the connection is still usable.
    Server(String),
    /// A reply we do not understand: the connection is dropped.
    Protocol(String),
}

/// A connection-level failure, its text that of the I/O error, as before the error was
/// kept as the cause.
fn io_error(e: std::io::Error) -> OpError {
    OpError::Io(Reason::caused_by(e.to_string(), e))
}

impl Conn {
    async fn read_line(&mut self) -> Result<String, OpError> {
        let mut line = Vec::with_capacity(64);
        let n = (&mut self.stream)
            .take(MAX_LINE_LEN as u64)
            .read_until(b'\n', &mut line)
            .await
            .map_err(io_error)?;
        if n == 0 {
            return Err(OpError::Io("connection closed by memcached".into()));
        }
        if !line.ends_with(b"\r\n") {
            return Err(OpError::Protocol("reply line too long or truncated".into()));
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line).map_err(|_| OpError::Protocol("reply line is not UTF-8".into()))
    }

    /// Interprets an error reply line; `None` when the line is not an error.
    fn error_reply(line: &str) -> Option<OpError> {
        if line == "ERROR" || line.starts_with("CLIENT_ERROR") || line.starts_with("SERVER_ERROR") {
            Some(OpError::Server(line.to_owned()))
        } else {
            None
        }
    }

    pub(super) async fn get(&mut self, key: &str) -> Result<Option<CacheItem>, OpError> {
        let cmd = format!("get {key}\r\n");
        self.stream
            .get_mut()
            .write_all(cmd.as_bytes())
            .await
            .map_err(io_error)?;
        let mut value = None;
        loop {
            let line = self.read_line().await?;
            if line == "END" {
                return Ok(value);
            }
            if let Some(e) = Conn::error_reply(&line) {
                return Err(e);
            }
            // VALUE <key> <flags> <bytes> [<cas>]
            let mut parts = line.split(' ');
            let bad = || OpError::Protocol(format!("bad VALUE line {line:?}"));
            let (flags, len) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some("VALUE"), Some(_), Some(flags), Some(len)) => (
                    flags.parse::<u32>().map_err(|_| bad())?,
                    len.parse::<usize>()
                        .ok()
                        .filter(|l| *l <= MAX_VALUE_LEN)
                        .ok_or_else(bad)?,
                ),
                _ => return Err(OpError::Protocol(format!("unexpected reply {line:?}"))),
            };
            let mut data = vec![0u8; len + 2];
            self.stream.read_exact(&mut data).await.map_err(io_error)?;
            if !data.ends_with(b"\r\n") {
                return Err(OpError::Protocol("value not followed by CRLF".into()));
            }
            data.truncate(len);
            value = Some(CacheItem {
                flags,
                data: Bytes::from(data),
            });
        }
    }

    pub(super) async fn set(
        &mut self,
        key: &str,
        item: &CacheItem,
        exptime: i64,
    ) -> Result<(), OpError> {
        let value = &item.data;
        let mut cmd = Vec::with_capacity(key.len() + value.len() + 48);
        cmd.extend_from_slice(
            format!("set {key} {} {exptime} {}\r\n", item.flags, value.len()).as_bytes(),
        );
        cmd.extend_from_slice(value);
        cmd.extend_from_slice(b"\r\n");
        self.stream
            .get_mut()
            .write_all(&cmd)
            .await
            .map_err(io_error)?;
        let line = self.read_line().await?;
        if line == "STORED" {
            return Ok(());
        }
        Err(Conn::error_reply(&line)
            .unwrap_or_else(|| OpError::Protocol(format!("unexpected reply {line:?}"))))
    }
}

//! A hub on `127.0.0.1:0` inside the test, and a tiny raw STOMP client that writes bytes
//! and parses what comes back itself (independently of `radiovis::stomp`), so tests
//! assert on the wire as a radio or a broadcaster sees it. Every wait is bounded.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use radiovis::backend::memory::{LocalBus, MemoryCache, StaticDirectory};
use radiovis::backend::{ChannelRef, DirectoryApi, DirectoryError, MockDirectoryApi};
use radiovis::hub::HubError;
use radiovis::{HubConfig, StompHub};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Broadcaster login of station `1` in [`DIRECTORY`].
pub const LOGIN: &str = "1.radio1";
/// Its passcode (distinctive, so tests can check it never leaks into an ERROR).
pub const PASSCODE: &str = "s3cret-Passc0de-XYZ";

/// The text topic of station 1's FM channel, GCC form and CC form (`ch` = `4e1`).
pub const TEXT: &str = "/topic/fm/4e1/4001/09580/text";
pub const TEXT_CC: &str = "/topic/fm/ch/4001/09580/text";

/// How long a test waits for a frame it expects.
pub const WAIT: Duration = Duration::from_secs(3);

/// The test directory: station 1 (GCC channels, FM + DAB), station 2 (a CC-form
/// channel), station 3 (only from 10.0.0.0/8); known channels include a second
/// frequency of PI 4001 (10230) but not 09999.
pub const DIRECTORY: &str = r#"
[gcc]
ch = "4e1"
de = "de0"

[[station]]
login = "1.radio1"
passcode = "s3cret-Passc0de-XYZ"
channels = ["/topic/fm/4e1/4001/09580/", "/topic/dab/4e1/4001/4001/0/"]

[[station]]
login = "2.radio2"
passcode = "secret2"
channels = ["/topic/fm/ch/4002/10110/"]

[[station]]
login = "3.locked"
passcode = "secret3"
allowed_networks = ["10.0.0.0/8"]
channels = ["/topic/fm/4e1/4003/09000/"]

[[channel]]
id = "1"
topic = "/topic/fm/4e1/4001/09580/"

[[channel]]
id = "2"
topic = "/topic/dab/4e1/4001/4001/0/"

[[channel]]
id = "3"
topic = "/topic/fm/4e1/4001/10230/"

[[channel]]
id = "4"
topic = "/topic/fm/ch/4002/10110/"
"#;

/// The directory the hub under test uses.
pub type Dir = Arc<dyn DirectoryApi>;
/// The hub under test.
pub type Hub = StompHub<Arc<LocalBus>, Dir, MemoryCache>;

/// [`DIRECTORY`] as a directory.
pub fn static_directory() -> Dir {
    Arc::new(StaticDirectory::from_toml(DIRECTORY).expect("test directory parses"))
}

/// A mock directory that knows no channels and no stations; `check_auth` answers with
/// `auth`.
pub fn mock_directory(
    auth: impl Fn(&str, &str, IpAddr) -> Result<bool, DirectoryError> + Send + 'static,
) -> MockDirectoryApi {
    let mut m = MockDirectoryApi::new();
    m.expect_check_auth()
        .returning(move |u, p, ip| auth(u, p, ip));
    m.expect_get_all_channels()
        .returning(|| Ok(Vec::<ChannelRef>::new()));
    m.expect_get_all_vis_channels()
        .returning(|| Ok(Vec::<ChannelRef>::new()));
    m.expect_get_gcc().returning(|_| Ok(None));
    m.expect_get_channels().returning(|_| Ok(Vec::new()));
    m.expect_get_channel_default().returning(|_| Ok(None));
    m
}

/// Hub settings for tests: production values with short timeouts.
pub fn test_config() -> HubConfig {
    HubConfig {
        connect_timeout: Duration::from_secs(5),
        directory_timeout: Duration::from_secs(1),
        shutdown_grace: Duration::from_secs(1),
        ..HubConfig::default()
    }
}

/// A hub running in the test on `127.0.0.1:<random port>`. Dropping it shuts it down.
pub struct TestHub {
    pub addr: String,
    pub hub: Hub,
    stop: CancellationToken,
    handle: Option<JoinHandle<Result<(), HubError>>>,
}

impl TestHub {
    /// Starts a hub with [`test_config`] and [`DIRECTORY`].
    pub async fn start() -> TestHub {
        TestHub::with(test_config(), static_directory()).await
    }

    /// Starts a hub with this configuration and directory.
    pub async fn with(config: HubConfig, directory: Dir) -> TestHub {
        let hub: Hub = StompHub::new(
            Arc::new(LocalBus::default()),
            directory,
            MemoryCache::new(),
            config,
        );
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr").to_string();
        let stop = CancellationToken::new();
        let runner = hub.clone();
        let handle = tokio::spawn({
            let stop = stop.clone();
            async move { runner.run(vec![listener], stop).await }
        });
        TestHub {
            addr,
            hub,
            stop,
            handle: Some(handle),
        }
    }

    /// Triggers shutdown and waits (at most `within`) for `run` to return.
    pub async fn shutdown(&mut self, within: Duration) -> Result<(), HubError> {
        self.stop.cancel();
        let handle = self.handle.take().expect("hub already shut down");
        tokio::time::timeout(within, handle)
            .await
            .expect("StompHub::run did not return in time after shutdown")
            .expect("hub task panicked")
    }

    /// The token that stops the hub (and an HTTP listener started on it).
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Whether `run` is still running (it must not end because of a client).
    pub fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// A new raw connection.
    pub async fn conn(&self) -> Conn {
        Conn::open(&self.addr).await
    }

    /// An anonymous 1.0 radio, connected.
    pub async fn radio(&self) -> Conn {
        let (c, _) = self.connect(&[]).await;
        c
    }

    /// An anonymous 1.2 radio, connected.
    pub async fn radio12(&self) -> Conn {
        let (c, _) = self.connect(&[("accept-version", "1.2")]).await;
        c
    }

    /// Station 1's broadcaster (1.0), logged in.
    pub async fn broadcaster(&self) -> Conn {
        let (c, _) = self
            .connect(&[("login", LOGIN), ("passcode", PASSCODE)])
            .await;
        c
    }

    /// Station 1's broadcaster speaking STOMP 1.2 (header escaping), logged in.
    pub async fn broadcaster12(&self) -> Conn {
        let (c, _) = self
            .connect(&[
                ("accept-version", "1.2"),
                ("login", LOGIN),
                ("passcode", PASSCODE),
            ])
            .await;
        c
    }

    /// Sends CONNECT with these headers and expects CONNECTED.
    pub async fn connect(&self, headers: &[(&str, &str)]) -> (Conn, Frame) {
        let mut c = self.conn().await;
        c.send_frame("CONNECT", headers, b"").await;
        let f = c.expect("CONNECTED").await;
        (c, f)
    }

    /// Asserts that a fresh radio can still connect, subscribe and receive (after some
    /// abuse of the server).
    pub async fn assert_still_serves(&self, topic: &str) {
        assert!(self.is_running(), "hub stopped running");
        let mut radio = self.radio().await;
        radio
            .subscribe(topic, Some("alive"), &[("x-ebu-nofastreply", "yes")])
            .await;
        let mut b = self.broadcaster().await;
        b.publish(topic, b"TEXT still alive", &[]).await;
        let m = radio.expect("MESSAGE").await;
        assert_eq!(m.body, b"TEXT still alive");
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One frame as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The frame's bytes as they came (without leading heart-beats).
    pub raw: Vec<u8>,
}

impl Frame {
    /// First value of a header (first wins).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The ERROR's `message` header, lower-cased (empty if absent).
    pub fn message(&self) -> String {
        self.get("message").unwrap_or("").to_lowercase()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What a read produced.
#[derive(Debug)]
pub enum Next {
    Frame(Frame),
    Closed,
    Timeout,
}

/// A raw STOMP connection.
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    pending: VecDeque<Frame>,
    eof: bool,
    seq: u64,
    /// EOLs received between frames (server heart-beats).
    pub heartbeats: usize,
}

impl Conn {
    /// Opens a TCP connection to `addr`.
    pub async fn open(addr: &str) -> Conn {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        let _ = stream.set_nodelay(true);
        Conn {
            stream,
            buf: BytesMut::new(),
            pending: VecDeque::new(),
            eof: false,
            seq: 0,
            heartbeats: 0,
        }
    }

    /// Writes raw bytes (panics on failure).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.try_send_raw(bytes)
            .await
            .expect("write to the server failed");
    }

    /// Writes raw bytes, bounded in time; an error (or a write blocked for 2 s) is
    /// returned, not a panic.
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match tokio::time::timeout(Duration::from_secs(2), self.stream.write_all(bytes)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "write blocked",
            )),
        }
    }

    /// Writes one frame: `command`, `name:value` lines, blank line, body, NUL.
    pub async fn send_frame(&mut self, command: &str, headers: &[(&str, &str)], body: &[u8]) {
        let bytes = encode(command, headers, body);
        self.send_raw(&bytes).await;
    }

    /// The next frame, a close, or a timeout after `within`.
    pub async fn next(&mut self, within: Duration) -> Next {
        let deadline = Instant::now() + within;
        loop {
            if let Some(f) = self.pending.pop_front() {
                return Next::Frame(f);
            }
            if let Some(f) = self.parse() {
                return Next::Frame(f);
            }
            if self.eof {
                return Next::Closed;
            }
            if !self.fill(deadline).await {
                return Next::Timeout;
            }
        }
    }

    /// Reads more bytes; false on timeout. EOF and errors set `eof`.
    async fn fill(&mut self, deadline: Instant) -> bool {
        self.buf.reserve(64 * 1024);
        match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => false,
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.eof = true;
                true
            }
            Ok(Ok(_)) => true,
        }
    }

    /// The next frame within [`WAIT`] (panics on close or timeout).
    pub async fn frame(&mut self) -> Frame {
        match self.next(WAIT).await {
            Next::Frame(f) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next frame, which must be a `command`.
    pub async fn expect(&mut self, command: &str) -> Frame {
        let f = self.frame().await;
        assert_eq!(
            f.command,
            command,
            "expected {command}, got {:?}",
            String::from_utf8_lossy(&f.raw)
        );
        f
    }

    /// Asserts that nothing (no frame, no close) arrives within `within`.
    pub async fn expect_silence(&mut self, within: Duration) {
        match self.next(within).await {
            Next::Timeout => {}
            Next::Frame(f) => panic!(
                "expected no frame, got {:?}",
                String::from_utf8_lossy(&f.raw)
            ),
            Next::Closed => panic!("expected the connection to stay open, it was closed"),
        }
    }

    /// Asserts that the server closes the connection within `within`; whatever arrives
    /// before (even a partial frame) is discarded.
    pub async fn expect_closed(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        self.pending.clear();
        loop {
            self.buf.clear();
            if self.eof {
                return;
            }
            if !self.fill(deadline).await {
                panic!("connection not closed by the server within {within:?}");
            }
        }
    }

    /// Asserts the server closes the connection within `within` and returns the
    /// frames received before the close.
    pub async fn frames_until_closed(&mut self, within: Duration) -> Vec<Frame> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        loop {
            match self
                .next(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Next::Frame(f) => out.push(f),
                Next::Closed => return out,
                Next::Timeout => panic!(
                    "connection not closed within {within:?}; got before: {:?}",
                    out.iter().map(|f| &f.command).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Sends an unknown command with a receipt and waits for that RECEIPT: every frame
    /// sent before has then been handled. Frames received meanwhile stay queued.
    pub async fn sync(&mut self) {
        self.seq += 1;
        let id = format!("sync-{}", self.seq);
        self.send_frame("NOOP", &[("receipt", &id)], b"").await;
        let mut before = VecDeque::new();
        loop {
            match self.next(WAIT).await {
                Next::Frame(f) if f.command == "RECEIPT" && f.get("receipt-id") == Some(&id) => {
                    break
                }
                Next::Frame(f) => before.push_back(f),
                other => panic!("no RECEIPT {id} (sync): {other:?}"),
            }
        }
        before.append(&mut self.pending);
        self.pending = before;
    }

    /// SUBSCRIBE (with `id` when given, and extra headers), then [`Conn::sync`].
    pub async fn subscribe(&mut self, destination: &str, id: Option<&str>, extra: &[(&str, &str)]) {
        let mut h = vec![("destination", destination)];
        if let Some(id) = id {
            h.push(("id", id));
        }
        h.extend_from_slice(extra);
        self.send_frame("SUBSCRIBE", &h, b"").await;
        self.sync().await;
    }

    /// SEND, then [`Conn::sync`] (the bus has taken the message when it returns).
    pub async fn publish(&mut self, destination: &str, body: &[u8], extra: &[(&str, &str)]) {
        let mut h = vec![("destination", destination)];
        h.extend_from_slice(extra);
        self.send_frame("SEND", &h, body).await;
        self.sync().await;
    }

    /// Waits until at least `n` heart-beats (EOLs between frames) have arrived.
    pub async fn wait_heartbeats(&mut self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.heartbeats < n {
            if self.parse().is_some() {
                continue;
            }
            // Skip leading EOLs of the buffer (counted by parse) before reading more.
            if self.eof {
                panic!("closed after {} heart-beats, wanted {n}", self.heartbeats);
            }
            if !self.fill(deadline).await {
                panic!(
                    "{} heart-beats within {within:?}, wanted {n}",
                    self.heartbeats
                );
            }
        }
    }

    /// Takes one complete frame off the buffer, counting leading EOLs as heart-beats.
    fn parse(&mut self) -> Option<Frame> {
        loop {
            if self.buf.starts_with(b"\n") {
                self.buf.advance(1);
                self.heartbeats += 1;
            } else if self.buf.starts_with(b"\r\n") {
                self.buf.advance(2);
                self.heartbeats += 1;
            } else {
                break;
            }
        }
        let (frame, len) = parse_frame(&self.buf)?;
        self.buf.advance(len);
        Some(frame)
    }
}

/// The wire form of a frame (no escaping, no content-length unless given).
pub fn encode(command: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + body.len());
    out.extend_from_slice(command.as_bytes());
    out.push(b'\n');
    for (k, v) in headers {
        out.extend_from_slice(k.as_bytes());
        out.push(b':');
        out.extend_from_slice(v.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(body);
    out.push(0);
    out
}

/// Parses one frame at the start of `buf`: (frame, bytes used), or `None` if incomplete.
fn parse_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    let mut pos = 0;
    let line = |pos: &mut usize| -> Option<String> {
        let end = buf[*pos..].iter().position(|&b| b == b'\n')? + *pos;
        let l = &buf[*pos..end];
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        *pos = end + 1;
        Some(String::from_utf8_lossy(l).into_owned())
    };
    let command = line(&mut pos)?;
    let mut headers = Vec::new();
    loop {
        let l = line(&mut pos)?;
        if l.is_empty() {
            break;
        }
        match l.split_once(':') {
            Some((k, v)) => headers.push((k.to_owned(), v.to_owned())),
            None => headers.push((l, String::new())),
        }
    }
    let content_length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    let body_end = match content_length {
        Some(n) => {
            if buf.len() < pos + n + 1 {
                return None;
            }
            pos + n
        }
        None => buf[pos..].iter().position(|&b| b == 0)? + pos,
    };
    let frame = Frame {
        command,
        headers,
        body: buf[pos..body_end].to_vec(),
        raw: buf[..=body_end].to_vec(),
    };
    Some((frame, body_end + 1))
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

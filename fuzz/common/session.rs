//! A real hub driven over TCP by frame sequences built from fuzzer bytes, for the
//! `session_frames` fuzz target and its stable smoke version
//! (radiovis/tests/session_fuzz_smoke.rs).
//!
//! [`Target::start`] runs a `StompHub` (in-process bus, cache and a one-station
//! directory; small limits, short timeouts) on `127.0.0.1:0` on its own tokio runtime.
//! [`Target::input`] opens one connection, writes the frames built from the input,
//! reads what comes back until the connection closes, a final RECEIPT arrives or 50 ms
//! pass in silence, and checks: every reply parses as STOMP frames of the negotiated
//! version; only server commands come back, CONNECTED first and once; an ERROR has a
//! `message` and, in 1.1/1.2, nothing follows it; the hub is still running.
//! [`Target::check_serves`] (every so many inputs) checks that a fresh radio still
//! subscribes and receives what the station publishes, and that no session or
//! subscription outlives its connection. Health checks connect from 127.0.0.2, so the
//! per-address login throttling the inputs provoke on 127.0.0.1 does not apply to them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use radiovis::backend::memory::{LocalBus, MemoryCache, StaticDirectory};
use radiovis::hub::HubError;
use radiovis::stomp::{Command, Decoder, Frame, Limits, Version};
use radiovis::{HubConfig, StompHub};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

use crate::source::Source;

/// The station's login and passcode in [`DIRECTORY`].
pub const LOGIN: &str = "1.radio1";
pub const PASSCODE: &str = "Fuzz-Passc0de";
/// The station's text topic.
pub const TEXT: &str = "/topic/fm/4e1/4001/09580/text";

const DIRECTORY: &str = r#"
[gcc]
ch = "4e1"

[[station]]
login = "1.radio1"
passcode = "Fuzz-Passc0de"
channels = ["/topic/fm/4e1/4001/09580/"]

[[channel]]
id = "1"
topic = "/topic/fm/4e1/4001/09580/"
"#;

/// The hub's frame limits: small, so that inputs reach them.
pub const LIMITS: Limits = Limits {
    max_frame_size: 2048,
    max_headers: 12,
    max_header_line: 256,
};

/// Most frames written per input.
const MAX_FRAMES: usize = 24;
/// Silence after which a reply is taken as complete.
const READ_IDLE: Duration = Duration::from_millis(50);
/// Bound on one health check's waits.
const WAIT: Duration = Duration::from_secs(5);
/// The receipt of the NOOP appended to every input: its RECEIPT ends the reading early.
const END: &str = "fuzz-end";

/// Small limits and short timeouts; failed logins neither delayed nor blocked for long.
pub fn config() -> HubConfig {
    HubConfig {
        limits: LIMITS,
        outbound_queue: 16,
        connect_timeout: Duration::from_millis(500),
        max_connections: 4096,
        max_subscriptions: 8,
        max_wildcards: 2,
        subscribe_rate: 1000,
        subscribe_burst: 16,
        heartbeat: (Duration::from_millis(200), Duration::from_millis(200)),
        directory_timeout: Duration::from_secs(1),
        frame_timeout: Duration::from_millis(500),
        idle_timeout: Some(Duration::from_secs(2)),
        write_timeout: Duration::from_secs(1),
        shutdown_grace: Duration::from_secs(1),
        auth_max_failures: 1000,
        auth_block: Duration::from_secs(1),
        auth_failure_delay: Duration::ZERO,
        ..HubConfig::default()
    }
}

static PANICKED: AtomicBool = AtomicBool::new(false);

/// Makes any panic, in the hub's tasks too (tokio would catch those), a failure: with
/// `abort`, the process aborts (libFuzzer reports the input); otherwise the next
/// [`Target::check_serves`] fails.
pub fn install_panic_hook(abort: bool) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        PANICKED.store(true, Ordering::SeqCst);
        if abort {
            std::process::abort();
        }
    }));
}

type Hub = StompHub<LocalBus, StaticDirectory, MemoryCache>;

/// A running hub and the runtime it runs on.
pub struct Target {
    runtime: Runtime,
    addr: SocketAddr,
    hub: Hub,
    stop: CancellationToken,
    run: JoinHandle<Result<(), HubError>>,
    checks: AtomicU64,
}

impl Target {
    /// Starts the hub. Panics when it cannot (no point fuzzing then).
    pub fn start() -> Target {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let directory = StaticDirectory::from_toml(DIRECTORY).expect("directory parses");
        let hub: Hub = StompHub::new(LocalBus::default(), directory, MemoryCache::new(), config());
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let stop = CancellationToken::new();
        let run = runtime.spawn({
            let hub = hub.clone();
            let stop = stop.clone();
            async move { hub.run(vec![listener], stop).await }
        });
        Target {
            runtime,
            addr,
            hub,
            stop,
            run,
            checks: AtomicU64::new(0),
        }
    }

    /// One connection carrying the frames built from `data`; panics on a broken
    /// invariant.
    pub fn input(&self, data: &[u8]) {
        let script = script(&mut Source::new(data));
        self.runtime.block_on(exchange(self.addr, &script));
        assert!(!self.run.is_finished(), "the hub stopped");
    }

    /// A fresh radio subscribes and receives what the station publishes; then, once
    /// every client has gone, no session and no subscription is left.
    pub fn check_serves(&self) {
        assert!(!PANICKED.load(Ordering::SeqCst), "something panicked");
        assert!(!self.run.is_finished(), "the hub stopped");
        let n = self.checks.fetch_add(1, Ordering::Relaxed);
        self.runtime.block_on(async {
            serves(self.addr, n).await;
            let deadline = Instant::now() + WAIT;
            loop {
                let stats = self.hub.stats();
                if stats.connections == 0 && stats.subscriptions == 0 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "sessions outlive their connections: {stats:?}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        assert!(!PANICKED.load(Ordering::SeqCst), "something panicked");
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

const COMMANDS: &[&str] = &[
    "CONNECT",
    "STOMP",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "SEND",
    "DISCONNECT",
    "NOOP",
    "BEGIN",
    "ACK",
    "MESSAGE",
    "",
    "connect",
];

const HEADERS: &[&str] = &[
    "login",
    "passcode",
    "receipt",
    "id",
    "destination",
    "accept-version",
    "heart-beat",
    "content-length",
    "host",
    "request-id",
    "trigger-time",
    "link",
    "message-id",
];

/// Values worth trying for a header.
fn values(name: &str) -> &'static [&'static str] {
    match name {
        "login" => &[LOGIN, "1", "1.other", "2.x", "", " 1.radio1 "],
        "passcode" => &[PASSCODE, "wrong", "", " Fuzz-Passc0de "],
        "destination" => &[
            TEXT,
            "/topic/fm/4e1/4001/09580/image",
            "/topic/fm/ch/4001/09580/text",
            "/topic/fm/4e1/4001/09580/",
            "/topic/*/text",
            "/topic/fm/*/4001/*/text",
            "/topic/fm/4e1/4001/*/text",
            "/topic/fm/4e1/4001/09999/text",
            "/topic/fm/4e1/4001/09580/text/sub",
            "/topic/dab/4e1/4001/4001/0/text",
            "/topic/fm/zz/4001/09580/text",
            "/queue/x",
            "*",
            "",
        ],
        "id" => &["0", "1", "a", ""],
        "receipt" => &["r1", "r2", END, ""],
        "accept-version" => &["1.0", "1.1", "1.2", "1.0,1.1,1.2", "1.1,1.2", "2.0", ""],
        "heart-beat" => &[
            "0,0",
            "10,10",
            "1,1",
            "10000,0",
            "0,1",
            "a,b",
            "99999999999999999999,1",
            "-1,5",
        ],
        "trigger-time" => &["NOW", "2020-01-01T00:00:00Z", ""],
        "link" => &["http://example.org/", "a\\nb", ""],
        _ => &["1", "", "x"],
    }
}

/// A header value: a known one, arbitrary bytes, or one with escapes.
fn value(src: &mut Source, name: &str, body_len: usize) -> Vec<u8> {
    if name == "content-length" && !src.one_in(4) {
        let len = match src.below(4) {
            0 => body_len,
            1 => body_len + 1 + src.below(4),
            2 => body_len.saturating_sub(1 + src.below(4)),
            _ => {
                return src
                    .pick(&["-1", "abc", "99999999", " 3", ""])
                    .as_bytes()
                    .to_vec()
            }
        };
        return len.to_string().into_bytes();
    }
    match src.below(8) {
        0 => src.bytes(16).to_vec(),
        1 => src
            .pick(&["\\n", "\\c", "\\r", "\\\\", "\\t", "\\", "a:b"])
            .as_bytes()
            .to_vec(),
        _ => src.pick(values(name)).as_bytes().to_vec(),
    }
}

/// A body: empty, a slide, arbitrary bytes, or about as large as the limit allows.
fn body(src: &mut Source) -> Vec<u8> {
    match src.below(16) {
        0..=5 => Vec::new(),
        6..=7 => b"TEXT hello".to_vec(),
        8 => b"SHOW http://example.org/a.png".to_vec(),
        9 => vec![b'x'; LIMITS.max_frame_size - 64 + src.below(128)],
        _ => src.bytes(200).to_vec(),
    }
}

/// What one connection does.
pub struct Script {
    /// Frames (usually starting with a CONNECT), then a NOOP whose RECEIPT tells that
    /// the server has handled everything before it.
    pub bytes: Vec<u8>,
    /// Whether the client closes its writing side after the frames (the server then
    /// sees the end of the stream, maybe in the middle of a frame, instead of waiting
    /// for more until the client leaves).
    pub half_close: bool,
}

/// The script of one input.
pub fn script(src: &mut Source) -> Script {
    let half_close = !src.one_in(4);
    let mut out = Vec::new();
    let count = 1 + src.below(MAX_FRAMES);
    for i in 0..count {
        if i > 0 && src.is_empty() {
            break;
        }
        let command: &[u8] = if i == 0 && !src.one_in(8) {
            src.pick(&["CONNECT", "STOMP"]).as_bytes()
        } else if src.one_in(16) {
            src.bytes(12)
        } else {
            src.pick(COMMANDS).as_bytes()
        };
        let eol: &[u8] = if src.one_in(4) { b"\r\n" } else { b"\n" };
        let body = body(src);
        out.extend_from_slice(command);
        out.extend_from_slice(eol);
        if i == 0 && !src.one_in(4) {
            // A plausible CONNECT: anonymous or the station, in some version.
            let version = *src.pick(&["1.0", "1.1", "1.2", "1.0,1.1,1.2"]);
            out.extend_from_slice(format!("accept-version:{version}").as_bytes());
            out.extend_from_slice(eol);
            if src.one_in(2) {
                out.extend_from_slice(format!("login:{LOGIN}").as_bytes());
                out.extend_from_slice(eol);
                out.extend_from_slice(format!("passcode:{PASSCODE}").as_bytes());
                out.extend_from_slice(eol);
            }
        }
        for _ in 0..src.below(8) {
            let name: Vec<u8> = if src.one_in(8) {
                src.bytes(8).to_vec()
            } else {
                src.pick(HEADERS).as_bytes().to_vec()
            };
            let value = value(src, &String::from_utf8_lossy(&name), body.len());
            out.extend_from_slice(&name);
            out.push(b':');
            out.extend_from_slice(&value);
            out.extend_from_slice(eol);
        }
        out.extend_from_slice(eol);
        out.extend_from_slice(&body);
        if !src.one_in(16) {
            out.push(0);
        }
        for _ in 0..src.below(3) {
            out.extend_from_slice(eol);
        }
    }
    out.extend_from_slice(format!("NOOP\nreceipt:{END}\n\n\0").as_bytes());
    Script {
        bytes: out,
        half_close,
    }
}

/// The replies of one connection, checked frame by frame as they arrive.
struct Replies {
    decoder: Decoder,
    buf: BytesMut,
    frames: usize,
    version: Version,
    errored: bool,
    ended: bool,
}

impl Replies {
    fn new() -> Replies {
        Replies {
            decoder: Decoder::new(Limits {
                max_frame_size: 1 << 20,
                max_headers: 256,
                max_header_line: 1 << 16,
            }),
            buf: BytesMut::new(),
            frames: 0,
            version: Version::V1_0,
            errored: false,
            ended: false,
        }
    }

    fn take(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(frame)) => self.check(frame),
                Ok(None) => return,
                Err(e) => panic!("reply frame {} does not parse: {e}", self.frames),
            }
        }
    }

    fn check(&mut self, frame: Frame) {
        let first = self.frames == 0;
        self.frames += 1;
        assert!(
            !(self.errored && self.version != Version::V1_0),
            "a {} after an ERROR in a {} session",
            frame.command.as_str(),
            self.version.as_str()
        );
        match &frame.command {
            Command::Connected => {
                assert!(first, "CONNECTED as frame {}", self.frames);
                self.version = match frame.get("version") {
                    None => Version::V1_0,
                    Some("1.1") => Version::V1_1,
                    Some("1.2") => Version::V1_2,
                    Some(v) => panic!("CONNECTED with version {v:?}"),
                };
                self.decoder.set_version(self.version);
            }
            Command::Error => {
                assert!(frame.get("message").is_some(), "ERROR without message");
                self.errored = true;
            }
            Command::Receipt => {
                assert!(!first, "RECEIPT before CONNECTED");
                self.ended |= frame.get("receipt-id") == Some(END);
            }
            Command::Message => assert!(!first, "MESSAGE before CONNECTED"),
            other => panic!("the server sent a {} frame", other.as_str()),
        }
    }
}

/// Runs `script` on a fresh connection and checks what comes back.
async fn exchange(addr: SocketAddr, script: &Script) {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        panic!("the hub refuses connections");
    };
    // The server may stop reading (it closed, or waits for a frame's end): a write
    // that cannot complete is not an error of the server.
    let written = timeout(Duration::from_millis(500), stream.write_all(&script.bytes)).await;
    if script.half_close && matches!(written, Ok(Ok(()))) {
        let _ = stream.shutdown().await;
    }
    let mut replies = Replies::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(2);
    while !replies.ended && Instant::now() < deadline {
        match timeout(READ_IDLE, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                // Closed: nothing may be left half-sent (EOLs are heart-beats).
                assert!(
                    replies.buf.iter().all(|b| *b == b'\n' || *b == b'\r'),
                    "the server closed in the middle of a frame: {:?}",
                    String::from_utf8_lossy(&replies.buf)
                );
                return;
            }
            Ok(Ok(n)) => replies.take(&chunk[..n]),
            Err(_) => return,
        }
    }
}

/// A STOMP 1.2 client connected from 127.0.0.2.
struct Peer {
    stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
}

impl Peer {
    async fn connect(addr: SocketAddr, headers: &[(&str, &str)]) -> Peer {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.2:0".parse().expect("address"))
            .expect("bind 127.0.0.2");
        let stream = timeout(WAIT, socket.connect(addr))
            .await
            .expect("connect in time")
            .expect("the hub accepts a connection");
        let mut decoder = Decoder::new(Limits::default());
        decoder.set_version(Version::V1_2);
        let mut peer = Peer {
            stream,
            buf: BytesMut::new(),
            decoder,
        };
        let mut connect = Frame::new(Command::Connect).header("accept-version", "1.2");
        for (k, v) in headers {
            connect = connect.header(*k, *v);
        }
        peer.send(connect).await;
        let reply = peer.next().await;
        assert_eq!(reply.command, Command::Connected, "{reply:?}");
        peer
    }

    async fn send(&mut self, frame: Frame) {
        let bytes = frame.to_bytes(Version::V1_2);
        timeout(WAIT, self.stream.write_all(&bytes))
            .await
            .expect("write in time")
            .expect("write");
    }

    async fn next(&mut self) -> Frame {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf).expect("reply parses") {
                return frame;
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf));
            match read.await {
                Ok(Ok(n)) if n > 0 => {}
                other => panic!("no frame from the hub: {other:?}"),
            }
        }
    }

    /// Frames until a RECEIPT for `id`; an ERROR fails.
    async fn receipt(&mut self, id: &str) {
        loop {
            let f = self.next().await;
            assert_ne!(f.command, Command::Error, "{f:?}");
            if f.command == Command::Receipt && f.get("receipt-id") == Some(id) {
                return;
            }
        }
    }
}

async fn serves(addr: SocketAddr, n: u64) {
    let mut radio = Peer::connect(addr, &[]).await;
    radio
        .send(
            Frame::new(Command::Subscribe)
                .header("destination", TEXT)
                .header("id", "0")
                .header("receipt", "sub"),
        )
        .await;
    radio.receipt("sub").await;
    let mut station = Peer::connect(addr, &[("login", LOGIN), ("passcode", PASSCODE)]).await;
    let text = format!("TEXT health check {n}");
    station
        .send(
            Frame::new(Command::Send)
                .header("destination", TEXT)
                .header("receipt", "pub")
                .body(text.clone().into_bytes()),
        )
        .await;
    station.receipt("pub").await;
    // The replay of an earlier message may come first.
    loop {
        let f = radio.next().await;
        assert_ne!(f.command, Command::Error, "{f:?}");
        if f.command == Command::Message && f.body == text.as_bytes() {
            break;
        }
    }
}

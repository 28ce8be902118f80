//! A PlugIt (directory) outage must not stop delivery (docs/protocol.md#faults,
//! docs/protocol.md#topic-normalisation): with `get_gcc` hanging, messages on topics that
//! need no directory answer flow at once, CC-form topics fall back to their CC form, the
//! failed look-up is remembered (not asked again per message), a client waiting on the
//! directory gets an answer, and CC/GCC equivalence comes back with the directory.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use radiovis::backend::memory::{LocalBus, MemoryCache};
use radiovis::backend::{
    BusMessage, ChannelDefault, ChannelRef, DirectoryApi, DirectoryError, MessageBus,
};
use radiovis::{HubConfig, StompHub};
use testkit::harness::{static_directory, test_config, Conn, Dir, Next};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The directory timeout of these tests: long against the promptness asked of delivery.
const DIRECTORY_TIMEOUT: Duration = Duration::from_secs(5);
/// How soon a message that needs no directory answer must arrive.
const PROMPT: Duration = Duration::from_secs(1);

/// A text topic in GCC form and in CC form (`de` = `de0` in the test directory). `de`
/// is asked for by nothing at start-up (unlike `ch`), so the hang hits it first when
/// the test sends.
const TEXT: &str = "/topic/fm/de0/d001/09580/text";
const TEXT_CC: &str = "/topic/fm/de/d001/09580/text";

/// The test directory, except that `get_gcc` hangs (for ever) while `hang` is set;
/// counts `get_gcc` calls.
struct FlakyDirectory {
    inner: Dir,
    hang: AtomicBool,
    gcc_calls: AtomicUsize,
}

#[async_trait]
impl DirectoryApi for FlakyDirectory {
    async fn check_auth(&self, u: &str, p: &str, ip: IpAddr) -> Result<bool, DirectoryError> {
        self.inner.check_auth(u, p, ip).await
    }
    async fn get_channels(&self, station: &str) -> Result<Vec<String>, DirectoryError> {
        // Station 2's channel in the CC form of `de`.
        if station == "2" {
            return Ok(vec!["/topic/fm/de/d002/10110/".to_owned()]);
        }
        self.inner.get_channels(station).await
    }
    async fn get_gcc(&self, cc: &str) -> Result<Option<String>, DirectoryError> {
        self.gcc_calls.fetch_add(1, Ordering::SeqCst);
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.get_gcc(cc).await
    }
    async fn get_all_channels(&self) -> Result<Vec<ChannelRef>, DirectoryError> {
        self.inner.get_all_channels().await
    }
    async fn get_all_vis_channels(&self) -> Result<Vec<ChannelRef>, DirectoryError> {
        self.inner.get_all_vis_channels().await
    }
    async fn get_channel_default(&self, c: &str) -> Result<Option<ChannelDefault>, DirectoryError> {
        self.inner.get_channel_default(c).await
    }
}

/// A hub on the flaky directory, its bus exposed so that the test publishes as another
/// instance would. `get_gcc` hangs from the start when `hang_from_start`, otherwise
/// from when the hub serves.
struct Setup {
    addr: String,
    bus: Arc<LocalBus>,
    directory: Arc<FlakyDirectory>,
    stop: CancellationToken,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(config: HubConfig, hang_from_start: bool) -> Setup {
    let directory = Arc::new(FlakyDirectory {
        inner: static_directory(),
        hang: AtomicBool::new(hang_from_start),
        gcc_calls: AtomicUsize::new(0),
    });
    let bus = Arc::new(LocalBus::default());
    let hub = StompHub::new(bus.clone(), directory.clone(), MemoryCache::new(), config);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move { hub.run(vec![listener], stop).await }
    });
    // Start-up normalises the known channels (one is CC-form): it may wait up to the
    // directory timeout once, then serves.
    let mut probe = Conn::open(&addr).await;
    probe.send_frame("CONNECT", &[], b"").await;
    let f = wait_frame(&mut probe, DIRECTORY_TIMEOUT * 3).await;
    assert_eq!(
        f.command, "CONNECTED",
        "the hub serves despite the directory"
    );
    directory.hang.store(true, Ordering::SeqCst);
    directory.gcc_calls.store(0, Ordering::SeqCst);
    Setup {
        addr,
        bus,
        directory,
        stop,
    }
}

fn config() -> HubConfig {
    HubConfig {
        directory_timeout: DIRECTORY_TIMEOUT,
        directory_retry: Duration::from_secs(1),
        ..test_config()
    }
}

async fn radio(addr: &str, destination: &str) -> Conn {
    let mut c = Conn::open(addr).await;
    c.send_frame("CONNECT", &[], b"").await;
    c.expect("CONNECTED").await;
    c.send_frame(
        "SUBSCRIBE",
        &[
            ("destination", destination),
            ("x-ebu-nofastreply", "yes"),
            ("receipt", "sub"),
        ],
        b"",
    )
    .await;
    // 1.0: the RECEIPT is written before the SUBSCRIBE takes effect; a sync after it
    // proves the subscription is in place. Both bounded by the directory timeout.
    let r = wait_frame(&mut c, DIRECTORY_TIMEOUT * 2).await;
    assert_eq!(r.command, "RECEIPT", "{:?}", r.text());
    c.send_frame("NOOP", &[("receipt", "in-place")], b"").await;
    let r = wait_frame(&mut c, DIRECTORY_TIMEOUT * 2).await;
    assert_eq!(r.get("receipt-id"), Some("in-place"), "{:?}", r.text());
    c
}

async fn wait_frame(c: &mut Conn, within: Duration) -> testkit::harness::Frame {
    match c.next(within).await {
        Next::Frame(f) => f,
        other => panic!("expected a frame within {within:?}, got {other:?}"),
    }
}

async fn publish(bus: &LocalBus, topic: &str, body: &str) {
    bus.publish(BusMessage {
        topic: topic.to_owned(),
        body: Bytes::from(body.to_owned()),
        headers: vec![],
    })
    .await
    .expect("bus takes the message");
}

/// (a) While `get_gcc` hangs, a broadcaster alternating between the CC form and the GCC
/// form: every GCC-form message reaches the GCC-form radio promptly. Failed before the
/// fix: the first CC-form message held the single bus consumer (here for ever; with
/// PlugIt, the directory timeout per message), so no GCC-form message arrived.
#[tokio::test]
async fn gcc_form_messages_flow_while_get_gcc_hangs() {
    let s = start(config(), false).await;
    let mut gcc_radio = radio(&s.addr, TEXT).await;
    for i in 0..5 {
        publish(&s.bus, TEXT_CC, &format!("TEXT cc {i}")).await;
        publish(&s.bus, TEXT, &format!("TEXT gcc {i}")).await;
        let m = wait_frame(&mut gcc_radio, PROMPT).await;
        assert_eq!(m.command, "MESSAGE");
        assert_eq!(m.text(), format!("TEXT gcc {i}"), "GCC-form message {i}");
    }
}

/// (b) and (d): during the outage, many messages on one CC topic make only a few
/// `get_gcc` calls (the failure is remembered, with backoff) and reach CC-form
/// subscribers (the fallback); once the directory answers again, a CC-form message
/// reaches the GCC-form radio again. Failed before the fix: the consumer hung on the
/// first `get_gcc`, nothing was delivered.
#[tokio::test]
async fn failures_are_cached_and_equivalence_comes_back() {
    let s = start(config(), false).await;
    let mut gcc_radio = radio(&s.addr, TEXT).await;
    // The first CC-form message starts a look-up that times out after the directory
    // timeout; the CC-form radio subscribes meanwhile or after (both fall back).
    publish(&s.bus, TEXT_CC, "TEXT cc first").await;
    let mut cc_radio = radio(&s.addr, TEXT_CC).await;
    for i in 0..50 {
        publish(&s.bus, TEXT_CC, &format!("TEXT cc {i}")).await;
    }
    // Every one of them reaches the CC-form radio, in order (the first one may, or may
    // not, have been delivered before the CC-form subscription existed).
    let mut got = Vec::new();
    let deadline = Instant::now() + DIRECTORY_TIMEOUT * 3;
    while got.last().map(String::as_str) != Some("TEXT cc 49") {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = wait_frame(&mut cc_radio, left).await;
        got.push(m.text());
    }
    got.retain(|t| t != "TEXT cc first");
    let expected: Vec<String> = (0..50).map(|i| format!("TEXT cc {i}")).collect();
    assert_eq!(got, expected);
    let calls = s.directory.gcc_calls.load(Ordering::SeqCst);
    assert!(
        calls <= 3,
        "51 messages on one CC topic made {calls} get_gcc calls"
    );

    // The directory answers again: after the backoff, CC form == GCC form once more.
    s.directory.hang.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    loop {
        n += 1;
        let body = format!("TEXT after {n}");
        publish(&s.bus, TEXT_CC, &body).await;
        match gcc_radio.next(Duration::from_millis(500)).await {
            // Messages queued behind a look-up arrive when it succeeds: any will do.
            Next::Frame(f) if f.text().starts_with("TEXT after") => break,
            Next::Frame(f) => panic!("unexpected frame {:?}", f.text()),
            Next::Timeout if Instant::now() < deadline => {}
            other => panic!("no CC-form message reached the GCC-form radio: {other:?}"),
        }
    }
    // And the GCC-form radio still receives GCC-form messages.
    publish(&s.bus, TEXT, "TEXT gcc end").await;
    loop {
        let m = wait_frame(&mut gcc_radio, PROMPT * 3).await;
        if m.text() == "TEXT gcc end" {
            break;
        }
        assert!(m.text().starts_with("TEXT after"), "{:?}", m.text());
    }
}

/// (c) A SUBSCRIBE to a CC-form destination while `get_gcc` hangs gets its answer
/// within the directory timeout (plus a margin), and the session (1.0) stays usable.
/// Failed before the fix: no answer at all (the SUBSCRIBE awaited the directory
/// without a deadline).
#[tokio::test]
async fn cc_subscribe_gets_an_answer_while_get_gcc_hangs() {
    let s = start(config(), false).await;
    let mut c = Conn::open(&s.addr).await;
    c.send_frame("CONNECT", &[], b"").await;
    c.expect("CONNECTED").await;
    c.send_frame(
        "SUBSCRIBE",
        &[("destination", TEXT_CC), ("x-ebu-nofastreply", "yes")],
        b"",
    )
    .await;
    c.send_frame("NOOP", &[("receipt", "after")], b"").await;
    let deadline = Instant::now() + DIRECTORY_TIMEOUT + Duration::from_secs(3);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = wait_frame(&mut c, left).await;
        if f.command == "RECEIPT" && f.get("receipt-id") == Some("after") {
            break;
        }
        // An ERROR is an acceptable answer too; the session stays open after it (1.0).
        assert_eq!(f.command, "ERROR", "{:?}", f.text());
    }
    // A second SUBSCRIBE on the same country is answered too, within the same bound
    // (in backoff it is answered at once: `topic.rs`'s unit tests; a look-up may also
    // have failed before the first SUBSCRIBE, its backoff then being over: CI saw
    // this one wait longer than 3 s).
    c.send_frame(
        "SUBSCRIBE",
        &[
            ("destination", "/topic/fm/de/d001/09580/image"),
            ("x-ebu-nofastreply", "yes"),
            ("receipt", "second"),
        ],
        b"",
    )
    .await;
    let deadline = Instant::now() + DIRECTORY_TIMEOUT + Duration::from_secs(3);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = wait_frame(&mut c, left).await;
        if f.command == "RECEIPT" && f.get("receipt-id") == Some("second") {
            break;
        }
        assert_eq!(f.command, "ERROR", "{:?}", f.text());
    }
    c.sync().await;
}

/// A SEND whose rights need the directory (station 2's channel is CC-form) gets an
/// answer within the directory timeout plus a margin while `get_gcc` hangs, and the
/// 1.0 session stays open. Failed before the fix: no answer (the rights check awaited
/// the directory without a deadline).
#[tokio::test]
async fn send_rights_check_answers_while_get_gcc_hangs() {
    let s = start(config(), false).await;
    let mut c = Conn::open(&s.addr).await;
    c.send_frame(
        "CONNECT",
        &[("login", "2.radio2"), ("passcode", "secret2")],
        b"",
    )
    .await;
    c.expect("CONNECTED").await;
    c.send_frame(
        "SEND",
        &[("destination", "/topic/fm/de/d002/10110/text")],
        b"TEXT hello",
    )
    .await;
    c.send_frame("NOOP", &[("receipt", "after")], b"").await;
    let deadline = Instant::now() + DIRECTORY_TIMEOUT + Duration::from_secs(3);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = wait_frame(&mut c, left).await;
        if f.command == "RECEIPT" && f.get("receipt-id") == Some("after") {
            break;
        }
        assert_eq!(f.command, "ERROR", "{:?}", f.text());
    }
}

/// A hub whose directory hangs on `get_gcc` from the start (start-up normalises the
/// known channels, one of them CC-form) still comes up and serves within the directory
/// timeout. Failed before the fix: start-up awaited `get_gcc` for ever.
#[tokio::test]
async fn hub_serves_when_get_gcc_hangs_from_the_start() {
    let s = start(config(), true).await;
    let mut r = radio(&s.addr, TEXT).await;
    publish(&s.bus, TEXT, "TEXT served").await;
    let m = wait_frame(&mut r, PROMPT).await;
    assert_eq!(m.text(), "TEXT served");
}

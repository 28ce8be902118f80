//! Bad input and faults (docs/protocol.md#limits, the slow consumer included): every limit gets an
//! ERROR that names it and a close, and every other client carries on.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use radiovis::backend::{ChannelDefault, ChannelRef, DirectoryApi, DirectoryError};
use radiovis::stomp::Limits;
use radiovis::HubConfig;
use testkit::harness::*;

const QUIET: Duration = Duration::from_millis(300);
const NOFAST: (&str, &str) = ("x-ebu-nofastreply", "yes");

fn small_limits() -> HubConfig {
    HubConfig {
        limits: Limits {
            max_frame_size: 64 * 1024,
            max_headers: 32,
            max_header_line: 1024,
        },
        ..test_config()
    }
}

/// Writes `total` bytes of body after `head` in chunks, ignoring write errors (the
/// server may close before the end).
async fn flood(c: &mut Conn, head: &[u8], total: usize, fill: u8) {
    if c.try_send_raw(head).await.is_err() {
        return;
    }
    let chunk = vec![fill; 64 * 1024];
    let mut sent = 0;
    while sent < total {
        if c.try_send_raw(&chunk).await.is_err() {
            return;
        }
        sent += chunk.len();
    }
    let _ = c.try_send_raw(b"\0").await;
}

#[tokio::test]
async fn a_10_mib_frame_gets_a_frame_size_error_and_close() {
    let hub = TestHub::with(small_limits(), static_directory()).await;
    let mut b = hub.broadcaster().await;
    let head = encode("SEND", &[("destination", TEXT)], b"");
    let head = &head[..head.len() - 1]; // without the NUL: the body follows
    flood(&mut b, head, 10 * 1024 * 1024, b'x').await;
    let e = b.expect("ERROR").await;
    let m = e.message();
    assert!(m.contains("frame") && m.contains("65536"), "{e:?}");
    b.expect_closed(WAIT).await;
    hub.assert_still_serves(TEXT).await;
}

#[tokio::test]
async fn a_frame_too_large_before_connect_is_refused() {
    let hub = TestHub::with(small_limits(), static_directory()).await;
    let mut c = hub.conn().await;
    flood(&mut c, b"CONNECT\n\n", 1024 * 1024, b'y').await;
    let e = c.expect("ERROR").await;
    assert!(e.message().contains("frame"), "{e:?}");
    c.expect_closed(WAIT).await;
    hub.assert_still_serves(TEXT).await;
}

#[tokio::test]
async fn a_declared_content_length_over_the_limit_is_refused_at_once() {
    let hub = TestHub::with(small_limits(), static_directory()).await;
    let mut b = hub.broadcaster().await;
    b.send_raw(b"SEND\ndestination:/topic/fm/4e1/4001/09580/text\ncontent-length:10485760\n\nTEXT")
        .await;
    let e = b.expect("ERROR").await;
    assert!(e.message().contains("frame"), "{e:?}");
    b.expect_closed(WAIT).await;
}

#[tokio::test]
async fn ten_thousand_headers_get_a_header_count_error() {
    let hub = TestHub::with(small_limits(), static_directory()).await;
    let mut radio = hub.radio().await;
    let mut bytes = b"SUBSCRIBE\ndestination:/topic/fm/4e1/4001/09580/text\n".to_vec();
    for i in 0..10_000 {
        bytes.extend_from_slice(format!("h{i}:v\n").as_bytes());
    }
    bytes.extend_from_slice(b"\n\0");
    let _ = radio.try_send_raw(&bytes).await;
    let e = radio.expect("ERROR").await;
    assert!(e.message().contains("headers"), "{e:?}");
    radio.expect_closed(WAIT).await;
    hub.assert_still_serves(TEXT).await;
}

#[tokio::test]
async fn ten_thousand_headers_get_a_header_count_error_with_default_limits() {
    let hub = TestHub::start().await;
    let mut radio = hub.radio().await;
    let mut bytes = b"SUBSCRIBE\ndestination:/topic/fm/4e1/4001/09580/text\n".to_vec();
    for i in 0..10_000 {
        bytes.extend_from_slice(format!("h{i}:v\n").as_bytes());
    }
    bytes.extend_from_slice(b"\n\0");
    let _ = radio.try_send_raw(&bytes).await;
    let e = radio.expect("ERROR").await;
    assert!(e.message().contains("headers"), "{e:?}");
    radio.expect_closed(WAIT).await;
}

#[tokio::test]
async fn a_header_line_too_long_is_refused() {
    let hub = TestHub::with(small_limits(), static_directory()).await;
    let mut radio = hub.radio().await;
    let long = "a".repeat(4000);
    let _ = radio
        .try_send_raw(&encode("SUBSCRIBE", &[("destination", &long)], b""))
        .await;
    let e = radio.expect("ERROR").await;
    assert!(e.message().contains("header"), "{e:?}");
    radio.expect_closed(WAIT).await;
}

#[tokio::test]
async fn a_command_line_without_end_before_connect_is_refused() {
    let hub = TestHub::with(small_limits(), static_directory()).await;
    let mut c = hub.conn().await;
    let _ = c.try_send_raw(&vec![b'C'; 8000]).await;
    let e = c.expect("ERROR").await;
    assert!(
        e.message().contains("line") || e.message().contains("frame"),
        "{e:?}"
    );
    c.expect_closed(WAIT).await;
}

/// What works today of the limits after CONNECT: the session is closed (with or
/// without its ERROR) and the server carries on.
#[tokio::test]
async fn frames_over_a_limit_after_connect_close_the_session_and_others_carry_on() {
    let hub = TestHub::with(small_limits(), static_directory()).await;
    let mut many_headers = b"SUBSCRIBE\ndestination:/topic/fm/4e1/4001/09580/text\n".to_vec();
    for i in 0..10_000 {
        many_headers.extend_from_slice(format!("h{i}:v\n").as_bytes());
    }
    many_headers.extend_from_slice(b"\n\0");
    let long_line = encode("SUBSCRIBE", &[("destination", &"a".repeat(4000))], b"");
    let cases: [&[u8]; 3] = [
        &many_headers,
        &long_line,
        b"SEND\ndestination:/topic/fm/4e1/4001/09580/text\ncontent-length:10485760\n\nTEXT",
    ];
    for bytes in cases {
        let mut b = hub.broadcaster().await;
        let _ = b.try_send_raw(bytes).await;
        let frames = b.frames_until_closed(WAIT).await;
        assert!(frames.iter().all(|f| f.command == "ERROR"), "{frames:?}");
        hub.assert_still_serves(TEXT).await;
    }
    let mut b = hub.broadcaster().await;
    let head = encode("SEND", &[("destination", TEXT)], b"");
    flood(&mut b, &head[..head.len() - 1], 10 * 1024 * 1024, b'x').await;
    b.expect_closed(WAIT).await;
    hub.assert_still_serves(TEXT).await;
}

#[tokio::test]
async fn no_connect_within_connect_timeout_gets_error_then_close() {
    let config = HubConfig {
        connect_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let hub = TestHub::with(config, static_directory()).await;
    let start = tokio::time::Instant::now();
    let mut silent = hub.conn().await;
    let mut slowloris = hub.conn().await;
    slowloris.send_raw(b"CONNE").await;
    let e = silent.expect("ERROR").await;
    assert!(e.message().contains("connect"), "{e:?}");
    silent.expect_closed(WAIT).await;
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
    let e = slowloris.expect("ERROR").await;
    assert!(e.message().contains("connect"), "{e:?}");
    slowloris.expect_closed(WAIT).await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    // A client that CONNECTs in time is not affected later.
    let mut radio = hub.radio().await;
    radio.expect_silence(Duration::from_millis(500)).await;
    radio.sync().await;
}

#[tokio::test]
async fn max_connections_refuses_the_one_too_many() {
    let config = HubConfig {
        max_connections: 2,
        ..test_config()
    };
    let hub = TestHub::with(config, static_directory()).await;
    let mut a = hub.radio().await;
    let b = hub.radio().await;
    let mut third = hub.conn().await;
    let e = third.expect("ERROR").await;
    assert!(e.message().contains("too many connections"), "{e:?}");
    third.expect_closed(WAIT).await;
    assert!(hub.hub.stats().refused_connections >= 1);
    // The others carry on.
    a.sync().await;
    // A slot frees when a client leaves.
    drop(b);
    let mut ok = false;
    for _ in 0..50 {
        let mut c = hub.conn().await;
        c.send_frame("CONNECT", &[], b"").await;
        let f = c.frame().await;
        if f.command == "CONNECTED" {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "no slot after a client left");
}

#[tokio::test]
async fn max_subscriptions_per_session() {
    let config = HubConfig {
        max_subscriptions: 2,
        ..test_config()
    };
    let hub = TestHub::with(config, static_directory()).await;
    let mut radio = hub.radio().await;
    radio.subscribe(TEXT, Some("1"), &[NOFAST]).await;
    radio
        .subscribe("/topic/fm/4e1/4001/09580/image", Some("2"), &[NOFAST])
        .await;
    // Re-subscribing an existing id is not one more.
    radio.subscribe(TEXT_CC, Some("1"), &[NOFAST]).await;
    radio.expect_silence(Duration::from_millis(50)).await;
    // After an UNSUBSCRIBE there is room again.
    radio.send_frame("UNSUBSCRIBE", &[("id", "2")], b"").await;
    radio
        .subscribe("/topic/dab/4e1/4001/4001/0/text", Some("3"), &[NOFAST])
        .await;
    radio.expect_silence(Duration::from_millis(50)).await;
    let mut b = hub.broadcaster().await;
    b.publish("/topic/dab/4e1/4001/4001/0/text", b"TEXT dab", &[])
        .await;
    assert_eq!(radio.expect("MESSAGE").await.body, b"TEXT dab");
    // One more is over the limit (docs/protocol.md#limits): an ERROR naming it, then the
    // close, whatever the version.
    radio
        .send_frame(
            "SUBSCRIBE",
            &[
                ("destination", "/topic/fm/4e1/4001/09580/image"),
                ("id", "4"),
            ],
            b"",
        )
        .await;
    let e = radio.expect("ERROR").await;
    assert!(e.message().contains("subscriptions"), "{e:?}");
    radio.expect_closed(Duration::from_secs(3)).await;
}

#[tokio::test]
async fn a_slow_consumer_is_disconnected_and_others_get_every_message() {
    let config = HubConfig {
        outbound_queue: 4,
        ..test_config()
    };
    let hub = TestHub::with(config, static_directory()).await;
    let mut slow = hub.radio().await;
    slow.subscribe(TEXT, Some("slow"), &[NOFAST]).await;
    let mut healthy = hub.radio().await;
    healthy.subscribe(TEXT, Some("ok"), &[NOFAST]).await;
    let mut b = hub.broadcaster().await;
    let mut sent = 0;
    // Paced by the healthy radio, so only the slow one's queue can fill.
    for i in 0..200 {
        let mut body = format!("TEXT {i:04} ").into_bytes();
        body.resize(200 * 1024, b'z');
        b.publish(TEXT, &body, &[]).await;
        let m = healthy.expect("MESSAGE").await;
        assert_eq!(m.body, body, "message {i}");
        sent += 1;
        if hub.hub.stats().slow_consumers >= 1 && sent >= 40 {
            break;
        }
    }
    assert!(
        hub.hub.stats().slow_consumers >= 1,
        "no slow consumer after {sent} messages of 200 KB"
    );
    slow.expect_closed(Duration::from_secs(5)).await;
    // The healthy radio keeps receiving.
    b.publish(TEXT, b"TEXT after", &[]).await;
    assert_eq!(healthy.expect("MESSAGE").await.body, b"TEXT after");
    healthy.expect_silence(Duration::from_millis(100)).await;
}

/// Deterministic pseudo-random bytes.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Reads until the server closes or goes quiet.
async fn drain(c: &mut Conn) {
    for _ in 0..200 {
        match c.next(Duration::from_millis(300)).await {
            Next::Frame(_) => {}
            Next::Closed | Next::Timeout => return,
        }
    }
}

#[tokio::test]
async fn garbage_bytes_never_break_the_server() {
    let hub = TestHub::with(small_limits(), static_directory()).await;
    for seed in 1..=8u64 {
        // Before CONNECT.
        let mut c = hub.conn().await;
        let _ = c.try_send_raw(&garbage(seed, 16 * 1024)).await;
        drain(&mut c).await;
        // After CONNECT, 1.0 and 1.2.
        let (mut c, _) = hub.connect(&[]).await;
        let _ = c.try_send_raw(&garbage(seed * 31, 16 * 1024)).await;
        drain(&mut c).await;
        let (mut c, _) = hub.connect(&[("accept-version", "1.2")]).await;
        let _ = c.try_send_raw(&garbage(seed * 77, 16 * 1024)).await;
        drain(&mut c).await;
    }
    hub.assert_still_serves(TEXT).await;
}

#[tokio::test]
async fn malformed_frames_get_an_error_and_the_server_carries_on() {
    let hub = TestHub::with(small_limits(), static_directory()).await;
    let cases: [(&str, &[u8]); 4] = [
        (
            "1.0",
            b"SEND\ndestination:/topic/x/text\ncontent-length:abc\n\nTEXT\0",
        ),
        (
            "1.0",
            b"SEND\ndestination:/topic/x/text\ncontent-length:2\n\nTEXT\0",
        ),
        ("1.2", b"SUBSCRIBE\ndestination:/topic/a\\xb/text\n\n\0"),
        ("1.0", b"SUBSCRIBE\ndestination:\xff\xfe/topic\n\n\0"),
    ];
    for (version, bytes) in cases {
        let (mut c, _) = hub.connect(&[("accept-version", version)]).await;
        c.send_raw(bytes).await;
        drain(&mut c).await;
        hub.assert_still_serves(TEXT).await;
    }
}

#[tokio::test]
async fn an_invalid_content_length_gets_an_error_then_close() {
    let hub = TestHub::start().await;
    let (mut c, _) = hub.connect(&[]).await;
    c.send_raw(b"SEND\ndestination:/topic/x/text\ncontent-length:abc\n\nTEXT\0")
        .await;
    let e = c.expect("ERROR").await;
    assert!(e.message().contains("content-length"), "{e:?}");
    c.expect_closed(WAIT).await;
}

#[tokio::test]
async fn abrupt_disconnects_leave_no_subscriptions_behind() {
    let hub = TestHub::start().await;
    for _ in 0..5 {
        let mut radio = hub.radio().await;
        radio.subscribe(TEXT, Some("x"), &[NOFAST]).await;
        drop(radio);
    }
    let mut gone = false;
    for _ in 0..100 {
        let s = hub.hub.stats();
        if s.subscriptions == 0 && s.connections == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "{:?}", hub.hub.stats());
    hub.assert_still_serves(TEXT).await;
}

// ---------------------------------------------------------------- directory faults

/// [`DIRECTORY`] whose `check_auth` and `get_channels` take `delay`.
struct SlowDirectory {
    inner: Dir,
    delay: Duration,
    calls: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait]
impl DirectoryApi for SlowDirectory {
    async fn check_auth(&self, u: &str, p: &str, ip: IpAddr) -> Result<bool, DirectoryError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(self.delay).await;
        self.inner.check_auth(u, p, ip).await
    }
    async fn get_channels(&self, station_id: &str) -> Result<Vec<String>, DirectoryError> {
        tokio::time::sleep(self.delay).await;
        self.inner.get_channels(station_id).await
    }
    async fn get_gcc(&self, cc: &str) -> Result<Option<String>, DirectoryError> {
        self.inner.get_gcc(cc).await
    }
    async fn get_all_channels(&self) -> Result<Vec<ChannelRef>, DirectoryError> {
        self.inner.get_all_channels().await
    }
    async fn get_all_vis_channels(&self) -> Result<Vec<ChannelRef>, DirectoryError> {
        self.inner.get_all_vis_channels().await
    }
    async fn get_channel_default(
        &self,
        id: &str,
    ) -> Result<Option<ChannelDefault>, DirectoryError> {
        self.inner.get_channel_default(id).await
    }
}

#[tokio::test]
async fn a_directory_that_hangs_is_a_refused_login_within_the_timeout() {
    let config = HubConfig {
        directory_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let dir = SlowDirectory {
        inner: static_directory(),
        delay: Duration::from_secs(30),
        calls: calls.clone(),
    };
    let hub = TestHub::with(config, Arc::new(dir)).await;
    let start = tokio::time::Instant::now();
    let mut c = hub.conn().await;
    c.send_frame("CONNECT", &[("login", LOGIN), ("passcode", PASSCODE)], b"")
        .await;
    let e = c.expect("ERROR").await;
    assert!(e.message().contains("unavailable"), "{e:?}");
    assert!(!String::from_utf8_lossy(&e.raw).contains(PASSCODE));
    c.expect_closed(WAIT).await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    // Radios are not held up.
    let mut radio = hub.radio().await;
    radio.subscribe(TEXT, Some("r"), &[]).await;
}

#[tokio::test]
async fn directory_down_on_send_is_an_error_not_a_hang() {
    let config = HubConfig {
        directory_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let dir = SlowDirectory {
        inner: static_directory(),
        delay: Duration::from_millis(0),
        calls: Arc::default(),
    };
    // Logins are quick; channel lists hang.
    struct HangChannels(SlowDirectory);
    #[async_trait]
    impl DirectoryApi for HangChannels {
        async fn check_auth(&self, u: &str, p: &str, ip: IpAddr) -> Result<bool, DirectoryError> {
            self.0.check_auth(u, p, ip).await
        }
        async fn get_channels(&self, _: &str) -> Result<Vec<String>, DirectoryError> {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(vec![])
        }
        async fn get_gcc(&self, cc: &str) -> Result<Option<String>, DirectoryError> {
            self.0.get_gcc(cc).await
        }
        async fn get_all_channels(&self) -> Result<Vec<ChannelRef>, DirectoryError> {
            self.0.get_all_channels().await
        }
        async fn get_all_vis_channels(&self) -> Result<Vec<ChannelRef>, DirectoryError> {
            self.0.get_all_vis_channels().await
        }
        async fn get_channel_default(
            &self,
            id: &str,
        ) -> Result<Option<ChannelDefault>, DirectoryError> {
            self.0.get_channel_default(id).await
        }
    }
    let hub = TestHub::with(config, Arc::new(HangChannels(dir))).await;
    let mut b = hub.broadcaster().await;
    b.send_frame("SEND", &[("destination", TEXT)], b"TEXT x")
        .await;
    let e = b.expect("ERROR").await;
    assert!(e.message().contains("directory"), "{e:?}");
    b.expect_silence(QUIET).await;
}

// ---------------------------------------------------------------- shutdown

#[tokio::test]
async fn graceful_shutdown_closes_clients_and_run_returns_within_grace() {
    let mut hub = TestHub::start().await;
    let mut radio = hub.radio().await;
    radio.subscribe(TEXT, Some("s"), &[NOFAST]).await;
    let mut radio12 = hub.radio12().await;
    let mut pre_connect = hub.conn().await;
    let start = tokio::time::Instant::now();
    hub.shutdown(Duration::from_secs(3))
        .await
        .expect("run returns Ok");
    assert!(
        start.elapsed() <= Duration::from_millis(1500),
        "run took {:?} with shutdown_grace 1 s",
        start.elapsed()
    );
    radio.expect_closed(WAIT).await;
    radio12.expect_closed(WAIT).await;
    pre_connect.expect_closed(WAIT).await;
    // The listener is gone: new connections fail or are closed at once.
    if let Ok(Ok(s)) = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(&hub.addr)).await {
        let mut s = s;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = s.write_all(b"CONNECT\n\n\0").await;
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(WAIT, s.read(&mut buf)).await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "a connection after shutdown was served: {r:?}"
        );
    }
}

#[tokio::test]
async fn shutdown_with_a_blocked_slow_reader_still_returns_within_grace() {
    let config = HubConfig {
        outbound_queue: 100_000,
        ..test_config()
    };
    let mut hub = TestHub::with(config, static_directory()).await;
    let mut stuck = hub.radio().await;
    stuck.subscribe(TEXT, Some("s"), &[NOFAST]).await;
    let mut b = hub.broadcaster().await;
    let body = vec![b'q'; 200 * 1024];
    for _ in 0..40 {
        b.publish(TEXT, &body, &[]).await;
    }
    let start = tokio::time::Instant::now();
    hub.shutdown(Duration::from_secs(4))
        .await
        .expect("run returns Ok");
    assert!(
        start.elapsed() <= Duration::from_millis(2500),
        "run took {:?} with shutdown_grace 1 s",
        start.elapsed()
    );
    stuck.expect_closed(Duration::from_secs(5)).await;
}

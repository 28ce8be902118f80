//! STOMP 1.1/1.2 heart-beats and header escaping per session version, over real
//! sockets (docs/protocol.md#heart-beats, #escaping).

use std::time::Duration;

use testkit::harness::*;

// ---------------------------------------------------------------- heart-beats

fn heartbeat_config() -> radiovis::HubConfig {
    radiovis::HubConfig {
        heartbeat: (Duration::from_millis(500), Duration::from_millis(500)),
        ..test_config()
    }
}

#[tokio::test]
async fn server_sends_heartbeats_when_asked() {
    let hub = TestHub::with(heartbeat_config(), static_directory()).await;
    let (mut c, f) = hub
        .connect(&[("accept-version", "1.2"), ("heart-beat", "0,500")])
        .await;
    assert_eq!(f.get("heart-beat"), Some("500,500"));
    c.wait_heartbeats(2, Duration::from_millis(2500)).await;
}

#[tokio::test]
async fn no_heartbeats_without_negotiation() {
    let hub = TestHub::with(heartbeat_config(), static_directory()).await;
    let (mut c, _) = hub.connect(&[("accept-version", "1.2")]).await;
    c.expect_silence(Duration::from_millis(1200)).await;
    assert_eq!(c.heartbeats, 0);
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_interval_plus_grace() {
    let hub = TestHub::with(heartbeat_config(), static_directory()).await;
    let (mut c, _) = hub
        .connect(&[("accept-version", "1.2"), ("heart-beat", "300,0")])
        .await;
    let start = tokio::time::Instant::now();
    c.expect_closed(Duration::from_secs(3)).await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(450),
        "dropped too early: {took:?}"
    );
}

#[tokio::test]
async fn a_client_sending_heartbeats_is_kept() {
    let hub = TestHub::with(heartbeat_config(), static_directory()).await;
    let (mut c, _) = hub
        .connect(&[("accept-version", "1.2"), ("heart-beat", "300,0")])
        .await;
    for _ in 0..10 {
        c.send_raw(b"\n").await;
        c.expect_silence(Duration::from_millis(200)).await;
    }
    c.sync().await;
}

#[tokio::test]
async fn header_escaping_follows_each_session_version() {
    let hub = TestHub::start().await;
    let mut r10 = hub.radio().await;
    r10.subscribe(TEXT, Some("a"), &[("x-ebu-nofastreply", "yes")])
        .await;
    let mut r12 = hub.radio12().await;
    r12.subscribe(TEXT, Some("b"), &[("x-ebu-nofastreply", "yes")])
        .await;
    let mut b12 = hub.broadcaster12().await;
    // 1.2 escapes: `\c` is `:`, `\\` is `\`.
    b12.send_raw(b"SEND\ndestination:/topic/fm/4e1/4001/09580/text\nlink:https\\c//r1.example/a\\\\b\nreceipt:e\n\nTEXT esc\0")
        .await;
    assert_eq!(b12.expect("RECEIPT").await.get("receipt-id"), Some("e"));
    let m = r10.expect("MESSAGE").await;
    assert_eq!(m.get("link"), Some("https://r1.example/a\\b"), "{m:?}");
    let m = r12.expect("MESSAGE").await;
    // The raw parser splits at the first `:`; a 1.2 peer sees the escaped form.
    assert_eq!(m.get("link"), Some("https\\c//r1.example/a\\\\b"), "{m:?}");
}

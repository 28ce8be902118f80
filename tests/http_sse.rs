//! Server-sent events over real sockets (docs/protocol.md#server-sent-events): the
//! replay of text and image first, live events published over TCP STOMP, `id:`
//! lines and `Last-Event-ID`, keep-alive comments, bad paths, and a browser that
//! never reads (dropped as a slow consumer, not buffered without bound).

use std::time::Duration;

use radiovis::http::HttpConfig;
use testkit::harness::*;
use testkit::web::{get, serve_http, SseClient};

const PATH: &str = "/radiodns/push/1.0/fm/4e1/4001/09580";
const IMAGE: &str = "/topic/fm/4e1/4001/09580/image";

#[tokio::test]
async fn replays_then_live_events_with_resumable_ids() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT first", &[("message-id", "t-1")])
        .await;
    b.publish(
        IMAGE,
        b"SHOW https://example.org/a.png",
        &[("message-id", "i-1"), ("link", "https://example.org/")],
    )
    .await;

    let mut sse = SseClient::open(&http, PATH, None).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    let e = sse.event(WAIT).await;
    assert_eq!(e.event, "text");
    assert_eq!(e.data["body"], "first");
    assert_eq!(e.data["id"], "t-1");
    let e = sse.event(WAIT).await;
    assert_eq!(e.event, "image");
    assert_eq!(e.data["src"], "https://example.org/a.png");
    assert_eq!(e.data["link"], "https://example.org/");
    assert_eq!(e.id, "t-1|i-1");

    b.publish(TEXT, b"TEXT live", &[("message-id", "t-2")])
        .await;
    let e = sse.event(WAIT).await;
    assert_eq!(
        (e.event.as_str(), e.data["body"].as_str()),
        ("text", Some("live"))
    );
    assert_eq!(e.id, "t-2|i-1");

    // Resuming with the last id: nothing replayed the client has seen.
    drop(sse);
    let mut resumed = SseClient::open(&http, PATH, Some("t-2|i-1")).await;
    resumed.expect_no_event(Duration::from_millis(400)).await;
    b.publish(
        IMAGE,
        b"SHOW https://example.org/b.png",
        &[("message-id", "i-2")],
    )
    .await;
    let e = resumed.event(WAIT).await;
    assert_eq!(e.data["src"], "https://example.org/b.png");
    assert_eq!(e.id, "t-2|i-2");

    // With an old id, the newer image is replayed, the text the client has is not.
    let mut stale = SseClient::open(&http, PATH, Some("t-2|i-1")).await;
    let e = stale.event(WAIT).await;
    assert_eq!(e.event, "image");
    assert_eq!(e.data["id"], "i-2");
    stale.expect_no_event(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn cc_form_paths_and_keep_alive_comments() {
    let hub = TestHub::start().await;
    let http = serve_http(
        &hub,
        HttpConfig {
            sse_keepalive: Duration::from_millis(200),
            ..HttpConfig::default()
        },
    )
    .await;
    let mut sse = SseClient::open(&http, "/radiodns/push/1.0/fm/ch/4001/09580", None).await;
    sse.expect_comments(2, WAIT).await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT to the CC form", &[]).await;
    let e = sse.event(WAIT).await;
    assert_eq!(e.data["body"], "to the CC form");
}

#[tokio::test]
async fn a_bad_service_path_is_a_json_400() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    let r = get(&http, "/radiodns/push/1.0/fm/nothex/1/2", WAIT).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.json()["error"].as_str().is_some());
}

#[tokio::test]
async fn a_browser_that_never_reads_is_dropped() {
    let config = radiovis::HubConfig {
        outbound_queue: 4,
        ..test_config()
    };
    let hub = TestHub::with(config, static_directory()).await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    // Opens the stream and reads nothing more.
    let stalled = SseClient::open(&http, PATH, None).await;
    let mut radio = hub.radio().await;
    radio
        .subscribe(TEXT, Some("r"), &[("x-ebu-nofastreply", "yes")])
        .await;
    let mut b = hub.broadcaster().await;
    let big = format!("TEXT {}", "x".repeat(512 * 1024));
    let mut sent = 0;
    while hub.hub.stats().slow_consumers == 0 {
        assert!(sent < 200, "never dropped after {sent} messages");
        b.publish(TEXT, big.as_bytes(), &[]).await;
        sent += 1;
        // The radio that reads keeps up.
        let m = radio.expect("MESSAGE").await;
        assert_eq!(m.body.len(), big.len());
    }
    // The stalled connection is closed by the server; the hub goes on serving.
    stalled.expect_closed(WAIT).await;
    hub.assert_still_serves(TEXT).await;
}

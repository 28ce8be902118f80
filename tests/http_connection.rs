//! The HTTP listener's own connection handling over raw TCP sockets
//! (docs/protocol.md#http-listener): keep-alive and pipelining with content-length
//! framing, the handover to hyper at the first request with a body, HTTP/1.0 and
//! `Connection: close`, HEAD, refused heads (431, 400), event streams chunked on
//! HTTP/1.1 and close-delimited on HTTP/1.0, and a held long-poll released when its
//! client leaves. Requests are written as bytes and answers read as bytes.

use std::time::Duration;

use base64::Engine as _;
use radiovis::http::HttpConfig;
use radiovis::HubConfig;
use testkit::harness::*;
use testkit::web::{serve_http, HttpResponse, RawHttp};
use tokio::io::AsyncReadExt;

const SSE_PATH: &str = "/radiodns/push/1.0/fm/4e1/4001/09580";
const CHANNEL: &str = "/topic/fm/4e1/4001/09580/";

fn poll_target() -> String {
    format!("/radiodns/vis/vis.json?topic={}", TEXT.replace('/', "%2F"))
}

fn held_polls() -> HttpConfig {
    HttpConfig {
        poll_hold: Duration::from_secs(10),
        ..HttpConfig::default()
    }
}

fn get(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: radiovis.test\r\n\r\n")
}

fn assert_healthz(r: &HttpResponse) {
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["status"], "alive", "{r:?}");
    assert_eq!(r.header("connection"), None, "kept alive: {r:?}");
}

/// Waits until the hub holds `n` subscriptions.
async fn wait_subscriptions(hub: &TestHub, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while hub.hub.stats().subscriptions != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscriptions: {} (want {n})",
            hub.hub.stats().subscriptions
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn two_requests_on_one_keep_alive_connection() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, held_polls()).await;
    let mut c = RawHttp::connect(&http).await;
    c.send(get("/healthz").as_bytes()).await;
    assert_healthz(&c.response(false).await);

    // The same socket: a long-poll, held, then answered by a message over STOMP.
    c.send(get(&poll_target()).as_bytes()).await;
    wait_subscriptions(&hub, 1).await;
    c.expect_quiet(Duration::from_millis(200)).await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT on a kept connection", &[]).await;
    let r = c.response(false).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["body"], "TEXT on a kept connection");
    // Nothing after the body: content-length was exact, the connection stays open.
    c.expect_quiet(Duration::from_millis(300)).await;
    c.send(get("/healthz").as_bytes()).await;
    assert_healthz(&c.response(false).await);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, held_polls()).await;
    let mut c = RawHttp::connect(&http).await;
    c.send(format!("{}{}", get("/healthz"), get("/no/such/thing")).as_bytes())
        .await;
    assert_healthz(&c.response(false).await);
    let r = c.response(false).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.json()["error"], "not found");

    // Behind a held long-poll: the next requests wait for its answer, in order.
    c.send(format!("{}{}{}", get(&poll_target()), get("/healthz"), get("/nope")).as_bytes())
        .await;
    wait_subscriptions(&hub, 1).await;
    c.expect_quiet(Duration::from_millis(300)).await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT pipelined", &[]).await;
    let r = c.response(false).await;
    assert_eq!(r.json()["body"], "TEXT pipelined", "{r:?}");
    assert_healthz(&c.response(false).await);
    assert_eq!(c.response(false).await.status, 404);
    c.expect_quiet(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_post_with_a_body_after_a_get_is_served_on_the_same_connection() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    let mut radio = hub.radio().await;
    radio
        .subscribe(TEXT, Some("text"), &[("x-ebu-nofastreply", "yes")])
        .await;
    radio.sync().await;

    let mut c = RawHttp::connect(&http).await;
    c.send(get("/healthz").as_bytes()).await;
    assert_healthz(&c.response(false).await);

    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{LOGIN}:{PASSCODE}"));
    let body = format!("topic={CHANNEL}&text=handed+over");
    let post = format!(
        "POST /publish HTTP/1.1\r\nHost: radiovis.test\r\nAuthorization: Basic {auth}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // The POST and a GET behind it in one write: both reach hyper.
    c.send(format!("{post}{}", get("/no/such/thing")).as_bytes())
        .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 200, "{r:?} {}", String::from_utf8_lossy(&r.body));
    let published = r.json()["published"].clone();
    assert_eq!(published[0]["topic"], TEXT, "{published}");
    let m = radio.expect("MESSAGE").await;
    assert_eq!(m.text(), "TEXT handed over");

    let r = c.response(false).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.json()["error"], "not found");
    // An unknown path with a body: hyper reads it, the router says 404.
    c.send(b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.json()["error"], "not found");
}

#[tokio::test]
async fn an_http_1_0_request_is_answered_then_the_connection_closed() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    let mut c = RawHttp::connect(&http).await;
    c.send(b"GET /healthz HTTP/1.0\r\n\r\n").await;
    let r = c.response(false).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.json()["status"], "alive");
    assert!(c.until_closed().await.is_empty(), "bytes after the body");

    // With keep-alive asked for, HTTP/1.0 keeps the connection.
    let mut c = RawHttp::connect(&http).await;
    c.send(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let r = c.response(false).await;
    assert_eq!(r.header("connection"), Some("keep-alive"), "{r:?}");
    c.send(b"GET /healthz HTTP/1.0\r\n\r\n").await;
    assert_eq!(c.response(false).await.status, 200);
    assert!(c.until_closed().await.is_empty());
}

#[tokio::test]
async fn connection_close_on_http_1_1_closes_after_the_answer() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    let mut c = RawHttp::connect(&http).await;
    // Requests behind it (more than one read of the server) are never answered,
    // and the close is a clean one: what was left unread does not reset it.
    c.send(
        format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n{}",
            get("/nope").repeat(600)
        )
        .as_bytes(),
    )
    .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("connection"), Some("close"));
    let rest = c.until_closed().await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}

#[tokio::test]
async fn a_head_answer_has_a_length_and_no_body() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    let mut c = RawHttp::connect(&http).await;
    c.send(b"HEAD /no/such/thing HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let r = c.response(true).await;
    assert_eq!(r.status, 404, "{r:?}");
    let length: usize = r
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .expect("content-length");
    assert!(length > 0, "the length of the body a GET would get: {r:?}");
    c.expect_quiet(Duration::from_millis(300)).await;
    // HEAD of a path that answers GET: the GET answer's head (200), no body.
    c.send(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let r = c.response(true).await;
    assert_eq!(r.status, 200, "HEAD is answered as GET: {r:?}");
    assert!(r.header("content-length").is_some(), "{r:?}");
    c.expect_quiet(Duration::from_millis(300)).await;
    // The next answer starts right after the head.
    c.send(get("/healthz").as_bytes()).await;
    assert_healthz(&c.response(false).await);
}

#[tokio::test]
async fn a_head_over_16_kib_is_a_431_then_close() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    let mut c = RawHttp::connect(&http).await;
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    c.send(big.as_bytes()).await;
    let r = c.response(false).await;
    assert_eq!(r.status, 431, "{r:?}");
    assert_eq!(r.header("connection"), Some("close"));
    c.until_closed().await;

    // Under the limit, a big head is fine.
    let mut c = RawHttp::connect(&http).await;
    let fits = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(12 * 1024)
    );
    c.send(fits.as_bytes()).await;
    assert_healthz(&c.response(false).await);
}

#[tokio::test]
async fn a_malformed_request_line_is_a_400_then_close() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    for bad in [
        &b"THIS IS NOT HTTP\r\n\r\n"[..],
        b"GET /healthz HTTP/1.1\r\nNo colon here\r\n\r\n",
    ] {
        let mut c = RawHttp::connect(&http).await;
        c.send(bad).await;
        let r = c.response(false).await;
        assert_eq!(r.status, 400, "{:?}: {r:?}", String::from_utf8_lossy(bad));
        assert_eq!(r.header("connection"), Some("close"));
        c.until_closed().await;
    }
    // A malformed request behind a good one: the good one is answered first.
    let mut c = RawHttp::connect(&http).await;
    c.send(format!("{}BAD\0REQUEST\r\n\r\n", get("/healthz")).as_bytes())
        .await;
    assert_healthz(&c.response(false).await);
    assert_eq!(c.response(false).await.status, 400);
    c.until_closed().await;
}

#[tokio::test]
async fn an_event_stream_is_chunked_on_http_1_1() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    let mut c = RawHttp::connect(&http).await;
    c.send(get(SSE_PATH).as_bytes()).await;
    let r = c.head().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{r:?}");
    assert_eq!(r.header("content-length"), None);
    // The connection ends with the stream (docs/protocol.md#http-listener).
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    wait_subscriptions(&hub, 2).await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT chunked", &[]).await;
    let mut text = String::new();
    while !text.contains("\n\n") || !text.contains("event: text") {
        let chunk = c.chunk().await;
        assert!(!chunk.is_empty(), "the last chunk: the stream ended");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let event = &text[text.find("event: text").expect("event")..];
    assert!(event.contains("\"body\":\"chunked\""), "{event:?}");
}

#[tokio::test]
async fn an_event_stream_is_close_delimited_on_http_1_0() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    let mut c = RawHttp::connect(&http).await;
    c.send(format!("GET {SSE_PATH} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").as_bytes())
        .await;
    let r = c.head().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("transfer-encoding"), None, "{r:?}");
    assert_eq!(r.header("content-length"), None, "{r:?}");
    // Its end is the connection's, whatever the client asked.
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    wait_subscriptions(&hub, 2).await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT raw", &[]).await;
    let text = c.read_until_contains("\"body\":\"raw\"").await;
    // Raw event text: it starts with the stream's first comment, no chunk sizes.
    assert!(text.starts_with(": radiovis\n"), "{text:?}");
    assert!(text.contains("event: text\n"), "{text:?}");
    assert!(!text.contains("\r\n"), "chunk framing in {text:?}");
}

#[tokio::test]
async fn a_held_poll_whose_client_closed_is_released_with_its_connection() {
    let config = HubConfig {
        max_connections_per_address: 1,
        ..test_config()
    };
    let hub = TestHub::with(config, static_directory()).await;
    let http = serve_http(&hub, held_polls()).await;
    let mut held = RawHttp::connect(&http).await;
    held.send(get(&poll_target()).as_bytes()).await;
    wait_subscriptions(&hub, 1).await;
    // The held poll has the address's only place: another connection is refused.
    let mut other = RawHttp::connect(&http).await;
    other.send(get("/healthz").as_bytes()).await;
    let mut refused = Vec::new();
    let _ = tokio::time::timeout(WAIT, other.reader.read_to_end(&mut refused))
        .await
        .expect("refused connection closed");
    assert!(
        refused.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&refused)
    );

    drop(held);
    // Released long before the 10 s hold: its subscription and its place.
    wait_subscriptions(&hub, 0).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut c = RawHttp::connect(&http).await;
        c.send(get("/healthz").as_bytes()).await;
        let mut first = [0u8; 1];
        if let Ok(Ok(1)) = tokio::time::timeout(WAIT, c.reader.read(&mut first)).await {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the held poll's place was never given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A long-poll client on a keep-alive connection keeps its subscriptions between its
/// polls (docs/protocol.md#http-long-poll): what is published between an answer and
/// the next poll is answered at once (the newest of it), the next poll with the id it
/// got is held until a newer message, and only a poll for other topics, or the end of
/// the connection, gives the subscriptions up.
#[tokio::test]
async fn a_keep_alive_poller_keeps_its_subscription_between_polls() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, held_polls()).await;
    let mut b = hub.broadcaster().await;
    let mut c = RawHttp::connect(&http).await;
    c.send(get(&poll_target()).as_bytes()).await;
    wait_subscriptions(&hub, 1).await;
    b.publish(TEXT, b"TEXT one", &[("message-id", "m-1")]).await;
    let r = c.response(false).await;
    assert_eq!(r.json()["body"], "TEXT one", "{r:?}");
    // Answered, and still subscribed while the client has no request out.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hub.hub.stats().subscriptions, 1, "subscription given up");

    // Two messages between the polls: the newest is answered at once.
    b.publish(TEXT, b"TEXT two", &[("message-id", "m-2")]).await;
    b.publish(TEXT, b"TEXT three", &[("message-id", "m-3")])
        .await;
    c.send(get(&format!("{}&last_id=m-1", poll_target())).as_bytes())
        .await;
    let r = c.response(false).await;
    assert_eq!(r.json()["body"], "TEXT three", "{r:?}");
    assert_eq!(r.json()["headers"]["RadioVIS-Message-ID"], "m-3");

    // The client has the newest: held, then answered by the next one.
    c.send(get(&format!("{}&last_id=m-3", poll_target())).as_bytes())
        .await;
    c.expect_quiet(Duration::from_millis(300)).await;
    b.publish(TEXT, b"TEXT four", &[("message-id", "m-4")])
        .await;
    let r = c.response(false).await;
    assert_eq!(r.json()["body"], "TEXT four", "{r:?}");

    // A stale id gets the newest at once, as on a new connection.
    c.send(get(&format!("{}&last_id=m-1", poll_target())).as_bytes())
        .await;
    assert_eq!(c.response(false).await.json()["body"], "TEXT four");

    // Other topics: the old subscription is given up for the new one.
    let image = TEXT.replace("/text", "/image");
    let target = format!("/radiodns/vis/vis.json?topic={}", image.replace('/', "%2F"));
    c.send(get(&target).as_bytes()).await;
    c.expect_quiet(Duration::from_millis(300)).await;
    assert_eq!(hub.hub.stats().subscriptions, 1);
    b.publish(TEXT, b"TEXT not for this poll", &[]).await;
    c.expect_quiet(Duration::from_millis(300)).await;
    b.publish(&image, b"SHOW https://example.org/a.png", &[])
        .await;
    let r = c.response(false).await;
    assert_eq!(r.json()["body"], "SHOW https://example.org/a.png", "{r:?}");

    drop(c);
    wait_subscriptions(&hub, 0).await;
}

/// An event stream after a long-poll on the same connection: the stream is the
/// connection's last answer, and the poll's subscription is given up for it.
#[tokio::test]
async fn an_event_stream_after_a_poll_on_one_connection_replaces_its_subscription() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, held_polls()).await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT already there", &[]).await;
    let mut c = RawHttp::connect(&http).await;
    c.send(get(&poll_target()).as_bytes()).await;
    assert_eq!(c.response(false).await.json()["body"], "TEXT already there");
    wait_subscriptions(&hub, 1).await;
    c.send(get(SSE_PATH).as_bytes()).await;
    let head = c.head().await;
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    // The stream's text and image, not the poll's text besides.
    wait_subscriptions(&hub, 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hub.hub.stats().subscriptions, 2);
}

/// A long-poll is answered the same however it is asked: on the fast path (a `GET`
/// of the path and query) and through a whole request (an absolute-form target, a
/// `HEAD`), with its parameter names percent-encoded, on HTTP/1.1 and HTTP/1.0.
#[tokio::test]
async fn a_long_poll_is_answered_alike_however_it_is_asked() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, held_polls()).await;
    let mut b = hub.broadcaster().await;
    b.publish(
        TEXT,
        b"TEXT asked alike",
        &[("link", "https://example.org/")],
    )
    .await;
    let without_date = |r: &HttpResponse| -> Vec<(String, String)> {
        let mut headers: Vec<_> = r
            .headers
            .iter()
            .filter(|(k, _)| k != "date")
            .cloned()
            .collect();
        headers.sort();
        headers
    };
    let mut c = RawHttp::connect(&http).await;
    c.send(get(&poll_target()).as_bytes()).await;
    let first = c.response(false).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.json()["body"], "TEXT asked alike", "{first:?}");
    assert_eq!(first.header("radiovis-destination"), Some(TEXT));
    assert!(first.header("radiovis-message-id").is_some(), "{first:?}");
    assert!(first.header("date").is_some(), "{first:?}");

    let absolute = format!("http://radiovis.test{}", poll_target());
    let encoded_name = poll_target().replace("?topic=", "?%74opic=");
    for request in [get(&absolute), get(&encoded_name)] {
        c.send(request.as_bytes()).await;
        let r = c.response(false).await;
        assert_eq!(r.body, first.body, "{request}: {r:?}");
        assert_eq!(without_date(&r), without_date(&first), "{request}");
    }
    c.send(format!("HEAD {} HTTP/1.1\r\nHost: x\r\n\r\n", poll_target()).as_bytes())
        .await;
    let head = c.response(true).await;
    assert_eq!(without_date(&head), without_date(&first), "HEAD");
    c.expect_quiet(Duration::from_millis(300)).await;

    c.send(
        format!(
            "GET {} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            poll_target()
        )
        .as_bytes(),
    )
    .await;
    let old = c.response(false).await;
    assert_eq!(old.body, first.body, "{old:?}");
    assert_eq!(old.header("connection"), Some("keep-alive"), "{old:?}");
    // Without keep-alive, HTTP/1.0 closes after the answer.
    c.send(format!("GET {} HTTP/1.0\r\n\r\n", poll_target()).as_bytes())
        .await;
    let last = c.response(false).await;
    assert_eq!(last.body, first.body, "{last:?}");
    assert_eq!(last.header("connection"), Some("close"), "{last:?}");
    assert!(c.until_closed().await.is_empty());
}

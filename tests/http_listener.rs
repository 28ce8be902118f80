//! The HTTP listener over real sockets (docs/protocol.md#http-listener): JSON 404 for
//! unknown paths, CORS preflight, connection limits shared with STOMP, graceful
//! shutdown.

use std::time::Duration;

use radiovis::http::HttpConfig;
use testkit::harness::*;
use testkit::web::{get, request, serve_http};

#[tokio::test]
async fn an_unknown_path_is_a_json_404() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    let r = get(&http, "/no/such/thing", WAIT).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["error"], "not found");
}

#[tokio::test]
async fn a_preflight_allows_any_origin() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    let r = request(
        &http,
        "OPTIONS",
        "/radiodns/vis/vis.json",
        &[
            ("Origin", "http://example.org"),
            ("Access-Control-Request-Method", "GET"),
        ],
        WAIT,
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r
        .header("access-control-allow-methods")
        .is_some_and(|m| m.contains("GET")));
}

#[tokio::test]
async fn http_connections_count_against_the_per_address_limit() {
    let config = radiovis::HubConfig {
        max_connections_per_address: 1,
        ..test_config()
    };
    let hub = TestHub::with(config, static_directory()).await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    let radio = hub.radio().await;
    // The radio holds the address's one place: the HTTP connection is closed unanswered.
    let mut s = tokio::net::TcpStream::connect(&http)
        .await
        .expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("closed in time");
    assert!(n.is_err() || buf.is_empty(), "answered: {buf:?}");
    assert!(hub.hub.stats().refused_connections >= 1);
    // Once the radio has gone, HTTP is served again.
    drop(radio);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut s = tokio::net::TcpStream::connect(&http)
            .await
            .expect("connect");
        let _ = s
            .write_all(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await;
        if buf.starts_with(b"HTTP/1.1 404") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections() {
    let mut hub = TestHub::start().await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(&http)
        .await
        .expect("connect");
    s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut first = [0u8; 12];
    s.read_exact(&mut first).await.expect("answer");
    assert_eq!(&first, b"HTTP/1.1 404");
    hub.shutdown(WAIT).await.expect("shutdown");
    // The kept-alive connection is closed by the server, not left open.
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .expect("closed after shutdown")
        .expect("read");
}

/// At a shutdown, a held long-poll is answered "poll again" (an empty 200) and an
/// event stream ends: their clients get a clean end, not a reset
/// (docs/protocol.md#http-long-poll).
#[tokio::test]
async fn shutdown_answers_a_held_poll_and_ends_an_event_stream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut hub = TestHub::start().await;
    let config = HttpConfig {
        poll_hold: Duration::from_secs(20),
        ..HttpConfig::default()
    };
    let http = serve_http(&hub, config).await;
    let mut poll = tokio::net::TcpStream::connect(&http)
        .await
        .expect("connect");
    let target = format!("/radiodns/vis/vis.json?topic={}", TEXT.replace('/', "%2F"));
    poll.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let sse =
        testkit::web::SseClient::open(&http, "/radiodns/push/1.0/fm/4e1/4001/09580", None).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while hub.hub.stats().subscriptions < 3 {
        assert!(tokio::time::Instant::now() < deadline, "not held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let read_poll = async {
        let mut answer = Vec::new();
        tokio::time::timeout(WAIT, poll.read_to_end(&mut answer))
            .await
            .expect("answered and closed")
            .expect("read");
        String::from_utf8_lossy(&answer).into_owned()
    };
    let (answer, stopped) = tokio::join!(read_poll, hub.shutdown(WAIT));
    stopped.expect("shutdown");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(
        answer.to_ascii_lowercase().contains("content-length: 0"),
        "poll again is an empty 200: {answer:?}"
    );
    sse.expect_closed(WAIT).await;
}

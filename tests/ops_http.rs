//! The operations endpoints over real sockets (docs/protocol.md#operations): the
//! metrics move with real STOMP traffic, a slide published with `curl` over HTTP
//! reaches a STOMP radio, HTTP publish refuses as STOMP does (bad credentials,
//! rights, throttling, shared with STOMP CONNECT), and the status page's live events
//! carry a slide published after they started.

use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use testkit::harness::{static_directory, test_config, TestHub, LOGIN, PASSCODE, TEXT};
use testkit::ops::{curl, curl_installed, metric};
use testkit::web::{get, serve_http};

const WAIT: Duration = Duration::from_secs(5);
const CHANNEL: &str = "/topic/fm/4e1/4001/09580/";
const IMAGE: &str = "/topic/fm/4e1/4001/09580/image";

async fn scrape(http: &str) -> String {
    let r = get(http, "/metrics", WAIT).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.headers
    );
    String::from_utf8(r.body).expect("metrics are text")
}

fn value(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[tokio::test]
async fn metrics_move_with_stomp_traffic() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, Default::default()).await;
    let before = scrape(&http).await;
    assert_eq!(
        value(&before, "radiovis_connections{transport=\"stomp\"}"),
        0.0
    );
    assert_eq!(value(&before, "radiovis_listeners"), 1.0);

    let mut radio = hub.radio().await;
    radio
        .subscribe(TEXT, Some("s1"), &[("x-ebu-nofastreply", "yes")])
        .await;
    radio.sync().await;
    let mut broadcaster = hub.broadcaster().await;
    broadcaster.publish(TEXT, b"TEXT counted", &[]).await;
    let m = radio.expect("MESSAGE").await;
    assert_eq!(m.body, b"TEXT counted");
    // A second radio gets the slide as its replay.
    let mut late = hub.radio().await;
    late.subscribe(TEXT, Some("s2"), &[]).await;
    assert_eq!(late.expect("MESSAGE").await.body, b"TEXT counted");

    let after = scrape(&http).await;
    let delta = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(
        value(&after, "radiovis_connections{transport=\"stomp\"}"),
        3.0
    );
    assert_eq!(
        delta("radiovis_connections_accepted_total{transport=\"stomp\"}"),
        3.0
    );
    assert_eq!(value(&after, "radiovis_subscriptions"), 2.0);
    assert_eq!(
        delta("radiovis_messages_published_total{transport=\"stomp\"}"),
        1.0
    );
    assert_eq!(delta("radiovis_bus_messages_received_total"), 1.0);
    assert_eq!(delta("radiovis_deliveries_total"), 1.0);
    assert_eq!(delta("radiovis_replays_total"), 1.0);
    assert_eq!(delta("radiovis_logins_total{result=\"success\"}"), 1.0);
    assert_eq!(value(&after, "radiovis_bus_connected"), 1.0);

    drop((radio, late, broadcaster));
    // Closed connections leave the gauge.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = scrape(&http).await;
        if value(&now, "radiovis_connections{transport=\"stomp\"}") == 0.0 {
            assert_eq!(value(&now, "radiovis_subscriptions"), 0.0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections stay open:\n{now}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn health_answers() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, Default::default()).await;
    let live = get(&http, "/healthz", WAIT).await;
    assert_eq!(live.status, 200);
    assert_eq!(live.json()["status"], "alive");
    let ready = get(&http, "/readyz", WAIT).await;
    assert_eq!(
        ready.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&ready.body)
    );
    let body = ready.json();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["bus"], "connected");
    assert_eq!(body["checks"]["listening"], true);
    // No admin credentials configured: no admin page at all.
    assert_eq!(get(&http, "/admin", WAIT).await.status, 404);
    let status = get(&http, "/status.json", WAIT).await;
    assert_eq!(status.status, 200);
    assert_eq!(status.json()["bus"]["state"], "connected");
}

#[tokio::test]
async fn a_slide_published_with_curl_reaches_a_stomp_radio() {
    if !curl_installed().await {
        testkit::services::skip(
            "a_slide_published_with_curl_reaches_a_stomp_radio",
            "curl is not installed",
        );
        return;
    }
    let hub = TestHub::start().await;
    let http = serve_http(&hub, Default::default()).await;
    // STOMP 1.0: header values arrive unescaped (`https://`, not `https\c//`).
    let mut radio = hub.radio().await;
    radio
        .subscribe(TEXT, Some("text"), &[("x-ebu-nofastreply", "yes")])
        .await;
    radio
        .subscribe(IMAGE, Some("image"), &[("x-ebu-nofastreply", "yes")])
        .await;
    radio.sync().await;

    let user = format!("{LOGIN}:{PASSCODE}");
    let url = format!("http://{http}/publish");
    let (status, body) = curl(&[
        "-u",
        &user,
        "-d",
        &format!("topic={CHANNEL}"),
        "--data-urlencode",
        "text=Now playing: Ça plane pour moi",
        "--data-urlencode",
        "image=https://radio1.example/slide.jpg",
        "--data-urlencode",
        "link=https://radio1.example/now",
        &url,
    ])
    .await
    .expect("curl");
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
    let published = answer["published"].as_array().expect("published list");
    assert_eq!(published.len(), 2, "{answer}");
    assert_eq!(published[0]["topic"], TEXT);
    assert_eq!(published[1]["topic"], IMAGE);

    let text = radio.expect("MESSAGE").await;
    assert_eq!(text.body, "TEXT Now playing: Ça plane pour moi".as_bytes());
    assert_eq!(text.get("message-id"), published[0]["message_id"].as_str());
    let image = radio.expect("MESSAGE").await;
    assert_eq!(image.body, b"SHOW https://radio1.example/slide.jpg");
    assert_eq!(image.get("link"), Some("https://radio1.example/now"));
    assert_eq!(image.get("message-id"), published[1]["message_id"].as_str());
    assert!(image.get("when").is_some(), "the server stamps `when`");

    // BBC style, with a raw RadioVis body.
    let url = format!("http://{http}/services/fm/4e1/4001/09580");
    let (status, body) = curl(&[
        "-u",
        &user,
        "-H",
        "Content-Type: text/plain",
        "--data-binary",
        "SHOW https://radio1.example/next.jpg",
        &url,
    ])
    .await
    .expect("curl");
    assert_eq!(status, 200, "{body}");
    let image = radio.expect("MESSAGE").await;
    assert_eq!(image.get("destination"), Some(IMAGE));
    assert_eq!(image.body, b"SHOW https://radio1.example/next.jpg");

    // The same as curl sends it by default (`--data-binary` says the body is a form).
    let (status, body) = curl(&["-u", &user, "--data-binary", "TEXT Artist - Title", &url])
        .await
        .expect("curl");
    assert_eq!(status, 200, "{body}");
    let text = radio.expect("MESSAGE").await;
    assert_eq!(text.get("destination"), Some(TEXT));
    assert_eq!(text.body, b"TEXT Artist - Title");

    let metrics = scrape(&http).await;
    assert_eq!(
        value(
            &metrics,
            "radiovis_messages_published_total{transport=\"http\"}"
        ),
        4.0
    );
    assert_eq!(
        value(
            &metrics,
            "radiovis_connections_accepted_total{transport=\"http\"}"
        ),
        3.0
    );
}

#[tokio::test]
async fn http_publish_refuses_as_stomp_does() {
    if !curl_installed().await {
        testkit::services::skip(
            "http_publish_refuses_as_stomp_does",
            "curl is not installed",
        );
        return;
    }
    let config = radiovis::HubConfig {
        auth_max_failures: 2,
        auth_failure_delay: Duration::ZERO,
        ..test_config()
    };
    let hub = TestHub::with(config, static_directory()).await;
    let http = serve_http(&hub, Default::default()).await;
    let url = format!("http://{http}/publish?topic={CHANNEL}");
    let good = format!("{LOGIN}:{PASSCODE}");

    // No credentials: 401 asking for Basic.
    let (status, _) = curl(&["-d", "text=x", &url]).await.expect("curl");
    assert_eq!(status, 401);
    let (_, head) = curl(&["-i", "-d", "text=x", &url]).await.expect("curl");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{head}"
    );
    // No rights on another station's channel: 403, nothing published.
    let other = format!("http://{http}/publish?topic=/topic/fm/ch/4002/10110/");
    let (status, body) = curl(&["-u", &good, "-d", "text=x", &other])
        .await
        .expect("curl");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("no rights"), "{body}");
    // Bad requests: nothing to publish, a raw body that is not RadioVis.
    let (status, _) = curl(&["-u", &good, "-X", "POST", &url])
        .await
        .expect("curl");
    assert_eq!(status, 400);
    let (status, _) = curl(&[
        "-u",
        &good,
        "-H",
        "Content-Type: text/plain",
        "--data-binary",
        "hello",
        &url,
    ])
    .await
    .expect("curl");
    assert_eq!(status, 400);

    // Wrong passcodes: 401 twice, then the address is throttled: 429 even with the
    // right passcode, and STOMP CONNECT from the same address is refused too.
    for _ in 0..2 {
        let (status, body) = curl(&["-u", &format!("{LOGIN}:wrong"), "-d", "text=x", &url])
            .await
            .expect("curl");
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("Wrong credentials"), "{body}");
    }
    let (status, body) = curl(&["-u", &good, "-d", "text=x", &url])
        .await
        .expect("curl");
    assert_eq!(status, 429, "{body}");
    let (_, head) = curl(&["-i", "-u", &good, "-d", "text=x", &url])
        .await
        .expect("curl");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 300"),
        "{head}"
    );
    let mut c = hub.conn().await;
    c.send_frame("CONNECT", &[("login", LOGIN), ("passcode", PASSCODE)], b"")
        .await;
    let err = c.expect("ERROR").await;
    assert_eq!(
        err.get("message"),
        Some("Too many failed logins: try again later")
    );

    let metrics = scrape(&http).await;
    assert_eq!(
        value(&metrics, "radiovis_logins_total{result=\"failure\"}"),
        2.0
    );
    assert!(value(&metrics, "radiovis_logins_total{result=\"throttled\"}") >= 3.0);
    assert_eq!(
        value(
            &metrics,
            "radiovis_messages_published_total{transport=\"http\"}"
        ),
        0.0
    );
}

#[tokio::test]
async fn status_events_carry_a_slide_published_after_they_started() {
    use tokio::io::{AsyncWriteExt, BufReader};
    let hub = TestHub::start().await;
    let http = serve_http(&hub, Default::default()).await;
    let stream = tokio::net::TcpStream::connect(&http)
        .await
        .expect("connect");
    let (read, mut write) = stream.into_split();
    write
        .write_all(format!("GET /status/events HTTP/1.1\r\nHost: {http}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut lines = BufReader::new(read).lines();
    let first = next_event(&mut lines).await;
    assert!(!first.to_string().contains("live slide"), "{first}");

    let mut broadcaster = hub.broadcaster().await;
    broadcaster.publish(TEXT, b"TEXT live slide", &[]).await;
    broadcaster.sync().await;
    // The next events (one every 2 s) carry it.
    for _ in 0..3 {
        let event = next_event(&mut lines).await;
        let channels = event["channels"].as_array().cloned().unwrap_or_default();
        if let Some(c) = channels.iter().find(|c| c["channel"] == CHANNEL) {
            assert_eq!(c["text"], "live slide");
            return;
        }
    }
    panic!("no event carried the slide");
}

/// The next `data:` event of a server-sent event stream, as JSON.
async fn next_event<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
) -> serde_json::Value {
    loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("an event within 5 s")
            .expect("read")
            .expect("stream open");
        if let Some(data) = line.strip_prefix("data: ") {
            return serde_json::from_str(data).expect("JSON event");
        }
    }
}

/// Writes a raw HTTP request and returns the status line of the answer, which must
/// come within `within`.
async fn raw_status(http: &str, request: &[u8], within: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(http).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut buf = vec![0; 1024];
    let n = tokio::time::timeout(within, s.read(&mut buf))
        .await
        .expect("answered, not held")
        .expect("read");
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

/// An HTTP publish reads a bounded body in bounded time: a body that stops arriving is
/// answered 408 within the frame timeout (it was held for ever), one over the frame
/// size limit 413 (docs/protocol.md#http-publish).
#[tokio::test]
async fn http_publish_bounds_the_body() {
    use base64::Engine;
    let config = radiovis::HubConfig {
        frame_timeout: Duration::from_secs(1),
        ..test_config()
    };
    let limit = config.limits.max_frame_size;
    let hub = TestHub::with(config, static_directory()).await;
    let http = serve_http(&hub, Default::default()).await.to_string();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{LOGIN}:{PASSCODE}"));
    let head = |length: usize| {
        format!(
            "POST /services/fm/4e1/4001/09580 HTTP/1.1\r\nHost: radiovis\r\n\
             Authorization: Basic {auth}\r\nContent-Length: {length}\r\n\r\n"
        )
    };

    let mut stalled = head(100).into_bytes();
    stalled.extend_from_slice(b"TEXT half a body");
    let status = raw_status(&http, &stalled, Duration::from_secs(5)).await;
    assert!(status.starts_with("HTTP/1.1 408"), "{status}");

    let mut huge = head(limit + 1).into_bytes();
    huge.extend_from_slice(b"TEXT ");
    huge.resize(huge.len() + limit - 4, b'x');
    let status = raw_status(&http, &huge, WAIT).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
}

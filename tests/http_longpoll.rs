//! RadioVIS HTTP long-poll over real sockets (docs/protocol.md#http-long-poll):
//! answered by a message published over TCP STOMP, hold then answer, replay, CC/GCC,
//! bad topics, the "poll again" answer, and a client following the rules that
//! receives a whole sequence with no duplicates and no gaps.

use std::time::Duration;

use radiovis::http::HttpConfig;
use testkit::harness::*;
use testkit::web::{get, serve_http, HttpResponse};

const IMAGE: &str = "/topic/fm/4e1/4001/09580/image";

fn enc(topic: &str) -> String {
    topic.replace('/', "%2F")
}

fn config(hold_ms: u64) -> HttpConfig {
    HttpConfig {
        poll_hold: Duration::from_millis(hold_ms),
        ..HttpConfig::default()
    }
}

fn assert_message(r: &HttpResponse, destination: &str, body: &str) -> String {
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let j = r.json();
    assert_eq!(j["body"], body, "{j}");
    assert_eq!(j["headers"]["RadioVIS-Destination"], destination, "{j}");
    let id = j["headers"]["RadioVIS-Message-ID"]
        .as_str()
        .expect("a message id")
        .to_owned();
    assert!(!id.is_empty());
    id
}

#[tokio::test]
async fn a_held_poll_is_answered_by_a_message_published_over_stomp() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, config(10_000)).await;
    let target = format!("/radiodns/vis/vis.json?topic={}", enc(TEXT));
    let poll = tokio::spawn({
        let http = http.clone();
        async move { get(&http, &target, Duration::from_secs(8)).await }
    });
    // Nothing on the topic: the request is held, not answered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!poll.is_finished(), "answered with nothing to say");
    let mut b = hub.broadcaster().await;
    let started = tokio::time::Instant::now();
    b.publish(
        TEXT,
        b"TEXT held and answered",
        &[("trigger-time", "NOW"), ("link", "https://example.org/")],
    )
    .await;
    let r = poll.await.expect("poll task");
    // Answered on arrival, not at the end of the hold.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_message(&r, TEXT, "TEXT held and answered");
    let j = r.json();
    assert_eq!(j["headers"]["RadioVIS-Trigger-Time"], "NOW");
    assert_eq!(j["headers"]["RadioVIS-Link"], "https://example.org/");
}

#[tokio::test]
async fn the_last_message_is_replayed_then_the_client_that_has_it_is_held() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, config(700)).await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT already there", &[("message-id", "m-1")])
        .await;
    let target = format!("/radiodns/vis/vis.json?topic={}", enc(TEXT));
    let r = get(&http, &target, WAIT).await;
    let id = assert_message(&r, TEXT, "TEXT already there");
    assert_eq!(id, "m-1");
    assert_eq!(r.header("radiovis-message-id"), Some("m-1"));

    // The client has the newest: held for the hold time, then "poll again".
    let started = tokio::time::Instant::now();
    let r = get(&http, &format!("{target}&last_id=m-1"), WAIT).await;
    assert!(started.elapsed() >= Duration::from_millis(600), "not held");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty(), "poll again is an empty 200: {r:?}");

    // An `ID:` prefix (as some handsets send it back) names the same message.
    let r = get(&http, &format!("{target}&last_id=ID:m-1"), WAIT).await;
    assert!(r.body.is_empty(), "{r:?}");

    // A stale last_id gets the newest at once.
    let r = get(&http, &format!("{target}&last_id=older"), WAIT).await;
    assert_eq!(assert_message(&r, TEXT, "TEXT already there"), "m-1");
}

#[tokio::test]
async fn of_several_topics_the_newest_is_answered() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, config(500)).await;
    let mut b = hub.broadcaster().await;
    b.publish(
        IMAGE,
        b"SHOW https://example.org/1.png",
        &[("message-id", "i-1")],
    )
    .await;
    b.publish(TEXT, b"TEXT newer", &[("message-id", "t-1")])
        .await;
    let target = format!(
        "/radiodns/vis/vis.json?topic={}&topic={}",
        enc(IMAGE),
        enc(TEXT)
    );
    let r = get(&http, &target, WAIT).await;
    assert_eq!(assert_message(&r, TEXT, "TEXT newer"), "t-1");
    // Then an image arrives while the client is held on both.
    let poll = tokio::spawn({
        let http = http.clone();
        let target = format!("{target}&last_id=t-1");
        async move { get(&http, &target, WAIT).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.publish(
        IMAGE,
        b"SHOW https://example.org/2.png",
        &[("message-id", "i-2")],
    )
    .await;
    let r = poll.await.expect("poll");
    assert_eq!(
        assert_message(&r, IMAGE, "SHOW https://example.org/2.png"),
        "i-2"
    );
}

#[tokio::test]
async fn a_cc_form_topic_receives_what_is_published_in_gcc_form() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, config(5_000)).await;
    let target = format!("/radiodns/vis/vis.json?topic={}", enc(TEXT_CC));
    let poll = tokio::spawn({
        let http = http.clone();
        async move { get(&http, &target, Duration::from_secs(8)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT via the GCC form", &[]).await;
    let r = poll.await.expect("poll");
    // Named as the client asked for it.
    assert_message(&r, TEXT_CC, "TEXT via the GCC form");
}

#[tokio::test]
async fn bad_topics_are_a_json_400() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, config(500)).await;
    for target in [
        "/radiodns/vis/vis.json".to_owned(),
        format!(
            "/radiodns/vis/vis.json?topic={}",
            enc("/topic/fm/zzz/1/2/text")
        ),
        format!("/radiodns/vis/vis.json?topic={}", enc("/queue/text")),
    ] {
        let r = get(&http, &target, WAIT).await;
        assert_eq!(r.status, 400, "{target}: {r:?}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.json()["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    hub.assert_still_serves(TEXT).await;
}

/// A client following the RadioVIS HTTP rules (poll, then poll again with the id it
/// got) receives every message of a sequence published one per second, each once.
#[tokio::test]
async fn a_polling_client_receives_a_sequence_without_gaps_or_duplicates() {
    const N: usize = 6;
    let hub = TestHub::start().await;
    let http = serve_http(&hub, config(10_000)).await;
    let client = tokio::spawn({
        let http = http.clone();
        async move {
            let base = format!("/radiodns/vis/vis.json?topic={}", enc(TEXT));
            let mut last_id: Option<String> = None;
            let mut got = Vec::new();
            while got.len() < N {
                let target = match &last_id {
                    Some(id) => format!("{base}&last_id={id}"),
                    None => base.clone(),
                };
                let r = get(&http, &target, Duration::from_secs(15)).await;
                assert_eq!(r.status, 200, "{r:?}");
                if r.body.is_empty() {
                    continue; // poll again
                }
                let j = r.json();
                last_id = j["headers"]["RadioVIS-Message-ID"]
                    .as_str()
                    .map(str::to_owned);
                got.push(j["body"].as_str().expect("body").to_owned());
            }
            got
        }
    });
    let mut b = hub.broadcaster().await;
    for i in 0..N {
        tokio::time::sleep(Duration::from_secs(1)).await;
        b.publish(TEXT, format!("TEXT number {i}").as_bytes(), &[])
            .await;
    }
    let got = tokio::time::timeout(Duration::from_secs(20), client)
        .await
        .expect("client done")
        .expect("client task");
    let want: Vec<String> = (0..N).map(|i| format!("TEXT number {i}")).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_held_poll_whose_client_left_is_released() {
    use tokio::io::AsyncWriteExt;
    let hub = TestHub::start().await;
    let http = serve_http(&hub, config(20_000)).await;
    let mut s = tokio::net::TcpStream::connect(&http)
        .await
        .expect("connect");
    let req = format!(
        "GET /radiodns/vis/vis.json?topic={} HTTP/1.1\r\nHost: x\r\n\r\n",
        enc(TEXT)
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let deadline = tokio::time::Instant::now() + WAIT;
    while hub.hub.stats().subscriptions == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(s);
    // Released long before the 20 s hold is over.
    let deadline = tokio::time::Instant::now() + WAIT;
    while hub.hub.stats().subscriptions > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still held after the client left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An id with characters JSON escapes (a quote, a backslash) is answered as sent and
/// recognised when the client sends it back: the client that has it is held.
#[tokio::test]
async fn an_id_with_json_escapes_round_trips() {
    const ID: &str = r#"id "quoted" \ back"#;
    let hub = TestHub::start().await;
    let http = serve_http(&hub, config(700)).await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT escaped id", &[("message-id", ID)])
        .await;
    let target = format!("/radiodns/vis/vis.json?topic={}", enc(TEXT));
    let r = get(&http, &target, WAIT).await;
    assert_eq!(assert_message(&r, TEXT, "TEXT escaped id"), ID);
    assert_eq!(r.header("radiovis-message-id"), Some(ID));

    let last_id: String = ID.bytes().map(|b| format!("%{b:02X}")).collect();
    assert_held_then_poll_again(&http, &format!("{target}&last_id={last_id}")).await;
}

/// `last_id` is form-encoded: `+` is a space and `%2B` a plus. The client that has
/// the message is held; one with another id gets it at once.
#[tokio::test]
async fn a_form_encoded_last_id_is_decoded() {
    const ID: &str = "a b+c";
    let hub = TestHub::start().await;
    let http = serve_http(&hub, config(700)).await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT spaced id", &[("message-id", ID)])
        .await;
    let target = format!("/radiodns/vis/vis.json?topic={}", enc(TEXT));
    assert_held_then_poll_again(&http, &format!("{target}&last_id=a+b%2Bc")).await;
    // `+` read as a plus is another id: answered at once.
    let started = tokio::time::Instant::now();
    let r = get(&http, &format!("{target}&last_id=a%2Bb%2Bc"), WAIT).await;
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "held: {r:?}"
    );
    assert_eq!(assert_message(&r, TEXT, "TEXT spaced id"), ID);
}

/// Polls `target` on a server holding polls 700 ms: the poll is held (the client has
/// the newest message), then answered "poll again".
async fn assert_held_then_poll_again(http: &str, target: &str) {
    let started = tokio::time::Instant::now();
    let r = get(http, target, WAIT).await;
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "not held: {r:?}"
    );
    assert!(r.body.is_empty(), "poll again: {r:?}");
}

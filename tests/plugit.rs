//! The PlugIt directory and log store against the test PlugIt server.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use radiovis::backend::plugit::{PlugitConfig, PlugitDirectory, PlugitMethod};
use radiovis::backend::{
    ChannelDefault, ChannelRef, DirectoryApi, DirectoryError, LogEntry, LogError, LogStore,
};
use testkit::plugit_server::{Fault, PlugitServer, CHANNELS, PASSWORD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Short timeouts so that fault tests stay fast.
const TIMEOUT: Duration = Duration::from_millis(300);
/// Scheduling slack allowed beyond a timeout.
const MARGIN: Duration = Duration::from_millis(700);

fn ip() -> IpAddr {
    "192.0.2.7".parse().expect("ip")
}

fn directory(base_url: &str, method: PlugitMethod) -> PlugitDirectory {
    let mut config = PlugitConfig::new(base_url);
    config.timeout = TIMEOUT;
    config.connect_timeout = TIMEOUT;
    config.method = method;
    PlugitDirectory::new(config).expect("valid config")
}

async fn every_action_answers(method: PlugitMethod) {
    let server = PlugitServer::start().await;
    let d = directory(&server.base_url(), method);

    assert!(d
        .check_auth("1.radio1", PASSWORD, ip())
        .await
        .expect("auth"));
    assert!(!d.check_auth("1.radio1", "wrong", ip()).await.expect("auth"));
    let r = server.last("check_auth").expect("recorded");
    assert_eq!(r.param("username"), Some("1.radio1"));
    assert_eq!(r.param("password"), Some("wrong"));
    assert_eq!(r.param("ip"), Some("192.0.2.7"));

    assert_eq!(
        d.get_channels("1").await.expect("channels"),
        CHANNELS.map(String::from).to_vec()
    );
    assert!(d.get_channels("2").await.expect("channels").is_empty());
    assert_eq!(
        server
            .last("get_channels")
            .expect("rec")
            .param("station_id"),
        Some("2")
    );

    assert_eq!(d.get_gcc("ch").await.expect("gcc"), Some("4e1".to_string()));
    assert_eq!(d.get_gcc("xx").await.expect("gcc"), None);
    assert_eq!(d.get_gcc("yy").await.expect("gcc"), None);

    let all = d.get_all_channels().await.expect("all");
    assert_eq!(
        all,
        vec![
            ChannelRef {
                topic: CHANNELS[0].into(),
                id: "7".into()
            },
            ChannelRef {
                topic: CHANNELS[1].into(),
                id: "8".into()
            },
        ]
    );
    let vis = d.get_all_vis_channels().await.expect("vis");
    assert_eq!(vis, all[..1].to_vec());

    assert_eq!(
        d.get_channel_default("7").await.expect("default"),
        Some(ChannelDefault {
            filename: Some("r1.png".into()),
            radiotext: Some("Radio One".into()),
            radiolink: Some("http://radio1.example/".into()),
            public_url: Some("http://img.example/r1.png".into()),
        })
    );
    assert_eq!(d.get_channel_default("8").await.expect("default"), None);
    assert_eq!(
        server.last("get_channel_default").expect("rec").param("id"),
        Some("8")
    );

    d.add_log(LogEntry {
        topic: "/topic/fm/4e1/4001/09580/text".into(),
        message: "TEXT héllo & bye".into(),
        headers: vec![
            ("trigger-time".into(), "NOW".into()),
            ("link".into(), "http://x/?a=1&b=2".into()),
        ],
        timestamp: 1_700_000_000,
    })
    .await
    .expect("add_log");
    let r = server.last("add_log").expect("recorded");
    assert_eq!(r.param("topic"), Some("/topic/fm/4e1/4001/09580/text"));
    assert_eq!(r.param("message"), Some("TEXT héllo & bye"));
    assert_eq!(r.param("timestamp"), Some("1700000000"));
    // As the original's json.dumps of its [name, value] pairs (docs/protocol.md#directory).
    assert_eq!(
        r.param("headers"),
        Some(r#"[["trigger-time", "NOW"], ["link", "http://x/?a=1&b=2"]]"#)
    );

    d.cleanup_logs(Duration::from_secs(3600))
        .await
        .expect("cleanup");
    assert_eq!(
        server.last("cleanup_logs").expect("rec").param("max_age"),
        Some("3600")
    );

    for action in [
        "check_auth",
        "get_channels",
        "get_gcc",
        "get_all_channels",
        "get_all_vis_channels",
        "get_channel_default",
        "add_log",
        "cleanup_logs",
    ] {
        assert!(server.calls(action) >= 1, "{action} not called");
    }
    assert_eq!(server.calls("check_auth"), 2);
    assert_eq!(server.calls("get_gcc"), 3);

    let expected_method = match method {
        PlugitMethod::Get => "GET",
        PlugitMethod::Post => "POST",
    };
    for r in server.requests() {
        assert_eq!(r.method, expected_method, "{}", r.action);
        assert_eq!(
            r.content_type.as_deref(),
            Some("application/x-www-form-urlencoded"),
            "{}",
            r.action
        );
        // Parameters travel in the body only: nothing (no password) in the URL.
        assert_eq!(r.query, None, "{}", r.action);
    }
    // Keep-alive: every call went over the one pooled connection.
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn every_action_answers_with_get_form_body() {
    every_action_answers(PlugitMethod::Get).await;
}

#[tokio::test]
async fn every_action_answers_with_post() {
    every_action_answers(PlugitMethod::Post).await;
}

/// Sends one raw HTTP/1.1 request and returns the answer's body.
async fn raw_request(server: &PlugitServer, head_line: &str, body: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    let req = format!(
        "{head_line}\r\nHost: {}\r\nUser-Agent: python-requests/2.31.0\r\nAccept: */*\r\n\
         Content-Length: {}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Connection: close\r\n\r\n{body}",
        server.addr(),
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.expect("read");
    answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// What `requests.get(url, data=params)` sends (a GET with a form body) and what our
/// client sends are the same form, and the test server reads both.
#[tokio::test]
async fn original_form_encoding_matches_ours() {
    let server = PlugitServer::start().await;
    // python: urlencode({"username": "1.radio1", "password": PASSWORD, "ip": "192.0.2.7"})
    let python_body = "username=1.radio1&password=s3cr%26t+p%3Dss%25w0rd&ip=192.0.2.7";
    let answer = raw_request(&server, "GET /api/check_auth HTTP/1.1", python_body).await;
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("JSON answer");
    assert_eq!(answer["result"], true);
    let original = server.last("check_auth").expect("recorded");

    let d = directory(&server.base_url(), PlugitMethod::Get);
    assert!(d
        .check_auth("1.radio1", PASSWORD, ip())
        .await
        .expect("auth"));
    let ours = server.last("check_auth").expect("recorded");
    assert_eq!(ours.method, original.method);
    assert_eq!(ours.content_type, original.content_type);
    assert_eq!(ours.form, original.form);

    // Query-string parameters are understood by the test server too.
    let answer = raw_request(&server, "GET /api/get_gcc?cc=ch HTTP/1.1", "").await;
    assert_eq!(answer, r#"{"gcc":"4e1"}"#);
}

async fn assert_fault(
    server: &PlugitServer,
    d: &PlugitDirectory,
    check: impl Fn(&DirectoryError) -> bool,
) {
    let start = Instant::now();
    let err = d
        .check_auth("1.radio1", PASSWORD, ip())
        .await
        .expect_err("a fault must be an error");
    let elapsed = start.elapsed();
    eprintln!("fault error: {err}");
    assert!(check(&err), "unexpected error {err:?}");
    assert!(
        elapsed < TIMEOUT + MARGIN,
        "error after {elapsed:?} ({err})"
    );
    let text = format!("{err} {err:?}");
    assert!(!text.contains(PASSWORD), "password in {text}");
    assert!(!text.contains("s3cr"), "password in {text}");
    assert!(!text.contains(&server.base_url()), "URL in {text}");

    // The log store says the same, without the parameters either.
    let start = Instant::now();
    let err = d
        .add_log(LogEntry {
            topic: "/topic/x/text".into(),
            message: "TEXT secret-message".into(),
            headers: vec![],
            timestamp: 1,
        })
        .await
        .expect_err("a fault must be an error");
    assert!(start.elapsed() < TIMEOUT + MARGIN);
    let LogError::Unavailable(text) = err else {
        panic!("a fault must be transient: {err:?}");
    };
    assert!(!text.contains("secret-message"), "parameters in {text}");
}

#[tokio::test]
async fn slow_directory_times_out() {
    let server = PlugitServer::start().await;
    server.set_fault(Fault::Slow(Duration::from_secs(3)));
    let d = directory(&server.base_url(), PlugitMethod::Get);
    assert_fault(&server, &d, |e| *e == DirectoryError::Timeout(TIMEOUT)).await;
    // Recovers when the directory is fast again.
    server.set_fault(Fault::None);
    assert!(d
        .check_auth("1.radio1", PASSWORD, ip())
        .await
        .expect("auth"));
}

#[tokio::test]
async fn http_500_is_a_status_error() {
    let server = PlugitServer::start().await;
    server.set_fault(Fault::Status500);
    let d = directory(&server.base_url(), PlugitMethod::Post);
    assert_fault(&server, &d, |e| *e == DirectoryError::Status(500)).await;
    server.set_fault(Fault::None);
    assert_eq!(d.get_gcc("ch").await.expect("gcc"), Some("4e1".into()));
}

#[tokio::test]
async fn invalid_json_is_a_bad_answer() {
    let server = PlugitServer::start().await;
    server.set_fault(Fault::InvalidJson);
    let d = directory(&server.base_url(), PlugitMethod::Get);
    assert_fault(&server, &d, |e| matches!(e, DirectoryError::BadAnswer(_))).await;
}

#[tokio::test]
async fn stopped_directory_is_unreachable() {
    let mut server = PlugitServer::start().await;
    let d = directory(&server.base_url(), PlugitMethod::Get);
    // A pooled connection exists before the server goes away.
    assert_eq!(d.get_gcc("ch").await.expect("gcc"), Some("4e1".into()));
    server.stop().await;
    assert_fault(&server, &d, |e| matches!(e, DirectoryError::Unreachable(_))).await;
}

#[tokio::test]
async fn refused_connection_is_unreachable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let d = directory(&format!("http://127.0.0.1:{port}/api"), PlugitMethod::Get);
    let start = Instant::now();
    let err = d
        .check_auth("1.radio1", PASSWORD, ip())
        .await
        .expect_err("nobody listens");
    eprintln!("refused: {err}");
    assert!(matches!(err, DirectoryError::Unreachable(_)), "{err:?}");
    assert!(start.elapsed() < TIMEOUT + MARGIN);
    assert!(!err.to_string().contains("s3cr"));
}

#[tokio::test]
async fn https_base_url_builds_and_fails_cleanly_on_a_plain_server() {
    let d = PlugitDirectory::new(PlugitConfig::new("https://plugit.example.org/radiovis/api"))
        .expect("https URL builds a client");
    assert_eq!(d.base_url(), "https://plugit.example.org/radiovis/api/");

    // TLS to a plain HTTP server: the handshake fails, an error, no panic.
    let server = PlugitServer::start().await;
    let d = directory(
        &format!("https://{}/api/", server.addr()),
        PlugitMethod::Get,
    );
    let start = Instant::now();
    let err = d
        .check_auth("1.radio1", PASSWORD, ip())
        .await
        .expect_err("no TLS there");
    eprintln!("TLS to a plain server: {err}");
    assert!(
        matches!(
            err,
            DirectoryError::Unreachable(_) | DirectoryError::Timeout(_)
        ),
        "{err:?}"
    );
    assert!(start.elapsed() < TIMEOUT + MARGIN);
    assert!(!err.to_string().contains("s3cr"));
}

#[test]
fn invalid_base_urls_are_refused() {
    for url in ["", "plugit.example.org/api", "ftp://plugit.example.org/"] {
        assert!(
            PlugitDirectory::new(PlugitConfig::new(url)).is_err(),
            "{url:?}"
        );
    }
}

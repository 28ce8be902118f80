//! The server binary's HTTP listener (docs/protocol.md#http-listener): started on
//! `HTTP_PORT` next to STOMP, serving the same hub (a long-poll answered by a message
//! published over STOMP), a JSON 404 elsewhere; `HTTP_PORT=off` starts none.

use std::process::Stdio;
use std::time::Duration;

use testkit::harness::{Conn, WAIT};
use testkit::web::get;
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

/// Starts a standalone server with `http_port`; its STOMP and HTTP addresses (from the
/// log) and the child.
async fn start(http_port: &str) -> (String, Option<String>, tokio::process::Child) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_radiovis-server"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("STOMP_IP", "127.0.0.1")
        .env("STOMP_PORT", "0")
        .env("HTTP_PORT", http_port)
        .env("HTTP_POLL_HOLD", "0.3")
        .env("RADIOVIS_WATCHDOG", "off")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("RABBITMQ_HOST")
        .env_remove("RABBITMQ_URL")
        .env_remove("RADIODNS_API_URL")
        .env_remove("MEMCACHED_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start radiovis-server");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let after = |line: &str, marker: &str| {
        line.split(marker)
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_owned)
    };
    let (mut stomp, mut http, mut off) = (None, None, false);
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if http.is_none() {
                http = after(&line, "listening for HTTP connections addr=");
            }
            if stomp.is_none() {
                stomp = after(&line, "listening for STOMP connections addr=");
            }
            off |= line.contains("HTTP listener off");
            seen.push(line);
            if stomp.is_some() && (http.is_some() || off) {
                return;
            }
        }
    })
    .await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let stomp = stomp.unwrap_or_else(|| panic!("no STOMP address: {seen:#?}"));
    (stomp, http, child)
}

#[tokio::test]
async fn the_http_listener_serves_the_same_hub() {
    let (stomp, http, _child) = start("0").await;
    let http = http.expect("an HTTP address in the log");
    let r = get(&http, "/nope", WAIT).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not found");

    // The demo directory's station publishes over STOMP; a long-poll receives it.
    let topic = "/topic/fm/4e1/4001/09580/text";
    let mut b = Conn::open(&stomp).await;
    b.send_frame(
        "CONNECT",
        &[("login", "1.radio1"), ("passcode", "secret1")],
        b"",
    )
    .await;
    b.expect("CONNECTED").await;
    b.publish(topic, b"TEXT from the binary", &[]).await;
    let target = format!("/radiodns/vis/vis.json?topic={}", topic.replace('/', "%2F"));
    let r = get(&http, &target, WAIT).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["body"], "TEXT from the binary");
}

#[tokio::test]
async fn http_port_off_starts_no_listener() {
    let (_stomp, http, _child) = start("off").await;
    assert_eq!(http, None);
}

//! The standalone server as an operator runs it (docs/protocol.md#operations): the
//! README's `curl` one-liner publishes a slide that a STOMP radio receives; `/metrics`
//! shows the HTTP publish, the timed directory calls and the in-process watchdog;
//! `/readyz` is ready; `/admin` needs the admin credentials. No services needed.

use std::process::Stdio;
use std::time::Duration;

use testkit::harness::Conn;
use testkit::ops::{curl, curl_installed, metric};
use testkit::processes::free_port;
use testkit::web::{get, request};
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(3);

#[tokio::test]
async fn the_readme_curl_one_liner_reaches_a_radio_and_the_metrics() {
    if !curl_installed().await {
        testkit::services::skip(module_path!(), "curl is not installed");
        return;
    }
    let stomp_port = free_port().unwrap_or_else(|e| panic!("{e}"));
    let http_port = free_port().unwrap_or_else(|e| panic!("{e}"));
    let _server = Command::new(env!("CARGO_BIN_EXE_radiovis-server"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("STOMP_IP", "127.0.0.1")
        .env("STOMP_PORT", stomp_port.to_string())
        .env("HTTP_PORT", http_port.to_string())
        .env("RADIOVIS_ADMIN_USER", "ops")
        .env("RADIOVIS_ADMIN_PASSWORD", "ops-pw")
        .env("RUST_LOG", "warn")
        .env_remove("RABBITMQ_HOST")
        .env_remove("RABBITMQ_URL")
        .env_remove("RADIODNS_API_URL")
        .env_remove("MEMCACHED_HOST")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start radiovis-server");
    let stomp = format!("127.0.0.1:{stomp_port}");
    let http = format!("127.0.0.1:{http_port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !(testkit::services::reachable(&stomp).await && testkit::services::reachable(&http).await)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server did not listen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = get(&http, "/readyz", WAIT).await;
    assert_eq!(
        ready.status,
        200,
        "{}",
        String::from_utf8_lossy(&ready.body)
    );

    let mut radio = Conn::open(&stomp).await;
    radio.send_frame("CONNECT", &[], b"").await;
    radio.expect("CONNECTED").await;
    radio
        .subscribe(
            "/topic/fm/ch/4001/09580/image",
            Some("img"),
            &[("x-ebu-nofastreply", "yes")],
        )
        .await;
    radio.sync().await;

    // The README's one-liner, with this test's port.
    let (status, body) = curl(&[
        "-u",
        "1.radio1:secret1",
        "-d",
        "topic=/topic/fm/4e1/4001/09580/",
        "--data-urlencode",
        "text=Now playing: a song",
        "--data-urlencode",
        "image=https://radio1.example/slide.jpg",
        &format!("http://{http}/publish"),
    ])
    .await
    .expect("curl");
    assert_eq!(status, 200, "{body}");
    let m = radio.expect("MESSAGE").await;
    assert_eq!(m.body, b"SHOW https://radio1.example/slide.jpg");

    let metrics = get(&http, "/metrics", WAIT).await;
    let text = String::from_utf8_lossy(&metrics.body);
    let value =
        |series: &str| metric(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
    assert_eq!(
        value("radiovis_messages_published_total{transport=\"http\"}"),
        2.0
    );
    assert_eq!(value("radiovis_logins_total{result=\"success\"}"), 1.0);
    assert!(value("radiovis_directory_request_duration_seconds_count{call=\"check_auth\"}") >= 1.0);
    assert!(value("radiovis_cache_request_duration_seconds_count{call=\"get\"}") >= 1.0);
    // Standalone, the watchdog runs in process and is measured.
    assert_eq!(value("radiovis_watchdog_log_entries_dropped_total"), 0.0);
    assert!(
        text.contains("# TYPE radiovis_deliveries_total counter"),
        "{text}"
    );

    // The admin page only with its credentials (never the station's).
    assert_eq!(get(&http, "/admin", WAIT).await.status, 401);
    let station = request(
        &http,
        "GET",
        "/admin",
        &[("Authorization", "Basic MS5yYWRpbzE6c2VjcmV0MQ==")],
        WAIT,
    )
    .await;
    assert_eq!(station.status, 401);
    // "ops:ops-pw"
    let admin = request(
        &http,
        "GET",
        "/admin",
        &[("Authorization", "Basic b3BzOm9wcy1wdw==")],
        WAIT,
    )
    .await;
    assert_eq!(admin.status, 200);
    assert!(String::from_utf8_lossy(&admin.body).contains("logins accepted"));
}

//! The watchdog's own operations listener (docs/protocol.md#operations): on
//! `FB_HTTP_IP` / `FB_HTTP_PORT` it answers `/healthz`, `/readyz` (ready, active) and
//! `/metrics` with its counters; with `FB_HTTP_PORT=off` nothing listens. Against the
//! real RabbitMQ; skipped when it is absent, unless RADIOVIS_REQUIRE_SERVICES=1.

use std::process::Stdio;
use std::time::Duration;

use testkit::ops::metric;
use testkit::processes::free_port;
use testkit::web::get;
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(3);

fn watchdog(exchange: &str, queue: &str, port: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_radiovis-fallback"))
        .env("RABBITMQ_HOST", "127.0.0.1")
        .env("RABBITMQ_EXCHANGE", exchange)
        .env("FB_QUEUE", queue)
        .env("FB_HTTP_IP", "127.0.0.1")
        .env("FB_HTTP_PORT", port)
        .env("RUST_LOG", "warn")
        .env("RABBITMQ_DEBUG", "False")
        .env_remove("RADIODNS_API_URL")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start radiovis-fallback")
}

#[tokio::test]
async fn the_watchdog_serves_metrics_and_health_on_its_own_port() {
    if !testkit::services::broker_up(module_path!()).await {
        return;
    }
    let id = uuid::Uuid::new_v4();
    let exchange = format!("radiovis-test-fbops-{id}");
    let queue = format!("radiovis-test-fbops-{id}-logs");
    let port = free_port().unwrap_or_else(|e| panic!("{e}"));
    let _watchdog = watchdog(&exchange, &queue, &port.to_string());
    let addr = format!("127.0.0.1:{port}");

    // Ready once the broker connection is up and it holds the lock.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let ready = loop {
        if testkit::services::reachable(&addr).await {
            let r = get(&addr, "/readyz", WAIT).await;
            if r.status == 200 && r.json()["checks"]["role"] == "active" {
                break r.json();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watchdog never became ready and active"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ready["checks"]["bus"], "connected");
    assert_eq!(get(&addr, "/healthz", WAIT).await.json()["status"], "alive");

    let metrics = get(&addr, "/metrics", WAIT).await;
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8_lossy(&metrics.body);
    for series in [
        "radiovis_watchdog_defaults_sent_total",
        "radiovis_watchdog_log_entries_buffered",
        "radiovis_watchdog_log_entries_sent_total",
        "radiovis_watchdog_log_entries_dropped_total",
    ] {
        assert!(metric(&text, series).is_some(), "no {series} in:\n{text}");
    }
    // It asked the (timed) directory for the channels with defaults.
    assert!(
        metric(
            &text,
            "radiovis_directory_request_duration_seconds_count{call=\"get_all_vis_channels\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(get(&addr, "/status.json", WAIT).await.status, 404);
    testkit::services::cleanup_broker(&exchange, &queue).await;
}

#[tokio::test]
async fn fb_http_port_off_opens_no_port() {
    if !testkit::services::broker_up(module_path!()).await {
        return;
    }
    let id = uuid::Uuid::new_v4();
    let exchange = format!("radiovis-test-fbops-{id}");
    let queue = format!("radiovis-test-fbops-{id}-logs");
    let mut child = watchdog(&exchange, &queue, "off");
    // It runs (and would have bound by now): 8081 and every other port stay closed
    // to it; the process is still alive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the watchdog exited"
    );
    let pid = child.id().expect("pid");
    let listening = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let inodes = socket_inodes(pid);
    let own_listeners = listening
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(3) == Some("0A"))
        .filter(|l| {
            l.split_whitespace()
                .nth(9)
                .is_some_and(|i| inodes.contains(&i.to_owned()))
        })
        .count();
    assert_eq!(
        own_listeners, 0,
        "the watchdog listens with FB_HTTP_PORT=off"
    );
    testkit::services::cleanup_broker(&exchange, &queue).await;
}

/// The socket inodes a process holds (from /proc/<pid>/fd).
fn socket_inodes(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    l.strip_prefix("socket:[")?
                        .strip_suffix(']')
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default()
}

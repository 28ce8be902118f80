//! The fallback watchdog as a process, against the real RabbitMQ and the test PlugIt
//! server, with short timings (check 1 s, quiet after 3 s): a quiet channel gets its
//! default TEXT and SHOW with the right headers, every bus message is logged with its
//! normalised topic, cleanup_logs runs on schedule, and two watchdogs make one active:
//! killing it, the standby takes over, the channel keeps getting defaults and no log
//! entry is lost. Skipped when RabbitMQ is absent, unless RADIOVIS_REQUIRE_SERVICES=1.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use radiovis::backend::rabbitmq::{QueueKind, RabbitBus, RabbitConfig};
use radiovis::backend::{BusMessage, BusStream, MessageBus};
use testkit::plugit_server::PlugitServer;
use tokio::process::{Child, Command};

fn watchdog(exchange: &str, queue: &str, plugit: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_radiovis-fallback"))
        .env("RABBITMQ_HOST", "127.0.0.1")
        // Its operations port would clash with the other watchdogs' (FB_HTTP_PORT).
        .env("FB_HTTP_PORT", "off")
        .env("RABBITMQ_EXCHANGE", exchange)
        .env("FB_QUEUE", queue)
        .env("RADIODNS_API_URL", plugit)
        .env("FB_FALLBACK_CHECK", "1")
        .env("FB_FALLBACK_TIME", "3")
        .env("FB_LOGS_CLEANUP", "2")
        .env("FB_LOGS_MAX_AGE", "3600")
        .env("RADIOVIS_FALLBACK_TAKEOVER", "0.5")
        .env("RUST_LOG", "warn")
        .env("RABBITMQ_DEBUG", "False")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start radiovis-fallback")
}

/// Defaults seen on the bus during `window` (TEXT bodies of the test channel).
async fn defaults_within(stream: &mut BusStream, window: Duration) -> Vec<BusMessage> {
    let deadline = tokio::time::Instant::now() + window;
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, stream.next()).await {
        if m.header("trigger-time") == Some("NOW") {
            out.push(m);
        }
    }
    out
}

fn logged_bodies(server: &PlugitServer) -> Vec<String> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.action == "add_log")
        .filter_map(|r| r.param("message").map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_logs_cleanup_and_takeover() {
    if !testkit::services::broker_up(module_path!()).await {
        return;
    }
    let id = uuid::Uuid::new_v4();
    let exchange = format!("radiovis-test-fb-{id}");
    let queue = format!("radiovis-test-fallbacklogs-{id}");
    let plugit = PlugitServer::start().await;

    // An observer on the exchange (a server instance would see the same).
    let observer = Arc::new(
        RabbitBus::connect(
            RabbitConfig::default()
                .with_exchange(exchange.clone())
                .with_queue(QueueKind::Instance),
        )
        .await
        .expect("observer"),
    );
    assert!(observer.wait_connected(Duration::from_secs(10)).await);
    let mut seen = observer.subscribe().await.expect("subscribe");

    let mut a = watchdog(&exchange, &queue, &plugit.base_url());
    // The quiet channel (test server: /topic/fm/4e1/4001/09580/, id 7) gets its default.
    let first = defaults_within(&mut seen, Duration::from_secs(8)).await;
    let text = first
        .iter()
        .find(|m| m.topic == "/topic/fm/4e1/4001/09580/text")
        .expect("default TEXT within FB_FALLBACK_TIME + FB_FALLBACK_CHECK");
    assert_eq!(&text.body[..], b"TEXT Radio One");
    assert_eq!(text.header("link"), Some("http://radio1.example/"));
    assert_eq!(text.header("expires"), Some("0"));
    assert_eq!(text.header("priority"), Some("0"));
    assert!(text.header("message-id").is_some());
    assert!(
        text.header("timestamp").is_some_and(|t| t.len() >= 13),
        "milliseconds"
    );
    let image = first
        .iter()
        .find(|m| m.topic == "/topic/fm/4e1/4001/09580/image")
        .expect("default SHOW");
    assert_eq!(&image.body[..], b"SHOW http://img.example/r1.png");

    // A standby: exactly one is active, so defaults do not double.
    let mut b = watchdog(&exchange, &queue, &plugit.base_url());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let texts = defaults_within(&mut seen, Duration::from_secs(7))
        .await
        .into_iter()
        .filter(|m| m.topic.ends_with("/text"))
        .count();
    assert!(
        (1..=3).contains(&texts),
        "one active watchdog: {texts} defaults in 7 s"
    );

    // Messages before, during and after the active one dies are all logged.
    let publish = |i: usize| {
        let observer = observer.clone();
        async move {
            observer
                .publish(BusMessage {
                    topic: "/topic/fm/ch/4001/09999/text".into(),
                    body: format!("TEXT ha {i}").into(),
                    headers: vec![("when".into(), "1".into())],
                })
                .await
                .expect("publish")
        }
    };
    for i in 0..20 {
        publish(i).await;
    }
    a.start_kill().expect("kill the active watchdog");
    let _ = a.wait().await;
    for i in 20..40 {
        publish(i).await;
    }
    // The standby took over: defaults keep coming. Takeover attempts every 0.5 s, then
    // the channel list, the first check (1 s) and the directory: generous on a loaded
    // machine (seen: over 8 s while other builds ran).
    let after = defaults_within(&mut seen, Duration::from_secs(15)).await;
    assert!(
        after
            .iter()
            .any(|m| m.topic == "/topic/fm/4e1/4001/09580/text"),
        "standby sends defaults after takeover"
    );
    // Every message logged (at least once), with its normalised topic.
    let start = Instant::now();
    loop {
        let logged = logged_bodies(&plugit);
        let missing: Vec<usize> = (0..40)
            .filter(|i| !logged.contains(&format!("TEXT ha {i}")))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "log entries lost: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let entry = plugit
        .requests()
        .into_iter()
        .find(|r| r.action == "add_log" && r.param("message") == Some("TEXT ha 0"))
        .expect("logged");
    assert_eq!(
        entry.param("topic"),
        Some("/topic/fm/4e1/4001/09999/text"),
        "normalised topic"
    );
    // The original's shape: a JSON array of [name, value] pairs.
    let headers: Vec<(String, String)> =
        serde_json::from_str(entry.param("headers").expect("headers")).expect("headers as JSON");
    assert!(
        headers.contains(&("when".to_owned(), "1".to_owned())),
        "{headers:?}"
    );
    // cleanup_logs every FB_LOGS_CLEANUP (2 s), with FB_LOGS_MAX_AGE.
    assert!(
        plugit.calls("cleanup_logs") >= 2,
        "cleanup_logs on schedule"
    );
    let last_cleanup = plugit.last("cleanup_logs").expect("cleanup call");
    assert_eq!(last_cleanup.param("max_age"), Some("3600"));

    let _ = b.start_kill();
    let _ = b.wait().await;
    observer.shutdown().await;
    testkit::services::cleanup_broker(&exchange, &queue).await;
}

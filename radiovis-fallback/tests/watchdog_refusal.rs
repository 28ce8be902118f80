//! Finding 3 end to end: the fallback watchdog as a process, against the real RabbitMQ
//! and the test PlugIt server refusing (HTTP 400) one log entry. Before, the writer
//! retried that entry for ever and nothing behind it was logged; now it is dropped and
//! every later message is logged. Skipped when RabbitMQ is absent, unless
//! RADIOVIS_REQUIRE_SERVICES=1.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use radiovis::backend::rabbitmq::{QueueKind, RabbitBus, RabbitConfig};
use radiovis::backend::{BusMessage, MessageBus};
use testkit::plugit_server::{Fault, PlugitServer};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_log_entry_does_not_stop_the_log() {
    if !testkit::services::broker_up(module_path!()).await {
        return;
    }
    let id = uuid::Uuid::new_v4();
    let exchange = format!("radiovis-test-fb-refusal-{id}");
    let queue = format!("radiovis-test-fallbacklogs-{id}");
    let plugit = PlugitServer::start().await;
    plugit.set_fault(Fault::RefuseLogContaining("poison"));
    let publisher = Arc::new(
        RabbitBus::connect(
            RabbitConfig::default()
                .with_exchange(exchange.clone())
                .with_queue(QueueKind::Instance),
        )
        .await
        .expect("publisher"),
    );
    assert!(publisher.wait_connected(Duration::from_secs(10)).await);
    let mut watchdog = Command::new(env!("CARGO_BIN_EXE_radiovis-fallback"))
        .env("RABBITMQ_HOST", "127.0.0.1")
        // Its operations port would clash with the other watchdogs' (FB_HTTP_PORT).
        .env("FB_HTTP_PORT", "off")
        .env("RABBITMQ_EXCHANGE", &exchange)
        .env("FB_QUEUE", &queue)
        .env("RADIODNS_API_URL", plugit.base_url())
        .env("FB_FALLBACK_CHECK", "1")
        .env("FB_FALLBACK_TIME", "3")
        .env("RADIOVIS_FALLBACK_TAKEOVER", "0.5")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start radiovis-fallback");
    // Let it declare its queue and consume.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let publish = |body: String| {
        let publisher = publisher.clone();
        async move {
            publisher
                .publish(BusMessage {
                    topic: "/topic/fm/4e1/4001/09999/text".into(),
                    body: body.into(),
                    headers: vec![("when".into(), "1".into())],
                })
                .await
                .expect("publish")
        }
    };
    publish("TEXT poison".into()).await;
    for i in 0..50 {
        publish(format!("TEXT after {i}")).await;
    }
    let start = Instant::now();
    let logged = loop {
        let logged = plugit
            .requests()
            .into_iter()
            .filter(|r| r.action == "add_log")
            .filter_map(|r| r.param("message").map(str::to_owned))
            .filter(|m| m.starts_with("TEXT after"))
            .collect::<std::collections::HashSet<_>>()
            .len();
        if logged == 50 || start.elapsed() > Duration::from_secs(15) {
            break logged;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let poison_calls = plugit
        .requests()
        .into_iter()
        .filter(|r| r.action == "add_log" && r.param("message") == Some("TEXT poison"))
        .count();
    eprintln!("refused entry, real PlugIt server: {logged}/50 later entries logged, the refused one sent {poison_calls} time(s)");
    assert_eq!(logged, 50, "entries behind the refused one were not logged");
    assert_eq!(poison_calls, 1, "a refusal is not retried");
    let _ = watchdog.start_kill();
    let _ = watchdog.wait().await;
    publisher.shutdown().await;
    testkit::services::cleanup_broker(&exchange, &queue).await;
}

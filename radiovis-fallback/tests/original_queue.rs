//! Migration end to end (issue 10): `radiovis-fallback` as a process on a broker where the
//! original Python watchdog had declared `FB_QUEUE` (non-durable, not exclusive, not
//! auto-delete, bound to the exchange), even with `RADIOVIS_FB_QUEUE_DURABLE=True`: it
//! starts, says what it found, and logs what the servers publish
//! (docs/protocol.md#rabbitmq-queues). Before, it stopped at start-up with
//! PRECONDITION_FAILED. Skipped when RabbitMQ is absent, unless
//! RADIOVIS_REQUIRE_SERVICES=1.

use std::process::Stdio;
use std::time::{Duration, Instant};

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use radiovis::backend::rabbitmq::{QueueKind, RabbitBus, RabbitConfig};
use radiovis::backend::{BusMessage, MessageBus};
use testkit::plugit_server::PlugitServer;
use testkit::services::BROKER_URL;
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_and_logs_on_the_queue_the_original_declared() {
    if !testkit::services::broker_up(module_path!()).await {
        return;
    }
    let id = uuid::Uuid::new_v4();
    let exchange = format!("radiovis-test-fb-original-{id}");
    let queue = format!("radiovis-test-fallbacklogs-original-{id}");
    let plugit = PlugitServer::start().await;
    let publisher = RabbitBus::connect(
        RabbitConfig::default()
            .with_exchange(exchange.clone())
            .with_queue(QueueKind::Instance),
    )
    .await
    .expect("publisher");
    assert!(publisher.wait_connected(Duration::from_secs(10)).await);

    // The original's watchdog: haigha's queue.declare(FB_QUEUE, auto_delete=False).
    let conn = Connection::connect(BROKER_URL, ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: false,
            exclusive: false,
            auto_delete: false,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare like the original");
    ch.queue_bind(
        queue.as_str().into(),
        exchange.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");

    let mut watchdog = Command::new(env!("CARGO_BIN_EXE_radiovis-fallback"))
        .env("RABBITMQ_HOST", "127.0.0.1")
        .env("RABBITMQ_EXCHANGE", &exchange)
        .env("FB_QUEUE", &queue)
        .env("RADIOVIS_FB_QUEUE_DURABLE", "True")
        .env("RADIODNS_API_URL", plugit.base_url())
        .env("RADIOVIS_FALLBACK_TAKEOVER", "0.5")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start radiovis-fallback");
    let mut lines = tokio::io::BufReader::new(watchdog.stdout.take().expect("stdout")).lines();
    let found = tokio::time::timeout(Duration::from_secs(15), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("using the existing queue as it is") {
                return Some(line);
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    assert!(
        found.is_some(),
        "the watchdog did not say it adopted the queue"
    );
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    publisher
        .publish(BusMessage {
            topic: "/topic/fm/4e1/4001/09999/text".into(),
            body: "TEXT through the original's queue".into(),
            headers: vec![("when".into(), "1".into())],
        })
        .await
        .expect("publish");
    let start = Instant::now();
    while !plugit.requests().iter().any(|r| {
        r.action == "add_log" && r.param("message") == Some("TEXT through the original's queue")
    }) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the message was not logged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        watchdog.try_wait().expect("status").is_none(),
        "still running"
    );

    let _ = watchdog.start_kill();
    let _ = watchdog.wait().await;
    let _ = conn.close(200, "bye".into()).await;
    publisher.shutdown().await;
    testkit::services::cleanup_broker(&exchange, &queue).await;
}

//! Migration from the original Python RadioVisServer, on the real RabbitMQ: the watchdog
//! queue `FB_QUEUE` is shared with the original's watchdog (docs/protocol.md#rabbitmq-queues).
//!
//! The original (haigha) declares `FB_QUEUE` non-durable, not exclusive, not auto-delete,
//! without arguments, and retries for ever when the broker refuses its declare. Before,
//! radiovis declared it durable: on a broker where the original had declared it first,
//! radiovis stopped at start-up with PRECONDITION_FAILED, and the other way round the
//! original could never declare it again. The "original" here is a plain AMQP client
//! (lapin) making the original's exact declarations.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use radiovis::backend::rabbitmq::{QueueKind, RabbitBus};
use radiovis::backend::{BusMessage, MessageBus};
use testkit::broker::{broker_up_logged as broker_up, config, unique};
use testkit::services::{cleanup_broker, BROKER_URL};

const WAIT: Duration = Duration::from_secs(10);

/// The original's declaration of `FB_QUEUE` (haigha's defaults and `auto_delete=False`).
fn original_declare() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        nowait: false,
    }
}

async fn channel() -> (Connection, Channel) {
    let conn = Connection::connect(BROKER_URL, ConnectionProperties::default())
        .await
        .expect("connect to the test broker");
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

fn message(body: &str) -> BusMessage {
    BusMessage {
        topic: "/topic/id/migration/q/text".to_owned(),
        body: Bytes::from(format!("TEXT {body}")),
        headers: vec![("message-id".to_owned(), body.to_owned())],
    }
}

/// The original's watchdog declared `FB_QUEUE` (and bound it) first; a radiovis
/// watchdog, even one configured to create the queue durable, starts on it and
/// receives what the servers publish.
#[tokio::test]
async fn radiovis_watchdog_adopts_the_queue_the_original_declared() {
    if !broker_up("adopts original queue").await {
        return;
    }
    let (x, q) = (unique("x"), unique("fallbacklogs"));
    let server = RabbitBus::connect(config(&x)).await.expect("server");
    assert!(server.wait_connected(WAIT).await, "server connected");

    let (conn, ch) = channel().await;
    ch.queue_declare(q.as_str().into(), original_declare(), FieldTable::default())
        .await
        .expect("the original declares its queue");
    ch.queue_bind(
        q.as_str().into(),
        x.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");

    for durable_queue in [false, true] {
        let mut cfg = config(&x).with_queue(QueueKind::Durable(q.clone()));
        cfg.durable_queue = durable_queue;
        let watchdog = RabbitBus::connect(cfg)
            .await
            .expect("starts on the original's queue, whatever it would declare itself");
        assert!(watchdog.wait_connected(WAIT).await, "watchdog connected");
        let mut stream = watchdog.subscribe().await.expect("subscribe");
        let sent = message(&format!("adopted-{durable_queue}"));
        server.publish(sent.clone()).await.expect("publish");
        let got = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("delivered in time")
            .expect("a message");
        assert_eq!(got.body, sent.body);
        drop(stream);
        watchdog.shutdown().await;
    }

    // Still the original's queue: its own declaration is still accepted.
    ch.queue_declare(q.as_str().into(), original_declare(), FieldTable::default())
        .await
        .expect("the original's declaration still matches the queue");
    let _ = conn.close(200, "bye".into()).await;
    server.shutdown().await;
    cleanup_broker(&x, &q).await;
}

/// The reverse: radiovis's watchdog declared `FB_QUEUE` first (by default); the
/// original's declaration of it is accepted, so a rollback to the original works. With
/// `RADIOVIS_FB_QUEUE_DURABLE` the queue radiovis creates is durable and the original's
/// declaration is refused: the option is for radiovis-only fleets.
#[tokio::test]
async fn the_original_can_declare_the_queue_radiovis_declared() {
    if !broker_up("original declares after radiovis").await {
        return;
    }
    let x = unique("x");
    for (durable_queue, original_accepted) in [(false, true), (true, false)] {
        let q = unique("fallbacklogs");
        let mut cfg = config(&x).with_queue(QueueKind::Durable(q.clone()));
        cfg.durable_queue = durable_queue;
        let watchdog = RabbitBus::connect(cfg).await.expect("watchdog");
        assert!(watchdog.wait_connected(WAIT).await, "watchdog connected");
        let _stream = watchdog.subscribe().await.expect("subscribe");

        let (conn, ch) = channel().await;
        let declared = ch
            .queue_declare(q.as_str().into(), original_declare(), FieldTable::default())
            .await;
        assert_eq!(
            declared.is_ok(),
            original_accepted,
            "durable_queue={durable_queue}: {declared:?}"
        );
        let _ = conn.close(200, "bye".into()).await;
        watchdog.shutdown().await;
        cleanup_broker(&x, &q).await;
    }
}

/// A queue that does not exist is declared as the original declares it: a passive
/// declare then finds it, and it stays after its consumer leaves (not auto-delete) with
/// the messages published meanwhile.
#[tokio::test]
async fn a_missing_queue_is_declared_like_the_original_and_outlives_its_consumer() {
    if !broker_up("declared like the original").await {
        return;
    }
    let (x, q) = (unique("x"), unique("fallbacklogs"));
    let server = RabbitBus::connect(config(&x)).await.expect("server");
    let watchdog = RabbitBus::connect(config(&x).with_queue(QueueKind::Durable(q.clone())))
        .await
        .expect("watchdog");
    assert!(watchdog.wait_connected(WAIT).await);
    watchdog.shutdown().await;
    server
        .publish(message("while-away"))
        .await
        .expect("publish");
    let (conn, ch) = channel().await;
    let found = ch
        .queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the queue is still there");
    assert_eq!(found.message_count(), 1, "the message waited in the queue");
    let _ = conn.close(200, "bye".into()).await;
    server.shutdown().await;
    cleanup_broker(&x, &q).await;
}

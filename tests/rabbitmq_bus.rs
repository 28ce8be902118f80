//! RabbitBus against a real broker at 127.0.0.1:5672 (guest/guest).
//!
//! Skipped, with a message, when the broker is not reachable, unless
//! `RADIOVIS_REQUIRE_SERVICES=1` (then they fail). Every test uses its own exchange and
//! queue names and deletes them at the end.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, ByteArray, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use radiovis::backend::rabbitmq::{QueueKind, RabbitBus, RabbitConfig, RabbitError};
use radiovis::backend::{BusError, BusMessage, BusStream, MessageBus};
use tokio::sync::RwLock;

use testkit::services::BROKER_URL as URL;
const WAIT: Duration = Duration::from_secs(10);

/// The reconnection test closes every connection of the broker
/// (`rabbitmqctl close_all_connections`): it runs alone among these tests. Other
/// processes connected to the same broker at that moment are disconnected too.
static EXCLUSIVE: RwLock<()> = RwLock::const_new(());

use testkit::broker::{broker_up_logged as broker_up, config, unique};

async fn raw_channel() -> (Connection, Channel) {
    let conn = Connection::connect(URL, ConnectionProperties::default())
        .await
        .expect("raw lapin connection");
    let ch = conn.create_channel().await.expect("raw channel");
    (conn, ch)
}

/// Deletes test exchanges and queues (best effort).
async fn cleanup(exchanges: &[&str], queues: &[&str]) {
    let (conn, ch) = raw_channel().await;
    for q in queues {
        let _ = ch
            .queue_delete((*q).into(), QueueDeleteOptions::default())
            .await;
    }
    for x in exchanges {
        let _ = ch
            .exchange_delete((*x).into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "bye".into()).await;
}

fn message(topic: &str, body: &str, id: &str) -> BusMessage {
    BusMessage {
        topic: topic.into(),
        body: Bytes::from(body.to_owned()),
        headers: vec![
            ("trigger-time".into(), "NOW".into()),
            ("link".into(), "http://example.com/".into()),
            ("message-id".into(), id.into()),
            ("when".into(), "1700000000".into()),
        ],
    }
}

async fn next(stream: &mut BusStream) -> BusMessage {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a message within 10 s")
        .expect("stream still open")
}

fn sorted(mut m: BusMessage) -> BusMessage {
    m.headers.sort();
    m
}

#[tokio::test]
async fn two_buses_on_one_exchange_see_each_other_and_themselves() {
    if !broker_up("two_buses").await {
        return;
    }
    let _g = EXCLUSIVE.read().await;
    let x = unique("x");
    let a = RabbitBus::connect(config(&x)).await.expect("bus a");
    let b = RabbitBus::connect(config(&x)).await.expect("bus b");
    let mut sa = a.subscribe().await.expect("sub a");
    let mut sb = b.subscribe().await.expect("sub b");
    let ma = message("/topic/fm/4e1/4001/09580/text", "TEXT from a", "a1");
    let mb = message("/topic/fm/ch/4001/09580/image", "SHOW http://x/y.png", "b1");
    a.publish(ma.clone()).await.expect("publish a");
    b.publish(mb.clone()).await.expect("publish b");
    for s in [&mut sa, &mut sb] {
        let mut got = vec![sorted(next(s).await), sorted(next(s).await)];
        got.sort_by(|l, r| l.topic.cmp(&r.topic));
        let mut want = vec![sorted(ma.clone()), sorted(mb.clone())];
        want.sort_by(|l, r| l.topic.cmp(&r.topic));
        assert_eq!(got, want);
    }
    a.shutdown().await;
    b.shutdown().await;
    cleanup(&[&x], &[]).await;
}

#[tokio::test]
async fn original_amqp_shape_arrives_as_bus_message() {
    if !broker_up("original_shape_in").await {
        return;
    }
    let _g = EXCLUSIVE.read().await;
    let x = unique("x");
    let bus = RabbitBus::connect(config(&x)).await.expect("bus");
    let mut stream = bus.subscribe().await.expect("sub");

    // What the Python server publishes: headers as strings, topic among them.
    let (conn, ch) = raw_channel().await;
    let mut headers = FieldTable::default();
    let long = |s: &str| AMQPValue::LongString(LongString::from(s));
    headers.insert("topic".into(), long("/topic/fm/4e1/4001/09580/text"));
    headers.insert("when".into(), long("1700000000"));
    headers.insert("message-id".into(), long("py-1"));
    headers.insert("trigger-time".into(), long("NOW"));
    // Some amqp library versions write byte strings as byte arrays.
    headers.insert(
        "link".into(),
        AMQPValue::ByteArray(ByteArray::from(b"http://example.com/".to_vec())),
    );
    ch.basic_publish(
        x.as_str().into(),
        "".into(),
        BasicPublishOptions::default(),
        b"TEXT hello from python",
        BasicProperties::default().with_headers(headers),
    )
    .await
    .expect("raw publish")
    .await
    .expect("raw confirm");

    let got = sorted(next(&mut stream).await);
    assert_eq!(
        got,
        sorted(BusMessage {
            topic: "/topic/fm/4e1/4001/09580/text".into(),
            body: Bytes::from_static(b"TEXT hello from python"),
            headers: vec![
                ("when".into(), "1700000000".into()),
                ("message-id".into(), "py-1".into()),
                ("trigger-time".into(), "NOW".into()),
                ("link".into(), "http://example.com/".into()),
            ],
        })
    );
    let _ = conn.close(200, "bye".into()).await;
    bus.shutdown().await;
    cleanup(&[&x], &[]).await;
}

#[tokio::test]
async fn bus_publish_arrives_on_plain_consumer_in_original_shape() {
    if !broker_up("original_shape_out").await {
        return;
    }
    let _g = EXCLUSIVE.read().await;
    let x = unique("x");
    let bus = RabbitBus::connect(config(&x)).await.expect("bus");
    let (conn, ch) = raw_channel().await;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("raw queue");
    ch.queue_bind(
        q.name().clone(),
        x.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("raw bind");
    let mut consumer = ch
        .basic_consume(
            q.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("raw consume");

    bus.publish(message(
        "/topic/dab/4e1/4001/4001/image",
        "SHOW http://i/1.png",
        "m-1",
    ))
    .await
    .expect("publish");

    let delivery = tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("delivery within 10 s")
        .expect("consumer open")
        .expect("delivery ok");
    // Decoded as the original does: headers['topic'], headers[...], body.
    let headers = delivery
        .properties
        .headers()
        .clone()
        .expect("application headers");
    let get = |k: &str| match headers.inner().get(&ShortString::from(k)) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("header {k} is not a long string: {other:?}"),
    };
    assert_eq!(delivery.routing_key.as_str(), "");
    assert_eq!(get("topic"), "/topic/dab/4e1/4001/4001/image");
    assert_eq!(get("message-id"), "m-1");
    assert_eq!(get("when"), "1700000000");
    assert_eq!(get("trigger-time"), "NOW");
    assert_eq!(get("link"), "http://example.com/");
    assert_eq!(headers.inner().len(), 5);
    assert_eq!(delivery.data, b"SHOW http://i/1.png");

    let _ = conn.close(200, "bye".into()).await;
    bus.shutdown().await;
    cleanup(&[&x], &[]).await;
}

#[tokio::test]
async fn message_without_topic_is_dropped_and_the_next_one_arrives() {
    if !broker_up("no_topic").await {
        return;
    }
    let _g = EXCLUSIVE.read().await;
    let x = unique("x");
    let bus = RabbitBus::connect(config(&x)).await.expect("bus");
    let mut stream = bus.subscribe().await.expect("sub");
    let (conn, ch) = raw_channel().await;
    let mut headers = FieldTable::default();
    headers.insert(
        "message-id".into(),
        AMQPValue::LongString(LongString::from("no-topic")),
    );
    ch.basic_publish(
        x.as_str().into(),
        "".into(),
        BasicPublishOptions::default(),
        b"TEXT lost",
        BasicProperties::default().with_headers(headers),
    )
    .await
    .expect("raw publish")
    .await
    .expect("raw confirm");
    let good = message("/topic/fm/4e1/4001/09580/text", "TEXT kept", "ok-1");
    bus.publish(good.clone()).await.expect("publish");
    assert_eq!(sorted(next(&mut stream).await), sorted(good));
    let _ = conn.close(200, "bye".into()).await;
    bus.shutdown().await;
    cleanup(&[&x], &[]).await;
}

#[tokio::test]
async fn durable_queue_holds_messages_while_no_consumer() {
    if !broker_up("durable_queue").await {
        return;
    }
    let _g = EXCLUSIVE.read().await;
    let x = unique("x");
    let q = unique("fallbacklogs");
    let durable = || config(&x).with_queue(QueueKind::Durable(q.clone()));

    // The watchdog declares its queue, then goes away.
    let watchdog = RabbitBus::connect(durable()).await.expect("watchdog");
    assert!(watchdog.wait_connected(WAIT).await);
    watchdog.shutdown().await;

    let server = RabbitBus::connect(config(&x)).await.expect("server");
    let m1 = message("/topic/fm/4e1/4001/09580/text", "TEXT one", "d-1");
    let m2 = message(
        "/topic/fm/4e1/4001/09580/image",
        "SHOW http://i/2.png",
        "d-2",
    );
    server.publish(m1.clone()).await.expect("publish 1");
    server.publish(m2.clone()).await.expect("publish 2");

    // Back: it gets what was published meanwhile, in order.
    let watchdog = RabbitBus::connect(durable()).await.expect("watchdog again");
    let mut stream = watchdog.subscribe().await.expect("sub");
    assert_eq!(sorted(next(&mut stream).await), sorted(m1));
    assert_eq!(sorted(next(&mut stream).await), sorted(m2));

    watchdog.shutdown().await;
    server.shutdown().await;
    cleanup(&[&x], &[&q]).await;
}

#[tokio::test]
async fn acked_stream_loses_nothing_a_consumer_did_not_acknowledge() {
    if !broker_up("acked_stream").await {
        return;
    }
    let _g = EXCLUSIVE.read().await;
    let x = unique("x");
    let q = unique("fallbacklogs");
    let durable = || config(&x).with_queue(QueueKind::Durable(q.clone()));
    let server = RabbitBus::connect(config(&x)).await.expect("server");
    let watchdog = RabbitBus::connect(durable()).await.expect("watchdog");
    assert!(watchdog.wait_connected(WAIT).await);
    let mut deliveries = watchdog.subscribe_acked().await.expect("sub");

    let done = message("/topic/id/a/b/text", "TEXT logged", "a-1");
    let pending = message("/topic/id/a/b/text", "TEXT not logged yet", "a-2");
    server.publish(done.clone()).await.expect("publish 1");
    server.publish(pending.clone()).await.expect("publish 2");
    let first = tokio::time::timeout(WAIT, deliveries.next())
        .await
        .expect("in time")
        .expect("delivery");
    assert_eq!(sorted(first.message), sorted(done));
    first.ack.ack();
    let second = tokio::time::timeout(WAIT, deliveries.next())
        .await
        .expect("in time")
        .expect("delivery");
    assert_eq!(sorted(second.message.clone()), sorted(pending.clone()));
    // The consumer dies before acknowledging the second one.
    std::mem::forget(second.ack);
    drop(deliveries);
    watchdog.shutdown().await;
    drop(watchdog);

    // The next watchdog gets exactly the unacknowledged one.
    let next_one = RabbitBus::connect(durable()).await.expect("standby");
    let mut stream = next_one.subscribe_acked().await.expect("sub");
    let again = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("redelivered in time")
        .expect("delivery");
    assert_eq!(sorted(again.message), sorted(pending));
    again.ack.ack();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), stream.next())
            .await
            .is_err(),
        "the acknowledged message is not redelivered"
    );
    next_one.shutdown().await;
    server.shutdown().await;
    cleanup(&[&x], &[&q]).await;
}

#[tokio::test]
async fn same_stream_delivers_again_after_connection_loss() {
    if !broker_up("reconnect").await {
        return;
    }
    let _g = EXCLUSIVE.write().await;
    let x = unique("x");
    let bus = RabbitBus::connect(config(&x)).await.expect("bus");
    let mut stream = bus.subscribe().await.expect("sub");
    let before = message("/topic/fm/4e1/4001/09580/text", "TEXT before", "r-0");
    bus.publish(before.clone()).await.expect("publish before");
    assert_eq!(sorted(next(&mut stream).await), sorted(before));
    assert_eq!(bus.connects(), 1);

    let out = tokio::process::Command::new("rabbitmqctl")
        .args(["close_all_connections", "test"])
        .output()
        .await
        .expect("run rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl close_all_connections: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Publish until the bus is back (bounded), after it reconnected.
    let start = Instant::now();
    let after = message("/topic/fm/4e1/4001/09580/text", "TEXT after", "r-1");
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "bus did not recover within 30 s"
        );
        if bus.connects() >= 2 {
            match bus.publish(after.clone()).await {
                Ok(()) => break,
                Err(BusError::Unavailable(_)) => {}
                Err(e) => panic!("unexpected publish error: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sorted(next(&mut stream).await), sorted(after));
    bus.shutdown().await;
    cleanup(&[&x], &[]).await;
}

#[tokio::test]
async fn exchange_of_another_type_is_a_clear_startup_error() {
    if !broker_up("wrong_type").await {
        return;
    }
    let _g = EXCLUSIVE.read().await;
    let x = unique("x");
    let (conn, ch) = raw_channel().await;
    ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare direct exchange");
    let _ = conn.close(200, "bye".into()).await;

    let err = RabbitBus::connect(config(&x))
        .await
        .expect_err("a direct exchange must be refused");
    eprintln!("direct exchange: {err}");
    let RabbitError::Config(text) = &err;
    assert!(text.contains(&x), "{err}");
    assert!(text.contains("type"), "{err}");
    assert!(!text.contains("guest@"), "{err}");

    let err = RabbitBus::connect(config("amq.direct"))
        .await
        .expect_err("amq.direct must be refused");
    assert!(err.to_string().contains("fanout"), "{err}");
    cleanup(&[&x], &[]).await;
}

#[tokio::test]
async fn missing_exchange_is_declared_as_durable_fanout() {
    if !broker_up("declare_exchange").await {
        return;
    }
    let _g = EXCLUSIVE.read().await;
    let x = unique("x");
    let bus = RabbitBus::connect(config(&x)).await.expect("bus");
    assert!(bus.wait_connected(WAIT).await);
    // An equivalent declare succeeds only on a durable fanout.
    let (conn, ch) = raw_channel().await;
    ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("exchange is a durable fanout");
    let _ = conn.close(200, "bye".into()).await;
    bus.shutdown().await;
    cleanup(&[&x], &[]).await;
}

#[tokio::test]
async fn broker_down_publish_fails_promptly_and_shutdown_closes() {
    // Nothing listens on port 1: no broker needed for this one.
    let config = RabbitConfig {
        port: 1,
        password: "hunter2".into(),
        ..RabbitConfig::default()
    };
    let start = Instant::now();
    let bus = RabbitBus::connect(config)
        .await
        .expect("a broker being down is not a start-up error");
    assert!(!bus.is_connected());
    let err = bus
        .publish(message("/topic/x/text", "TEXT x", "u-1"))
        .await
        .expect_err("no broker");
    assert!(matches!(err, BusError::Unavailable(_)), "{err}");
    assert!(!err.to_string().contains("hunter2"));
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(!format!("{bus:?}").contains("hunter2"));

    let mut stream = bus.subscribe().await.expect("subscribe works while down");
    bus.shutdown().await;
    assert_eq!(
        tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("ends"),
        None
    );
    assert_eq!(
        bus.publish(message("/topic/x/text", "TEXT x", "u-2")).await,
        Err(BusError::Closed)
    );
}

#[tokio::test]
async fn refused_vhost_or_credentials_is_a_startup_error() {
    if !broker_up("access_refused").await {
        return;
    }
    let _g = EXCLUSIVE.read().await;
    let vhost = unique("vhost");
    let err = RabbitBus::connect(RabbitConfig {
        vhost: vhost.clone(),
        ..config("amq.fanout")
    })
    .await
    .expect_err("an unknown vhost must be refused");
    eprintln!("unknown vhost: {err}");
    assert!(err.to_string().contains("configuration"), "{err}");
    // The broker's answer is kept as the cause, for programs to inspect.
    let cause = std::error::Error::source(&err)
        .and_then(std::error::Error::source)
        .expect("the cause is kept");
    assert!(cause.downcast_ref::<lapin::Error>().is_some(), "{cause:?}");

    let err = RabbitBus::connect(RabbitConfig {
        password: "not-the-password".into(),
        ..config("amq.fanout")
    })
    .await
    .expect_err("a wrong password must be refused");
    eprintln!("wrong password: {err}");
    assert!(!err.to_string().contains("not-the-password"), "{err}");
}

#[tokio::test]
async fn durable_queue_keeps_messages_when_every_stream_is_dropped() {
    if !broker_up("durable_dropped_stream").await {
        return;
    }
    let _g = EXCLUSIVE.read().await;
    let x = unique("x");
    let q = unique("fallbacklogs");
    let bus = RabbitBus::connect(config(&x).with_queue(QueueKind::Durable(q.clone())))
        .await
        .expect("watchdog");
    let first = bus.subscribe().await.expect("sub");
    // Let the consumer start, then leave.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(first);
    let m = message("/topic/fm/4e1/4001/09580/text", "TEXT kept", "k-1");
    bus.publish(m.clone()).await.expect("publish");
    // Give the consumer time to see the message with nobody to hand it to.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut second = bus.subscribe().await.expect("sub again");
    assert_eq!(sorted(next(&mut second).await), sorted(m));
    bus.shutdown().await;
    cleanup(&[&x], &[&q]).await;
}

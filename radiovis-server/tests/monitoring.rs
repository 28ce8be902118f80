//! Monitoring events of a server process on a real RabbitMQ: connections,
//! subscriptions, messages, unsubscriptions and disconnections arrive as the original's
//! JSON on MONITORING_QUEUE (durable, bound to MONITORING_EXCHANGE). Skipped when
//! RabbitMQ is absent, unless RADIOVIS_REQUIRE_SERVICES=1.

mod common;

use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use radiovis::client::Client;
use radiovis::stomp::{Command, Frame};

#[tokio::test]
async fn events_reach_the_monitoring_queue() {
    if !testkit::services::broker_up(module_path!()).await {
        return;
    }
    let id = uuid::Uuid::new_v4();
    let exchange = format!("radiovis-test-mon-bus-{id}");
    let mon_exchange = format!("radiovis-test-mon-{id}");
    let mon_queue = format!("radiovis-test-mon-q-{id}");
    let server = common::start_server(
        &exchange,
        &[
            ("MONITORING_ENABLED", "True"),
            ("MONITORING_EXCHANGE", &mon_exchange),
            ("MONITORING_QUEUE", &mon_queue),
            ("MONITORING_SERVER_ID", "test-a,test-b"),
        ],
    )
    .await;

    let mut radio = Client::connect(server.addr, &[]).await.expect("radio");
    let session = radio.connected.get("session").expect("session").to_owned();
    radio
        .send_with_receipt(
            Frame::new(Command::Subscribe)
                .header("destination", "/topic/fm/ch/4001/09580/text")
                .header("id", "1"),
        )
        .await
        .expect("subscribed");
    radio.sync().await.expect("subscription in place");
    let mut broadcaster = Client::connect(
        server.addr,
        &[("login", "1.radio1"), ("passcode", "secret1")],
    )
    .await
    .expect("broadcaster");
    broadcaster
        .send("/topic/fm/4e1/4001/09580/text", "TEXT monitored", &[])
        .await
        .expect("send");
    let m = radio
        .next_frame_within(Duration::from_secs(10))
        .await
        .expect("read")
        .expect("message");
    assert_eq!(&m.body[..], b"TEXT monitored");
    radio
        .send_with_receipt(Frame::new(Command::Unsubscribe).header("id", "1"))
        .await
        .expect("unsubscribed");
    radio.disconnect().await.expect("disconnect");

    // Read the events from the durable queue the server bound.
    let conn = Connection::connect(common::URL, ConnectionProperties::default())
        .await
        .expect("lapin");
    let ch = conn.create_channel().await.expect("channel");
    let mut consumer = ch
        .basic_consume(
            mon_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume the monitoring queue");
    let wanted = [
        "radiovis.global.servers",
        "radiovis.global.connections",
        "radiovis.global.subscriptions",
        "radiovis.global.messages",
        "radiovis.global.unsubscriptions",
        "radiovis.global.disconnections",
    ];
    let mut seen: Vec<serde_json::Value> = Vec::new();
    let start = Instant::now();
    while !wanted.iter().all(|l| {
        seen.iter().any(|e| {
            e["label"] == *l
                && (*l == "radiovis.global.servers"
                    || e["metadata"]["session_id"] == session.as_str())
        })
    }) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "events seen: {seen:#?}"
        );
        let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await
        else {
            panic!("no more events; seen: {seen:#?}");
        };
        let _ = d.ack(BasicAckOptions::default()).await;
        seen.push(serde_json::from_slice(&d.data).expect("event is JSON"));
    }
    let message = seen
        .iter()
        .find(|e| {
            e["label"] == "radiovis.global.messages"
                && e["metadata"]["session_id"] == session.as_str()
        })
        .expect("message event");
    assert_eq!(message["type"], "log");
    assert_eq!(message["server"], serde_json::json!(["test-a", "test-b"]));
    assert_eq!(message["metadata"]["topic"], "/topic/fm/ch/4001/09580/text");
    assert_eq!(message["metadata"]["body"], "TEXT monitored");
    assert!(message["metadata"]["ip"]
        .as_str()
        .is_some_and(|ip| ip.starts_with("127.0.0.1:")));
    assert!(message["timestamp"].as_f64().is_some_and(|t| t > 1.0e9));

    drop(server);
    let _ = ch
        .queue_delete(mon_queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    for x in [&exchange, &mon_exchange] {
        let _ = ch
            .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
}

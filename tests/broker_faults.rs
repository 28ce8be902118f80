//! Broker faults against the real RabbitMQ at 127.0.0.1:5672 (docs/protocol.md#rabbitmq-queues):
//! a memory alarm (publishers blocked), the consuming connection closed under a hub,
//! acknowledgements of several acked streams. These tests alarm the broker or close
//! connections: they run alone in this binary, one at a time (`SERIAL`).
//!
//! Skipped, with a message, when the broker is not reachable, unless
//! `RADIOVIS_REQUIRE_SERVICES=1`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use radiovis::backend::memory::MemoryCache;
use radiovis::backend::rabbitmq::{QueueKind, RabbitBus};
use radiovis::backend::{BusError, BusMessage, Cache, MessageBus};
use radiovis::server::StompHub;
use testkit::harness::{static_directory, test_config, Conn, Dir, LOGIN, PASSCODE};
use testkit::services::BROKER_URL as URL;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

static SERIAL: Mutex<()> = Mutex::const_new(());
const WAIT: Duration = Duration::from_secs(10);

use testkit::broker::{broker_up_logged as broker_up, config, unique};

fn message(topic: &str, body: &str) -> BusMessage {
    BusMessage {
        topic: topic.into(),
        body: Bytes::from(body.to_owned()),
        headers: vec![("when".into(), "1700000000".into())],
    }
}

fn rabbitmqctl(args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("run rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sets a memory alarm (every publishing connection is blocked) until dropped, even
/// when the test panics: the broker's watermark is then set back to 0.4 (its default,
/// `rabbitmqctl environment | grep vm_memory_high_watermark`).
struct MemoryAlarm;

impl MemoryAlarm {
    fn raise() -> MemoryAlarm {
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]);
        MemoryAlarm
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["set_vm_memory_high_watermark", "0.4"])
            .output();
    }
}

/// Closes the broker connections whose client-provided name contains `tag` (the bus
/// names them `radiovis <publish|consume> <exchange>`); how many.
fn close_connections(tag: &str) -> usize {
    let listed = rabbitmqctl(&[
        "list_connections",
        "pid",
        "client_properties",
        "-q",
        "--no-table-headers",
    ]);
    let pids: Vec<&str> = listed
        .lines()
        .filter(|l| l.contains(tag))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for pid in &pids {
        rabbitmqctl(&["close_connection", pid, "test: connection closed"]);
    }
    pids.len()
}

/// Publishes `n` messages to `exchange` from a connection of the test (with confirms).
async fn publish_raw(exchange: &str, topic: &str, n: usize) {
    let conn = Connection::connect(URL, ConnectionProperties::default())
        .await
        .expect("raw connection");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for i in 0..n {
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from("topic"),
            AMQPValue::LongString(LongString::from(topic)),
        );
        ch.basic_publish(
            exchange.into(),
            "".into(),
            BasicPublishOptions::default(),
            format!("queued {i}").as_bytes(),
            BasicProperties::default().with_headers(headers),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
    let _ = conn.close(200, "bye".into()).await;
}

/// A memory alarm blocks the connections that publish. Before, the bus published and
/// consumed on one connection: once a publish had it blocked, the broker read nothing
/// from it any more (no basic.consume, no acknowledgement), so consumption stopped with
/// publishing (the stream got none of the queued messages within 10 s).
#[tokio::test]
async fn memory_alarm_blocks_publishing_but_not_consumption() {
    if !broker_up("memory alarm").await {
        return;
    }
    let _serial = SERIAL.lock().await;
    let (x, q) = (unique("x"), unique("q"));
    let mut cfg = config(&x).with_queue(QueueKind::Durable(q.clone()));
    cfg.confirm_timeout = Duration::from_secs(2);
    cfg.prefetch = 1;
    let bus = RabbitBus::connect(cfg).await.expect("bus");
    assert!(bus.wait_connected(WAIT).await, "connected");
    // Messages wait in the durable queue: nobody subscribed yet.
    let topic = "/topic/fm/4e1/4001/09580/text";
    publish_raw(&x, topic, 3).await;

    let alarm = MemoryAlarm::raise();
    // A publish while blocked fails within the confirm timeout (it does not hang).
    let started = Instant::now();
    let r = tokio::time::timeout(WAIT, bus.publish(message(topic, "during the alarm"))).await;
    assert!(
        matches!(r, Ok(Err(BusError::Unavailable(_)))),
        "a blocked publish fails within the bound: {r:?} after {:?}",
        started.elapsed()
    );
    // Consumption goes on: the queued messages arrive (prefetch 1: each needs the
    // previous one's acknowledgement read by the broker).
    let mut stream = bus.subscribe().await.expect("subscribe");
    for i in 0..3 {
        let m = tokio::time::timeout(WAIT, stream.next())
            .await
            .unwrap_or_else(|_| panic!("queued message {i} not delivered during the alarm"))
            .expect("stream open");
        assert_eq!(m.body, Bytes::from(format!("queued {i}")));
    }
    drop(alarm);

    // After the alarm, publishing works again, on the same bus (no reconnection).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match bus.publish(message(topic, "after the alarm")).await {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "publishing did not resume: {e}"),
        }
    }
    // The message of the failed publish may arrive too (the broker reads it once
    // unblocked): the one after the alarm must.
    let deadline = Instant::now() + WAIT;
    loop {
        let m = tokio::time::timeout_at(deadline.into(), stream.next())
            .await
            .expect("message published after the alarm delivered")
            .expect("stream open");
        if m.body == Bytes::from_static(b"after the alarm") {
            break;
        }
    }
    bus.shutdown().await;
    testkit::services::cleanup_broker(&x, &q).await;
}

type RabbitHub = StompHub<Arc<RabbitBus>, Dir, Arc<MemoryCache>>;

async fn start_hub(
    bus: Arc<RabbitBus>,
    cache: Arc<MemoryCache>,
) -> (RabbitHub, String, CancellationToken) {
    let hub: RabbitHub = StompHub::new(bus, static_directory(), cache, test_config());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let stop = CancellationToken::new();
    let runner = hub.clone();
    let token = stop.clone();
    tokio::spawn(async move { runner.run(vec![listener], token).await });
    (hub, addr, stop)
}

async fn stomp(addr: &str, headers: &[(&str, &str)]) -> Conn {
    let mut c = Conn::open(addr).await;
    c.send_frame("CONNECT", headers, b"").await;
    c.expect("CONNECTED").await;
    c
}

/// Two hubs A and B on one exchange sharing a cache. B's consuming connection is
/// closed; A publishes meanwhile (B's exclusive queue is gone, B never gets it); once B
/// consumes again, a radio subscribing on B is replayed A's message, re-read from the
/// cache. Before: one connection without a name per bus (nothing to close selectively),
/// and no resynchronisation after a reconnection.
#[tokio::test]
async fn replay_converges_after_the_consuming_connection_reconnects() {
    if !broker_up("resync").await {
        return;
    }
    let _serial = SERIAL.lock().await;
    let x = unique("x");
    let cache = Arc::new(MemoryCache::new());
    let bus_a = Arc::new(RabbitBus::connect(config(&x)).await.expect("bus A"));
    let mut cfg_b = config(&x);
    // B stays away long enough for A to publish while it is gone.
    cfg_b.min_backoff = Duration::from_secs(3);
    cfg_b.max_backoff = Duration::from_secs(3);
    let bus_b = Arc::new(RabbitBus::connect(cfg_b).await.expect("bus B"));
    assert!(bus_a.wait_connected(WAIT).await && bus_b.wait_connected(WAIT).await);
    let (_a, addr_a, stop_a) = start_hub(bus_a.clone(), cache.clone()).await;
    let (_b, addr_b, stop_b) = start_hub(bus_b.clone(), cache.clone()).await;

    let closed = close_connections(&format!("radiovis consume {x}"));
    assert!(
        closed >= 2,
        "the consuming connections of A and B are named ({closed} found)"
    );
    // Only B's: A's comes back at once (100 ms backoff); wait for B to be down.
    let deadline = Instant::now() + WAIT;
    while bus_b.is_connected() {
        assert!(Instant::now() < deadline, "B noticed the lost connection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(bus_a.wait_connected(WAIT).await, "A is back");
    let topic = "/topic/fm/4e1/4001/09580/text";
    let mut broadcaster = stomp(&addr_a, &[("login", LOGIN), ("passcode", PASSCODE)]).await;
    broadcaster
        .publish(topic, b"TEXT while B was away", &[])
        .await;
    // A wrote it to the shared cache once it came back through A's own queue.
    let key = format!("radiovis_last_{topic}");
    let deadline = Instant::now() + WAIT;
    while cache.get(&key).await.ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "A shared its last message");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        bus_b.wait_connected(Duration::from_secs(20)).await,
        "B reconnected"
    );
    assert!(bus_b.connects() >= 2);

    // The resynchronisation runs in the background: poll with fresh radios.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut radio = stomp(&addr_b, &[]).await;
        radio.subscribe(topic, Some("0"), &[]).await;
        match radio.next(Duration::from_millis(500)).await {
            testkit::harness::Next::Frame(f) if f.command == "MESSAGE" => {
                assert_eq!(f.text(), "TEXT while B was away");
                break;
            }
            other => assert!(Instant::now() < deadline, "no replay on B: {other:?}"),
        }
    }
    stop_a.cancel();
    stop_b.cancel();
    bus_a.shutdown().await;
    bus_b.shutdown().await;
    testkit::services::cleanup_broker(&x, "").await;
}

/// One delivery handed to two acked streams: the first acknowledges it, the second
/// drops it unacknowledged. Before, one stream's acknowledgement acknowledged it for
/// every stream: the broker forgot it and the second stream never saw it again.
#[tokio::test]
async fn one_streams_ack_does_not_acknowledge_for_another() {
    if !broker_up("acks").await {
        return;
    }
    let _serial = SERIAL.lock().await;
    let (x, q) = (unique("x"), unique("q"));
    let cfg = config(&x).with_queue(QueueKind::Durable(q.clone()));
    let bus = RabbitBus::connect(cfg.clone()).await.expect("bus");
    let mut first = bus.subscribe_acked().await.expect("first");
    let mut second = bus.subscribe_acked().await.expect("second");
    bus.publish(message("/topic/a/text", "once"))
        .await
        .expect("publish");
    let d1 = tokio::time::timeout(WAIT, first.next())
        .await
        .expect("first got it")
        .expect("open");
    let d2 = tokio::time::timeout(WAIT, second.next())
        .await
        .expect("second got it")
        .expect("open");
    d1.ack.ack();
    drop(d2);
    drop((first, second));
    bus.shutdown().await;

    // The message is still in the queue for the next consumer.
    let bus = RabbitBus::connect(cfg).await.expect("bus again");
    let mut again = bus.subscribe_acked().await.expect("again");
    let d = tokio::time::timeout(WAIT, again.next())
        .await
        .expect("the message refused by one stream is redelivered")
        .expect("open");
    assert_eq!(d.message.body, Bytes::from_static(b"once"));
    d.ack.ack();
    drop(again);
    bus.shutdown().await;
    testkit::services::cleanup_broker(&x, &q).await;
}

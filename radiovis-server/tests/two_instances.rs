//! Two `radiovis-server` processes on one RabbitMQ (127.0.0.1:5672): a broadcaster on
//! one, radios on both; CC/GCC equivalence across instances; a message in the original
//! Python server's AMQP shape reaches radios on both; after the broker closes every
//! connection the servers recover and deliver again without any STOMP client
//! reconnecting. Skipped when RabbitMQ is absent, unless RADIOVIS_REQUIRE_SERVICES=1.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ExchangeDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};

use radiovis::client::Client;
use radiovis::stomp::{Command, Frame};

async fn radio(addr: SocketAddr, destination: &str) -> Client {
    let mut c = Client::connect(addr, &[]).await.expect("radio connects");
    c.send_with_receipt(
        Frame::new(Command::Subscribe)
            .header("destination", destination)
            .header("id", "0")
            .header("x-ebu-nofastreply", "yes"),
    )
    .await
    .expect("subscribed");
    c.sync().await.expect("subscription in place");
    c
}

async fn expect_body(c: &mut Client, body: &str) -> Frame {
    let f = c
        .next_frame_within(Duration::from_secs(10))
        .await
        .expect("read")
        .unwrap_or_else(|| panic!("no message {body:?} within 10 s"));
    assert_eq!(f.command, Command::Message, "{f:?}");
    assert_eq!(std::str::from_utf8(&f.body).expect("utf8"), body);
    f
}

/// SEND with a receipt; Ok when the server took it (no ERROR right after).
async fn send(c: &mut Client, destination: &str, body: &str) -> Result<(), String> {
    c.send_with_receipt(
        Frame::new(Command::Send)
            .header("destination", destination)
            .body(body.to_owned().into_bytes()),
    )
    .await
    .map_err(|e| e.to_string())?;
    // STOMP 1.0: the RECEIPT precedes the effect; a failed publish follows as ERROR.
    match c.next_frame_within(Duration::from_millis(300)).await {
        Ok(Some(f)) if f.command == Command::Error => {
            Err(f.get("message").unwrap_or("").to_owned())
        }
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test]
async fn two_servers_one_broker_every_radio_every_message_and_recovery() {
    if !testkit::services::broker_up(module_path!()).await {
        return;
    }
    let exchange = format!("radiovis-test-fleet-{}", uuid::Uuid::new_v4());
    let a = common::start_server(&exchange, &[]).await;
    let b = common::start_server(&exchange, &[]).await;

    // Radios on both instances, in both country forms.
    let mut radios = Vec::new();
    for server in [&a, &b] {
        radios.push(radio(server.addr, "/topic/fm/4e1/4001/09580/text").await);
        radios.push(radio(server.addr, "/topic/fm/ch/4001/09580/text").await);
    }
    let mut broadcaster =
        Client::connect(a.addr, &[("login", "1.radio1"), ("passcode", "secret1")])
            .await
            .expect("broadcaster logs in");

    // Every radio gets every message, in order (CC form sent to, both forms subscribed).
    for i in 0..20 {
        send(
            &mut broadcaster,
            "/topic/fm/ch/4001/09580/text",
            &format!("TEXT {i}"),
        )
        .await
        .expect("sent");
    }
    for r in radios.iter_mut() {
        for i in 0..20 {
            expect_body(r, &format!("TEXT {i}")).await;
        }
    }

    // Mixed fleet: the original's AMQP shape, published raw.
    let conn = Connection::connect(common::URL, ConnectionProperties::default())
        .await
        .expect("raw lapin connection");
    let ch = conn.create_channel().await.expect("channel");
    let mut headers = FieldTable::default();
    for (k, v) in [
        ("topic", "/topic/fm/4e1/4001/09580/text"),
        ("message-id", "python-1"),
        ("when", "1700000000"),
        ("link", "http://radio1.example/"),
    ] {
        headers.insert(
            ShortString::from(k),
            AMQPValue::LongString(LongString::from(v)),
        );
    }
    ch.basic_publish(
        exchange.as_str().into(),
        "".into(),
        BasicPublishOptions::default(),
        b"TEXT from python",
        BasicProperties::default().with_headers(headers),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
    for r in radios.iter_mut() {
        let f = expect_body(r, "TEXT from python").await;
        assert_eq!(f.get("message-id"), Some("python-1"));
        assert_eq!(f.get("link"), Some("http://radio1.example/"));
    }

    // The broker drops every connection: servers reconnect, STOMP clients stay.
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(["close_all_connections", "radiovis test"])
        .output()
        .await
        .expect("run rabbitmqctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = Instant::now();
    let mut n = 0;
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(45),
            "no recovery within 45 s"
        );
        n += 1;
        let body = format!("TEXT after {n}");
        if send(&mut broadcaster, "/topic/fm/4e1/4001/09580/text", &body)
            .await
            .is_ok()
        {
            // Instance B may still be rebinding: poll each radio for this or a later try.
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Once A publishes again, B must also be back: send one more after a short while
    // and every radio (never reconnected) receives it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    send(
        &mut broadcaster,
        "/topic/fm/4e1/4001/09580/text",
        "TEXT recovered",
    )
    .await
    .expect("sent after recovery");
    for r in radios.iter_mut() {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            assert!(
                Instant::now() < deadline,
                "radio did not get the message after recovery"
            );
            let f = r
                .next_frame_within(Duration::from_secs(15))
                .await
                .expect("radio connection survived")
                .expect("message after recovery");
            if &f.body[..] == b"TEXT recovered" {
                break;
            }
        }
    }

    drop((a, b));
    let _ = ch
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    let _ = conn.close(200, "done".into()).await;
}

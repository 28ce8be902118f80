//! A SUBSCRIBE that races a message (docs/protocol.md#replay): the new subscription gets
//! each message once, either as its replay or live, never both.

use std::collections::HashSet;
use std::time::Duration;

use radiovis::HubConfig;
use testkit::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_racing_a_subscribe_arrives_once() {
    let hub = TestHub::with(
        HubConfig {
            subscribe_rate: 100_000,
            subscribe_burst: 100_000,
            // The radio reads every message of the flood: it must not count as slow.
            outbound_queue: 1_000_000,
            ..test_config()
        },
        static_directory(),
    )
    .await;
    // A broadcaster publishing as fast as it can, without waiting for receipts.
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT 0", &[("message-id", "m0")]).await;
    let publisher = tokio::spawn(async move {
        for i in 1..=20_000u32 {
            let id = format!("m{i}");
            let body = format!("TEXT {i}");
            b.send_frame(
                "SEND",
                &[("destination", TEXT), ("message-id", &id)],
                body.as_bytes(),
            )
            .await;
            if i % 20 == 0 {
                // A few thousand messages a second: a race at every SUBSCRIBE, and
                // a flood the radio keeps up with.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        b.sync().await;
    });

    let (mut radio, _) = hub.connect(&[("accept-version", "1.2")]).await;
    let mut duplicates = Vec::new();
    let mut checked = 0;
    for k in 0..300 {
        if publisher.is_finished() {
            break;
        }
        let id = format!("s{k}");
        radio
            .send_frame("SUBSCRIBE", &[("destination", TEXT), ("id", &id)], b"")
            .await;
        // The replay and the next few live messages of this subscription.
        let mut seen = HashSet::new();
        let mut frames = 0;
        while frames < 4 {
            match radio.next(Duration::from_secs(2)).await {
                Next::Frame(f) if f.command == "MESSAGE" && f.get("subscription") == Some(&id) => {
                    frames += 1;
                    let mid = f.get("message-id").unwrap_or("").to_owned();
                    if !seen.insert(mid.clone()) {
                        duplicates.push(format!("{id}: {mid}"));
                    }
                }
                Next::Frame(_) => {}
                other => panic!("{id}: {other:?}"),
            }
        }
        checked += 1;
        radio.send_frame("UNSUBSCRIBE", &[("id", &id)], b"").await;
    }
    assert!(checked >= 50, "only {checked} subscriptions checked");
    assert!(
        duplicates.is_empty(),
        "{} of {checked} subscriptions got a message twice: {duplicates:?}",
        duplicates.len()
    );
    publisher.abort();
}

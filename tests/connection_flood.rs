//! A connection flood from one address (docs/protocol.md#limits): past
//! `max_connections_per_address` its connections get an ERROR naming the limit and
//! are closed, while other addresses, and the same address once under the limit,
//! are served.

use std::time::Duration;

use radiovis::HubConfig;
use testkit::harness::*;

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let hub = TestHub::with(
        HubConfig {
            max_connections_per_address: 5,
            ..test_config()
        },
        static_directory(),
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(hub.radio().await);
    }
    let mut extra = hub.conn().await;
    let error = extra.expect("ERROR").await;
    assert!(
        error.message().contains("address") && error.message().contains('5'),
        "{error:?}"
    );
    extra.expect_closed(Duration::from_secs(3)).await;

    // One leaves: the address may connect again.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let mut c = hub.conn().await;
        c.send_frame("CONNECT", &[], b"").await;
        match c.next(Duration::from_secs(2)).await {
            Next::Frame(f) if f.command == "CONNECTED" => break,
            other => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "still refused after one connection closed: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

//! A STOMP session over a byte stream that is not a bare TCP socket
//! (`StompHub::serve_stream`, the path TLS and STOMP over WebSocket take): the same
//! session, and writes that a buffering stream holds until flushed reach the client.

use std::time::Duration;

use testkit::harness::*;
use tokio::io::BufStream;
use tokio::net::TcpListener;

/// A second listener whose connections the hub serves through `serve_stream`, each
/// socket wrapped in a `BufStream` (which, like TLS, keeps writes until flushed).
async fn buffered_listener(hub: &TestHub) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = hub.hub.clone();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            server.serve_stream(BufStream::new(stream), peer, "test-buffered");
        }
    });
    addr
}

#[tokio::test]
async fn a_buffered_stream_runs_the_full_session() {
    let hub = TestHub::start().await;
    let addr = buffered_listener(&hub).await;
    let mut radio = Conn::open(&addr).await;
    radio
        .send_frame("CONNECT", &[("accept-version", "1.2")], b"")
        .await;
    let connected = radio.expect("CONNECTED").await;
    assert_eq!(connected.get("version"), Some("1.2"));
    radio
        .send_frame(
            "SUBSCRIBE",
            &[("destination", TEXT), ("id", "s1"), ("receipt", "r1")],
            b"",
        )
        .await;
    assert_eq!(radio.expect("RECEIPT").await.get("receipt-id"), Some("r1"));

    // Published over plain TCP STOMP, delivered over the buffered stream.
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT over a generic stream", &[]).await;
    let m = radio.expect("MESSAGE").await;
    assert_eq!(m.body, b"TEXT over a generic stream");
    assert_eq!(m.get("subscription"), Some("s1"));

    // A broadcaster over the buffered stream publishes to TCP radios.
    let mut tcp_radio = hub.radio().await;
    tcp_radio
        .subscribe(TEXT, Some("t"), &[("x-ebu-nofastreply", "yes")])
        .await;
    let mut b2 = Conn::open(&addr).await;
    b2.send_frame("CONNECT", &[("login", LOGIN), ("passcode", PASSCODE)], b"")
        .await;
    b2.expect("CONNECTED").await;
    b2.publish(TEXT, b"TEXT from the buffered stream", &[])
        .await;
    let m = tcp_radio.expect("MESSAGE").await;
    assert_eq!(m.body, b"TEXT from the buffered stream");

    radio.send_frame("DISCONNECT", &[], b"").await;
    radio.expect_closed(WAIT).await;
}

#[tokio::test]
async fn a_generic_stream_counts_against_the_per_address_limit() {
    let config = radiovis::HubConfig {
        max_connections_per_address: 1,
        ..test_config()
    };
    let hub = TestHub::with(config, static_directory()).await;
    let addr = buffered_listener(&hub).await;
    let _first = hub.radio().await;
    let mut second = Conn::open(&addr).await;
    let e = second.expect("ERROR").await;
    assert!(e.message().contains("limit is 1"), "{e:?}");
    second.expect_closed(Duration::from_secs(3)).await;
}

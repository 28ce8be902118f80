//! Hostile and broken clients (docs/protocol.md#faults): each is refused with an ERROR
//! where the protocol allows it, and nobody else notices.

use std::time::Duration;

use testkit::harness::*;

const QUIET: Duration = Duration::from_millis(400);

/// A STOMP 1.1/1.2 broadcaster can put an escaped newline in a header value; STOMP 1.0
/// has no escaping, so forwarding it would let the broadcaster write header lines (or
/// whole frames) of its choosing into every 1.0 radio's stream, and into the replay
/// store. The SEND is refused with an ERROR; radios of every version see nothing.
#[tokio::test]
async fn a_header_value_stomp_1_0_cannot_carry_is_refused_at_send() {
    let hub = TestHub::start().await;
    let mut radio10 = hub.radio().await;
    radio10
        .subscribe(TEXT, Some("r"), &[("x-ebu-nofastreply", "yes")])
        .await;
    let mut radio12 = hub.radio12().await;
    radio12
        .subscribe(TEXT, Some("r"), &[("x-ebu-nofastreply", "yes")])
        .await;
    let mut b = hub.broadcaster12().await;
    // On the wire: `link:https://a\ninjected:yes` with the 1.2 escape `\n`.
    b.send_raw(
        b"SEND\ndestination:/topic/fm/4e1/4001/09580/text\nlink:https://a\\ninjected:yes\nreceipt:s1\n\nTEXT hi\0",
    )
    .await;
    let error = b.expect("ERROR").await;
    assert!(
        error.message().contains("link"),
        "the ERROR names the header: {error:?}"
    );
    assert_eq!(error.get("receipt-id"), Some("s1"));
    radio10.expect_silence(QUIET).await;
    radio12.expect_silence(QUIET).await;

    // Nothing was stored for replay either.
    let mut late = hub.radio().await;
    late.subscribe(TEXT, Some("late"), &[]).await;
    late.expect_silence(QUIET).await;

    // A carriage return is as bad for 1.0 radios.
    let mut b = hub.broadcaster12().await;
    b.send_raw(
        b"SEND\ndestination:/topic/fm/4e1/4001/09580/text\ntrigger-time:NOW\\r\n\nTEXT hi\0",
    )
    .await;
    let error = b.expect("ERROR").await;
    assert!(error.message().contains("trigger-time"), "{error:?}");
    radio10.expect_silence(QUIET).await;

    // Harmless escapes (a colon, a backslash) are forwarded, unescaped for 1.0.
    let mut b = hub.broadcaster12().await;
    b.send_raw(b"SEND\ndestination:/topic/fm/4e1/4001/09580/text\nlink:https\\c//a\\\\b\nreceipt:s2\n\nTEXT ok\0")
        .await;
    assert_eq!(b.expect("RECEIPT").await.get("receipt-id"), Some("s2"));
    let m = radio10.expect("MESSAGE").await;
    assert_eq!(m.get("link"), Some("https://a\\b"));
    assert_eq!(m.get("injected"), None);
    hub.assert_still_serves(TEXT).await;
}

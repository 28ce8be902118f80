//! STOMP framing over real sockets (docs/protocol.md#framing): several frames in one
//! write, one frame over many, heart-beat EOLs, CRLF, headers without a colon, repeated
//! headers, bodies with NUL delimited by content-length.

use std::time::Duration;

use testkit::harness::*;

const QUIET: Duration = Duration::from_millis(300);
const DAB_TEXT: &str = "/topic/dab/4e1/4001/4001/0/text";

#[tokio::test]
async fn several_frames_in_one_write_are_all_handled() {
    let hub = TestHub::start().await;
    let mut c = hub.conn().await;
    let mut bytes = encode("CONNECT", &[], b"");
    bytes.extend(encode(
        "SUBSCRIBE",
        &[("destination", TEXT), ("id", "0"), ("receipt", "r1")],
        b"",
    ));
    bytes.extend(encode("FOO", &[("receipt", "r2")], b""));
    c.send_raw(&bytes).await;
    c.expect("CONNECTED").await;
    assert_eq!(c.expect("RECEIPT").await.get("receipt-id"), Some("r1"));
    assert_eq!(c.expect("RECEIPT").await.get("receipt-id"), Some("r2"));
}

#[tokio::test]
async fn a_frame_split_byte_by_byte_is_reassembled() {
    let hub = TestHub::start().await;
    let mut radio = hub.conn().await;
    for b in encode("CONNECT", &[("accept-version", "1.0")], b"") {
        radio.send_raw(&[b]).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    radio.expect("CONNECTED").await;
    let sub = encode(
        "SUBSCRIBE",
        &[("destination", TEXT), ("x-ebu-nofastreply", "yes")],
        b"",
    );
    for b in sub {
        radio.send_raw(&[b]).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    radio.sync().await;
    let mut b = hub.broadcaster().await;
    for byte in encode("SEND", &[("destination", TEXT)], b"TEXT split") {
        b.send_raw(&[byte]).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let m = radio.expect("MESSAGE").await;
    assert_eq!(m.body, b"TEXT split");
}

#[tokio::test]
async fn leading_eols_before_frames_are_heartbeats() {
    let hub = TestHub::start().await;
    let mut c = hub.conn().await;
    c.send_raw(b"\n\r\n\nCONNECT\n\n\0").await;
    c.expect("CONNECTED").await;
    c.send_raw(
        b"\r\n\n\r\nSUBSCRIBE\ndestination:/topic/fm/4e1/4001/09580/text\nreceipt:r\n\n\0\n\n",
    )
    .await;
    assert_eq!(c.expect("RECEIPT").await.get("receipt-id"), Some("r"));
    c.expect_silence(QUIET).await;
}

#[tokio::test]
async fn crlf_line_endings_are_accepted() {
    let hub = TestHub::start().await;
    let mut c = hub.conn().await;
    c.send_raw(b"CONNECT\r\naccept-version:1.2\r\nreceipt:x\r\n\r\n\0")
        .await;
    let f = c.expect("CONNECTED").await;
    assert_eq!(f.get("version"), Some("1.2"));
    assert_eq!(f.get("receipt-id"), Some("x"));
}

#[tokio::test]
async fn a_header_without_colon_is_a_header_with_an_empty_value() {
    let hub = TestHub::start().await;
    // `login` and `passcode` without `:` are empty: an anonymous session.
    let mut c = hub.conn().await;
    c.send_raw(b"CONNECT\nlogin\npasscode\n\n\0").await;
    c.expect("CONNECTED").await;
    c.send_frame(
        "SEND",
        &[("destination", TEXT), ("receipt", "s")],
        b"TEXT x",
    )
    .await;
    assert_eq!(c.expect("RECEIPT").await.get("receipt-id"), Some("s"));
    let e = c.expect("ERROR").await;
    assert!(e.message().contains("you cannot do that"), "{e:?}");
    // A stray header line on SUBSCRIBE does not break it.
    c.send_raw(
        b"SUBSCRIBE\nweird-line\ndestination:/topic/fm/4e1/4001/09580/text\nreceipt:r\n\n\0",
    )
    .await;
    assert_eq!(c.expect("RECEIPT").await.get("receipt-id"), Some("r"));
    c.expect_silence(QUIET).await;
}

#[tokio::test]
async fn repeated_header_first_wins() {
    let hub = TestHub::start().await;
    let mut radio = hub.radio().await;
    radio
        .send_frame(
            "SUBSCRIBE",
            &[
                ("destination", TEXT),
                ("destination", DAB_TEXT),
                ("id", "s"),
            ],
            b"",
        )
        .await;
    radio.sync().await;
    let mut b = hub.broadcaster().await;
    b.publish(DAB_TEXT, b"TEXT dab", &[]).await;
    b.publish(TEXT, b"TEXT fm", &[]).await;
    let m = radio.expect("MESSAGE").await;
    assert_eq!(m.body, b"TEXT fm");
    assert_eq!(m.get("destination"), Some(TEXT));
    radio.expect_silence(QUIET).await;
}

#[tokio::test]
async fn content_length_body_with_nul_is_delivered_intact() {
    let hub = TestHub::start().await;
    let mut radio10 = hub.radio().await;
    radio10
        .subscribe(TEXT, Some("a"), &[("x-ebu-nofastreply", "yes")])
        .await;
    let mut radio12 = hub.radio12().await;
    radio12
        .subscribe(TEXT, Some("b"), &[("x-ebu-nofastreply", "yes")])
        .await;
    let body = b"TEXT a\0b\0c";
    let mut b = hub.broadcaster().await;
    b.send_frame(
        "SEND",
        &[
            ("destination", TEXT),
            ("content-length", &body.len().to_string()),
        ],
        body,
    )
    .await;
    assert_eq!(radio10.expect("MESSAGE").await.body, body);
    assert_eq!(radio12.expect("MESSAGE").await.body, body);
}

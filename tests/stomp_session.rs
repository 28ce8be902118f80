//! STOMP sessions over real sockets (docs/protocol.md#session): CONNECT, credentials,
//! receipts, bogus frames, SUBSCRIBE/UNSUBSCRIBE/SEND errors, DISCONNECT, heart-beats.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use radiovis::backend::DirectoryError;
use testkit::harness::*;

const QUIET: Duration = Duration::from_millis(300);
const DAB_TEXT: &str = "/topic/dab/4e1/4001/4001/0/text";

// ---------------------------------------------------------------- CONNECT

#[tokio::test]
async fn first_frame_not_connect_gets_error_and_close() {
    let hub = TestHub::start().await;
    let mut c = hub.conn().await;
    c.send_frame("SUBSCRIBE", &[("destination", TEXT)], b"")
        .await;
    let e = c.expect("ERROR").await;
    assert!(e.message().contains("connect"), "{e:?}");
    c.expect_closed(WAIT).await;
    hub.assert_still_serves(TEXT).await;
}

#[tokio::test]
async fn stomp_is_accepted_as_connect() {
    let hub = TestHub::start().await;
    let mut c = hub.conn().await;
    c.send_frame("STOMP", &[("accept-version", "1.2"), ("host", "x")], b"")
        .await;
    let f = c.expect("CONNECTED").await;
    assert_eq!(f.get("version"), Some("1.2"));
}

#[tokio::test]
async fn anonymous_connect_gets_a_unique_session_and_echoes() {
    let hub = TestHub::start().await;
    let (_a, fa) = hub
        .connect(&[("request-id", "req-7"), ("receipt", "rc-1")])
        .await;
    let (_b, fb) = hub.connect(&[]).await;
    let sa = fa.get("session").expect("session header");
    let sb = fb.get("session").expect("session header");
    assert!(!sa.is_empty());
    assert_ne!(sa, sb, "session ids must be unique");
    assert_eq!(fa.get("response-id"), Some("req-7"));
    assert_eq!(fa.get("receipt-id"), Some("rc-1"));
    assert_eq!(fb.get("response-id"), None);
    assert_eq!(fb.get("receipt-id"), None);
}

#[tokio::test]
async fn version_negotiation_picks_the_highest_common() {
    let hub = TestHub::start().await;
    let (_c, f) = hub.connect(&[("accept-version", "1.0,1.1,1.2")]).await;
    assert_eq!(f.get("version"), Some("1.2"));
    assert!(f.get("heart-beat").is_some(), "{f:?}");
    assert!(f.get("server").is_some_and(|s| !s.is_empty()), "{f:?}");
    let (_c, f) = hub.connect(&[("accept-version", "1.1")]).await;
    assert_eq!(f.get("version"), Some("1.1"));
    assert!(f.get("heart-beat").is_some(), "{f:?}");
}

#[tokio::test]
async fn unsupported_version_gets_error_and_close() {
    let hub = TestHub::start().await;
    let mut c = hub.conn().await;
    c.send_frame("CONNECT", &[("accept-version", "3.0")], b"")
        .await;
    c.expect("ERROR").await;
    c.expect_closed(WAIT).await;
}

// ---------------------------------------------------------------- credentials

#[tokio::test]
async fn good_login_connects_and_may_send() {
    let hub = TestHub::start().await;
    let mut b = hub.broadcaster().await;
    b.send_frame(
        "SEND",
        &[("destination", TEXT), ("receipt", "ok")],
        b"TEXT hi",
    )
    .await;
    assert_eq!(b.expect("RECEIPT").await.get("receipt-id"), Some("ok"));
    b.expect_silence(QUIET).await;
}

#[tokio::test]
async fn wrong_passcode_gets_error_and_close() {
    let hub = TestHub::start().await;
    let wrong = format!("{PASSCODE}-wrong");
    for (login, pass) in [(LOGIN, wrong.as_str()), ("9.nobody", PASSCODE)] {
        let mut c = hub.conn().await;
        c.send_frame("CONNECT", &[("login", login), ("passcode", pass)], b"")
            .await;
        let e = c.expect("ERROR").await;
        assert!(e.message().contains("credentials"), "{e:?}");
        let raw = String::from_utf8_lossy(&e.raw);
        assert!(!raw.contains(PASSCODE), "passcode leaked: {raw}");
        c.expect_closed(WAIT).await;
    }
}

#[tokio::test]
async fn ip_restricted_station_from_another_network_is_refused() {
    let hub = TestHub::start().await;
    let mut c = hub.conn().await;
    c.send_frame(
        "CONNECT",
        &[("login", "3.locked"), ("passcode", "secret3")],
        b"",
    )
    .await;
    let e = c.expect("ERROR").await;
    assert!(!e.raw.windows(7).any(|w| w == b"secret3"), "{e:?}");
    c.expect_closed(WAIT).await;
}

#[tokio::test]
async fn directory_down_refuses_login_with_a_clear_error_and_serves_others() {
    let dir =
        mock_directory(|_, _, _| Err(DirectoryError::Unreachable("connection refused".into())));
    let hub = TestHub::with(test_config(), Arc::new(dir)).await;
    let mut c = hub.conn().await;
    c.send_frame("CONNECT", &[("login", LOGIN), ("passcode", PASSCODE)], b"")
        .await;
    let e = c.expect("ERROR").await;
    let m = e.message();
    assert!(
        m.contains("directory") && m.contains("unavailable"),
        "{e:?}"
    );
    assert!(!String::from_utf8_lossy(&e.raw).contains(PASSCODE));
    c.expect_closed(WAIT).await;
    assert!(hub.is_running());
    // Anonymous radios are still served.
    let mut radio = hub.radio().await;
    radio.subscribe("/topic/id/x/text", Some("0"), &[]).await;
    radio.expect_silence(QUIET).await;
}

#[tokio::test]
async fn check_auth_gets_login_passcode_and_client_ip_and_station_is_login_prefix() {
    type Calls = Arc<Mutex<Vec<(String, String, IpAddr)>>>;
    let calls: Calls = Arc::default();
    let stations: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut dir = radiovis::backend::MockDirectoryApi::new();
    {
        let calls = calls.clone();
        dir.expect_check_auth().returning(move |u, p, ip| {
            calls
                .lock()
                .expect("lock")
                .push((u.to_owned(), p.to_owned(), ip));
            Ok(true)
        });
    }
    dir.expect_get_all_channels().returning(|| Ok(vec![]));
    dir.expect_get_all_vis_channels().returning(|| Ok(vec![]));
    dir.expect_get_gcc().returning(|_| Ok(None));
    dir.expect_get_channel_default().returning(|_| Ok(None));
    {
        let stations = stations.clone();
        dir.expect_get_channels().returning(move |s| {
            stations.lock().expect("lock").push(s.to_owned());
            Ok(vec!["/topic/id/twelve/main/".to_owned()])
        });
    }
    let hub = TestHub::with(test_config(), Arc::new(dir)).await;
    let _radio = hub.radio().await;
    assert!(
        calls.lock().expect("lock").is_empty(),
        "anonymous CONNECT must not call check_auth"
    );
    let (mut b, _) = hub
        .connect(&[("login", "12.radio1.extra"), ("passcode", "pw")])
        .await;
    b.send_frame(
        "SEND",
        &[
            ("destination", "/topic/id/twelve/main/text"),
            ("receipt", "r"),
        ],
        b"TEXT x",
    )
    .await;
    assert_eq!(b.expect("RECEIPT").await.get("receipt-id"), Some("r"));
    b.expect_silence(QUIET).await;
    let calls = calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, "12.radio1.extra");
    assert_eq!(calls[0].1, "pw");
    assert_eq!(calls[0].2, "127.0.0.1".parse::<IpAddr>().expect("ip"));
    assert_eq!(stations.lock().expect("lock").as_slice(), ["12".to_owned()]);
}

// ---------------------------------------------------------------- receipts

#[tokio::test]
async fn any_frame_with_receipt_gets_a_receipt_in_1_0() {
    let hub = TestHub::start().await;
    let mut b = hub.broadcaster().await;
    b.send_frame(
        "SUBSCRIBE",
        &[("destination", TEXT), ("receipt", "sub")],
        b"",
    )
    .await;
    assert_eq!(b.expect("RECEIPT").await.get("receipt-id"), Some("sub"));
    b.send_frame(
        "SEND",
        &[("destination", TEXT), ("receipt", "send")],
        b"TEXT r",
    )
    .await;
    assert_eq!(b.expect("RECEIPT").await.get("receipt-id"), Some("send"));
    // Its own subscription delivers the message (no fast reply at subscribe time).
    assert_eq!(b.expect("MESSAGE").await.body, b"TEXT r");
    b.send_frame("FOO", &[("receipt", "foo")], b"").await;
    assert_eq!(b.expect("RECEIPT").await.get("receipt-id"), Some("foo"));
    b.send_frame("DISCONNECT", &[("receipt", "bye")], b"").await;
    assert_eq!(b.expect("RECEIPT").await.get("receipt-id"), Some("bye"));
    b.expect_closed(WAIT).await;
}

#[tokio::test]
async fn any_frame_with_receipt_gets_a_receipt_in_1_2() {
    let hub = TestHub::start().await;
    let mut c = hub.radio12().await;
    c.send_frame(
        "SUBSCRIBE",
        &[("destination", TEXT), ("id", "1"), ("receipt", "sub")],
        b"",
    )
    .await;
    assert_eq!(c.expect("RECEIPT").await.get("receipt-id"), Some("sub"));
    c.send_frame("FOO", &[("receipt", "foo")], b"").await;
    assert_eq!(c.expect("RECEIPT").await.get("receipt-id"), Some("foo"));
    c.send_frame("DISCONNECT", &[("receipt", "bye")], b"").await;
    assert_eq!(c.expect("RECEIPT").await.get("receipt-id"), Some("bye"));
    c.expect_closed(WAIT).await;
}

#[tokio::test]
async fn failing_send_in_1_0_gets_receipt_then_one_error_and_stays_open() {
    let hub = TestHub::start().await;
    let mut radio = hub.radio().await;
    radio
        .send_frame(
            "SEND",
            &[("destination", TEXT), ("receipt", "r")],
            b"TEXT no",
        )
        .await;
    assert_eq!(radio.expect("RECEIPT").await.get("receipt-id"), Some("r"));
    let e = radio.expect("ERROR").await;
    assert!(e.message().contains("you cannot do that"), "{e:?}");
    radio.expect_silence(QUIET).await;
    radio.sync().await;
}

#[tokio::test]
async fn failing_frame_in_1_2_gets_error_with_receipt_id_then_close() {
    let hub = TestHub::start().await;
    let mut radio = hub.radio12().await;
    radio
        .send_frame(
            "SEND",
            &[("destination", TEXT), ("receipt", "r")],
            b"TEXT no",
        )
        .await;
    let frames = radio.frames_until_closed(WAIT).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].command, "ERROR");
    assert_eq!(frames[0].get("receipt-id"), Some("r"));
}

// ---------------------------------------------------------------- bogus frames

#[tokio::test]
async fn bogus_frames_get_no_reply_and_do_not_break_the_session() {
    let hub = TestHub::start().await;
    for version in ["1.0", "1.2"] {
        let (mut radio, _) = hub.connect(&[("accept-version", version)]).await;
        radio.send_raw(b"\x00").await;
        radio.send_raw(b"\n\n\x00").await;
        radio.send_raw(b"TEST\x00").await;
        radio.expect_silence(QUIET).await;
        radio
            .subscribe(TEXT, Some("s"), &[("x-ebu-nofastreply", "yes")])
            .await;
        let mut b = hub.broadcaster().await;
        b.publish(TEXT, b"TEXT after bogus", &[]).await;
        assert_eq!(radio.expect("MESSAGE").await.body, b"TEXT after bogus");
    }
}

// ---------------------------------------------------------------- SUBSCRIBE errors

#[tokio::test]
async fn subscribe_without_destination_is_an_error_and_1_0_stays_open() {
    let hub = TestHub::start().await;
    let mut radio = hub.radio().await;
    radio.send_frame("SUBSCRIBE", &[("id", "0")], b"").await;
    radio.expect("ERROR").await;
    radio.expect_silence(QUIET).await;
    radio.sync().await;
}

#[tokio::test]
async fn subscribe_without_destination_in_1_2_closes() {
    let hub = TestHub::start().await;
    let mut radio = hub.radio12().await;
    radio.send_frame("SUBSCRIBE", &[("id", "0")], b"").await;
    radio.expect("ERROR").await;
    radio.expect_closed(WAIT).await;
}

#[tokio::test]
async fn fm_destination_of_bad_shape_gets_format_error() {
    let hub = TestHub::start().await;
    let mut radio = hub.radio().await;
    for bad in [
        "/topic/fm/4e1/zz/09580/text",
        "/topic/fm/4e1/4001/text",
        "/topic/fm/4e1/4001/9580/text",
    ] {
        radio
            .send_frame("SUBSCRIBE", &[("destination", bad), ("id", "0")], b"")
            .await;
        let e = radio.expect("ERROR").await;
        assert!(e.message().contains("format"), "{bad}: {e:?}");
        radio.expect_silence(Duration::from_millis(100)).await;
    }
    radio.sync().await;
}

// ---------------------------------------------------------------- UNSUBSCRIBE

#[tokio::test]
async fn unsubscribe_by_id_stops_delivery() {
    let hub = TestHub::start().await;
    let mut radio = hub.radio().await;
    radio
        .subscribe(TEXT, Some("s1"), &[("x-ebu-nofastreply", "yes")])
        .await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT one", &[]).await;
    assert_eq!(radio.expect("MESSAGE").await.body, b"TEXT one");
    radio.send_frame("UNSUBSCRIBE", &[("id", "s1")], b"").await;
    radio.sync().await;
    b.publish(TEXT, b"TEXT two", &[]).await;
    radio.expect_silence(QUIET).await;
}

#[tokio::test]
async fn unsubscribe_by_destination_stops_delivery() {
    let hub = TestHub::start().await;
    let mut radio = hub.radio().await;
    radio
        .subscribe(TEXT_CC, None, &[("x-ebu-nofastreply", "yes")])
        .await;
    radio
        .subscribe(DAB_TEXT, Some("dab"), &[("x-ebu-nofastreply", "yes")])
        .await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT one", &[]).await;
    assert_eq!(radio.expect("MESSAGE").await.body, b"TEXT one");
    radio
        .send_frame("UNSUBSCRIBE", &[("destination", TEXT_CC)], b"")
        .await;
    radio
        .send_frame("UNSUBSCRIBE", &[("destination", DAB_TEXT)], b"")
        .await;
    radio.sync().await;
    b.publish(TEXT, b"TEXT two", &[]).await;
    b.publish(DAB_TEXT, b"TEXT dab", &[]).await;
    radio.expect_silence(QUIET).await;
}

#[tokio::test]
async fn bad_unsubscribe_gets_exactly_one_error() {
    let hub = TestHub::start().await;
    let mut radio = hub.radio().await;
    radio.subscribe(TEXT, Some("s1"), &[]).await;
    let cases: [&[(&str, &str)]; 4] = [
        &[],
        &[("id", "nope")],
        &[("destination", DAB_TEXT)],
        &[("id", "nope"), ("destination", DAB_TEXT)],
    ];
    for headers in cases {
        radio.send_frame("UNSUBSCRIBE", headers, b"").await;
        radio.expect("ERROR").await;
        radio.expect_silence(QUIET).await;
    }
    radio.sync().await;
}

// ---------------------------------------------------------------- SEND errors

#[tokio::test]
async fn anonymous_send_is_refused() {
    let hub = TestHub::start().await;
    let mut listener = hub.radio().await;
    listener
        .subscribe(TEXT, Some("0"), &[("x-ebu-nofastreply", "yes")])
        .await;
    let mut radio = hub.radio().await;
    radio
        .send_frame("SEND", &[("destination", TEXT)], b"TEXT anon")
        .await;
    let e = radio.expect("ERROR").await;
    assert!(e.message().contains("you cannot do that"), "{e:?}");
    listener.expect_silence(QUIET).await;
}

#[tokio::test]
async fn send_without_destination_is_an_error() {
    let hub = TestHub::start().await;
    let mut b = hub.broadcaster().await;
    b.send_frame("SEND", &[], b"TEXT nowhere").await;
    b.expect("ERROR").await;
    b.expect_silence(QUIET).await;
    b.sync().await;
}

#[tokio::test]
async fn send_outside_the_station_channels_is_refused() {
    let hub = TestHub::start().await;
    let mut listener = hub.radio().await;
    let other = "/topic/fm/4e1/4002/10110/text";
    listener
        .subscribe(other, Some("0"), &[("x-ebu-nofastreply", "yes")])
        .await;
    let mut b = hub.broadcaster().await;
    for dest in [
        other,
        "/topic/fm/4e1/4001/10230/text",
        "/topic/fm/4e1/4001/095801/text",
    ] {
        b.send_frame("SEND", &[("destination", dest)], b"TEXT not mine")
            .await;
        let e = b.expect("ERROR").await;
        assert!(e.message().contains("you cannot do that"), "{dest}: {e:?}");
    }
    listener.expect_silence(QUIET).await;
}

#[tokio::test]
async fn send_to_sub_topics_and_cc_form_of_an_allowed_channel_is_allowed() {
    let hub = TestHub::start().await;
    let mut b = hub.broadcaster().await;
    for dest in [
        TEXT,
        TEXT_CC,
        "/topic/fm/4e1/4001/09580/image",
        "/topic/fm/CH/4001/09580/text",
        "/topic/dab/4e1/4001/4001/0/image",
    ] {
        b.send_frame(
            "SEND",
            &[("destination", dest), ("receipt", dest)],
            b"TEXT ok",
        )
        .await;
        assert_eq!(b.expect("RECEIPT").await.get("receipt-id"), Some(dest));
    }
    b.expect_silence(QUIET).await;
    // A station whose channel is written in CC form may send to the GCC form.
    let (mut b2, _) = hub
        .connect(&[("login", "2.radio2"), ("passcode", "secret2")])
        .await;
    b2.send_frame(
        "SEND",
        &[
            ("destination", "/topic/fm/4e1/4002/10110/text"),
            ("receipt", "g"),
        ],
        b"TEXT ok",
    )
    .await;
    assert_eq!(b2.expect("RECEIPT").await.get("receipt-id"), Some("g"));
    b2.expect_silence(QUIET).await;
}

#[tokio::test]
async fn send_to_topic_star_reaches_every_channel_of_the_station() {
    let hub = TestHub::start().await;
    let mut fm = hub.radio().await;
    fm.subscribe(TEXT_CC, Some("fm"), &[("x-ebu-nofastreply", "yes")])
        .await;
    let mut dab = hub.radio().await;
    dab.subscribe(DAB_TEXT, Some("dab"), &[("x-ebu-nofastreply", "yes")])
        .await;
    let mut img = hub.radio().await;
    img.subscribe(
        "/topic/fm/4e1/4001/09580/image",
        None,
        &[("x-ebu-nofastreply", "yes")],
    )
    .await;
    let mut b = hub.broadcaster().await;
    b.publish("/topic/*/text", b"TEXT everywhere", &[]).await;
    let m = fm.expect("MESSAGE").await;
    assert_eq!(m.body, b"TEXT everywhere");
    assert_eq!(m.get("destination"), Some(TEXT_CC));
    let m = dab.expect("MESSAGE").await;
    assert_eq!(m.body, b"TEXT everywhere");
    assert_eq!(m.get("destination"), Some(DAB_TEXT));
    img.expect_silence(QUIET).await;
    fm.expect_silence(Duration::from_millis(50)).await;
}

// ---------------------------------------------------------------- DISCONNECT

#[tokio::test]
async fn disconnect_closes_the_connection() {
    let hub = TestHub::start().await;
    for version in ["1.0", "1.2"] {
        let (mut c, _) = hub.connect(&[("accept-version", version)]).await;
        c.send_frame("DISCONNECT", &[], b"").await;
        let frames = c.frames_until_closed(WAIT).await;
        assert!(frames.is_empty(), "{frames:?}");
    }
}

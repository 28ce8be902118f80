//! Clients that hold the server by being slow or silent (docs/protocol.md#limits): a
//! frame that never completes, a session that never says anything, a client that never
//! reads, and refused CONNECTs whose ERROR must survive the close
//! (docs/protocol.md#connect). Each one is closed (with an ERROR naming the limit where
//! the socket allows it) and every other client carries on.

use std::time::Duration;

use radiovis::HubConfig;
use testkit::harness::*;

const NOFAST: (&str, &str) = ("x-ebu-nofastreply", "yes");

fn short_deadlines() -> HubConfig {
    HubConfig {
        frame_timeout: Duration::from_secs(1),
        idle_timeout: Some(Duration::from_secs(1)),
        ..test_config()
    }
}

/// Drips a frame that would take 12 s one byte every 100 ms; the server must cut it
/// off after the 1 s frame deadline with an ERROR naming it, while another radio keeps
/// receiving.
#[tokio::test]
async fn a_slowloris_frame_gets_an_error_and_close_others_carry_on() {
    let config = HubConfig {
        idle_timeout: None,
        ..short_deadlines()
    };
    let hub = TestHub::with(config, static_directory()).await;
    let mut radio = hub.radio().await;
    radio.subscribe(TEXT, Some("r"), &[NOFAST]).await;
    let mut b = hub.broadcaster().await;
    let mut slow = hub.broadcaster().await;
    let mut drip = encode("SEND", &[("destination", TEXT)], b"");
    drip.pop(); // no NUL: the body goes on
    drip.extend_from_slice(&[b'x'; 120]);
    let mut error = None;
    for (i, byte) in drip.iter().enumerate() {
        if slow.try_send_raw(&[*byte]).await.is_err() {
            break;
        }
        if i == 5 {
            // Mid-drip, delivery to others goes on.
            b.publish(TEXT, b"TEXT during", &[]).await;
            assert_eq!(radio.expect("MESSAGE").await.body, b"TEXT during");
        }
        match slow.next(Duration::from_millis(100)).await {
            Next::Frame(f) => {
                error = Some((i, f));
                break;
            }
            Next::Closed => panic!("closed without an ERROR after {i} bytes"),
            Next::Timeout => {}
        }
    }
    let Some((sent, e)) = error else {
        panic!("the whole frame (12 s of drip) went through without a frame timeout");
    };
    assert_eq!(e.command, "ERROR", "{e:?}");
    let m = e.message();
    assert!(m.contains("frame") && m.contains("limit is 1 s"), "{e:?}");
    assert!(sent < drip.len() / 2, "cut off only after {sent} bytes");
    slow.expect_closed(WAIT).await;
    b.publish(TEXT, b"TEXT after", &[]).await;
    assert_eq!(radio.expect("MESSAGE").await.body, b"TEXT after");
}

/// A 1.0 radio that subscribes and then says nothing at all is closed by the idle
/// deadline, with an ERROR naming it.
#[tokio::test]
async fn a_silent_1_0_client_is_closed_after_the_idle_timeout() {
    let hub = TestHub::with(short_deadlines(), static_directory()).await;
    let mut silent = hub.radio().await;
    silent.subscribe(TEXT, Some("s"), &[NOFAST]).await;
    let frames = silent.frames_until_closed(Duration::from_secs(5)).await;
    let e = frames
        .iter()
        .find(|f| f.command == "ERROR")
        .unwrap_or_else(|| panic!("no ERROR before the close: {frames:?}"));
    let m = e.message();
    assert!(m.contains("idle") && m.contains("limit is 1 s"), "{e:?}");
    hub.assert_still_serves(TEXT).await;
}

/// A 1.2 client that negotiated no heart-beat is held to the idle deadline too.
#[tokio::test]
async fn a_silent_1_2_client_without_heart_beats_is_closed_after_the_idle_timeout() {
    let hub = TestHub::with(short_deadlines(), static_directory()).await;
    let (mut silent, _) = hub
        .connect(&[("accept-version", "1.2"), ("heart-beat", "0,0")])
        .await;
    let frames = silent.frames_until_closed(Duration::from_secs(5)).await;
    assert!(
        frames.iter().any(|f| f.message().contains("idle")),
        "{frames:?}"
    );
}

/// Radios in the field are 1.0 and may send nothing but EOLs: any byte keeps the
/// session alive.
#[tokio::test]
async fn a_1_0_radio_sending_eols_is_kept() {
    let hub = TestHub::with(short_deadlines(), static_directory()).await;
    let mut radio = hub.radio().await;
    radio.subscribe(TEXT, Some("r"), &[NOFAST]).await;
    for _ in 0..10 {
        radio.send_raw(b"\n").await;
        radio.expect_silence(Duration::from_millis(300)).await;
    }
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT kept", &[]).await;
    assert_eq!(radio.expect("MESSAGE").await.body, b"TEXT kept");
}

/// A subscriber that never reads, with a queue large enough never to overflow: once
/// its socket is full, the blocked write is given up after the write timeout.
#[tokio::test]
async fn a_client_that_never_reads_is_dropped_after_the_write_timeout() {
    let config = HubConfig {
        outbound_queue: 100_000,
        write_timeout: Duration::from_secs(1),
        ..test_config()
    };
    let hub = TestHub::with(config, static_directory()).await;
    let mut stuck = hub.radio().await;
    stuck.subscribe(TEXT, Some("stuck"), &[NOFAST]).await;
    let mut healthy = hub.radio().await;
    healthy.subscribe(TEXT, Some("ok"), &[NOFAST]).await;
    let mut b = hub.broadcaster().await;
    let mut sent = 0;
    // Paced by the healthy radio; enough bytes to fill any loopback socket buffers.
    for i in 0..300 {
        let mut body = format!("TEXT {i:04} ").into_bytes();
        body.resize(200 * 1024, b'z');
        b.publish(TEXT, &body, &[]).await;
        assert_eq!(healthy.expect("MESSAGE").await.body, body, "message {i}");
        sent += 1;
        if hub.hub.stats().slow_consumers >= 1 {
            break;
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while hub.hub.stats().slow_consumers == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        hub.hub.stats().slow_consumers,
        1,
        "the client that never reads is still served after {sent} messages of 200 KB"
    );
    stuck.expect_closed(Duration::from_secs(10)).await;
    b.publish(TEXT, b"TEXT after", &[]).await;
    assert_eq!(healthy.expect("MESSAGE").await.body, b"TEXT after");
}

/// Writes `bytes` on a fresh connection, gives the server a moment to answer and
/// close, then reads to the end: what arrived, and whether the end was a clean close
/// (FIN) rather than a reset. A reset destroys whatever the client had not read yet
/// (at once on many systems, and on Linux whatever was still in flight), so a refused
/// client must see the FIN.
async fn refused(addr: &str, bytes: &[u8]) -> (Vec<u8>, Result<(), std::io::Error>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = tokio::time::timeout(WAIT, s.write_all(bytes)).await;
    // Long enough for the server to answer and close; the ERROR then waits unread.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let end = loop {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Err(_) => panic!(
                "not closed within {WAIT:?} after {:?}; got {:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(80)]),
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) => break Ok(()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => break Err(e),
        }
    };
    (got, end)
}

/// A refused CONNECT followed at once by more bytes than the server reads: the ERROR
/// must reach the client and the close must be graceful (no reset).
#[tokio::test]
async fn the_error_of_a_refused_connect_survives_what_the_client_sent_after_it() {
    let config = HubConfig {
        // No login throttling here: 20 rounds of wrong credentials.
        auth_failure_delay: Duration::ZERO,
        auth_max_failures: 1000,
        ..test_config()
    };
    let hub = TestHub::with(config, static_directory()).await;
    let wrong = format!("{PASSCODE}-wrong");
    // (command, headers, what the ERROR says)
    type Refusal<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let refusals: [Refusal; 3] = [
        (
            "CONNECT",
            vec![("login", LOGIN), ("passcode", &wrong)],
            "Wrong credentials",
        ),
        ("CONNECT", vec![("accept-version", "9.9")], "versions"),
        ("SEND", vec![("destination", TEXT)], "Expected CONNECT"),
    ];
    let junk = encode("SEND", &[("destination", TEXT)], &[b'j'; 60_000]);
    for round in 0..20 {
        for (command, headers, expected) in &refusals {
            let mut bytes = encode(command, headers, b"");
            bytes.extend_from_slice(&junk);
            let (got, end) = refused(&hub.addr, &bytes).await;
            let text = String::from_utf8_lossy(&got);
            assert!(
                text.starts_with("ERROR\n") && text.contains(expected),
                "round {round}, {command} {headers:?}: no ERROR: {text:?}"
            );
            assert!(
                end.is_ok(),
                "round {round}, {command} {headers:?}: reset instead of a close: {end:?}"
            );
        }
    }
}

/// The connection over `max_connections` also reads its ERROR, whatever it sent.
#[tokio::test]
async fn the_error_of_a_refused_connection_survives_what_the_client_sent() {
    let config = HubConfig {
        max_connections: 1,
        ..test_config()
    };
    let hub = TestHub::with(config, static_directory()).await;
    let _holder = hub.radio().await;
    let mut junk = encode("CONNECT", &[], b"");
    junk.extend_from_slice(&encode("SEND", &[("destination", TEXT)], &[b'j'; 60_000]));
    for round in 0..20 {
        let (got, end) = refused(&hub.addr, &junk).await;
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("ERROR\n") && text.contains("too many connections"),
            "round {round}: no ERROR: {text:?}"
        );
        assert!(
            end.is_ok(),
            "round {round}: reset instead of a close: {end:?}"
        );
    }
}

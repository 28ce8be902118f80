//! Delivery, topic matching and last-message replay over real sockets (docs/protocol.md#topics,
//! #subscribe, #send and #message-frame).

use std::time::Duration;

use testkit::harness::*;

const QUIET: Duration = Duration::from_millis(300);
const NOFAST: (&str, &str) = ("x-ebu-nofastreply", "yes");
const CHANNEL: &str = "/topic/fm/4e1/4001/09580/";
const CHANNEL_CC: &str = "/topic/fm/ch/4001/09580/";

fn assert_when_is_now(m: &Frame) {
    let when: u64 = m
        .get("when")
        .expect("when header")
        .parse()
        .expect("when is integer Unix seconds");
    let now = unix_now();
    assert!(when.abs_diff(now) <= 5, "when={when} now={now}");
}

// ---------------------------------------------------------------- delivery

#[tokio::test]
async fn broadcaster_message_reaches_gcc_and_cc_subscribers_in_their_own_form() {
    let hub = TestHub::start().await;
    let mut gcc = hub.radio().await;
    gcc.subscribe(TEXT, Some("g"), &[NOFAST]).await;
    let mut cc = hub.radio().await;
    cc.subscribe(TEXT_CC, Some("c"), &[NOFAST]).await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT hello", &[]).await;

    let m = gcc.expect("MESSAGE").await;
    assert_eq!(m.get("destination"), Some(TEXT));
    assert_eq!(m.body, b"TEXT hello");
    assert_eq!(m.get("subscription"), Some("g"));
    assert!(m.get("message-id").is_some_and(|v| !v.is_empty()), "{m:?}");
    assert_when_is_now(&m);

    let m2 = cc.expect("MESSAGE").await;
    assert_eq!(m2.get("destination"), Some(TEXT_CC));
    assert_eq!(m2.body, b"TEXT hello");
    assert_eq!(m2.get("subscription"), Some("c"));
    assert_eq!(m2.get("message-id"), m.get("message-id"));
    gcc.expect_silence(QUIET).await;
}

#[tokio::test]
async fn message_sent_to_cc_form_reaches_gcc_subscriber() {
    let hub = TestHub::start().await;
    let mut gcc = hub.radio().await;
    gcc.subscribe(TEXT, None, &[NOFAST]).await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT_CC, b"TEXT via cc", &[]).await;
    let m = gcc.expect("MESSAGE").await;
    assert_eq!(m.get("destination"), Some(TEXT));
    assert_eq!(m.body, b"TEXT via cc");
}

#[tokio::test]
async fn subscription_header_absent_in_1_0_without_id_present_in_1_2() {
    let hub = TestHub::start().await;
    let mut r10 = hub.radio().await;
    r10.subscribe(TEXT, None, &[NOFAST]).await;
    let mut r12 = hub.radio12().await;
    r12.subscribe(TEXT, None, &[NOFAST]).await;
    let mut r12id = hub.radio12().await;
    r12id.subscribe(TEXT, Some("sub-9"), &[NOFAST]).await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT v", &[]).await;
    let m = r10.expect("MESSAGE").await;
    assert_eq!(m.get("subscription"), None, "{m:?}");
    let m = r12.expect("MESSAGE").await;
    assert!(
        m.get("subscription").is_some_and(|s| !s.is_empty()),
        "{m:?}"
    );
    assert!(m.get("message-id").is_some(), "{m:?}");
    assert_eq!(m.body, b"TEXT v");
    let m = r12id.expect("MESSAGE").await;
    assert_eq!(m.get("subscription"), Some("sub-9"));
}

#[tokio::test]
async fn forwarded_headers_kept_and_others_dropped() {
    let hub = TestHub::start().await;
    let mut radio = hub.radio().await;
    radio.subscribe(TEXT, Some("0"), &[NOFAST]).await;
    let mut b = hub.broadcaster().await;
    b.publish(
        TEXT,
        b"TEXT headers",
        &[
            ("trigger-time", "NOW"),
            ("link", "https://radio1.example/now"),
            ("foo", "bar"),
            ("expires", "0"),
            ("priority", "9"),
            ("message-id", "mid-42"),
        ],
    )
    .await;
    let m = radio.expect("MESSAGE").await;
    assert_eq!(m.get("trigger-time"), Some("NOW"));
    assert_eq!(m.get("link"), Some("https://radio1.example/now"));
    assert_eq!(m.get("message-id"), Some("mid-42"));
    assert_eq!(m.get("foo"), None, "{m:?}");
    assert_eq!(m.get("expires"), None, "{m:?}");
    assert_eq!(m.get("priority"), None, "{m:?}");
    assert_when_is_now(&m);
    let allowed = [
        "destination",
        "subscription",
        "message-id",
        "when",
        "trigger-time",
        "link",
        "content-length",
        "content-type",
    ];
    for (k, _) in &m.headers {
        assert!(
            allowed.contains(&k.as_str()),
            "unexpected header {k}: {m:?}"
        );
    }
}

#[tokio::test]
async fn a_client_when_header_is_replaced_by_the_server() {
    let hub = TestHub::start().await;
    let mut radio = hub.radio().await;
    radio.subscribe(TEXT, Some("0"), &[NOFAST]).await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT w", &[("when", "12")]).await;
    let m = radio.expect("MESSAGE").await;
    assert_when_is_now(&m);
    let whens = m.headers.iter().filter(|(k, _)| k == "when").count();
    assert_eq!(whens, 1, "{m:?}");
}

// ---------------------------------------------------------------- matching

#[tokio::test]
async fn channel_topic_subscription_receives_exactly_that_topic() {
    let hub = TestHub::start().await;
    let mut radio = hub.radio().await;
    radio.subscribe(CHANNEL, Some("ch"), &[NOFAST]).await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT not the channel", &[]).await;
    b.publish(CHANNEL, b"TEXT channel", &[]).await;
    let m = radio.expect("MESSAGE").await;
    assert_eq!(m.body, b"TEXT channel");
    assert_eq!(m.get("destination"), Some(CHANNEL));
    radio.expect_silence(QUIET).await;
}

#[tokio::test]
async fn channel_topic_in_cc_form_receives_gcc_channel_messages() {
    let hub = TestHub::start().await;
    let mut radio = hub.radio().await;
    radio.subscribe(CHANNEL_CC, Some("ch"), &[NOFAST]).await;
    let mut b = hub.broadcaster().await;
    b.publish(CHANNEL, b"TEXT channel", &[]).await;
    let m = radio.expect("MESSAGE").await;
    assert_eq!(m.get("destination"), Some(CHANNEL_CC));
}

#[tokio::test]
async fn star_wildcard_receives_any_frequency() {
    let hub = TestHub::start().await;
    let mut radio = hub.radio().await;
    let pattern = "/topic/fm/4e1/4001/*/text";
    radio.subscribe(pattern, Some("w"), &[NOFAST]).await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT gcc", &[]).await;
    b.publish(TEXT_CC, b"TEXT cc", &[]).await;
    b.publish("/topic/fm/4e1/4001/09580/image", b"SHOW x", &[])
        .await;
    let m = radio.expect("MESSAGE").await;
    assert_eq!(m.body, b"TEXT gcc");
    assert_eq!(m.get("destination"), Some(pattern));
    assert_eq!(radio.expect("MESSAGE").await.body, b"TEXT cc");
    radio.expect_silence(QUIET).await;
}

#[tokio::test]
async fn star_wildcard_in_other_positions() {
    let hub = TestHub::start().await;
    let mut radio = hub.radio().await;
    radio
        .subscribe("/topic/*/4e1/4001/4001/0/text", Some("w"), &[NOFAST])
        .await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT fm", &[]).await;
    b.publish("/topic/dab/4e1/4001/4001/0/text", b"TEXT dab", &[])
        .await;
    assert_eq!(radio.expect("MESSAGE").await.body, b"TEXT dab");
    radio.expect_silence(QUIET).await;
}

#[tokio::test]
async fn unknown_fm_frequency_falls_back_to_any_frequency_of_the_pi() {
    let hub = TestHub::start().await;
    let mut radio = hub.radio().await;
    let unknown = "/topic/fm/4e1/4001/09999/text";
    radio.subscribe(unknown, Some("f"), &[NOFAST]).await;
    let mut cc = hub.radio().await;
    let unknown_cc = "/topic/fm/ch/4001/09999/text";
    cc.subscribe(unknown_cc, Some("f"), &[NOFAST]).await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT fallback", &[]).await;
    let m = radio.expect("MESSAGE").await;
    assert_eq!(m.body, b"TEXT fallback");
    assert_eq!(m.get("destination"), Some(unknown));
    let m = cc.expect("MESSAGE").await;
    assert_eq!(m.get("destination"), Some(unknown_cc));
    // Only the same type.
    b.publish("/topic/fm/4e1/4001/09580/image", b"SHOW x", &[])
        .await;
    radio.expect_silence(QUIET).await;
}

#[tokio::test]
async fn known_fm_channel_does_not_receive_other_frequencies() {
    let hub = TestHub::start().await;
    let mut radio = hub.radio().await;
    radio
        .subscribe("/topic/fm/4e1/4001/10230/text", Some("k"), &[NOFAST])
        .await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT other freq", &[]).await;
    radio.expect_silence(QUIET).await;
}

#[tokio::test]
async fn other_pi_does_not_receive() {
    let hub = TestHub::start().await;
    let mut radio = hub.radio().await;
    radio
        .subscribe("/topic/fm/4e1/4009/09999/text", Some("k"), &[NOFAST])
        .await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT other pi", &[]).await;
    radio.expect_silence(QUIET).await;
}

// ---------------------------------------------------------------- last-message replay

/// Sends `body` to `topic` and waits until a witness radio got it, so the hub has
/// recorded it as the last message.
async fn send_and_settle(hub: &TestHub, topic: &str, body: &[u8]) {
    let mut witness = hub.radio().await;
    witness.subscribe(topic, Some("w"), &[NOFAST]).await;
    let mut b = hub.broadcaster().await;
    b.publish(topic, body, &[("link", "https://r1.example/")])
        .await;
    assert_eq!(witness.expect("MESSAGE").await.body, body);
}

#[tokio::test]
async fn subscribe_after_send_replays_the_last_message() {
    let hub = TestHub::start().await;
    send_and_settle(&hub, TEXT, b"TEXT first").await;
    send_and_settle(&hub, TEXT, b"TEXT last").await;
    let mut radio = hub.radio().await;
    radio.subscribe(TEXT, Some("r"), &[]).await;
    let m = radio.expect("MESSAGE").await;
    assert_eq!(m.body, b"TEXT last");
    assert_eq!(m.get("destination"), Some(TEXT));
    assert_eq!(m.get("subscription"), Some("r"));
    assert_eq!(m.get("link"), Some("https://r1.example/"));
    assert!(m.get("message-id").is_some());
    radio.expect_silence(QUIET).await;
}

#[tokio::test]
async fn replay_in_1_2_has_subscription_header() {
    let hub = TestHub::start().await;
    send_and_settle(&hub, TEXT, b"TEXT last").await;
    let mut radio = hub.radio12().await;
    radio.subscribe(TEXT, None, &[]).await;
    let m = radio.expect("MESSAGE").await;
    assert_eq!(m.body, b"TEXT last");
    assert!(m.get("subscription").is_some(), "{m:?}");
}

#[tokio::test]
async fn nofastreply_gets_no_replay() {
    let hub = TestHub::start().await;
    send_and_settle(&hub, TEXT, b"TEXT last").await;
    let mut radio = hub.radio().await;
    radio.subscribe(TEXT, Some("r"), &[NOFAST]).await;
    radio.expect_silence(QUIET).await;
}

#[tokio::test]
async fn replay_across_cc_and_gcc_forms() {
    let hub = TestHub::start().await;
    send_and_settle(&hub, TEXT_CC, b"TEXT sent as cc").await;
    let mut radio = hub.radio().await;
    radio.subscribe(TEXT, Some("r"), &[]).await;
    let m = radio.expect("MESSAGE").await;
    assert_eq!(m.body, b"TEXT sent as cc");
    assert_eq!(m.get("destination"), Some(TEXT));

    let image = "/topic/fm/4e1/4001/09580/image";
    send_and_settle(&hub, image, b"SHOW sent as gcc").await;
    let mut radio = hub.radio().await;
    let image_cc = "/topic/fm/ch/4001/09580/image";
    radio.subscribe(image_cc, Some("r"), &[]).await;
    let m = radio.expect("MESSAGE").await;
    assert_eq!(m.body, b"SHOW sent as gcc");
    assert_eq!(m.get("destination"), Some(image_cc));
}

#[tokio::test]
async fn wildcard_replay_gets_the_newest_matching() {
    let hub = TestHub::start().await;
    send_and_settle(&hub, "/topic/dab/4e1/4001/4001/0/text", b"TEXT dab old").await;
    send_and_settle(&hub, TEXT, b"TEXT fm newest").await;
    send_and_settle(&hub, "/topic/fm/4e1/4001/09580/image", b"SHOW not text").await;
    let mut radio = hub.radio().await;
    radio
        .subscribe("/topic/*/4e1/4001/*/text", Some("r"), &[])
        .await;
    let m = radio.expect("MESSAGE").await;
    assert_eq!(m.body, b"TEXT fm newest");
    radio.expect_silence(QUIET).await;
    let mut radio = hub.radio().await;
    radio
        .subscribe("/topic/dab/4e1/4001/*/0/text", Some("r"), &[])
        .await;
    assert_eq!(radio.expect("MESSAGE").await.body, b"TEXT dab old");
}

#[tokio::test]
async fn fallback_subscription_replays_the_newest_of_the_pi() {
    let hub = TestHub::start().await;
    send_and_settle(&hub, TEXT, b"TEXT on 09580").await;
    let mut radio = hub.radio().await;
    let unknown = "/topic/fm/4e1/4001/09999/text";
    radio.subscribe(unknown, Some("r"), &[]).await;
    let m = radio.expect("MESSAGE").await;
    assert_eq!(m.body, b"TEXT on 09580");
    assert_eq!(m.get("destination"), Some(unknown));
}

#[tokio::test]
async fn no_replay_when_nothing_was_sent() {
    let hub = TestHub::start().await;
    let mut radio = hub.radio().await;
    radio.subscribe(TEXT, Some("r"), &[]).await;
    radio.expect_silence(QUIET).await;
}

#[tokio::test]
async fn resubscribing_the_same_id_does_not_duplicate_delivery() {
    let hub = TestHub::start().await;
    let mut radio = hub.radio().await;
    radio.subscribe(TEXT, Some("same"), &[NOFAST]).await;
    radio.subscribe(TEXT, Some("same"), &[NOFAST]).await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT once", &[]).await;
    assert_eq!(radio.expect("MESSAGE").await.body, b"TEXT once");
    radio.expect_silence(QUIET).await;
}

#[tokio::test]
async fn two_subscriptions_of_one_session_each_get_the_message() {
    let hub = TestHub::start().await;
    let mut radio = hub.radio().await;
    radio.subscribe(TEXT, Some("a"), &[NOFAST]).await;
    radio.subscribe(TEXT_CC, Some("b"), &[NOFAST]).await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT twice", &[]).await;
    let m1 = radio.expect("MESSAGE").await;
    let m2 = radio.expect("MESSAGE").await;
    let mut subs = vec![
        m1.get("subscription").map(str::to_owned),
        m2.get("subscription").map(str::to_owned),
    ];
    subs.sort();
    assert_eq!(subs, vec![Some("a".to_owned()), Some("b".to_owned())]);
}

#[tokio::test]
async fn upper_case_gcc_and_cc_wildcards_match_the_normalised_form() {
    let hub = TestHub::start().await;
    let mut upper = hub.radio().await;
    let upper_dest = "/topic/fm/4E1/4001/09580/text";
    upper.subscribe(upper_dest, Some("u"), &[NOFAST]).await;
    let mut cc_star = hub.radio().await;
    let cc_star_dest = "/topic/fm/ch/4001/*/text";
    cc_star.subscribe(cc_star_dest, Some("w"), &[NOFAST]).await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT norm", &[]).await;
    let m = upper.expect("MESSAGE").await;
    assert_eq!(m.get("destination"), Some(upper_dest));
    let m = cc_star.expect("MESSAGE").await;
    assert_eq!(m.get("destination"), Some(cc_star_dest));
    assert_eq!(m.body, b"TEXT norm");
}

#[tokio::test]
async fn unknown_fm_channel_topic_falls_back_to_the_channel_of_any_frequency() {
    let hub = TestHub::start().await;
    let mut radio = hub.radio().await;
    let unknown = "/topic/fm/4e1/4001/09999/";
    radio.subscribe(unknown, Some("c"), &[NOFAST]).await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT not a channel message", &[]).await;
    b.publish(CHANNEL, b"TEXT channel message", &[]).await;
    let m = radio.expect("MESSAGE").await;
    assert_eq!(m.body, b"TEXT channel message");
    assert_eq!(m.get("destination"), Some(unknown));
    radio.expect_silence(QUIET).await;
}

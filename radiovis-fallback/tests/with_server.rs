//! A server (the hub on RabbitMQ) and the watchdog process on one broker, with the
//! PlugIt test server as directory: a radio on a quiet channel gets the default TEXT
//! and SHOW within FB_FALLBACK_TIME + FB_FALLBACK_CHECK, then its broadcaster's
//! messages while it publishes; PlugIt down for a while loses no log entry once it is
//! back. Skipped when RabbitMQ is absent, unless RADIOVIS_REQUIRE_SERVICES=1.

use std::process::Stdio;
use std::time::{Duration, Instant};

use radiovis::backend::memory::MemoryCache;
use radiovis::backend::plugit::{PlugitConfig, PlugitDirectory};
use radiovis::backend::rabbitmq::{QueueKind, RabbitBus, RabbitConfig};
use radiovis::client::Client;
use radiovis::stomp::{Command, Frame};
use radiovis::{HubConfig, StompHub};
use testkit::plugit_server::{Fault, PlugitServer, PASSWORD};
use tokio::process::Command as Process;
use tokio_util::sync::CancellationToken;

const CHANNEL: &str = "/topic/fm/4e1/4001/09580/";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_channel_default_live_messages_and_plugit_outage() {
    if !testkit::services::broker_up(module_path!()).await {
        return;
    }
    let id = uuid::Uuid::new_v4();
    let exchange = format!("radiovis-test-srvfb-{id}");
    let queue = format!("radiovis-test-srvfb-logs-{id}");
    let plugit = PlugitServer::start().await;

    // The server: a hub on RabbitMQ, PlugIt as directory.
    let bus = RabbitBus::connect(
        RabbitConfig::default()
            .with_exchange(exchange.clone())
            .with_queue(QueueKind::Instance),
    )
    .await
    .expect("server bus");
    assert!(bus.wait_connected(Duration::from_secs(10)).await);
    let mut plugit_config = PlugitConfig::new(plugit.base_url());
    plugit_config.timeout = Duration::from_millis(500);
    let hub = StompHub::new(
        bus,
        PlugitDirectory::new(plugit_config).expect("plugit"),
        MemoryCache::new(),
        HubConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move { hub.run(vec![listener], stop).await }
    });

    // A radio on the quiet channel, then the watchdog starts.
    let mut radio = Client::connect(addr, &[]).await.expect("radio");
    for (i, t) in ["text", "image"].iter().enumerate() {
        radio
            .send_with_receipt(
                Frame::new(Command::Subscribe)
                    .header("destination", format!("{CHANNEL}{t}"))
                    .header("id", i.to_string()),
            )
            .await
            .expect("subscribed");
    }
    radio.sync().await.expect("subscriptions in place");
    let mut watchdog = Process::new(env!("CARGO_BIN_EXE_radiovis-fallback"))
        .env("RABBITMQ_HOST", "127.0.0.1")
        // Its operations port would clash with the other watchdogs' (FB_HTTP_PORT).
        .env("FB_HTTP_PORT", "off")
        .env("RABBITMQ_EXCHANGE", &exchange)
        .env("FB_QUEUE", &queue)
        .env("RADIODNS_API_URL", plugit.base_url())
        .env("RADIOVIS_DIRECTORY_TIMEOUT", "0.5")
        .env("FB_FALLBACK_CHECK", "1")
        .env("FB_FALLBACK_TIME", "3")
        .env("RUST_LOG", "warn")
        .env("RABBITMQ_DEBUG", "False")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start radiovis-fallback");

    // Default TEXT and SHOW within FB_FALLBACK_TIME + FB_FALLBACK_CHECK (+ start-up).
    let started = Instant::now();
    let (mut text, mut show) = (None, None);
    while text.is_none() || show.is_none() {
        let f = radio
            .next_frame_within(Duration::from_secs(8).saturating_sub(started.elapsed()))
            .await
            .expect("read")
            .expect("defaults within FB_FALLBACK_TIME + FB_FALLBACK_CHECK");
        match f.get("destination") {
            Some(d) if d.ends_with("text") => text = Some(f),
            Some(d) if d.ends_with("image") => show = Some(f),
            _ => {}
        }
    }
    let text = text.expect("text");
    assert_eq!(&text.body[..], b"TEXT Radio One");
    assert_eq!(text.get("trigger-time"), Some("NOW"));
    assert_eq!(text.get("subscription"), Some("0"));
    assert_eq!(
        &show.expect("show").body[..],
        b"SHOW http://img.example/r1.png"
    );

    // The broadcaster publishes every second: the radio gets each message and no
    // default while the channel is alive.
    let mut broadcaster = Client::connect(addr, &[("login", "1.radio1"), ("passcode", PASSWORD)])
        .await
        .expect("broadcaster");
    let mut defaults_while_live = 0;
    for i in 0..6 {
        let body = format!("TEXT live {i}");
        broadcaster
            .send(&format!("{CHANNEL}text"), body.clone(), &[])
            .await
            .expect("send");
        let until = Instant::now() + Duration::from_secs(1);
        let mut got = false;
        while let Some(f) = radio
            .next_frame_within(until.saturating_duration_since(Instant::now()))
            .await
            .expect("read")
        {
            if f.body[..] == *body.as_bytes() {
                got = true;
            } else if f.get("trigger-time") == Some("NOW") && i > 1 {
                defaults_while_live += 1;
            }
        }
        assert!(got, "live message {i} delivered");
    }
    assert_eq!(
        defaults_while_live, 0,
        "no default while the broadcaster publishes"
    );

    // PlugIt down: messages keep coming; once it is back every one is logged.
    plugit.set_fault(Fault::Status500);
    for i in 0..10 {
        broadcaster
            .send(
                &format!("{CHANNEL}text"),
                format!("TEXT during outage {i}"),
                &[],
            )
            .await
            .expect("send");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let back_at = plugit.requests().len();
    plugit.set_fault(Fault::None);
    let start = Instant::now();
    loop {
        let written: Vec<String> = plugit.requests()[back_at..]
            .iter()
            .filter(|r| r.action == "add_log")
            .filter_map(|r| r.param("message").map(str::to_owned))
            .collect();
        let missing: Vec<usize> = (0..10)
            .filter(|i| !written.contains(&format!("TEXT during outage {i}")))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "log entries lost: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let _ = watchdog.start_kill();
    let _ = watchdog.wait().await;
    stop.cancel();
    testkit::services::cleanup_broker(&exchange, &queue).await;
}

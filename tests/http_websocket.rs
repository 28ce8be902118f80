//! WebSocket transports over real sockets: EBU player mode on `/topic/...`
//! (docs/protocol.md#websocket-ebu) parsed the way EBU's player parses it, and STOMP
//! over WebSocket on `/stomp` (docs/protocol.md#stomp-over-websocket) with subprotocol
//! negotiation and the full session.

use std::collections::HashMap;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use radiovis::http::HttpConfig;
use testkit::harness::*;
use testkit::web::{get, serve_http};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const SERVICE: &str = "/topic/fm/4e1/4001/09580";
const IMAGE: &str = "/topic/fm/4e1/4001/09580/image";

async fn text(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(Message::Binary(b)))) => return String::from_utf8_lossy(&b).into_owned(),
            Ok(Some(Ok(_))) => {}
            other => panic!("no text message: {other:?}"),
        }
    }
}

/// A message as EBU's player reads it: split on `\n`, skip one leading empty line,
/// command, `name:value` headers up to an empty line, the rest joined as the body.
struct Parsed {
    command: String,
    headers: HashMap<String, String>,
    body: String,
}

fn parse_like_the_player(message: &str) -> Parsed {
    let lines: Vec<&str> = message.split('\n').collect();
    let start = if lines[0].is_empty() { 1 } else { 0 };
    let command = lines[start].to_owned();
    let mut headers = HashMap::new();
    let mut body = Vec::new();
    let mut in_headers = true;
    for line in &lines[start + 1..] {
        if in_headers && line.is_empty() {
            in_headers = false;
        } else if in_headers {
            let (k, v) = line.split_once(':').expect("header with a colon");
            headers.insert(k.to_owned(), v.to_owned());
        } else {
            body.push(*line);
        }
    }
    Parsed {
        command,
        headers,
        body: body.join("\n"),
    }
}

#[tokio::test]
async fn ebu_mode_says_hello_replays_and_forwards_frames_the_player_understands() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    let mut b = hub.broadcaster().await;
    b.publish(
        IMAGE,
        b"SHOW https://example.org/a.png",
        &[("link", "https://example.org/")],
    )
    .await;

    let (mut ws, _) = connect_async(format!("ws://{http}{SERVICE}"))
        .await
        .expect("WebSocket");
    let hello = text(&mut ws).await;
    assert_eq!(hello, "RADIOVISWEBSOCKET:HELLO\0");
    assert_eq!(hello.split(':').nth(1), Some("HELLO\0"));

    let replay = parse_like_the_player(&text(&mut ws).await);
    assert_eq!(replay.command, "MESSAGE");
    assert_eq!(replay.headers["destination"], format!("{SERVICE}/image"));
    assert_eq!(replay.headers["link"], "https://example.org/");
    assert_eq!(replay.body, "SHOW https://example.org/a.png");

    b.publish(TEXT, b"TEXT Now playing: a song", &[]).await;
    let live = parse_like_the_player(&text(&mut ws).await);
    assert_eq!(live.headers["destination"], format!("{SERVICE}/text"));
    // No NUL: the player shows the body as it is.
    assert_eq!(live.body, "TEXT Now playing: a song");
}

#[tokio::test]
async fn ebu_mode_on_a_cc_form_path_receives_gcc_form_messages() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    let cc = "/topic/fm/ch/4001/09580";
    let (mut ws, _) = connect_async(format!("ws://{http}{cc}"))
        .await
        .expect("WebSocket");
    assert_eq!(text(&mut ws).await, "RADIOVISWEBSOCKET:HELLO\0");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT cc", &[]).await;
    let m = parse_like_the_player(&text(&mut ws).await);
    // The destination is the player's own topic, which is what it compares with.
    assert_eq!(m.headers["destination"], format!("{cc}/text"));
    assert_eq!(m.body, "TEXT cc");
}

#[tokio::test]
async fn ebu_mode_on_a_bad_path_says_error_and_closes() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    let (mut ws, _) = connect_async(format!("ws://{http}/topic/fm/zz/nothex/1"))
        .await
        .expect("WebSocket");
    assert_eq!(text(&mut ws).await, "RADIOVISWEBSOCKET:HELLO\0");
    let error = text(&mut ws).await;
    let parts: Vec<&str> = error.split(':').collect();
    assert_eq!(&parts[..2], &["RADIOVISWEBSOCKET", "ERROR"], "{error:?}");
    assert_eq!(parts.len(), 3, "the reason holds no colon: {error:?}");
    assert!(error.ends_with('\0'));
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "not closed");
    // A plain GET on such a path asks for the upgrade.
    let r = get(&http, SERVICE, WAIT).await;
    assert_eq!(r.status, 426);
}

#[tokio::test]
async fn an_ebu_player_that_never_reads_is_dropped() {
    let config = radiovis::HubConfig {
        outbound_queue: 4,
        ..test_config()
    };
    let hub = TestHub::with(config, static_directory()).await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    let mut b = hub.broadcaster().await;
    let (ws, _) = connect_async(format!("ws://{http}{SERVICE}"))
        .await
        .expect("WebSocket");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let connections = hub.hub.stats().connections;
    let big = format!("TEXT {}", "x".repeat(512 * 1024));
    let mut sent = 0;
    while hub.hub.stats().slow_consumers == 0 {
        assert!(sent < 200, "never dropped after {sent} messages");
        b.publish(TEXT, big.as_bytes(), &[]).await;
        sent += 1;
    }
    // Its place is given back.
    let deadline = tokio::time::Instant::now() + WAIT;
    while hub.hub.stats().connections >= connections {
        assert!(tokio::time::Instant::now() < deadline, "still counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(ws);
    hub.assert_still_serves(TEXT).await;
}

/// STOMP frames from WebSocket messages (several per message, or split across).
struct StompWs {
    ws: Ws,
    buffer: String,
}

impl StompWs {
    async fn open(http: &str, protocols: &str) -> (StompWs, Option<String>) {
        let mut req = format!("ws://{http}/stomp")
            .into_client_request()
            .expect("request");
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.parse().expect("header"));
        let (ws, response) = connect_async(req).await.expect("WebSocket");
        let chosen = response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (
            StompWs {
                ws,
                buffer: String::new(),
            },
            chosen,
        )
    }

    async fn send(&mut self, frame: &str) {
        self.ws
            .send(Message::text(frame.to_owned()))
            .await
            .expect("send");
    }

    /// The next frame that is not a heart-beat, as (command, headers, body).
    async fn frame(&mut self) -> (String, HashMap<String, String>, String) {
        loop {
            let trimmed = self.buffer.trim_start_matches(['\n', '\r']).to_owned();
            self.buffer = trimmed;
            if let Some(end) = self.buffer.find('\0') {
                let frame: String = self.buffer.drain(..=end).collect();
                let frame = &frame[..frame.len() - 1];
                let (head, body) = frame.split_once("\n\n").unwrap_or((frame, ""));
                let mut lines = head.lines();
                let command = lines.next().unwrap_or("").to_owned();
                let headers = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                return (command, headers, body.to_owned());
            }
            let more = text(&mut self.ws).await;
            self.buffer.push_str(&more);
        }
    }
}

#[tokio::test]
async fn stomp_over_websocket_runs_the_full_session() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    let (mut radio, chosen) = StompWs::open(&http, "v10.stomp, v12.stomp").await;
    assert_eq!(chosen.as_deref(), Some("v12.stomp"));
    radio
        .send("CONNECT\naccept-version:1.2\nhost:radiovis\nheart-beat:0,0\n\n\0")
        .await;
    let (command, headers, _) = radio.frame().await;
    assert_eq!(command, "CONNECTED");
    assert_eq!(headers["version"], "1.2");
    // Two frames in one WebSocket message.
    radio
        .send(&format!(
            "SUBSCRIBE\nid:0\ndestination:{TEXT}\n\n\0SUBSCRIBE\nid:1\ndestination:{IMAGE}\nreceipt:r1\n\n\0"
        ))
        .await;
    let (command, headers, _) = radio.frame().await;
    assert_eq!(
        (command.as_str(), headers["receipt-id"].as_str()),
        ("RECEIPT", "r1")
    );

    let mut b = hub.broadcaster().await;
    b.publish(TEXT, b"TEXT over STOMP over WebSocket", &[])
        .await;
    let (command, headers, body) = radio.frame().await;
    assert_eq!(command, "MESSAGE");
    assert_eq!(headers["subscription"], "0");
    assert_eq!(headers["destination"], TEXT);
    assert_eq!(body, "TEXT over STOMP over WebSocket");

    // A broadcaster over WebSocket publishes (with the ACL) to a TCP radio.
    let mut tcp_radio = hub.radio().await;
    tcp_radio
        .subscribe(IMAGE, Some("t"), &[("x-ebu-nofastreply", "yes")])
        .await;
    let (mut caster, _) = StompWs::open(&http, "v11.stomp").await;
    caster
        .send(&format!(
            "CONNECT\naccept-version:1.1\nlogin:{LOGIN}\npasscode:{PASSCODE}\n\n\0"
        ))
        .await;
    assert_eq!(caster.frame().await.0, "CONNECTED");
    // Split across two WebSocket messages, one of them binary.
    caster
        .ws
        .send(Message::binary(
            format!("SEND\ndestination:{IMAGE}\nrec").into_bytes(),
        ))
        .await
        .expect("send");
    caster
        .send("eipt:s1\n\nSHOW https://example.org/ws.png\0")
        .await;
    assert_eq!(caster.frame().await.0, "RECEIPT");
    let m = tcp_radio.expect("MESSAGE").await;
    assert_eq!(m.body, b"SHOW https://example.org/ws.png");
    // No rights on another station's channel: ERROR, as on TCP.
    caster
        .send("SEND\ndestination:/topic/fm/4e1/4003/09000/text\n\nTEXT no\0")
        .await;
    let (command, headers, _) = caster.frame().await;
    assert_eq!(command, "ERROR");
    assert!(headers["message"].contains("cannot"), "{headers:?}");
}

#[tokio::test]
async fn stomp_over_websocket_refuses_unknown_subprotocols() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    let mut req = format!("ws://{http}/stomp")
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
    let Err(err) = connect_async(req).await else {
        panic!("accepted an unknown subprotocol");
    };
    assert!(err.to_string().contains("400"), "{err}");
}

#[tokio::test]
async fn websockets_keep_their_place_under_the_per_address_limit() {
    let config = radiovis::HubConfig {
        max_connections_per_address: 2,
        ..test_config()
    };
    let hub = TestHub::with(config, static_directory()).await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    let _radio = hub.radio().await;
    let (mut player, _) = connect_async(format!("ws://{http}{SERVICE}"))
        .await
        .expect("WebSocket");
    assert_eq!(text(&mut player).await, "RADIOVISWEBSOCKET:HELLO\0");
    // The player holds the second place: a third connection is refused.
    let mut third = hub.conn().await;
    let e = third.expect("ERROR").await;
    assert!(e.message().contains("limit is 2"), "{e:?}");
    // Once the player has gone, its place is free again.
    drop(player);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut c = hub.conn().await;
        c.send_frame("CONNECT", &[], b"").await;
        if c.frame().await.command == "CONNECTED" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "place never given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // STOMP over WebSocket takes one place too (not two).
    let (mut stomp, _) = StompWs::open(&http, "v12.stomp").await;
    stomp.send("CONNECT\naccept-version:1.2\n\n\0").await;
    assert_eq!(stomp.frame().await.0, "CONNECTED");
}

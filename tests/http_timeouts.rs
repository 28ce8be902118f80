//! The HTTP listener's time bounds over raw TCP sockets (docs/protocol.md#http-listener):
//! a request head that stops arriving gets `408` and the connection is closed, an idle
//! keep-alive connection is closed without a word, and a client that takes none of its
//! answers is dropped. Each waits for the listener's 30 s, so they run side by side.

use std::time::Duration;

use radiovis::http::HttpConfig;
use testkit::harness::*;
use testkit::web::serve_http;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The listener's bound (30 s) and some room for a loaded machine.
const BOUND: Duration = Duration::from_secs(45);

async fn read_all(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    tokio::time::timeout(BOUND, stream.read_to_end(&mut seen))
        .await
        .expect("the server closes the connection within its bound")
        .expect("a clean close");
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn a_head_that_stops_arriving_gets_408_and_an_idle_connection_is_closed() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    let mut partial = TcpStream::connect(&http).await.expect("connect");
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write half a head");
    let mut idle = TcpStream::connect(&http).await.expect("connect");
    let started = tokio::time::Instant::now();
    let (partial, idle) = tokio::join!(read_all(&mut partial), read_all(&mut idle));
    assert!(
        started.elapsed() >= Duration::from_secs(20),
        "closed after {:?}, before the 30 s a head may take",
        started.elapsed()
    );
    assert!(partial.starts_with("HTTP/1.1 408 "), "{partial:?}");
    assert!(partial.contains("connection: close"), "{partial:?}");
    assert_eq!(idle, "", "an idle connection is closed without an answer");
}

#[tokio::test]
async fn a_client_that_takes_none_of_its_answers_is_dropped() {
    let hub = TestHub::start().await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    let socket = TcpSocket::new_v4().expect("socket");
    // A small receive window, so that the server's writes block soon.
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let addr = http.parse().expect("listener address");
    let stream = socket.connect(addr).await.expect("connect");
    let (_unread, mut writer) = stream.into_split();
    // Pipelined requests, never an answer read: once the server's writes block it
    // stops reading, and these writes block too, until the server drops the client.
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(64);
    let ended = tokio::time::timeout(BOUND, async {
        loop {
            if let Err(e) = writer.write_all(&request).await {
                return e;
            }
        }
    })
    .await
    .expect("the client is dropped within the write bound");
    assert!(
        matches!(
            ended.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{ended:?}"
    );
}

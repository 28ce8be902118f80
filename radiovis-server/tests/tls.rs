//! TLS on the real server (docs/protocol.md#tls), with self-signed certificates made
//! here (rcgen) and a rustls client that trusts only the certificate it is given:
//! STOMP over TLS receives a published slide while a plain client on the plain port
//! still does; HTTPS serves the HTTP routes; SIGHUP makes new handshakes use a renewed
//! certificate, keeps the old one when the renewal is bad, and leaves open connections
//! alone; a bad TLS configuration stops start-up with exit code 78 naming the variable.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use testkit::harness::Conn;
use testkit::processes::Process;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const SERVER: &str = env!("CARGO_BIN_EXE_radiovis-server");
const WAIT: Duration = Duration::from_secs(15);

/// A self-signed certificate for `localhost`: (certificate PEM, key PEM).
fn self_signed() -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    (c.cert.pem(), c.signing_key.serialize_pem())
}

/// A directory of the test's own, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        let d = std::env::temp_dir().join(format!("radiovis-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).expect("temp dir");
        Dir(d)
    }
    fn cert(&self) -> PathBuf {
        self.0.join("cert.pem")
    }
    fn key(&self) -> PathBuf {
        self.0.join("key.pem")
    }
    /// Writes the pair as a renewal tool would: each file replaced whole.
    fn install(&self, cert: &str, key: &str) {
        for (path, text) in [(self.cert(), cert), (self.key(), key)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).expect("write");
            std::fs::rename(&tmp, &path).expect("rename");
        }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The address a listening line names (`... <what> addr=127.0.0.1:<port>`).
fn address(server: &Process, what: &str) -> String {
    let line = server
        .log
        .matching(what)
        .pop()
        .unwrap_or_else(|| panic!("no {what:?} line"));
    let rest = line.split("addr=").nth(1).expect("addr=");
    rest.split_whitespace().next().expect("address").to_owned()
}

struct Addrs {
    plain: String,
    tls: String,
    https: String,
}

async fn start(dir: &Dir) -> (Process, Addrs) {
    let directory = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/directory.toml");
    let env = [
        ("STOMP_IP", "127.0.0.1".to_owned()),
        ("STOMP_PORT", "0".to_owned()),
        ("STOMP_TLS_PORT", "0".to_owned()),
        ("HTTP_PORT", "off".to_owned()),
        ("HTTP_IP", "127.0.0.1".to_owned()),
        ("HTTP_TLS_PORT", "0".to_owned()),
        ("TLS_CERT_FILE", dir.cert().display().to_string()),
        ("TLS_KEY_FILE", dir.key().display().to_string()),
        ("RADIOVIS_DIRECTORY", directory.to_owned()),
        ("RADIOVIS_WATCHDOG", "off".to_owned()),
        ("RADIOVIS_AUTH_DELAY", "0".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ];
    let mut server =
        Process::spawn("server", Path::new(SERVER), &[], &env).expect("start radiovis-server");
    for what in [
        "listening for STOMP connections",
        "listening for STOMP over TLS connections",
        "listening for HTTPS connections",
    ] {
        server
            .wait_log(what, Duration::from_secs(30))
            .await
            .expect("listens");
    }
    let addrs = Addrs {
        plain: address(&server, "listening for STOMP connections"),
        tls: address(&server, "listening for STOMP over TLS connections"),
        https: address(&server, "listening for HTTPS connections"),
    };
    (server, addrs)
}

/// A TLS connection to `addr` (SNI `localhost`) that trusts only `trusted`.
async fn tls_connect(
    addr: &str,
    trusted: &str,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(trusted.as_bytes()).expect("pem"))
        .expect("a trust anchor");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// Reads from `stream` into `buf` until it holds `needle` (panics after [`WAIT`]).
async fn read_until(stream: &mut TlsStream<TcpStream>, buf: &mut Vec<u8>, needle: &str) {
    let found = tokio::time::timeout(WAIT, async {
        loop {
            if buf.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                return true;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert_eq!(
        found,
        Ok(true),
        "{needle:?} not received; got {:?}",
        String::from_utf8_lossy(buf)
    );
}

/// A STOMP 1.2 radio over TLS subscribed to `topic`.
async fn tls_radio(addr: &str, trusted: &str, topic: &str) -> (TlsStream<TcpStream>, Vec<u8>) {
    let mut s = tls_connect(addr, trusted, &[])
        .await
        .expect("TLS handshake");
    let mut buf = Vec::new();
    s.write_all(b"CONNECT\naccept-version:1.2\nhost:localhost\n\n\0")
        .await
        .expect("write");
    read_until(&mut s, &mut buf, "CONNECTED").await;
    let sub =
        format!("SUBSCRIBE\ndestination:{topic}\nid:0\nreceipt:sub\nx-ebu-nofastreply:yes\n\n\0");
    s.write_all(sub.as_bytes()).await.expect("write");
    read_until(&mut s, &mut buf, "receipt-id:sub").await;
    buf.clear();
    (s, buf)
}

#[tokio::test]
async fn tls_and_plain_radios_receive_a_slide_and_https_serves_the_routes() {
    let dir = Dir::new();
    let (cert, key) = self_signed();
    dir.install(&cert, &key);
    let (_server, addrs) = start(&dir).await;
    let topic = format!(
        "/topic/fm/4e1/4001/09580/tls{}/text",
        uuid::Uuid::new_v4().simple()
    );

    let (mut secure, mut buf) = tls_radio(&addrs.tls, &cert, &topic).await;
    let mut plain = Conn::open(&addrs.plain).await;
    plain
        .send_frame(
            "CONNECT",
            &[("accept-version", "1.2"), ("host", "localhost")],
            b"",
        )
        .await;
    plain.expect("CONNECTED").await;
    plain
        .subscribe(&topic, Some("0"), &[("x-ebu-nofastreply", "yes")])
        .await;
    plain.sync().await;

    let mut broadcaster = Conn::open(&addrs.plain).await;
    broadcaster
        .send_frame(
            "CONNECT",
            &[
                ("accept-version", "1.2"),
                ("host", "localhost"),
                ("login", "1.radio1"),
                ("passcode", "secret1"),
            ],
            b"",
        )
        .await;
    broadcaster.expect("CONNECTED").await;
    let body = format!("TEXT over TLS {}", uuid::Uuid::new_v4());
    broadcaster.publish(&topic, body.as_bytes(), &[]).await;

    read_until(&mut secure, &mut buf, &body).await;
    assert!(
        String::from_utf8_lossy(&buf).starts_with("MESSAGE\n"),
        "{buf:?}"
    );
    let m = plain.expect("MESSAGE").await;
    assert_eq!(m.text(), body);

    // HTTPS: the HTTP listener's routes (a path none serves: the JSON 404).
    let mut https = tls_connect(&addrs.https, &cert, &[b"http/1.1"])
        .await
        .expect("HTTPS handshake");
    assert_eq!(https.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    https
        .write_all(b"GET /no-such-page HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    read_until(&mut https, &mut answer, "not found").await;
    assert!(
        answer.starts_with(b"HTTP/1.1 404"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // And an operations route: /healthz over HTTPS.
    let mut https = tls_connect(&addrs.https, &cert, &[b"http/1.1"])
        .await
        .expect("HTTPS handshake");
    https
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    read_until(&mut https, &mut answer, "alive").await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // Plain STOMP on the TLS port is not served: the handshake fails, nothing else.
    let mut raw = TcpStream::connect(&addrs.tls).await.expect("connect");
    raw.write_all(b"CONNECT\naccept-version:1.2\n\n\0")
        .await
        .expect("write");
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(WAIT, raw.read_to_end(&mut reply)).await;
    assert!(
        !String::from_utf8_lossy(&reply).contains("CONNECTED"),
        "{reply:?}"
    );
}

/// Waits until `n` log lines of `server` contain `text`.
async fn wait_count(server: &Process, text: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.log.count(text) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} lines {text:?} not logged:\n{}",
            server.log.tail(20)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads WebSocket messages into `received` until it holds `needle`.
async fn ws_until<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    received: &mut String,
    needle: &str,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let found = tokio::time::timeout(WAIT, async {
        while !received.contains(needle) {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => received.push_str(&t),
                Some(Ok(Message::Binary(b))) => received.push_str(&String::from_utf8_lossy(&b)),
                Some(Ok(_)) => {}
                _ => return false,
            }
        }
        true
    })
    .await;
    assert_eq!(found, Ok(true), "{needle:?} not received: {received:?}");
}

#[tokio::test]
async fn stomp_over_wss_on_the_https_port_receives_a_slide() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let dir = Dir::new();
    let (cert, key) = self_signed();
    dir.install(&cert, &key);
    let (_server, addrs) = start(&dir).await;
    let topic = format!(
        "/topic/fm/4e1/4001/09580/wss{}/text",
        uuid::Uuid::new_v4().simple()
    );

    let tls = tls_connect(&addrs.https, &cert, &[b"http/1.1"])
        .await
        .expect("HTTPS handshake");
    let mut request = "wss://localhost/stomp"
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v12.stomp".parse().expect("header"),
    );
    let (mut ws, response) =
        tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, tls))
            .await
            .expect("upgrade in time")
            .expect("WebSocket upgrade over TLS");
    assert_eq!(
        response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.as_bytes()),
        Some(&b"v12.stomp"[..])
    );
    let mut received = String::new();
    ws.send(Message::text(
        "CONNECT\naccept-version:1.2\nhost:localhost\n\n\0",
    ))
    .await
    .expect("send");
    ws_until(&mut ws, &mut received, "CONNECTED").await;
    ws.send(Message::text(format!(
        "SUBSCRIBE\ndestination:{topic}\nid:0\nreceipt:sub\nx-ebu-nofastreply:yes\n\n\0"
    )))
    .await
    .expect("send");
    ws_until(&mut ws, &mut received, "receipt-id:sub").await;

    let mut broadcaster = Conn::open(&addrs.plain).await;
    broadcaster
        .send_frame(
            "CONNECT",
            &[
                ("accept-version", "1.2"),
                ("host", "localhost"),
                ("login", "1.radio1"),
                ("passcode", "secret1"),
            ],
            b"",
        )
        .await;
    broadcaster.expect("CONNECTED").await;
    let body = format!("TEXT over WSS {}", uuid::Uuid::new_v4());
    broadcaster.publish(&topic, body.as_bytes(), &[]).await;
    ws_until(&mut ws, &mut received, &body).await;
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_a_bad_renewal_keeps_the_old_one() {
    let dir = Dir::new();
    let (cert_a, key_a) = self_signed();
    dir.install(&cert_a, &key_a);
    let (mut server, addrs) = start(&dir).await;
    let topic = format!(
        "/topic/fm/4e1/4001/09580/hup{}/text",
        uuid::Uuid::new_v4().simple()
    );
    assert!(tls_connect(&addrs.tls, &cert_a, &[]).await.is_ok());
    // A radio connected before the renewal.
    let (mut early, mut early_buf) = tls_radio(&addrs.tls, &cert_a, &topic).await;

    let hup = |server: &Process| {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &server.id().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(status.success());
    };

    // Renewal: certificate B. New handshakes present B (a client trusting only A fails).
    let (cert_b, key_b) = self_signed();
    dir.install(&cert_b, &key_b);
    hup(&server);
    // One line per acceptor (STOMP over TLS and HTTPS).
    wait_count(&server, "TLS certificate reloaded", 2).await;
    assert!(
        tls_connect(&addrs.tls, &cert_b, &[]).await.is_ok(),
        "B presented"
    );
    assert!(
        tls_connect(&addrs.tls, &cert_a, &[]).await.is_err(),
        "A no more"
    );
    assert!(
        tls_connect(&addrs.https, &cert_b, &[b"http/1.1"])
            .await
            .is_ok(),
        "HTTPS too"
    );

    // A bad renewal: a new certificate with the old key. Refused, logged, B stays.
    let (cert_c, _) = self_signed();
    dir.install(&cert_c, &key_b);
    hup(&server);
    wait_count(&server, "TLS certificate not reloaded", 2).await;
    let refusal = server
        .log
        .matching("TLS certificate not reloaded")
        .remove(0);
    assert!(refusal.contains("ERROR"), "{refusal}");
    assert!(refusal.contains("cannot be used together"), "{refusal}");
    assert!(
        tls_connect(&addrs.tls, &cert_b, &[]).await.is_ok(),
        "B still presented"
    );
    assert!(server.exited().is_none(), "SIGHUP must not stop the server");

    // The radio connected under A still receives.
    let mut broadcaster = Conn::open(&addrs.plain).await;
    broadcaster
        .send_frame(
            "CONNECT",
            &[
                ("accept-version", "1.2"),
                ("host", "localhost"),
                ("login", "1.radio1"),
                ("passcode", "secret1"),
            ],
            b"",
        )
        .await;
    broadcaster.expect("CONNECTED").await;
    broadcaster.publish(&topic, b"TEXT still here", &[]).await;
    read_until(&mut early, &mut early_buf, "TEXT still here").await;
}

#[tokio::test]
async fn disconnect_over_tls_ends_with_close_notify() {
    let dir = Dir::new();
    let (cert, key) = self_signed();
    dir.install(&cert, &key);
    let (_server, addrs) = start(&dir).await;
    let (mut radio, mut buf) = tls_radio(&addrs.tls, &cert, "/topic/fm/4e1/4001/09580/text").await;
    radio
        .write_all(b"DISCONNECT\nreceipt:bye\n\n\0")
        .await
        .expect("write");
    read_until(&mut radio, &mut buf, "receipt-id:bye").await;
    // After the RECEIPT the server closes: with a TLS close_notify, which the client
    // reads as a clean end (Ok(0)), not as a truncation (UnexpectedEof).
    let mut rest = Vec::new();
    let end = tokio::time::timeout(WAIT, radio.read_to_end(&mut rest))
        .await
        .expect("closed in time");
    assert!(
        end.is_ok(),
        "TLS stream ended without close_notify: {end:?}"
    );
}

#[tokio::test]
async fn a_bad_tls_configuration_stops_startup_with_78_naming_the_variable() {
    let dir = Dir::new();
    let (cert, key) = self_signed();
    let (other_cert, _) = self_signed();
    let run = |extra: Vec<(&'static str, String)>| async move {
        let mut cmd = tokio::process::Command::new(SERVER);
        cmd.env("STOMP_IP", "127.0.0.1")
            .env("STOMP_PORT", "0")
            .env("HTTP_PORT", "off")
            .env("STOMP_TLS_PORT", "0")
            .env_remove("TLS_CERT_FILE")
            .env_remove("TLS_KEY_FILE")
            .envs(extra)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
            .await
            .expect("refused at once")
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let path = |p: PathBuf| p.display().to_string();

    let (code, err) = run(vec![]).await;
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("TLS_CERT_FILE"), "{err}");

    let (code, err) = run(vec![
        ("TLS_CERT_FILE", path(dir.cert())),
        ("TLS_KEY_FILE", path(dir.key())),
    ])
    .await;
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("TLS_CERT_FILE") && err.contains(&path(dir.cert())),
        "{err}"
    );

    dir.install(&other_cert, &key);
    let (code, err) = run(vec![
        ("TLS_CERT_FILE", path(dir.cert())),
        ("TLS_KEY_FILE", path(dir.key())),
    ])
    .await;
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("TLS_KEY_FILE") && err.contains("cannot be used together"),
        "{err}"
    );

    dir.install(&cert, &key);
    std::fs::write(dir.key(), "-----BEGIN NOTHING-----\n").expect("write");
    let (code, err) = run(vec![
        ("TLS_CERT_FILE", path(dir.cert())),
        ("TLS_KEY_FILE", path(dir.key())),
    ])
    .await;
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("TLS_KEY_FILE") && err.contains("no PEM private key"),
        "{err}"
    );
}

//! Fan-out latency over each web transport (`web-memory --messages M`): the clients
//! `web` opened read what arrives; a publisher logged in over STOMP/TCP sends M
//! messages (`TEXT seq=<n> t=<µs>;`, `message-id:m<n>`, one every 500 ms) to every
//! topic; each client records now − t for each message it sees once (long-poll
//! clients poll again with `last_id=m<n>` on the same connection). Raw bytes are
//! scanned for the marker, whatever the transport's framing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::load::new_hist;

/// Latency percentiles of one transport, in µs.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub deliveries: u64,
    pub missing: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Finds `seq=<n> t=<t>;` markers in `buf` (bytes, whatever framing surrounds them),
/// and drops what was scanned up to the last complete one.
fn markers(buf: &mut Vec<u8>) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut consumed = 0;
    let mut from = 0;
    while let Some(i) = memchr::memmem::find(&buf[from..], b"seq=") {
        let start = from + i + 4;
        let Some(end) = memchr::memchr(b';', &buf[start..]) else {
            break;
        };
        let field = String::from_utf8_lossy(&buf[start..start + end]).into_owned();
        let mut parts = field.split(" t=");
        if let (Some(n), Some(t)) = (parts.next(), parts.next()) {
            if let (Ok(n), Ok(t)) = (n.parse(), t.parse()) {
                out.push((n, t));
            }
        }
        from = start + end + 1;
        consumed = from;
    }
    buf.drain(..consumed);
    out
}

/// One client: reads until it has `messages` distinct messages or `until`.
async fn receive(
    mut s: TcpStream,
    long_poll: Option<String>,
    messages: u64,
    until: tokio::time::Instant,
) -> (Vec<u64>, u64) {
    let mut seen = std::collections::HashSet::new();
    let mut latencies = Vec::new();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while (seen.len() as u64) < messages {
        let read = tokio::time::timeout_at(until, s.read(&mut chunk)).await;
        let n = match read {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        let at = now_us();
        buf.extend_from_slice(&chunk[..n]);
        let mut last = None;
        for (seq, t) in markers(&mut buf) {
            if seen.insert(seq) {
                latencies.push(at.saturating_sub(t));
            }
            last = Some(seq);
        }
        if let (Some(target), Some(seq)) = (&long_poll, last) {
            let req = format!("GET {target}&last_id=m{seq} HTTP/1.1\r\nHost: b\r\n\r\n");
            if s.write_all(req.as_bytes()).await.is_err() {
                break;
            }
        }
    }
    (latencies, messages - seen.len() as u64)
}

/// Measures the fan-out latency to `clients` (already subscribed to
/// `<service><i % topics>/text`); `long_poll`: the clients are long-polls, following
/// the station's image too when `Some(true)`.
pub async fn measure(
    clients: Vec<TcpStream>,
    long_poll: Option<bool>,
    stomp: &str,
    service: &str,
    topics: usize,
    messages: u64,
) -> Result<Latency, String> {
    let until = tokio::time::Instant::now()
        + Duration::from_millis(500) * messages as u32
        + Duration::from_secs(30);
    let mut tasks = Vec::with_capacity(clients.len());
    for (i, s) in clients.into_iter().enumerate() {
        let target = long_poll.map(|station| {
            crate::web::long_poll_target(&format!("{service}{}", i % topics), station)
        });
        tasks.push(tokio::spawn(receive(s, target, messages, until)));
    }
    let mut publisher = TcpStream::connect(stomp)
        .await
        .map_err(|e| format!("publisher: {e}"))?;
    publisher
        .write_all(b"CONNECT\nlogin:1.radio1\npasscode:secret1\n\n\0")
        .await
        .map_err(|e| format!("publisher: {e}"))?;
    let mut answer = [0u8; 512];
    let n = publisher
        .read(&mut answer)
        .await
        .map_err(|e| format!("publisher: {e}"))?;
    if !answer[..n].starts_with(b"CONNECTED") {
        return Err(format!(
            "publisher not connected: {:?}",
            String::from_utf8_lossy(&answer[..n])
        ));
    }
    for seq in 0..messages {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = now_us();
        let mut frames = Vec::new();
        for k in 0..topics {
            frames.extend_from_slice(
                format!(
                    "SEND\ndestination:{service}{k}/text\nmessage-id:m{seq}\n\nTEXT seq={seq} t={t};\0"
                )
                .as_bytes(),
            );
        }
        publisher
            .write_all(&frames)
            .await
            .map_err(|e| format!("publisher: {e}"))?;
    }
    let mut hist = new_hist()?;
    let mut missing = 0;
    for t in tasks {
        let (latencies, lost) = t.await.map_err(|e| e.to_string())?;
        missing += lost;
        for l in latencies {
            hist.record(l.max(1)).map_err(|e| e.to_string())?;
        }
    }
    Ok(Latency {
        deliveries: hist.len(),
        missing,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        max_us: hist.max(),
    })
}

//! The first baseline (kept for comparison; `lean` is the default): what a careful engineer writes in an
//! afternoon. CONNECT -> CONNECTED, SUBSCRIBE (topic -> connections, RECEIPT when asked),
//! SEND -> one pre-encoded MESSAGE handed to every subscriber of the destination.
//! Nothing else: no auth, no topic normalisation, no last message, no heart-beats.
//!
//! One task per connection; it selects between its socket and a bounded queue of
//! encoded frames. A full queue drops the subscriber (as radiovis does).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const QUEUE: usize = 250;
const MAX_FRAME: usize = 64 * 1024;

type Subscribers = HashMap<u64, mpsc::Sender<Bytes>>;

#[derive(Default)]
struct State {
    topics: Mutex<HashMap<String, Subscribers>>,
    next_id: AtomicU64,
}

/// Runs the baseline server on `addr` until the process is killed.
pub async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let state = Arc::new(State::default());
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                tokio::spawn(async move {
                    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
                    let mut topics = Vec::new();
                    let _ = connection(&state, id, stream, &mut topics).await;
                    let mut map = state.topics.lock().unwrap_or_else(|e| e.into_inner());
                    for t in topics {
                        if let Some(subs) = map.get_mut(&t) {
                            subs.remove(&id);
                        }
                    }
                });
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

async fn connection(
    state: &State,
    id: u64,
    mut stream: TcpStream,
    topics: &mut Vec<String>,
) -> std::io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
    let mut rbuf = BytesMut::new();
    let mut wbuf = BytesMut::new();
    loop {
        // Handle every complete frame buffered.
        while let Some(end) = memchr::memchr(0, &rbuf) {
            let frame = rbuf.split_to(end + 1);
            handle(state, id, &tx, &frame[..end], &mut wbuf, topics);
        }
        if rbuf.len() > MAX_FRAME {
            return Ok(());
        }
        if rbuf.is_empty() {
            rbuf = BytesMut::new(); // idle connections hold no read buffer
        }
        if !wbuf.is_empty() {
            stream.write_all(&wbuf).await?;
            wbuf.clear();
            if wbuf.capacity() > 64 * 1024 {
                wbuf = BytesMut::new();
            }
        }
        tokio::select! {
            // Wait for readiness, then read: no buffer is held while waiting.
            r = stream.readable() => {
                r?;
                rbuf.reserve(512);
                match stream.try_read_buf(&mut rbuf) {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            Some(msg) = rx.recv() => {
                wbuf.extend_from_slice(&msg);
                while wbuf.len() < 16 * 1024 {
                    match rx.try_recv() {
                        Ok(m) => wbuf.extend_from_slice(&m),
                        Err(_) => break,
                    }
                }
            }
        }
    }
}

/// Handles one frame (without its NUL).
fn handle(
    state: &State,
    id: u64,
    tx: &mpsc::Sender<Bytes>,
    frame: &[u8],
    wbuf: &mut BytesMut,
    topics: &mut Vec<String>,
) {
    // Heart-beat newlines may precede a frame.
    let start = frame.iter().position(|&b| b != b'\n' && b != b'\r');
    let Some(start) = start else { return };
    let frame = &frame[start..];
    let (head, body) = match memchr::memmem::find(frame, b"\n\n") {
        Some(i) => (&frame[..i], &frame[i + 2..]),
        None => (frame, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.lines();
    let command = lines.next().unwrap_or("");
    let header = |name: &str| {
        head.lines()
            .skip(1)
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
            .map(str::to_owned)
    };
    match command {
        "CONNECT" | "STOMP" => {
            wbuf.extend_from_slice(b"CONNECTED\nsession:baseline\n\n\0");
        }
        "SUBSCRIBE" => {
            if let Some(dest) = header("destination") {
                state
                    .topics
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(dest.clone())
                    .or_default()
                    .insert(id, tx.clone());
                topics.push(dest);
            }
        }
        "SEND" => {
            if let Some(dest) = header("destination") {
                let mut m = BytesMut::with_capacity(64 + dest.len() + body.len());
                m.extend_from_slice(b"MESSAGE\ndestination:");
                m.extend_from_slice(dest.as_bytes());
                m.extend_from_slice(b"\nmessage-id:");
                m.extend_from_slice(
                    state
                        .next_id
                        .fetch_add(1, Ordering::Relaxed)
                        .to_string()
                        .as_bytes(),
                );
                m.extend_from_slice(b"\n\n");
                m.extend_from_slice(body);
                m.extend_from_slice(b"\0");
                let msg = m.freeze();
                let mut map = state.topics.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(subs) = map.get_mut(&dest) {
                    subs.retain(|_, s| s.try_send(msg.clone()).is_ok());
                }
            }
        }
        _ => {}
    }
    if let Some(r) = header("receipt") {
        wbuf.extend_from_slice(b"RECEIPT\nreceipt-id:");
        wbuf.extend_from_slice(r.as_bytes());
        wbuf.extend_from_slice(b"\n\n\0");
    }
}

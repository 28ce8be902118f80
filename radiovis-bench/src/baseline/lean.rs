//! The lean baseline: the least a correct tokio fan-out server must hold per connection
//! and do per delivery.
//!
//! Per connection: one task whose future holds the socket, an `Arc<Conn>` and three
//! empty `Vec`s; `Conn` is a mutex around a queue of shared encoded messages (a
//! `VecDeque` allocates only when a message waits) and the task's waker. No channel of
//! fixed capacity, no read or write buffer while idle (reads go to a stack buffer;
//! only a partial frame or a partial write is kept), one pointer per subscription in
//! the topic index.
//!
//! Per SEND: one encoded MESSAGE (`Bytes`), then per subscriber a refcount increment and
//! a push under that connection's lock; the task is woken only when its queue goes from
//! empty to non-empty, and writes every waiting message with one vectored write
//! straight from the shared buffers (no copy). A queue over `QUEUE` messages drops the
//! subscriber, as radiovis does.

use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::net::{TcpListener, TcpStream};

use super::Parsed;

/// Messages a connection may have waiting before it is dropped as a slow consumer.
const QUEUE: usize = 250;
/// Largest frame a client may send.
const MAX_FRAME: usize = 64 * 1024;
/// Buffers written by one vectored write.
const MAX_SLICES: usize = 64;

#[derive(Default)]
struct Conn {
    out: Mutex<Out>,
}

#[derive(Default)]
struct Out {
    queue: VecDeque<Bytes>,
    /// The connection's task, woken when its queue stops being empty.
    waker: Option<Waker>,
    /// The queue overflowed: the connection closes.
    dropped: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Conn {
    /// Queues a message; false when the connection is (now) dropped.
    fn push(&self, msg: &Bytes) -> bool {
        let (kept, waker) = {
            let mut out = lock(&self.out);
            if out.dropped {
                return false;
            }
            if out.queue.len() >= QUEUE {
                out.dropped = true;
                out.queue = VecDeque::new();
                (false, out.waker.take())
            } else {
                out.queue.push_back(msg.clone());
                if out.queue.len() > 1 {
                    // Woken already, for the first one.
                    return true;
                }
                (true, out.waker.take())
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
        kept
    }

    /// Registers the task's waker; true when there is something to do.
    fn poll_queue(&self, cx: &std::task::Context<'_>) -> bool {
        let mut out = lock(&self.out);
        if out.dropped || !out.queue.is_empty() {
            return true;
        }
        match &out.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => out.waker = Some(cx.waker().clone()),
        }
        false
    }
}

#[derive(Default)]
struct State {
    /// Subscribers per destination (a connection is identified by its `Conn`).
    topics: Mutex<HashMap<Box<str>, Vec<Arc<Conn>>>>,
    next_id: AtomicU64,
}

/// Runs the lean baseline server on `addr` until the process is killed.
pub async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let state = Arc::new(State::default());
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                tokio::spawn(async move {
                    let conn = Arc::new(Conn::default());
                    let mut topics = Vec::new();
                    let _ = connection(&state, &conn, stream, &mut topics).await;
                    let mut map = lock(&state.topics);
                    for t in topics {
                        if let Some(subs) = map.get_mut(&*t) {
                            subs.retain(|c| !Arc::ptr_eq(c, &conn));
                            if subs.is_empty() {
                                map.remove(&*t);
                            }
                        }
                    }
                });
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

enum Wake {
    Queued,
    Readable,
}

async fn connection(
    state: &State,
    conn: &Arc<Conn>,
    stream: TcpStream,
    topics: &mut Vec<Box<str>>,
) -> std::io::Result<()> {
    // A partial frame, and what a write left unwritten: empty (no allocation) when idle.
    let mut partial: Vec<u8> = Vec::new();
    let mut unwritten: Vec<u8> = Vec::new();
    loop {
        if !unwritten.is_empty() {
            // Wait for room, or for the queue to overflow meanwhile.
            let writable = std::future::poll_fn(|cx| {
                if lock(&conn.out).dropped {
                    return Poll::Ready(Ok(false));
                }
                conn.poll_queue(cx);
                stream.poll_write_ready(cx).map_ok(|()| true)
            })
            .await?;
            if !writable {
                return Ok(());
            }
            match stream.try_write(&unwritten) {
                Ok(n) => drop(unwritten.drain(..n)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if unwritten.is_empty() {
                unwritten = Vec::new();
            }
            continue;
        }
        let wake = std::future::poll_fn(|cx| {
            if conn.poll_queue(cx) {
                return Poll::Ready(Ok(Wake::Queued));
            }
            stream.poll_read_ready(cx).map_ok(|()| Wake::Readable)
        })
        .await?;
        match wake {
            Wake::Queued => {
                let queue = {
                    let mut out = lock(&conn.out);
                    if out.dropped {
                        return Ok(());
                    }
                    std::mem::take(&mut out.queue)
                };
                write_queue(&stream, queue, &mut unwritten)?;
            }
            Wake::Readable => {
                let mut buf = [0u8; 2048];
                let n = match stream.try_read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                };
                let mut reply = BytesMut::new();
                if partial.is_empty() {
                    let rest = handle_frames(state, conn, &buf[..n], &mut reply, topics);
                    partial.extend_from_slice(rest);
                } else {
                    partial.extend_from_slice(&buf[..n]);
                    let rest = handle_frames(state, conn, &partial, &mut reply, topics).len();
                    partial.drain(..partial.len() - rest);
                }
                if partial.len() > MAX_FRAME {
                    return Ok(());
                }
                if partial.is_empty() {
                    partial = Vec::new();
                }
                if !reply.is_empty() {
                    let q = VecDeque::from([reply.freeze()]);
                    write_queue(&stream, q, &mut unwritten)?;
                }
            }
        }
    }
}

/// Writes `queue` with vectored writes while the socket takes it; what it does not take
/// goes to `unwritten`.
fn write_queue(
    stream: &TcpStream,
    mut queue: VecDeque<Bytes>,
    unwritten: &mut Vec<u8>,
) -> std::io::Result<()> {
    let mut offset = 0; // into the front buffer
    while !queue.is_empty() {
        let (a, b) = queue.as_slices();
        let mut slices: [IoSlice<'_>; MAX_SLICES] = [IoSlice::new(&[]); MAX_SLICES];
        let mut k = 0;
        for (i, m) in a.iter().chain(b.iter()).take(MAX_SLICES).enumerate() {
            slices[i] = IoSlice::new(if i == 0 { &m[offset..] } else { &m[..] });
            k = i + 1;
        }
        let mut n = match stream.try_write_vectored(&slices[..k]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        while let Some(front) = queue.front() {
            let left = front.len() - offset;
            if n < left {
                offset += n;
                break;
            }
            n -= left;
            offset = 0;
            queue.pop_front();
        }
    }
    if let Some(front) = queue.pop_front() {
        unwritten.extend_from_slice(&front[offset..]);
        for m in queue {
            unwritten.extend_from_slice(&m);
        }
    }
    Ok(())
}

/// Handles every complete frame in `data`; returns the incomplete rest.
fn handle_frames<'a>(
    state: &State,
    conn: &Arc<Conn>,
    mut data: &'a [u8],
    reply: &mut BytesMut,
    topics: &mut Vec<Box<str>>,
) -> &'a [u8] {
    while let Some(end) = memchr::memchr(0, data) {
        if let Some(frame) = Parsed::new(&data[..end]) {
            handle(state, conn, &frame, reply, topics);
        }
        data = &data[end + 1..];
    }
    data
}

fn handle(
    state: &State,
    conn: &Arc<Conn>,
    frame: &Parsed<'_>,
    reply: &mut BytesMut,
    topics: &mut Vec<Box<str>>,
) {
    match frame.command {
        "CONNECT" | "STOMP" => reply.put_slice(b"CONNECTED\nsession:baseline\n\n\0"),
        "SUBSCRIBE" => {
            if let Some(dest) = frame.header("destination") {
                lock(&state.topics)
                    .entry(dest.into())
                    .or_default()
                    .push(conn.clone());
                topics.push(dest.into());
            }
        }
        "SEND" => {
            if let Some(dest) = frame.header("destination") {
                let id = state.next_id.fetch_add(1, Ordering::Relaxed).to_string();
                let mut m = BytesMut::with_capacity(48 + dest.len() + id.len() + frame.body.len());
                m.put_slice(b"MESSAGE\ndestination:");
                m.put_slice(dest.as_bytes());
                m.put_slice(b"\nmessage-id:");
                m.put_slice(id.as_bytes());
                m.put_slice(b"\n\n");
                m.put_slice(frame.body);
                m.put_u8(0);
                let msg = m.freeze();
                let mut map = lock(&state.topics);
                if let Some(subs) = map.get_mut(dest) {
                    subs.retain(|c| c.push(&msg));
                }
            }
        }
        _ => {}
    }
    if let Some(r) = frame.header("receipt") {
        reply.put_slice(b"RECEIPT\nreceipt-id:");
        reply.put_slice(r.as_bytes());
        reply.put_slice(b"\n\n\0");
    }
}

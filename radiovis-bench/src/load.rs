//! The load: N subscriber connections over K topics and one publisher.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use radiovis::client::{Client, ClientError};
use radiovis::stomp::{Command, Frame};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

/// What one subscriber saw.
#[derive(Debug, Default)]
pub struct SubResult {
    pub expected: u64,
    pub received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Latencies in microseconds.
    pub latencies_us: Vec<u64>,
    /// Why it ended early (connection closed, error).
    pub error: Option<String>,
    /// Microseconds from TCP connect to the RECEIPT of the SUBSCRIBE.
    pub setup_us: u64,
}

/// The clock of the `t=` in message bodies: nanoseconds since a shared `Instant` (one
/// process), or since the Unix epoch (`SystemTime`, shared by the processes of a
/// scale-out run on the same machine).
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    Since(Instant),
    Unix,
}

impl Clock {
    pub fn now_ns(&self) -> u64 {
        match self {
            Clock::Since(start) => start.elapsed().as_nanos() as u64,
            Clock::Unix => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
        }
    }
}

/// The destination of topic `k`.
pub fn topic(prefix: &str, k: usize) -> String {
    format!("{prefix}{k}/text")
}

/// Messages the publisher sends to topic `k` of `topics` when it sends `messages`.
pub fn expected_for(k: usize, topics: usize, messages: u64) -> u64 {
    let k = k as u64;
    let topics = topics as u64;
    if k >= messages {
        0
    } else {
        (messages - 1 - k) / topics + 1
    }
}

pub struct Subscribers {
    pub handles: Vec<JoinHandle<SubResult>>,
    /// Subscribed (RECEIPT seen) or failed, per subscriber.
    pub ready_rx: mpsc::Receiver<Result<(), String>>,
    /// Subscribers that received everything they expected.
    pub complete: Arc<AtomicUsize>,
    pub stop: watch::Sender<bool>,
}

pub struct SubParams {
    pub addr: SocketAddr,
    pub n: usize,
    pub topics: usize,
    pub prefix: String,
    pub messages: u64,
    pub concurrency: usize,
    pub connect_timeout: Duration,
    pub clock: Clock,
}

/// Spawns the N subscribers: each connects (at most `concurrency` at once), subscribes
/// with a receipt, reports on `ready_rx` and then reads until it has all its messages
/// or `stop` is set.
pub fn spawn_subscribers(p: &SubParams) -> Subscribers {
    let permits = Arc::new(Semaphore::new(p.concurrency.max(1)));
    let (ready_tx, ready_rx) = mpsc::channel(p.n.max(1));
    let (stop, stop_rx) = watch::channel(false);
    let complete = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::with_capacity(p.n);
    for i in 0..p.n {
        let k = i % p.topics;
        let dest = topic(&p.prefix, k);
        let expected = expected_for(k, p.topics, p.messages);
        let permits = permits.clone();
        let ready_tx = ready_tx.clone();
        let mut stop_rx = stop_rx.clone();
        let complete = complete.clone();
        let (addr, topics, clock, timeout) = (p.addr, p.topics, p.clock, p.connect_timeout);
        handles.push(tokio::spawn(async move {
            let mut res = SubResult {
                expected,
                ..SubResult::default()
            };
            let setup = async {
                let _permit = permits.acquire().await.map_err(|e| e.to_string())?;
                let began = Instant::now();
                let mut c = Client::connect(addr, &[])
                    .await
                    .map_err(|e| e.to_string())?;
                let sub = Frame::new(Command::Subscribe)
                    .header("destination", dest.as_str())
                    .header("id", "s")
                    .header("x-ebu-nofastreply", "yes");
                c.send_with_receipt(sub).await.map_err(|e| e.to_string())?;
                Ok::<(Client, u64), String>((c, began.elapsed().as_micros() as u64))
            };
            let client = match tokio::time::timeout(timeout, setup).await {
                Ok(Ok((c, setup_us))) => {
                    res.setup_us = setup_us;
                    let _ = ready_tx.send(Ok(())).await;
                    c
                }
                Ok(Err(e)) => {
                    let _ = ready_tx.send(Err(e.clone())).await;
                    res.error = Some(e);
                    return res;
                }
                Err(_) => {
                    let e = "connect/subscribe timed out".to_string();
                    let _ = ready_tx.send(Err(e.clone())).await;
                    res.error = Some(e);
                    return res;
                }
            };
            drop(ready_tx);
            receive(client, &mut res, topics, clock, &mut stop_rx, &complete).await;
            res
        }));
    }
    Subscribers {
        handles,
        ready_rx,
        complete,
        stop,
    }
}

async fn receive(
    mut client: Client,
    res: &mut SubResult,
    topics: usize,
    clock: Clock,
    stop: &mut watch::Receiver<bool>,
    complete: &AtomicUsize,
) {
    let mut seen = vec![false; res.expected as usize];
    let mut last: Option<u64> = None;
    res.latencies_us.reserve(res.expected as usize);
    if res.expected == 0 {
        complete.fetch_add(1, Ordering::Relaxed);
    }
    loop {
        if *stop.borrow() {
            break;
        }
        let frame = tokio::select! {
            f = client.next_frame() => f,
            _ = stop.changed() => break,
        };
        let frame = match frame {
            Ok(f) => f,
            Err(ClientError::Closed) => {
                res.error = Some("closed by the server".into());
                break;
            }
            Err(e) => {
                res.error = Some(e.to_string());
                break;
            }
        };
        let now = clock.now_ns();
        if frame.command != Command::Message {
            if frame.command == Command::Error {
                res.error = Some(format!("ERROR: {}", frame.get("message").unwrap_or("")));
            }
            continue;
        }
        let Some((seq, sent)) = parse_body(&frame.body) else {
            continue;
        };
        let slot = (seq / topics as u64) as usize;
        if slot >= seen.len() {
            continue;
        }
        if seen[slot] {
            res.duplicates += 1;
            continue;
        }
        seen[slot] = true;
        if last.is_some_and(|l| seq < l) {
            res.out_of_order += 1;
        }
        last = Some(last.map_or(seq, |l| l.max(seq)));
        res.received += 1;
        res.latencies_us.push(now.saturating_sub(sent) / 1000);
        if res.received == res.expected {
            complete.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Parses `TEXT seq=<n> t=<nanos>`.
pub fn parse_body(body: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(body).ok()?;
    let mut seq = None;
    let mut t = None;
    for part in s.split_ascii_whitespace() {
        if let Some(v) = part.strip_prefix("seq=") {
            seq = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("t=") {
            t = v.parse().ok();
        }
    }
    Some((seq?, t?))
}

pub struct PubParams {
    pub addr: SocketAddr,
    pub login: String,
    pub passcode: String,
    pub topics: usize,
    pub prefix: String,
    pub messages: u64,
    pub rate: f64,
    pub clock: Clock,
}

/// Connects the publisher (logged in) and checks it may publish (one SEND with a
/// receipt to a topic nobody listens to).
pub async fn connect_publisher(p: &PubParams) -> Result<Client, String> {
    let mut c = Client::connect(
        p.addr,
        &[
            ("login", p.login.as_str()),
            ("passcode", p.passcode.as_str()),
        ],
    )
    .await
    .map_err(|e| format!("publisher connect: {e}"))?;
    let probe = Frame::new(Command::Send)
        .header("destination", format!("{}probe/text", p.prefix))
        .body("TEXT probe");
    c.send_with_receipt(probe)
        .await
        .map_err(|e| format!("publisher probe: {e}"))?;
    // In STOMP 1.0 an ERROR may follow the RECEIPT.
    if let Ok(Some(f)) = c.next_frame_within(Duration::from_millis(300)).await {
        if f.command == Command::Error {
            return Err(format!(
                "publisher may not send to {}: {}",
                p.prefix,
                f.get("message").unwrap_or("")
            ));
        }
    }
    Ok(c)
}

/// Sends the M messages at R per second over the K topics; returns when the last is
/// written (and a final receipt came back: the server has read them all).
pub async fn publish(mut c: Client, p: &PubParams) -> Result<Duration, String> {
    let period = Duration::from_secs_f64(1.0 / p.rate.max(0.001));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let begin = Instant::now();
    for seq in 0..p.messages {
        tick.tick().await;
        let k = (seq % p.topics as u64) as usize;
        let t = p.clock.now_ns();
        let body = format!("TEXT seq={seq} t={t}");
        c.send(&topic(&p.prefix, k), body, &[])
            .await
            .map_err(|e| format!("publisher send {seq}: {e}"))?;
    }
    let took = begin.elapsed();
    let fin = Frame::new(Command::Send)
        .header("destination", format!("{}probe/text", p.prefix))
        .body("TEXT end");
    let _ = tokio::time::timeout(Duration::from_secs(10), c.send_with_receipt(fin)).await;
    Ok(took)
}

/// What the subscribers saw, added up.
#[derive(Debug)]
pub struct Collected {
    pub expected: u64,
    pub received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Subscribers that stopped before the end (error or no answer to stop).
    pub ended_early: usize,
    pub first_error: Option<String>,
    /// Fan-out latencies (µs).
    pub latency: hdrhistogram::Histogram<u64>,
    /// Connection set-up times (µs).
    pub setup: hdrhistogram::Histogram<u64>,
}

/// An empty latency histogram (1 µs to 10 min, 3 significant digits).
pub fn new_hist() -> Result<hdrhistogram::Histogram<u64>, String> {
    hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
        .map_err(|e| format!("histogram: {e}"))
}

/// Waits (10 s each at most) for the stopped subscribers and adds up their results.
pub async fn collect(subs: &mut Subscribers) -> Result<Collected, String> {
    let mut c = Collected {
        expected: 0,
        received: 0,
        duplicates: 0,
        out_of_order: 0,
        ended_early: 0,
        first_error: None,
        latency: new_hist()?,
        setup: new_hist()?,
    };
    for h in subs.handles.drain(..) {
        let res = match tokio::time::timeout(Duration::from_secs(10), h).await {
            Ok(Ok(res)) => res,
            Ok(Err(e)) => {
                c.ended_early += 1;
                c.first_error.get_or_insert(e.to_string());
                continue;
            }
            Err(_) => {
                c.first_error
                    .get_or_insert("subscriber did not stop".into());
                continue;
            }
        };
        if res.setup_us > 0 {
            c.setup.saturating_record(res.setup_us);
        }
        c.expected += res.expected;
        c.received += res.received;
        c.duplicates += res.duplicates;
        c.out_of_order += res.out_of_order;
        if let Some(e) = res.error {
            c.ended_early += 1;
            c.first_error.get_or_insert(e);
        }
        for l in res.latencies_us {
            c.latency.saturating_record(l.max(1));
        }
    }
    Ok(c)
}

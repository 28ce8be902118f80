//! The subscribers of a soak run: connect, check every message, reconnect on churn.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use radiovis::client::{Client, ClientError};
use radiovis::stomp::{Command, Frame};
use tokio::sync::{mpsc, watch, Notify, Semaphore};

use crate::load;

/// State shared by the publisher, the subscribers and the sampler.
pub struct Shared {
    /// Per topic: messages the publisher has completely written.
    pub published: Vec<AtomicU64>,
    pub connected: AtomicUsize,
    pub received: AtomicU64,
    pub lost: AtomicU64,
    pub duplicates: AtomicU64,
    pub reconnects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub unexpected_closes: AtomicU64,
    pub latency_us_max: AtomicU64,
    pub first_error: Mutex<Option<String>>,
    pub clock: load::Clock,
}

impl Shared {
    /// Nothing published or received yet, on `topics` topics.
    pub fn new(topics: usize) -> Shared {
        Shared {
            published: (0..topics).map(|_| AtomicU64::new(0)).collect(),
            connected: AtomicUsize::new(0),
            received: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            unexpected_closes: AtomicU64::new(0),
            latency_us_max: AtomicU64::new(0),
            first_error: Mutex::new(None),
            clock: load::Clock::Since(std::time::Instant::now()),
        }
    }

    /// Keeps the first error for the report.
    pub fn note(&self, e: String) {
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert(e);
        }
    }
}

/// Why a subscriber's session ended.
enum End {
    Churn,
    Stop,
    Closed(String),
}

/// What a subscriber needs besides its index.
pub struct SubCtx {
    pub addr: SocketAddr,
    pub prefix: String,
    pub topics: usize,
    pub connect_timeout: Duration,
    pub drain_timeout: Duration,
    pub permits: Semaphore,
    pub shared: Arc<Shared>,
}

/// Asks `pct`% of the subscribers per minute, one at a time at even intervals and in a
/// pseudo-random order, to reconnect.
pub async fn churner(subs: Vec<Arc<Notify>>, pct: f64) {
    let per_min = subs.len() as f64 * pct / 100.0;
    if per_min <= 0.0 || subs.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(60.0 / per_min));
    tick.tick().await;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    loop {
        tick.tick().await;
        // xorshift64: reproducible and good enough to spread the churn.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        subs[(x % subs.len() as u64) as usize].notify_one();
    }
}

/// Connects, subscribes (x-ebu-nofastreply: no replay) and waits until the
/// subscription is in place.
async fn connect_subscribe(ctx: &SubCtx, dest: &str) -> Result<Client, String> {
    let _permit = ctx.permits.acquire().await.map_err(|e| e.to_string())?;
    let setup = async {
        let mut c = Client::connect(ctx.addr, &[]).await?;
        c.subscribe(dest, "s", &[("x-ebu-nofastreply", "yes")])
            .await?;
        c.sync().await?;
        Ok::<Client, ClientError>(c)
    };
    match tokio::time::timeout(ctx.connect_timeout, setup).await {
        Ok(r) => r.map_err(|e| format!("connect/subscribe: {e}")),
        Err(_) => Err("connect/subscribe timed out".into()),
    }
}

/// One subscriber for the whole run: connect, receive, reconnect when churned or when
/// the server closed it, until stopped.
pub async fn subscriber(
    i: usize,
    ctx: Arc<SubCtx>,
    churn: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
    ready: mpsc::Sender<()>,
) {
    let k = i % ctx.topics;
    let dest = load::topic(&ctx.prefix, k);
    let sh = &ctx.shared;
    let mut ready = Some(ready);
    let mut sessions = 0u64;
    while !*stop.borrow() {
        let c = match connect_subscribe(&ctx, &dest).await {
            Ok(c) => c,
            Err(e) => {
                sh.connect_failures.fetch_add(1, Ordering::Relaxed);
                sh.note(format!("subscriber {i}: {e}"));
                if let Some(r) = ready.take() {
                    let _ = r.send(()).await;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let must_from = sh.published[k].load(Ordering::Acquire) + 1;
        sh.connected.fetch_add(1, Ordering::Relaxed);
        if let Some(r) = ready.take() {
            let _ = r.send(()).await;
        }
        let graceful = sessions.is_multiple_of(2);
        sessions += 1;
        let end = session(c, k, must_from, &ctx, &churn, &mut stop, graceful).await;
        sh.connected.fetch_sub(1, Ordering::Relaxed);
        match end {
            End::Stop => return,
            End::Churn => {
                sh.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            End::Closed(e) => {
                sh.unexpected_closes.fetch_add(1, Ordering::Relaxed);
                sh.note(format!("subscriber {i} on {dest}: {e}"));
            }
        }
    }
}

/// Per-subscription order and loss check.
struct Track {
    must_from: u64,
    next: u64,
}

impl Track {
    fn on_frame(&mut self, f: &Frame, sh: &Shared, k: usize) -> Result<(), String> {
        if f.command == Command::Error {
            return Err(format!("ERROR: {}", f.get("message").unwrap_or("")));
        }
        if f.command != Command::Message {
            return Ok(());
        }
        let Some((seq, sent)) = load::parse_body(&f.body) else {
            return Ok(());
        };
        let lat = sh.clock.now_ns().saturating_sub(sent) / 1000;
        sh.latency_us_max.fetch_max(lat, Ordering::Relaxed);
        if seq < self.must_from {
            // Sent around the SUBSCRIBE: may or may not be delivered.
            return Ok(());
        }
        if seq < self.next {
            sh.duplicates.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if seq > self.next {
            sh.lost.fetch_add(seq - self.next, Ordering::Relaxed);
            sh.note(format!("topic {k}: messages {}..{seq} missing", self.next));
        }
        self.next = seq + 1;
        sh.received.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Reads one subscription until churned, stopped (then drained) or closed.
async fn session(
    mut c: Client,
    k: usize,
    must_from: u64,
    ctx: &SubCtx,
    churn: &Notify,
    stop: &mut watch::Receiver<bool>,
    graceful: bool,
) -> End {
    let sh = &ctx.shared;
    let mut t = Track {
        must_from,
        next: must_from,
    };
    loop {
        let frame = tokio::select! {
            biased;
            _ = stop.changed() => break,
            _ = churn.notified() => {
                if graceful {
                    let _ = c.disconnect().await;
                }
                return End::Churn;
            }
            f = c.next_frame() => f,
        };
        match frame {
            Ok(f) => {
                if let Err(e) = t.on_frame(&f, sh, k) {
                    return End::Closed(e);
                }
            }
            Err(e) => return End::Closed(e.to_string()),
        }
    }
    // Drain: the publisher has stopped; everything it sent must arrive.
    let last = sh.published[k].load(Ordering::Acquire);
    let deadline = tokio::time::Instant::now() + ctx.drain_timeout;
    while t.next < last {
        match tokio::time::timeout_at(deadline, c.next_frame()).await {
            Ok(Ok(f)) => {
                if let Err(e) = t.on_frame(&f, sh, k) {
                    sh.note(e);
                    break;
                }
            }
            Ok(Err(e)) => {
                sh.note(format!("topic {k} while draining: {e}"));
                break;
            }
            Err(_) => break,
        }
    }
    if t.next < last {
        sh.lost.fetch_add(last - t.next, Ordering::Relaxed);
        sh.note(format!(
            "topic {k}: messages {}..{last} not delivered",
            t.next
        ));
    }
    End::Stop
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64) -> Frame {
        Frame::new(Command::Message).body(format!("TEXT seq={seq} t=0"))
    }

    #[test]
    fn track_counts_gaps_and_duplicates_from_must_from_on() {
        let sh = Shared::new(1);
        let mut t = Track {
            must_from: 5,
            next: 5,
        };
        // 4 was in flight at SUBSCRIBE time: neither counted nor required.
        for seq in [4, 5, 6, 9, 9, 8, 10] {
            assert!(t.on_frame(&msg(seq), &sh, 0).is_ok());
        }
        assert_eq!(sh.received.load(Ordering::Relaxed), 4); // 5, 6, 9, 10
        assert_eq!(sh.lost.load(Ordering::Relaxed), 2); // 7, 8 (8 came late)
        assert_eq!(sh.duplicates.load(Ordering::Relaxed), 2); // 9 again, 8
        assert_eq!(t.next, 11);
    }

    #[test]
    fn track_fails_on_error_frames() {
        let sh = Shared::new(1);
        let mut t = Track {
            must_from: 1,
            next: 1,
        };
        let err = Frame::new(Command::Error).header("message", "no");
        assert!(t.on_frame(&err, &sh, 0).is_err());
    }
}

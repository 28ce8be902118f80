//! Live traffic for deployment tests: radios that record the numbered messages they
//! receive, a broadcaster that sends one numbered message every 100 ms and records
//! whether the server confirmed it (RECEIPT), refused it (ERROR) or said nothing, and
//! the recovery time after a fault. Shared by the chaos test (tests/chaos.rs).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::harness::{encode, Conn, Next};
use crate::plugit_server::PASSWORD;

/// What became of one SEND.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// RECEIPT: RabbitMQ confirmed it.
    Confirmed,
    /// ERROR (the session is then closed: STOMP 1.2).
    Refused(String),
    /// No answer (connection lost, or none in time): neither confirmed nor refused.
    Unknown,
}

/// One SEND of the broadcaster.
#[derive(Debug)]
pub struct Sent {
    /// Its sequence number.
    pub seq: u64,
    /// When the SEND was written.
    pub at: Instant,
    /// What the server answered.
    pub outcome: Outcome,
}

#[derive(Debug, Default)]
/// What one radio received.
pub struct RadioLog {
    /// A name for messages.
    pub name: String,
    /// Sequence numbers received, with the time of their first arrival.
    pub got: HashMap<u64, Instant>,
    /// Messages received a second time.
    pub duplicates: usize,
    /// When and why the radio was dropped (ERROR or close), if it was.
    pub dropped: Option<(Instant, String)>,
}

#[derive(Debug, Default)]
/// Everything sent and received in a run.
pub struct Record {
    /// Every SEND, in order.
    pub sent: Vec<Sent>,
    /// Every radio, by index.
    pub radios: Vec<RadioLog>,
    /// How many times the broadcaster logged in (once, plus once per ERROR or lost
    /// connection: a STOMP 1.2 ERROR closes the session).
    pub broadcaster_logins: usize,
}

/// The record, shared by the traffic tasks and the test.
pub type Shared = Arc<Mutex<Record>>;

/// Locks the record (a panicked holder does not hide the figures).
pub fn lock(rec: &Shared) -> std::sync::MutexGuard<'_, Record> {
    rec.lock().unwrap_or_else(|p| p.into_inner())
}

/// The body of message `seq` of run `run`.
pub fn body(run: &str, seq: u64) -> String {
    format!("TEXT chaos {run} seq={seq}")
}

/// The sequence number of one of this run's bodies.
pub fn seq_of(run: &str, text: &str) -> Option<u64> {
    text.strip_prefix(&format!("TEXT chaos {run} seq="))?
        .parse()
        .ok()
}

/// A radio: CONNECT (1.0, or 1.2 without heart-beats), SUBSCRIBE without replay.
pub async fn radio(addr: &str, v12: bool, destination: &str) -> Conn {
    let mut c = Conn::open(addr).await;
    let mut h = vec![];
    if v12 {
        h = vec![
            ("accept-version", "1.2"),
            ("host", "localhost"),
            ("heart-beat", "0,0"),
        ];
    }
    c.send_frame("CONNECT", &h, b"").await;
    c.expect("CONNECTED").await;
    c.subscribe(destination, Some("chaos"), &[("x-ebu-nofastreply", "yes")])
        .await;
    c
}

/// Reads a radio's frames until `stop`, recording sequence numbers; an ERROR or a close
/// is a drop (the radio then stops).
pub async fn listen(mut c: Conn, idx: usize, run: String, rec: Shared, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let (at, why) = match c.next(Duration::from_millis(200)).await {
            Next::Timeout => continue,
            Next::Frame(f) if f.command == "MESSAGE" => {
                if let Some(seq) = seq_of(&run, &f.text()) {
                    let mut r = lock(&rec);
                    let log = &mut r.radios[idx];
                    if log.got.insert(seq, Instant::now()).is_some() {
                        log.duplicates += 1;
                    }
                }
                continue;
            }
            Next::Frame(f) => (
                Instant::now(),
                format!("{}: {:?}", f.command, f.get("message")),
            ),
            Next::Closed => (Instant::now(), "connection closed".to_owned()),
        };
        lock(&rec).radios[idx].dropped = Some((at, why));
        return;
    }
}

/// A broadcaster session (STOMP 1.2), or why not.
pub async fn login(addr: &str) -> Result<Conn, String> {
    let mut c = Conn::open(addr).await;
    let h = [
        ("accept-version", "1.2"),
        ("host", "localhost"),
        ("heart-beat", "0,0"),
        ("login", "1.radio1"),
        ("passcode", PASSWORD),
    ];
    c.try_send_raw(&encode("CONNECT", &h, b""))
        .await
        .map_err(|e| e.to_string())?;
    match c.next(Duration::from_secs(15)).await {
        Next::Frame(f) if f.command == "CONNECTED" => Ok(c),
        other => Err(format!("login failed: {other:?}")),
    }
}

/// Sends one numbered message every 100 ms, alternating between the two destinations,
/// each waiting for its RECEIPT or ERROR; logs in again (as `1.radio1` of the PlugIt
/// test server) after an ERROR or a lost connection.
pub async fn broadcast(
    addr: String,
    run: String,
    destinations: [&'static str; 2],
    rec: Shared,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut conn: Option<Conn> = None;
    let mut seq = 0u64;
    while !stop.is_cancelled() {
        tick.tick().await;
        if conn.is_none() {
            // A refused login (PlugIt down) is tried again at the next tick.
            if let Ok(c) = login(&addr).await {
                lock(&rec).broadcaster_logins += 1;
                conn = Some(c);
            }
        }
        let Some(c) = conn.as_mut() else {
            continue;
        };
        seq += 1;
        let receipt = format!("r{seq}");
        let destination = destinations[(seq % 2) as usize];
        let h = [("destination", destination), ("receipt", receipt.as_str())];
        let at = Instant::now();
        let outcome = match c
            .try_send_raw(&encode("SEND", &h, body(&run, seq).as_bytes()))
            .await
        {
            Err(_) => Outcome::Unknown,
            Ok(()) => loop {
                match c.next(Duration::from_secs(10)).await {
                    Next::Frame(f) if f.command == "RECEIPT" => {
                        if f.get("receipt-id") == Some(receipt.as_str()) {
                            break Outcome::Confirmed;
                        }
                    }
                    Next::Frame(f) if f.command == "ERROR" => {
                        break Outcome::Refused(f.get("message").unwrap_or("").to_owned())
                    }
                    Next::Frame(_) => {}
                    Next::Closed | Next::Timeout => break Outcome::Unknown,
                }
            },
        };
        if outcome != Outcome::Confirmed {
            conn = None;
        }
        lock(&rec).sent.push(Sent { seq, at, outcome });
    }
}

/// When every radio still connected has received a message sent at or after `since`:
/// the time from `since` to the last of those first deliveries.
pub fn recovered(rec: &Shared, since: Instant) -> Option<Duration> {
    let r = lock(rec);
    let after: HashSet<u64> = r
        .sent
        .iter()
        .filter(|s| s.at >= since)
        .map(|s| s.seq)
        .collect();
    let mut last = since;
    for radio in r.radios.iter().filter(|x| x.dropped.is_none()) {
        let first = radio
            .got
            .iter()
            .filter(|(seq, _)| after.contains(seq))
            .map(|(_, at)| *at)
            .min()?;
        last = last.max(first);
    }
    Some(last - since)
}

/// Waits (up to `within`) for [`recovered`].
pub async fn wait_recovered(rec: &Shared, since: Instant, within: Duration) -> Option<Duration> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(d) = recovered(rec, since) {
            return Some(d);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

//! The log writer (docs/protocol.md#watchdog-log): writes log entries to the store and
//! acknowledges each bus message once its entry is written or refused for good.
//!
//! Entries are not written one after the other: a store that refuses one entry, or
//! fails on it, must not hold up the ones behind it (before, one entry PlugIt refused
//! was retried forever, nothing behind it was written, the broker's prefetch filled up
//! with unacknowledged messages and the watchdog stopped hearing live channels). So:
//!
//! * up to [`WRITERS`] `add_log` calls run at once; order is not kept;
//! * a refusal ([`LogError::Refused`], HTTP 4xx) is logged with the topic, counted,
//!   and the entry dropped (its message acknowledged: sending it again gets the same
//!   answer);
//! * a transient failure puts the entry in a bounded retry set, with its own
//!   exponential backoff (0.5 s to 30 s), while the others go on. When the store looks
//!   down (several transient failures in a row), the writer pauses (same backoff) and
//!   then sends one entry at a time until the store answers, so a dead store gets one
//!   call per pause, not one per entry;
//! * when the store has taken nothing for `give_up` while failing, the writer ends
//!   with an error, so that the watchdog stops and its leader lock goes to a watchdog
//!   that may do better; entries not written are not acknowledged and are redelivered.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::WatchdogError;
use crate::backend::{Ack, LogEntry, LogError, LogStore};

/// `add_log` calls in flight at once while the store is healthy.
const WRITERS: usize = 4;
/// Transient failures in a row (no entry taken or refused in between) after which
/// the store counts as down: as many as the calls that may be in flight at once.
const DOWN_AFTER: usize = WRITERS;
/// Shortest and longest wait before retrying an entry (docs/protocol.md#watchdog-log).
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What the writer receives: an entry and the acknowledgement of its bus message.
pub(super) type Job = (LogEntry, Ack);

fn backoff() -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_factor(2.0)
        .with_min_delay(RETRY_MIN)
        .with_max_delay(RETRY_MAX)
        .without_max_times()
        .build()
}

/// An entry not written yet.
struct Pending {
    entry: LogEntry,
    ack: Ack,
    /// Delays before this entry's next attempts.
    backoff: ExponentialBackoff,
}

impl Pending {
    fn new((entry, ack): Job) -> Pending {
        Pending {
            entry,
            ack,
            backoff: backoff(),
        }
    }
}

/// One `add_log` call: the entry, whether it was sent as a probe of a store that
/// looked down, and the store's answer.
type Call = Pin<Box<dyn Future<Output = (Pending, bool, Result<(), LogError>)> + Send>>;

/// Writes log entries; see the module documentation.
pub(super) struct LogWriter<L> {
    log: Arc<L>,
    /// Most entries waiting for a retry; beyond, no new entry is taken (they wait in
    /// the channel, then on the bus).
    retry_capacity: usize,
    /// Failing for this long (nothing taken): give up. `None`: never.
    give_up: Option<Duration>,
    in_flight: FuturesUnordered<Call>,
    /// Entries to retry, by when (and arrival, to keep keys unique).
    retries: BTreeMap<(Instant, u64), Pending>,
    seq: u64,
    /// Set after a transient failure, until the store takes an entry: one call at a
    /// time, after `paused_until`.
    degraded: Option<ExponentialBackoff>,
    paused_until: Option<Instant>,
    /// Since when nothing was taken, and the last error.
    failing: Option<(Instant, LogError)>,
    /// Transient failures since the store last took an entry.
    failures: u64,
    /// Transient failures with no answer in between.
    in_a_row: usize,
    /// Entries refused and dropped since the start.
    refused: u64,
    stats: Arc<super::WatchdogStats>,
}

impl<L: LogStore> LogWriter<L> {
    pub(super) fn new(
        log: Arc<L>,
        retry_capacity: usize,
        give_up: Option<Duration>,
        stats: Arc<super::WatchdogStats>,
    ) -> Self {
        LogWriter {
            log,
            retry_capacity: retry_capacity.max(1),
            give_up,
            in_flight: FuturesUnordered::new(),
            retries: BTreeMap::new(),
            seq: 0,
            degraded: None,
            paused_until: None,
            failing: None,
            failures: 0,
            in_a_row: 0,
            refused: 0,
            stats,
        }
    }

    /// Writes what `rx` brings until it is closed and everything is written, or
    /// `stop` is cancelled (entries not written are then not acknowledged: a durable
    /// queue hands them to the next watchdog), or the store has failed for `give_up`.
    pub(super) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Job>,
        stop: CancellationToken,
    ) -> Result<(), WatchdogError> {
        let mut rx_open = true;
        loop {
            if !rx_open && self.in_flight.is_empty() && self.retries.is_empty() {
                return Ok(());
            }
            if let Some(e) = self.given_up() {
                return Err(e);
            }
            let now = Instant::now();
            let paused = self.paused_until.is_some_and(|t| t > now);
            let limit = if self.degraded.is_some() { 1 } else { WRITERS };
            let can_start = !paused && self.in_flight.len() < limit;
            if can_start {
                if let Some(p) = self.next_retry(now) {
                    self.start(p);
                    continue;
                }
            }
            let take_new = rx_open && can_start && self.retries.len() < self.retry_capacity;
            // Wake up for the end of a pause or the next retry.
            let wake = if paused {
                self.paused_until
            } else {
                self.retries.keys().next().map(|k| k.0)
            };
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                Some((p, probe, result)) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.answered(p, probe, result);
                }
                job = rx.recv(), if take_new => match job {
                    Some(job) => self.start(Pending::new(job)),
                    None => rx_open = false,
                },
                _ = sleep_until(wake), if wake.is_some() => {}
            }
        }
    }

    /// The retry to send now, if any: the first one due. (After a pause nothing may
    /// be due: the probe is then a new entry, so that an entry the store keeps
    /// failing on never stands in for the store being down.)
    fn next_retry(&mut self, now: Instant) -> Option<Pending> {
        let (&(due, _), _) = self.retries.first_key_value()?;
        if due <= now {
            self.retries.pop_first().map(|(_, p)| p)
        } else {
            None
        }
    }

    fn start(&mut self, p: Pending) {
        let log = self.log.clone();
        let probe = self.degraded.is_some();
        self.in_flight.push(Box::pin(async move {
            let result = log.add_log(p.entry.clone()).await;
            (p, probe, result)
        }));
    }

    fn answered(&mut self, mut p: Pending, probe: bool, result: Result<(), LogError>) {
        match result {
            Ok(()) => {
                p.ack.ack();
                self.stats.log_written.fetch_add(1, Ordering::Relaxed);
                self.store_answers();
                self.failing = None;
                if self.failures > 0 {
                    tracing::info!(
                        failures = self.failures,
                        waiting = self.retries.len(),
                        "log store back; writing the entries that wait"
                    );
                    self.failures = 0;
                }
            }
            Err(e @ LogError::Refused { .. }) => {
                // The store answered: it is up, only this entry is unwelcome.
                self.store_answers();
                self.refused += 1;
                self.stats.log_dropped.fetch_add(1, Ordering::Relaxed);
                if self.refused <= 10 || self.refused.is_multiple_of(100) {
                    tracing::warn!(
                        topic = %p.entry.topic,
                        error = %e,
                        refused = self.refused,
                        "log store refused an entry; dropped"
                    );
                } else {
                    tracing::debug!(topic = %p.entry.topic, error = %e, "log entry refused; dropped");
                }
                self.failed(Instant::now(), e);
                // Acknowledged: sending it again would get the same answer.
                p.ack.ack();
            }
            Err(e @ LogError::Unavailable(_)) => {
                self.failures += 1;
                self.in_a_row += 1;
                if self.failures == 1 || self.failures.is_multiple_of(20) {
                    tracing::warn!(
                        error = %e,
                        waiting = self.retries.len() + 1,
                        "log store unavailable; retrying (nothing is dropped)"
                    );
                }
                let now = Instant::now();
                // One entry failing among others taken is that entry's problem: only
                // its own backoff applies. Several failures in a row mean the store is
                // down: pause. A failure of a call that was already in flight then
                // does not lengthen the pause; probes do.
                if (self.degraded.is_none() && self.in_a_row >= DOWN_AFTER) || probe {
                    let pauses = self.degraded.get_or_insert_with(backoff);
                    let pause = pauses.next().unwrap_or(RETRY_MAX);
                    self.paused_until = Some(now + pause);
                }
                self.failed(now, e);
                let delay = p.backoff.next().unwrap_or(RETRY_MAX);
                self.seq += 1;
                self.retries.insert((now + delay, self.seq), p);
            }
        }
    }

    /// The store answered (took or refused an entry): back to full speed.
    fn store_answers(&mut self) {
        self.in_a_row = 0;
        self.degraded = None;
        self.paused_until = None;
    }

    /// Notes a failure: failing since the first one, `e` the last.
    fn failed(&mut self, now: Instant, e: LogError) {
        let since = self.failing.as_ref().map_or(now, |(since, _)| *since);
        self.failing = Some((since, e));
    }

    /// The error to stop with when the store has failed for `give_up`.
    fn given_up(&self) -> Option<WatchdogError> {
        let give_up = self.give_up?;
        let (since, e) = self.failing.as_ref()?;
        let failing_for = since.elapsed();
        (failing_for >= give_up).then(|| {
            tracing::error!(
                ?failing_for,
                refused = self.refused,
                waiting = self.retries.len(),
                "log store takes no entry; giving up"
            );
            WatchdogError::LogStoreFailing {
                failing_for,
                source: e.clone(),
            }
        })
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

//! The log writer.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backend::{Ack, LogEntry, LogStore};

/// Writes log entries in order, retrying each until the store takes it (backoff up to
/// 30 s), then acknowledges its bus message. Stops when the channel closes and is
/// drained, or when `stop` is cancelled (unwritten entries are then not acknowledged:
/// a durable queue hands them to the next watchdog).
pub(super) async fn log_writer<L: LogStore>(
    log: Arc<L>,
    mut rx: mpsc::Receiver<(LogEntry, Ack)>,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let (entry, ack) = tokio::select! {
            _ = stop.cancelled() => break,
            e = rx.recv() => match e {
                Some(e) => e,
                None => break,
            },
        };
        let mut backoff = Duration::from_millis(500);
        loop {
            match log.add_log(entry.clone()).await {
                Ok(()) => {
                    ack.ack();
                    if failures > 0 {
                        tracing::info!(
                            failures,
                            buffered = rx.len(),
                            "log store back; writing buffered entries"
                        );
                        failures = 0;
                    }
                    break;
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(20) {
                        tracing::warn!(error = %e, buffered = rx.len() + 1, "log store unavailable; retrying (nothing is dropped)");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

//! The fallback [`Watchdog`] (docs/protocol.md#watchdog): logs every bus message and sends a
//! channel's default text and image when its broadcaster goes quiet.
//!
//! The consuming loop only takes bus messages, marks their channel alive (at once,
//! whatever becomes of the log entry) and hands the entry to the log writer
//! (`log`); it never waits for the directory's channel defaults. The channel list
//! refresh (`FB_CHANNEL_CACHE`) and the check for quiet channels (`FB_FALLBACK_CHECK`,
//! which also shares the channel list through the cache) run as tasks of their own
//! (`check`), a round bounded by the next check; the log cleanup (`FB_LOGS_CLEANUP`)
//! too. Log entries go through a bounded buffer to the writer, which acknowledges each
//! bus message once its entry is written (or refused for good); when the buffer is
//! full the watchdog stops taking messages from the bus (they wait in the durable
//! queue), so no entry is lost and memory stays bounded.
//!
//! Module map: `mod.rs` (configuration, errors, the consuming loop), `check.rs`
//! (liveness, channel list, check rounds, defaults), `log.rs` (the log writer).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend::{BusError, Cache, Delivery, DirectoryApi, LogError, LogStore, MessageBus};

mod check;
mod log;

use check::Checker;
use log::LogWriter;

/// TTL of cached channel defaults and of the shared channel list.
const CACHE_TTL: Duration = Duration::from_secs(600);

/// Timings and options of the watchdog (the original's `FB_*` variables).
#[derive(Debug, Clone)]
pub struct WatchdogConfig {
    /// How often the channel list is reloaded (`FB_CHANNEL_CACHE`).
    pub channel_cache: Duration,
    /// How often quiet channels are looked for (`FB_FALLBACK_CHECK`); also the
    /// deadline of a check round.
    pub fallback_check: Duration,
    /// Silence after which a channel gets its default (`FB_FALLBACK_TIME`).
    pub fallback_time: Duration,
    /// Base URL of default images (`FB_IMAGE_LOCATIONS`); empty: use `public_url`.
    pub image_locations: String,
    /// Age after which log entries are cleaned up (`FB_LOGS_MAX_AGE`).
    pub logs_max_age: Duration,
    /// How often logs are cleaned up (`FB_LOGS_CLEANUP`).
    pub logs_cleanup: Duration,
    /// Log entries buffered while the log store is slow or down (and as many more
    /// waiting for a retry).
    pub log_buffer: usize,
    /// When the log store has taken no entry for this long while failing (down, or
    /// refusing every entry), [`Watchdog::run`] ends with
    /// [`WatchdogError::LogStoreFailing`], so that a leader that cannot do its job
    /// hands its lock over. `None` (the default): keep trying.
    pub log_give_up: Option<Duration>,
    /// Counters of the watchdog (shared by every run with this configuration, so
    /// that a restarted leader keeps counting).
    pub stats: Arc<WatchdogStats>,
}

/// Counters of the watchdog, read by the metrics (docs/protocol.md#metrics).
#[derive(Debug, Default)]
pub struct WatchdogStats {
    /// Default slides (TEXT or SHOW) published for quiet channels.
    pub defaults_sent: AtomicU64,
    /// Log entries handed to the log writer.
    pub log_received: AtomicU64,
    /// Log entries the log store took.
    pub log_written: AtomicU64,
    /// Log entries the log store refused for good (dropped).
    pub log_dropped: AtomicU64,
}

impl WatchdogStats {
    /// Log entries waiting to be written (received, neither written nor dropped).
    pub fn log_buffered(&self) -> u64 {
        let received = self.log_received.load(Ordering::Relaxed);
        let done =
            self.log_written.load(Ordering::Relaxed) + self.log_dropped.load(Ordering::Relaxed);
        received.saturating_sub(done)
    }
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            channel_cache: Duration::from_secs(60),
            fallback_check: Duration::from_secs(15),
            fallback_time: Duration::from_secs(60),
            image_locations: String::new(),
            logs_max_age: Duration::from_secs(86_400),
            logs_cleanup: Duration::from_secs(3_600),
            log_buffer: 10_000,
            log_give_up: None,
            stats: Arc::default(),
        }
    }
}

/// Why the watchdog stopped.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// The bus refused to start consuming.
    #[error("cannot consume from the message bus: {0}")]
    Bus(#[from] BusError),
    /// The bus stream ended (the bus shut down).
    #[error("the message bus stream ended")]
    BusEnded,
    /// The log store took no entry for `failing_for` (see
    /// [`WatchdogConfig::log_give_up`]); `source` is its last error.
    #[error("the log store has taken no entry for {failing_for:?}: {source}")]
    LogStoreFailing {
        /// How long it has taken nothing.
        failing_for: Duration,
        /// Its last error.
        #[source]
        source: LogError,
    },
    /// The log writer task panicked or was cancelled.
    #[error("the log writer failed: {0}")]
    LogWriter(#[source] tokio::task::JoinError),
}

/// The fallback watchdog, generic over the four backends.
pub struct Watchdog<B, D, C, L> {
    log: Arc<L>,
    state: Arc<Checker<B, D, C>>,
}

/// Wall-clock Unix time that advances with tokio's clock, so that tests with paused
/// time see liveness expire exactly as a real run would.
#[derive(Debug, Clone, Copy)]
struct Clock {
    base_unix: Duration,
    base: tokio::time::Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            base_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default(),
            base: tokio::time::Instant::now(),
        }
    }

    fn now(&self) -> Duration {
        self.base_unix + self.base.elapsed()
    }

    fn secs(&self) -> u64 {
        self.now().as_secs()
    }
}

impl<B: MessageBus, D: DirectoryApi, C: Cache, L: LogStore> Watchdog<B, D, C, L> {
    /// A watchdog over these backends; it starts listening (for liveness) with
    /// [`Watchdog::run`].
    pub fn new(bus: B, directory: D, cache: C, log: L, config: WatchdogConfig) -> Self {
        Watchdog {
            log: Arc::new(log),
            state: Arc::new(Checker::new(
                Arc::new(bus),
                Arc::new(directory),
                Arc::new(cache),
                config,
            )),
        }
    }

    /// Runs until `shutdown` is cancelled (then flushes buffered log entries, bounded
    /// in time), the bus stream ends, or the log store has failed for
    /// [`WatchdogConfig::log_give_up`].
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WatchdogError> {
        let state = self.state;
        let config = state.config.clone();
        // Acknowledged deliveries: a message leaves a durable queue only once its log
        // entry is written, so a watchdog killed mid-way loses nothing.
        let mut stream = state.bus.subscribe_acked().await?;
        let (log_tx, log_rx) = mpsc::channel(config.log_buffer.max(1));
        let writer_stop = CancellationToken::new();
        let mut writer = tokio::spawn(
            LogWriter::new(
                self.log.clone(),
                config.log_buffer,
                config.log_give_up,
                config.stats.clone(),
            )
            .run(log_rx, writer_stop.clone()),
        );
        let mut writer_done = false;

        let mut refresh = tokio::time::interval(config.channel_cache);
        let mut check = tokio::time::interval(config.fallback_check);
        let mut cleanup = tokio::time::interval(config.logs_cleanup);
        for t in [&mut refresh, &mut check, &mut cleanup] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        // The first check waits one period, so that a restarted watchdog first hears
        // the channels that are alive.
        check.reset();
        cleanup.reset();
        tracing::info!(
            check = ?config.fallback_check,
            quiet_after = ?config.fallback_time,
            "watchdog running"
        );

        let mut refreshing: Option<JoinHandle<()>> = None;
        let mut round: Option<JoinHandle<()>> = None;
        // Room in the log buffer for the next message: taken before the message, so
        // that a full buffer leaves messages on the bus without blocking this loop.
        let mut room = None;
        let result = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                done = &mut writer, if !writer_done => {
                    writer_done = true;
                    break match done {
                        Ok(r) => r,
                        Err(e) => Err(WatchdogError::LogWriter(e)),
                    };
                }
                permit = log_tx.clone().reserve_owned(), if room.is_none() => match permit {
                    Ok(p) => room = Some(p),
                    Err(_) => break Ok(()),
                },
                delivery = stream.next(), if room.is_some() => match delivery {
                    Some(Delivery { message, ack }) => {
                        let entry = state.on_message(message).await;
                        if let Some(p) = room.take() {
                            config.stats.log_received.fetch_add(1, Ordering::Relaxed);
                            p.send((entry, ack));
                        }
                    }
                    None => break Err(WatchdogError::BusEnded),
                },
                _ = refresh.tick() => {
                    // A refresh still waiting for the directory is not doubled.
                    if refreshing.as_ref().is_none_or(|t| t.is_finished()) {
                        refreshing = Some(tokio::spawn(state.clone().refresh_channels()));
                    }
                }
                _ = check.tick() => {
                    if let Some(previous) = round.take() {
                        // It ends at its own deadline, which is now; make sure.
                        previous.abort();
                    }
                    round = Some(tokio::spawn(state.clone().check_round(config.fallback_check)));
                }
                _ = cleanup.tick() => {
                    let log = self.log.clone();
                    let max_age = config.logs_max_age;
                    tokio::spawn(async move {
                        match log.cleanup_logs(max_age).await {
                            Ok(()) => tracing::debug!(?max_age, "old logs cleaned up"),
                            Err(e) => tracing::warn!(error = %e, "log cleanup failed"),
                        }
                    });
                }
            }
        };
        for task in [refreshing, round].into_iter().flatten() {
            task.abort();
        }
        drop(room);
        drop(log_tx);
        if !writer_done {
            // The writer ends once it has written what is buffered; bound that in time.
            if tokio::time::timeout(Duration::from_secs(5), &mut writer)
                .await
                .is_err()
            {
                tracing::warn!("log store did not take the buffered entries before shutdown");
                writer_stop.cancel();
                let _ = writer.await;
            }
        }
        result
    }
}

#[cfg(test)]
mod reliability_tests;
#[cfg(test)]
mod tests;

//! Prometheus metrics of a process (docs/protocol.md#metrics), with
//! `prometheus-client`: typed, no global state.
//!
//! Nothing here sits on the delivery path. The hub and the watchdog keep counting in
//! their own relaxed atomics ([`Stats`](crate::hub::Stats),
//! [`WatchdogStats`](crate::watchdog::WatchdogStats)); collectors read them at
//! scrape time. Directory and cache calls are timed by wrapping the backends in
//! [`Timed`], which also remembers whether the directory answered lately (readiness).
//!
//! | module | job |
//! |---|---|
//! | `collectors` | the hub's and the watchdog's counters, read at scrape time |
//! | `timed` | [`Timed`]: latency histograms and errors of directory and cache calls |

mod collectors;
mod timed;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub use collectors::{HubCollector, WatchdogCollector};
pub use timed::Timed;

/// The `Content-Type` of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Labels of a backend call: which call (`check_auth`, `get`, ...).
type CallLabels = [(&'static str, &'static str); 1];
type Latencies = Family<CallLabels, Histogram, fn() -> Histogram>;

/// Buckets from 1 ms to about 16 s, doubling: a memcached hit is well under a
/// millisecond, a PlugIt call tens of milliseconds, a timeout seconds.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Latencies and errors of one backend's calls.
#[derive(Debug)]
pub struct CallMetrics {
    latency: Latencies,
    errors: Family<CallLabels, Counter>,
    /// Unix milliseconds of the last call that succeeded / failed (0: none yet).
    last_ok: AtomicU64,
    last_error: AtomicU64,
    error_count: AtomicU64,
}

impl CallMetrics {
    fn new() -> CallMetrics {
        CallMetrics {
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            errors: Family::default(),
            last_ok: AtomicU64::new(0),
            last_error: AtomicU64::new(0),
            error_count: AtomicU64::new(0),
        }
    }

    /// Records one call named `call` that took `seconds`, and whether it succeeded.
    pub fn observe(&self, call: &'static str, seconds: f64, ok: bool) {
        let labels = [("call", call)];
        self.latency.get_or_create(&labels).observe(seconds);
        let now = unix_millis();
        if ok {
            self.last_ok.store(now, Ordering::Relaxed);
        } else {
            self.errors.get_or_create(&labels).inc();
            self.error_count.fetch_add(1, Ordering::Relaxed);
            self.last_error.store(now, Ordering::Relaxed);
        }
    }

    /// Whether the last call failed (no call yet: not failing).
    pub fn failing(&self) -> bool {
        self.last_error.load(Ordering::Relaxed) > self.last_ok.load(Ordering::Relaxed)
    }

    /// Calls that failed so far, all calls together.
    pub fn errors(&self) -> u64 {
        self.error_count.load(Ordering::Relaxed)
    }
}

/// The metrics of one process: a registry with the backends' call metrics, to which
/// the hub and the watchdog add their collectors. Shared as `Arc<Metrics>`.
pub struct Metrics {
    registry: Mutex<Registry>,
    directory: Arc<CallMetrics>,
    cache: Arc<CallMetrics>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry holding the directory and cache call metrics.
    pub fn new() -> Arc<Metrics> {
        let directory = Arc::new(CallMetrics::new());
        let cache = Arc::new(CallMetrics::new());
        let mut registry = Registry::with_prefix("radiovis");
        registry.register(
            "directory_request_duration_seconds",
            "Time of directory (PlugIt or file) calls, by call",
            directory.latency.clone(),
        );
        registry.register(
            "directory_errors",
            "Directory calls that failed (unreachable, timeout, bad answer), by call",
            directory.errors.clone(),
        );
        registry.register(
            "cache_request_duration_seconds",
            "Time of shared cache (memcached or in-process) calls, by call",
            cache.latency.clone(),
        );
        registry.register(
            "cache_errors",
            "Shared cache calls that failed, by call",
            cache.errors.clone(),
        );
        Arc::new(Metrics {
            registry: Mutex::new(registry),
            directory,
            cache,
        })
    }

    /// Adds a collector read at each scrape (its names get the `radiovis_` prefix).
    pub fn register(&self, collector: impl Collector) {
        self.registry.lock().register_collector(Box::new(collector));
    }

    /// The directory's call metrics.
    pub fn directory(&self) -> &Arc<CallMetrics> {
        &self.directory
    }

    /// The cache's call metrics.
    pub fn cache(&self) -> &Arc<CallMetrics> {
        &self.cache
    }

    /// Everything in the Prometheus text format (version 0.0.4, [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock();
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
            // Only a collector's own formatting can fail; serve what was written.
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        text
    }
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

//! Collectors that read the hub's and the watchdog's atomics at scrape time: the
//! counting stays one relaxed add where the event happens.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::hub::{Stats, Transport};
use crate::monitoring::Monitor;
use crate::watchdog::WatchdogStats;

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let c = ConstCounter::new(value);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> fmt::Result {
    let g = ConstGauge::new(value);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// One metric with one label, a value per label value.
fn labelled(
    e: &mut DescriptorEncoder,
    (name, help, kind): (&str, &str, MetricType),
    label: &str,
    values: impl IntoIterator<Item = (&'static str, u64)>,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (value, n) in values {
        let labels = [(label, value)];
        let family = m.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(n).encode(family)?,
            _ => ConstGauge::new(n as i64).encode(family)?,
        }
    }
    Ok(())
}

/// The hub's counters ([`Stats`]), the bus state and the monitoring buffer's drops.
pub struct HubCollector {
    stats: Arc<Stats>,
    monitor: Arc<Monitor>,
    bus_connected: Box<dyn Fn() -> bool + Send + Sync>,
}

impl HubCollector {
    /// Reads `stats` and `monitor`; `bus_connected` says whether the bus is up now.
    pub fn new(
        stats: Arc<Stats>,
        monitor: Arc<Monitor>,
        bus_connected: impl Fn() -> bool + Send + Sync + 'static,
    ) -> HubCollector {
        HubCollector {
            stats,
            monitor,
            bus_connected: Box::new(bus_connected),
        }
    }
}

impl fmt::Debug for HubCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubCollector").finish_non_exhaustive()
    }
}

impl Collector for HubCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let s = &self.stats;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let per_transport = |f: fn(&crate::hub::TransportStats) -> u64| {
            Transport::ALL.map(|t| (t.as_str(), f(s.transport(t))))
        };
        labelled(
            &mut e,
            (
                "connections",
                "Connections open now, by transport",
                MetricType::Gauge,
            ),
            "transport",
            per_transport(|t| t.open.load(Ordering::Relaxed) as u64),
        )?;
        labelled(
            &mut e,
            (
                "connections_accepted",
                "Connections accepted, by transport",
                MetricType::Counter,
            ),
            "transport",
            per_transport(|t| t.total.load(Ordering::Relaxed)),
        )?;
        counter(
            &mut e,
            "connections_refused",
            "Connections refused over a connection limit",
            load(&s.refused_connections),
        )?;
        gauge(
            &mut e,
            "listeners",
            "STOMP listeners accepting connections",
            s.listeners.load(Ordering::Relaxed) as i64,
        )?;
        gauge(
            &mut e,
            "subscriptions",
            "Subscriptions in the fan-out index",
            s.subscriptions.load(Ordering::Relaxed) as i64,
        )?;
        labelled(
            &mut e,
            (
                "messages_published",
                "Messages broadcasters published to the bus (one per target topic), by transport",
                MetricType::Counter,
            ),
            "transport",
            per_transport(|t| t.published.load(Ordering::Relaxed)),
        )?;
        counter(
            &mut e,
            "bus_messages_received",
            "Messages received from the bus and fanned out",
            load(&s.bus_messages),
        )?;
        counter(
            &mut e,
            "deliveries",
            "MESSAGE frames queued to subscribers",
            load(&s.deliveries),
        )?;
        counter(
            &mut e,
            "replays",
            "Last messages replayed to new subscriptions",
            load(&s.replays),
        )?;
        counter(
            &mut e,
            "slow_consumer_disconnects",
            "Subscribers disconnected because their outbound queue was full",
            load(&s.slow_consumers),
        )?;
        counter(
            &mut e,
            "unconverted_dropped",
            "Bus messages dropped while too many waited for a CC to GCC conversion",
            load(&s.unconverted_dropped),
        )?;
        labelled(
            &mut e,
            (
                "logins",
                "Station logins (STOMP and HTTP), by result",
                MetricType::Counter,
            ),
            "result",
            [
                ("success", load(&s.auth_succeeded)),
                ("failure", load(&s.auth_failed)),
                ("throttled", load(&s.auth_throttled)),
                ("unavailable", load(&s.auth_unavailable)),
            ],
        )?;
        gauge(
            &mut e,
            "bus_connected",
            "1 when the message bus carries messages between instances, else 0",
            i64::from((self.bus_connected)()),
        )?;
        counter(
            &mut e,
            "bus_reconnects",
            "Times the message bus connected again after losing its broker",
            load(&s.bus_reconnects),
        )?;
        counter(
            &mut e,
            "monitoring_events_dropped",
            "Monitoring events dropped because their buffer was full",
            self.monitor.dropped(),
        )
    }
}

/// The watchdog's counters ([`WatchdogStats`]).
#[derive(Debug)]
pub struct WatchdogCollector(pub Arc<WatchdogStats>);

impl Collector for WatchdogCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        counter(
            &mut e,
            "watchdog_defaults_sent",
            "Default slides (TEXT or SHOW) sent for quiet channels",
            s.defaults_sent.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut e,
            "watchdog_log_entries_buffered",
            "Log entries waiting to be written to the log store",
            s.log_buffered() as i64,
        )?;
        counter(
            &mut e,
            "watchdog_log_entries_sent",
            "Log entries the log store took",
            s.log_written.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "watchdog_log_entries_dropped",
            "Log entries the log store refused for good",
            s.log_dropped.load(Ordering::Relaxed),
        )
    }
}

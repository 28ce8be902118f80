//! The hub's counters: relaxed atomics bumped where the events happen (one add per
//! event, nothing more on the delivery path), read by [`Stats::snapshot`] and by the
//! metrics collector at scrape time (docs/protocol.md#metrics).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// How a client reached the server (the `transport` label of the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// STOMP over plain TCP.
    Stomp,
    /// STOMP over TLS.
    StompTls,
    /// STOMP over a WebSocket.
    WebSocket,
    /// Server-sent events.
    Sse,
    /// HTTP long-polling.
    LongPoll,
    /// One HTTP request (`POST /publish`).
    Http,
}

impl Transport {
    /// Every transport, in label order.
    pub const ALL: [Transport; 6] = [
        Transport::Stomp,
        Transport::StompTls,
        Transport::WebSocket,
        Transport::Sse,
        Transport::LongPoll,
        Transport::Http,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Stomp => "stomp",
            Transport::StompTls => "stomp_tls",
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
            Transport::LongPoll => "long_poll",
            Transport::Http => "http",
        }
    }

    /// The transport a STOMP session's stream is named after in the logs (`tcp`,
    /// `stomp_tls`, `websocket`; anything else counts as plain STOMP).
    pub fn of_stream(name: &str) -> Transport {
        match name {
            "stomp_tls" | "tls" => Transport::StompTls,
            "websocket" | "ws" => Transport::WebSocket,
            _ => Transport::Stomp,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one transport.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Connections open now.
    pub open: AtomicUsize,
    /// Connections accepted since the start.
    pub total: AtomicU64,
    /// Messages published to the bus through this transport (one per target topic).
    pub published: AtomicU64,
}

/// Counters of a running hub.
#[derive(Debug, Default)]
pub struct Stats {
    /// Open sessions.
    pub connections: AtomicUsize,
    /// Subscriptions in the index.
    pub subscriptions: AtomicUsize,
    /// Messages received from the bus.
    pub bus_messages: AtomicU64,
    /// MESSAGE frames queued to subscribers.
    pub deliveries: AtomicU64,
    /// Last messages replayed to new subscriptions.
    pub replays: AtomicU64,
    /// Subscribers disconnected because their queue was full.
    pub slow_consumers: AtomicU64,
    /// Connections refused over `max_connections`.
    pub refused_connections: AtomicU64,
    /// Bus messages dropped because too many were waiting for a CC -> GCC conversion.
    pub unconverted_dropped: AtomicU64,
    /// Station logins the directory accepted.
    pub auth_succeeded: AtomicU64,
    /// Station logins refused for wrong credentials.
    pub auth_failed: AtomicU64,
    /// Station logins refused without asking: too many failures from the address.
    pub auth_throttled: AtomicU64,
    /// Station logins that could not be checked (directory down or too slow).
    pub auth_unavailable: AtomicU64,
    /// Times the bus reconnected after losing its broker.
    pub bus_reconnects: AtomicU64,
    /// Listeners accepting connections now.
    pub listeners: AtomicUsize,
    transports: [TransportStats; Transport::ALL.len()],
}

impl Stats {
    /// The counters of one transport.
    pub fn transport(&self, transport: Transport) -> &TransportStats {
        &self.transports[transport.index()]
    }

    /// Counts a connection of `transport` as open (and one more in its total).
    pub fn opened(&self, transport: Transport) {
        let t = self.transport(transport);
        t.open.fetch_add(1, Ordering::Relaxed);
        t.total.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection of `transport` as closed.
    pub fn closed(&self, transport: Transport) {
        self.transport(transport)
            .open
            .fetch_sub(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            connections: self.connections.load(Ordering::Relaxed),
            subscriptions: self.subscriptions.load(Ordering::Relaxed),
            bus_messages: load(&self.bus_messages),
            deliveries: load(&self.deliveries),
            replays: load(&self.replays),
            slow_consumers: load(&self.slow_consumers),
            refused_connections: load(&self.refused_connections),
            unconverted_dropped: load(&self.unconverted_dropped),
            auth_succeeded: load(&self.auth_succeeded),
            auth_failed: load(&self.auth_failed),
            auth_throttled: load(&self.auth_throttled),
            bus_reconnects: load(&self.bus_reconnects),
        }
    }
}

/// A snapshot of [`Stats`] (plain numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Open sessions.
    pub connections: usize,
    /// Subscriptions in the index.
    pub subscriptions: usize,
    /// Messages received from the bus.
    pub bus_messages: u64,
    /// MESSAGE frames queued to subscribers.
    pub deliveries: u64,
    /// Last messages replayed to new subscriptions.
    pub replays: u64,
    /// Subscribers disconnected because their queue was full.
    pub slow_consumers: u64,
    /// Connections refused over `max_connections`.
    pub refused_connections: u64,
    /// Bus messages dropped because too many were waiting for a CC -> GCC conversion.
    pub unconverted_dropped: u64,
    /// Station logins the directory accepted.
    pub auth_succeeded: u64,
    /// Station logins refused for wrong credentials.
    pub auth_failed: u64,
    /// Station logins refused because of too many failures from the address.
    pub auth_throttled: u64,
    /// Times the bus reconnected.
    pub bus_reconnects: u64,
}

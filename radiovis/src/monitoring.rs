//! Monitoring events (docs/protocol.md#monitoring): servers, connections, disconnections,
//! subscriptions, unsubscriptions and messages, published as JSON
//! (`{"type":"log","label":...,"timestamp":...,"server":[...],"metadata":{...}}`) to a
//! sink, normally a RabbitMQ fanout exchange of its own.
//!
//! Emitting never blocks or slows delivery: events go through a bounded buffer with
//! `try_send`; when it is full the event is dropped and counted. JSON is built by the
//! publisher task, not on the delivery path.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backend::{BusMessage, MessageBus};

/// Who an event is about.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The `session` header of its CONNECTED.
    pub session_id: Arc<str>,
    /// The client's address.
    pub peer: SocketAddr,
}

/// One monitoring event.
#[derive(Debug, Clone)]
pub enum Event {
    /// A server instance started.
    Server,
    /// A session connected.
    Connection(Arc<SessionInfo>),
    /// A session ended.
    Disconnection(Arc<SessionInfo>),
    /// A session subscribed: (session, destination).
    Subscription(Arc<SessionInfo>, Arc<str>),
    /// A session unsubscribed: (session, destination).
    Unsubscription(Arc<SessionInfo>, Arc<str>),
    /// A message delivered to a session: (session, destination, body).
    Message(Arc<SessionInfo>, Arc<str>, Bytes),
}

impl Event {
    /// The event's label.
    pub fn label(&self) -> &'static str {
        match self {
            Event::Server => "radiovis.global.servers",
            Event::Connection(_) => "radiovis.global.connections",
            Event::Disconnection(_) => "radiovis.global.disconnections",
            Event::Subscription(..) => "radiovis.global.subscriptions",
            Event::Unsubscription(..) => "radiovis.global.unsubscriptions",
            Event::Message(..) => "radiovis.global.messages",
        }
    }

    /// The event as the original's monitoring JSON.
    pub fn to_json(&self, server_ids: &[String], timestamp: f64) -> serde_json::Value {
        let mut metadata = serde_json::Map::new();
        let mut put_session = |s: &SessionInfo| {
            metadata.insert("session_id".into(), s.session_id.as_ref().into());
            metadata.insert("ip".into(), s.peer.to_string().into());
        };
        match self {
            Event::Server => {}
            Event::Connection(s) | Event::Disconnection(s) => put_session(s),
            Event::Subscription(s, t) | Event::Unsubscription(s, t) => {
                put_session(s);
                metadata.insert("topic".into(), t.as_ref().into());
            }
            Event::Message(s, t, body) => {
                put_session(s);
                metadata.insert("topic".into(), t.as_ref().into());
                metadata.insert("body".into(), String::from_utf8_lossy(body).into());
            }
        }
        serde_json::json!({
            "type": "log",
            "label": self.label(),
            "timestamp": timestamp,
            "server": server_ids,
            "metadata": metadata,
        })
    }
}

/// Handle used by the hub and sessions to emit events. Disabled by default.
#[derive(Debug, Default)]
pub struct Monitor {
    tx: Option<mpsc::Sender<Event>>,
    dropped: AtomicU64,
}

impl Monitor {
    /// A monitor that emits nothing.
    pub fn disabled() -> Monitor {
        Monitor::default()
    }

    /// Whether events are collected at all (lets callers skip building them).
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Starts a publisher task that sends events to `sink` as JSON bodies (bus topic
    /// `monitoring`), buffering at most `capacity` events. When `shutdown` is
    /// cancelled it publishes the events already buffered (those of the last sessions
    /// closing), then ends: await its handle, bounded in time, for them to go out.
    pub fn start<S: MessageBus>(
        sink: S,
        server_ids: Vec<String>,
        capacity: usize,
        shutdown: CancellationToken,
    ) -> (Arc<Monitor>, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Event>(capacity.max(1));
        let monitor = Arc::new(Monitor {
            tx: Some(tx),
            dropped: AtomicU64::new(0),
        });
        let task = tokio::spawn(async move {
            let mut publisher = Publisher {
                sink,
                server_ids,
                failures: 0,
            };
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    e = rx.recv() => match e { Some(e) => e, None => return },
                };
                publisher.publish(event).await;
            }
            // Refuse new events (emit drops them, counted) and flush the buffered ones.
            rx.close();
            while let Some(event) = rx.recv().await {
                publisher.publish(event).await;
            }
        });
        (monitor, task)
    }

    /// Emits an event without ever waiting; a full buffer drops it (counted).
    pub fn emit(&self, event: Event) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(event).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n == 1 || n.is_multiple_of(10_000) {
                tracing::warn!(dropped = n, "monitoring buffer full: events dropped");
            }
        }
    }

    /// Events dropped so far because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The publishing half of the monitor task: turns events into JSON bus messages.
struct Publisher<S> {
    sink: S,
    server_ids: Vec<String>,
    /// Failed publications so far (logged sparsely: a sink that is down fails them all).
    failures: u64,
}

impl<S: MessageBus> Publisher<S> {
    async fn publish(&mut self, event: Event) {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let json = event.to_json(&self.server_ids, timestamp);
        let body = match serde_json::to_vec(&json) {
            Ok(b) => Bytes::from(b),
            Err(_) => return,
        };
        let msg = BusMessage {
            topic: "monitoring".into(),
            body,
            headers: vec![],
        };
        if let Err(e) = self.sink.publish(msg).await {
            self.failures += 1;
            let failures = self.failures;
            if failures == 1 || failures.is_multiple_of(1000) {
                tracing::warn!(error = %e, failures, "monitoring event not published");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::LocalBus;
    use futures::StreamExt;

    #[tokio::test]
    async fn events_are_published_as_json_and_overflow_is_counted() {
        let sink = Arc::new(LocalBus::new(16));
        let mut seen = sink.subscribe().await.expect("subscribe");
        let stop = CancellationToken::new();
        let (monitor, _task) = Monitor::start(sink.clone(), vec!["srv1".into()], 4, stop.clone());
        let info = Arc::new(SessionInfo {
            session_id: "s-1".into(),
            peer: "127.0.0.1:5000".parse().expect("addr"),
        });
        monitor.emit(Event::Subscription(info.clone(), "/topic/a/text".into()));
        let msg = seen.next().await.expect("event");
        let v: serde_json::Value = serde_json::from_slice(&msg.body).expect("json");
        assert_eq!(v["type"], "log");
        assert_eq!(v["label"], "radiovis.global.subscriptions");
        assert_eq!(v["server"][0], "srv1");
        assert_eq!(v["metadata"]["session_id"], "s-1");
        assert_eq!(v["metadata"]["ip"], "127.0.0.1:5000");
        assert_eq!(v["metadata"]["topic"], "/topic/a/text");
        assert!(v["timestamp"].as_f64().is_some_and(|t| t > 1.0e9));

        // A disabled monitor does nothing; a full buffer drops and counts.
        Monitor::disabled().emit(Event::Server);
        let (tx, _rx) = mpsc::channel(1);
        let full = Monitor {
            tx: Some(tx),
            dropped: AtomicU64::new(0),
        };
        full.emit(Event::Server);
        full.emit(Event::Server);
        assert_eq!(full.dropped(), 1);
        stop.cancel();
    }

    #[tokio::test]
    async fn buffered_events_are_published_at_shutdown() {
        let sink = Arc::new(LocalBus::new(64));
        let mut seen = sink.subscribe().await.expect("subscribe");
        let stop = CancellationToken::new();
        let (monitor, task) = Monitor::start(sink.clone(), vec!["srv1".into()], 16, stop.clone());
        // Buffered before the task runs, then shutdown: none may be lost.
        for _ in 0..5 {
            monitor.emit(Event::Server);
        }
        stop.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("the task ends")
            .expect("the task does not panic");
        for _ in 0..5 {
            let msg = seen.next().await.expect("event");
            let v: serde_json::Value = serde_json::from_slice(&msg.body).expect("json");
            assert_eq!(v["label"], "radiovis.global.servers");
        }
        assert_eq!(monitor.dropped(), 0);
    }
}

//! [`StompHub`]: the STOMP server. Accepts connections (within `max_connections`),
//! runs one [`session`](crate::session) per connection on the [`hub`](crate::hub)
//! they share, and on shutdown stops accepting and waits (bounded) for every task it
//! spawned.
//!
//! Dependencies go one way: server -> session -> hub, and server -> hub.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{Cache, DirectoryApi, MessageBus};
use crate::hub::{address_key, Hub, HubConfig, HubError, StatsSnapshot, TopicStatus};
use crate::metrics::{CallMetrics, HubCollector, Metrics};
use crate::session::{Generic, SessionIo};
use crate::stomp::{Frame, Version};

/// Idle time before the kernel probes a client connection (TCP keepalive).
const KEEPALIVE_TIME: Duration = Duration::from_secs(60);
/// Time between keepalive probes; the kernel's probe count decides when it gives up.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// The STOMP server, generic over its backends. Cheap to clone (one shared state).
pub struct StompHub<B, D, C> {
    hub: Arc<Hub<B, D, C>>,
    /// One permit per open connection.
    connections: Arc<Semaphore>,
    /// Open connections per client address (only addresses with one open).
    per_address: Arc<PerAddress>,
    /// Every task the server spawns (hub tasks, accept loops, sessions), so that
    /// shutdown can wait for them.
    tracker: TaskTracker,
}

impl<B, D, C> Clone for StompHub<B, D, C> {
    fn clone(&self) -> Self {
        StompHub {
            hub: self.hub.clone(),
            connections: self.connections.clone(),
            per_address: self.per_address.clone(),
            tracker: self.tracker.clone(),
        }
    }
}

impl<B: MessageBus, D: DirectoryApi, C: Cache> StompHub<B, D, C> {
    /// A server on these backends. Nothing runs until [`StompHub::run`].
    pub fn new(bus: B, directory: D, cache: C, config: HubConfig) -> Self {
        StompHub {
            connections: Arc::new(Semaphore::new(config.max_connections)),
            per_address: Arc::new(PerAddress::new(config.max_connections_per_address)),
            hub: Arc::new(Hub::new(bus, directory, cache, config)),
            tracker: TaskTracker::new(),
        }
    }

    /// The hub the sessions share (for the other transports of this crate).
    #[cfg(feature = "http")]
    pub(crate) fn hub(&self) -> &Arc<Hub<B, D, C>> {
        &self.hub
    }

    /// Counters so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.hub.stats().snapshot()
    }

    /// The `max` topics whose last message is newest (newest first), each with its
    /// subscriptions on this instance: what the status page shows.
    pub fn topic_status(&self, max: usize) -> Vec<TopicStatus> {
        self.hub.topic_status(max)
    }

    /// Adds this server's counters, bus state and monitoring drops to `metrics`
    /// (docs/protocol.md#metrics). Call it once per registry.
    pub fn register_metrics(&self, metrics: &Metrics) {
        let hub = Arc::downgrade(&self.hub);
        metrics.register(HubCollector::new(
            self.hub.shared_stats(),
            self.hub.config().monitor.clone(),
            move || hub.upgrade().is_some_and(|h| h.bus_connected()),
        ));
    }

    /// Whether this server can do its job now (docs/protocol.md#health): listening,
    /// bus connected, directory answering (or, when it is failing, the hub still has
    /// the channel list it got before). `directory` is the call record of the timed
    /// directory ([`Metrics::directory`]), when there is one.
    pub fn readiness(&self, directory: Option<&CallMetrics>) -> Readiness {
        let listening = self.hub.stats().listeners.load(Ordering::Relaxed) > 0;
        let bus_connected = self.hub.bus_connected();
        let directory = match directory {
            Some(d) if d.failing() => {
                if self.hub.known_channels().is_empty() {
                    DirectoryState::Failing
                } else {
                    DirectoryState::Cached
                }
            }
            _ => DirectoryState::Reachable,
        };
        Readiness {
            listening,
            bus_connected,
            directory,
            stopping: self.hub.is_stopping(),
        }
    }

    /// Serves STOMP on `listeners` until `shutdown` is cancelled, then stops accepting,
    /// lets sessions flush their queues and close (within `shutdown_grace`) and returns.
    pub async fn run(
        &self,
        listeners: Vec<TcpListener>,
        shutdown: CancellationToken,
    ) -> Result<(), HubError> {
        self.hub.start(&self.tracker).await?;
        for listener in listeners {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "listening for STOMP connections");
            }
            let server = self.clone();
            self.tracker
                .spawn(async move { server.accept_loop(listener).await });
        }

        shutdown.cancelled().await;
        tracing::info!("shutting down: no new connections, closing sessions");
        self.hub.stop();
        self.tracker.close();
        if tokio::time::timeout(self.hub.config().shutdown_grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.hub.stats().snapshot().connections,
                "shutdown grace elapsed with sessions still open"
            );
        }
        Ok(())
    }

    async fn accept_loop(&self, listener: TcpListener) {
        let listeners = &self.hub.stats().listeners;
        listeners.fetch_add(1, Ordering::Relaxed);
        let mut backoff = Duration::from_millis(10);
        loop {
            // The hub's token (not the caller's) so that accept loops and sessions
            // stop together, after `run` has logged the shutdown.
            let accepted = tokio::select! {
                _ = self.hub.stopped() => {
                    listeners.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                r = listener.accept() => r,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(10);
                    self.handle_connection(stream, peer);
                }
                Err(e) => {
                    // Typically out of file descriptors: wait, then try again.
                    tracing::warn!(error = %e, "accept failed; retrying in {:?}", backoff);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Runs a session on an already accepted connection (for embedders that accept
    /// connections themselves). Counts against `max_connections`.
    pub fn handle_connection(&self, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        // A client that vanished without a FIN (power cut, NAT timeout) is found by the
        // kernel's probes, even when no heart-beat or deadline would notice it.
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_TIME)
            .with_interval(KEEPALIVE_INTERVAL);
        if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
            tracing::debug!(%peer, error = %e, "cannot enable TCP keepalive");
        }
        self.serve_io(stream, peer, "tcp");
    }

    /// Runs a STOMP session on an already accepted byte stream of any kind (a TLS
    /// stream, a WebSocket byte adapter). `transport` names it in the logs. Counts
    /// against `max_connections` and `max_connections_per_address`.
    pub fn serve_stream<S>(&self, stream: S, peer: SocketAddr, transport: &'static str)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_io(Generic::new(stream), peer, transport);
    }

    fn serve_io<I: SessionIo>(&self, io: I, peer: SocketAddr, transport: &'static str) {
        match self.admit(peer) {
            Ok(admitted) => {
                let hub = self.hub.clone();
                // Not an async block around `run`: it would hold `io` a second time.
                self.tracker.spawn(
                    crate::session::run(hub, io, peer, transport).map(move |()| drop(admitted)),
                );
            }
            Err(refused) => self.refuse(io, refused.to_string()),
        }
    }

    /// A place for one more connection from `peer` under `max_connections` and
    /// `max_connections_per_address` (logged and counted when refused). Held for as
    /// long as the connection is open, whatever its transport.
    pub fn admit(&self, peer: SocketAddr) -> Result<Admitted, Refused> {
        let address = match PerAddress::admit(&self.per_address, peer.ip()) {
            Some(guard) => guard,
            None => {
                let limit = self.hub.config().max_connections_per_address;
                tracing::warn!(%peer, limit, "connection refused: too many connections from this address");
                return Err(self.refused(Refused::PerAddress(limit)));
            }
        };
        match self.connections.clone().try_acquire_owned() {
            Ok(permit) => Ok(Admitted {
                _permit: permit,
                _address: address,
            }),
            Err(_) => {
                let limit = self.hub.config().max_connections;
                tracing::warn!(%peer, limit, "connection refused: too many connections");
                Err(self.refused(Refused::Total(limit)))
            }
        }
    }

    fn refused(&self, refused: Refused) -> Refused {
        self.hub
            .stats()
            .refused_connections
            .fetch_add(1, Ordering::Relaxed);
        refused
    }

    /// Refuses a connection over a limit: an ERROR saying which, then a graceful close
    /// (what the client sent must not turn our close into a reset that destroys the
    /// ERROR).
    fn refuse<I: SessionIo>(&self, io: I, message: String) {
        self.tracker.spawn(async move {
            let mut io = io;
            let frame = Frame::error(message);
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                io.write_all(&frame.to_bytes(Version::V1_0)).await?;
                io.flush().await
            })
            .await;
            crate::session::linger(&mut io).await;
        });
    }
}

/// A connection admitted by [`StompHub::admit`]; dropping it gives its places back.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    _address: AddressGuard,
}

/// Why [`StompHub::admit`] refused a connection; the Display text tells the client.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum Refused {
    /// `max_connections_per_address` connections from that address are open.
    #[error("too many connections from your address: limit is {0}")]
    PerAddress(usize),
    /// `max_connections` connections are open.
    #[error("too many connections: limit is {0}")]
    Total(usize),
}

/// Open connections per client address, bounded by `max_connections_per_address`: one
/// address cannot take every connection of the server (docs/protocol.md#limits). The
/// map holds only addresses with a connection open.
struct PerAddress {
    max: usize,
    open: parking_lot::Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection of an address; dropping it gives the place back.
struct AddressGuard {
    table: Arc<PerAddress>,
    key: IpAddr,
}

impl PerAddress {
    fn new(max: usize) -> PerAddress {
        PerAddress {
            max: max.max(1),
            open: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// A place for one more connection from `ip`, or `None` when it has `max` open.
    fn admit(table: &Arc<PerAddress>, ip: IpAddr) -> Option<AddressGuard> {
        let key = address_key(ip);
        let mut open = table.open.lock();
        let n = open.entry(key).or_insert(0);
        if *n >= table.max {
            return None;
        }
        *n += 1;
        Some(AddressGuard {
            table: table.clone(),
            key,
        })
    }
}

impl Drop for AddressGuard {
    fn drop(&mut self) {
        let mut open = self.table.open.lock();
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// What a readiness probe reports (docs/protocol.md#health).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// At least one STOMP listener accepts connections.
    pub listening: bool,
    /// The bus carries messages between instances.
    pub bus_connected: bool,
    /// Whether the directory answers.
    pub directory: DirectoryState,
    /// The server is shutting down.
    pub stopping: bool,
}

impl Readiness {
    /// Whether the server should get traffic.
    pub fn ready(&self) -> bool {
        self.listening
            && self.bus_connected
            && self.directory != DirectoryState::Failing
            && !self.stopping
    }

    /// Why not, in a few words (`None` when ready).
    pub fn reason(&self) -> Option<&'static str> {
        if self.stopping {
            Some("shutting down")
        } else if !self.listening {
            Some("not listening")
        } else if !self.bus_connected {
            Some("message bus not connected")
        } else if self.directory == DirectoryState::Failing {
            Some("directory unreachable and nothing cached")
        } else {
            None
        }
    }
}

/// The directory as readiness sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectoryState {
    /// Its last call succeeded (or none failed yet).
    Reachable,
    /// Its last call failed, but the channel list it gave before is still known.
    Cached,
    /// Its last call failed and nothing from it is known.
    Failing,
}

impl DirectoryState {
    /// The word shown in health answers and on the status page.
    pub fn as_str(self) -> &'static str {
        match self {
            DirectoryState::Reachable => "reachable",
            DirectoryState::Cached => "failing (cached)",
            DirectoryState::Failing => "failing",
        }
    }
}

//! [`ProcessRouter`]: the operations endpoints of a process that has no hub
//! (radiovis-fallback, docs/protocol.md#operations): `GET /metrics`, `GET /healthz`,
//! `GET /readyz`, on the same listener as the server's ([`serve`](super::serve)).

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::{Method, Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ops_respond::{self, ReadyCheck};
use super::{Body, Router};
use crate::metrics::Metrics;
use crate::server::Refused;

/// Most connections open at once to a process's operations endpoints (a scraper and
/// a few probes; more are closed at once).
const MAX_CONNECTIONS: usize = 64;

/// Metrics and health of one process.
#[derive(Clone)]
pub struct ProcessRouter {
    metrics: Arc<Metrics>,
    ready: ReadyCheck,
    connections: Arc<Semaphore>,
}

impl ProcessRouter {
    /// Serves `metrics`; `/readyz` asks `ready`.
    pub fn new(metrics: Arc<Metrics>, ready: ReadyCheck) -> ProcessRouter {
        ProcessRouter {
            metrics,
            ready,
            connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        }
    }
}

impl Router for ProcessRouter {
    type Guard = OwnedSemaphorePermit;

    fn admit(&self, peer: SocketAddr) -> Result<OwnedSemaphorePermit, Refused> {
        self.connections.clone().try_acquire_owned().map_err(|_| {
            tracing::warn!(%peer, limit = MAX_CONNECTIONS, "operations connection refused: too many open");
            Refused::Total(MAX_CONNECTIONS)
        })
    }

    async fn route<T>(&self, req: Request<T>, _peer: SocketAddr) -> Response<Body> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => ops_respond::metrics(&self.metrics),
            (&Method::GET, "/healthz") => ops_respond::healthz(),
            (&Method::GET, "/readyz") => ops_respond::readyz(&(self.ready)()),
            _ => super::not_found(),
        }
    }
}

//! [`RadiovisRouter`]: what the server's HTTP listener answers, as one `match` on
//! (method, path) that hands each request to its module.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures::future::Either;
use futures::FutureExt as _;
use hyper::{Method, Request, Response};

use super::ops::Ops;
use super::{longpoll, sse, websocket, Body, Connection, Reply, Router};
use crate::backend::{Cache, DirectoryApi, MessageBus};
use crate::metrics::Metrics;
use crate::server::{Admitted, Refused};
use crate::StompHub;

/// Settings of the web transports.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// How long a long-poll request is held when there is nothing newer to answer
    /// (docs/protocol.md#http-long-poll).
    pub poll_hold: Duration,
    /// Interval of the keep-alive comments of a server-sent event stream.
    pub sse_keepalive: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            poll_hold: Duration::from_secs(10),
            sse_keepalive: Duration::from_secs(15),
        }
    }
}

/// The radio and web transports of a [`StompHub`], over HTTP. Each HTTP connection
/// counts against the hub's connection limits, like a STOMP connection.
pub struct RadiovisRouter<B, D, C> {
    hub: StompHub<B, D, C>,
    config: std::sync::Arc<HttpConfig>,
    /// Metrics, health, HTTP publish, status page (docs/protocol.md#operations).
    ops: std::sync::Arc<Ops<B, D, C>>,
}

impl<B, D, C> Clone for RadiovisRouter<B, D, C> {
    fn clone(&self) -> Self {
        RadiovisRouter {
            hub: self.hub.clone(),
            config: self.config.clone(),
            ops: self.ops.clone(),
        }
    }
}

impl<B: MessageBus, D: DirectoryApi, C: Cache> RadiovisRouter<B, D, C> {
    /// The transports of `hub` with these settings, and its operations endpoints
    /// with metrics of their own (no admin page; see [`RadiovisRouter::with_ops`]).
    pub fn new(hub: StompHub<B, D, C>, config: HttpConfig) -> Self {
        let ops = Ops::new(hub.clone(), Metrics::new(), None, None);
        RadiovisRouter {
            hub,
            config: std::sync::Arc::new(config),
            ops,
        }
    }

    /// The same router with these operations endpoints (the binary's metrics with
    /// its timed backends, admin credentials, in-process watchdog).
    pub fn with_ops(mut self, ops: std::sync::Arc<Ops<B, D, C>>) -> Self {
        self.ops = ops;
        self
    }
}

impl<B: MessageBus, D: DirectoryApi, C: Cache> Router for RadiovisRouter<B, D, C> {
    type Guard = Admitted;

    fn admit(&self, peer: SocketAddr) -> Result<Admitted, Refused> {
        self.hub.admit(peer)
    }

    fn route<T>(
        &self,
        req: Request<T>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Body>> + Send
    where
        T: hyper::body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        T::Error: std::error::Error + Send + Sync + 'static,
    {
        tracing::debug!(method = %req.method(), path = %req.uri().path(), "HTTP request");
        let get = req.method() == Method::GET;
        let path = req.uri().path();
        let (longpoll, sse) = (
            get && path == longpoll::PATH,
            get && path.starts_with(sse::PREFIX),
        );
        // The requests a client holds (a long-poll, an event stream) are not boxed:
        // their futures are all a held client costs besides its subscriptions. The
        // others are, so that the future of every request is no larger than theirs.
        let hub = self.hub.hub();
        if longpoll {
            let poll = longpoll::handle(
                hub,
                &self.config,
                req.uri().query(),
                Connection::of(&req),
                peer,
            );
            Either::Left(poll.map(Reply::into_response))
        } else if sse {
            Either::Right(Either::Left(sse::handle(hub, &self.config, req, peer)))
        } else {
            Either::Right(Either::Right(Box::pin(self.other(req, peer))))
        }
    }

    fn route_get(
        &self,
        target: &str,
        conn: &Connection,
        peer: SocketAddr,
    ) -> Option<impl Future<Output = Reply> + Send + use<B, D, C>> {
        let query = target.strip_prefix(longpoll::PATH)?;
        let query = match query.strip_prefix('?') {
            Some(query) => Some(query),
            None if query.is_empty() => None,
            None => return None,
        };
        tracing::debug!(method = "GET", path = longpoll::PATH, "HTTP request");
        Some(longpoll::handle(
            self.hub.hub(),
            &self.config,
            query,
            Some(conn),
            peer,
        ))
    }
}

impl<B: MessageBus, D: DirectoryApi, C: Cache> RadiovisRouter<B, D, C> {
    /// Every request but a long-poll or an event stream.
    async fn other<T>(&self, req: Request<T>, peer: SocketAddr) -> Response<Body>
    where
        T: hyper::body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        T::Error: std::error::Error + Send + Sync + 'static,
    {
        let path = req.uri().path().to_owned();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/stomp") => websocket::stomp(&self.hub, req, peer),
            (&Method::GET, p) if p.starts_with("/topic/") => websocket::ebu(&self.hub, req, peer),
            (&Method::OPTIONS, _) => super::preflight(),
            (m, p) if Ops::<B, D, C>::handles(m, p) => self.ops.route(req, peer).await,
            _ => super::not_found(),
        }
    }
}

//! The operations endpoints of radiovis-server (docs/protocol.md#operations), routed
//! by [`Ops::route`]:
//!
//! | method, path | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 or 503 with a short JSON reason |
//! | `POST /publish`, `POST /services/<channel>` | HTTP publish (`ops_publish`) |
//! | `GET /`, `GET /status.json`, `GET /status/events` | the status page, its snapshot, its live events (`ops_status`) |
//! | `GET /admin` | the admin page, behind `RADIOVIS_ADMIN_USER` / `_PASSWORD` |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{header, Method, Request, Response, StatusCode};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::Semaphore;

use super::ops_publish;
use super::ops_respond::{self, json_response, respond, AdminCredentials, OpsBody, ReadyReport};
use super::ops_status::{self, MessageRate, PUSH_EVERY};
use crate::backend::{Cache, DirectoryApi, MessageBus};
use crate::metrics::Metrics;
use crate::server::StompHub;
use crate::watchdog::WatchdogStats;

/// Most status pages following live events at once.
const MAX_EVENT_STREAMS: usize = 64;

/// How long a status snapshot is reused: however many pages watch, the hub is looked
/// at about once a second.
const SNAPSHOT_TTL: Duration = Duration::from_secs(1);

/// What the operations endpoints of a server need.
pub struct Ops<B, D, C> {
    hub: StompHub<B, D, C>,
    metrics: Arc<Metrics>,
    admin: Option<AdminCredentials>,
    watchdog: Option<Arc<WatchdogStats>>,
    rate: MessageRate,
    streams: Arc<Semaphore>,
    /// The last snapshot and when it was made.
    last_snapshot: Mutex<Option<(Instant, serde_json::Value)>>,
}

impl<B: MessageBus, D: DirectoryApi, C: Cache> Ops<B, D, C> {
    /// The endpoints of `hub`, whose counters are registered in `metrics` here; the
    /// status page shows `watchdog` when one runs in this process.
    pub fn new(
        hub: StompHub<B, D, C>,
        metrics: Arc<Metrics>,
        admin: Option<AdminCredentials>,
        watchdog: Option<Arc<WatchdogStats>>,
    ) -> Arc<Self> {
        hub.register_metrics(&metrics);
        // The first sample: messages per minute count from now on.
        let rate = MessageRate::default();
        rate.sample(hub.stats().bus_messages);
        Arc::new(Ops {
            hub,
            metrics,
            admin,
            watchdog,
            rate,
            streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
            last_snapshot: Mutex::new(None),
        })
    }

    /// Whether [`Ops::route`] answers this request.
    pub fn handles(method: &Method, path: &str) -> bool {
        matches!(
            (method, path),
            (
                &Method::GET,
                "/" | "/metrics"
                    | "/healthz"
                    | "/readyz"
                    | "/status.json"
                    | "/status/events"
                    | "/admin"
            ) | (&Method::POST, "/publish")
        ) || (method == Method::POST && path.starts_with("/services/"))
    }

    /// What `/readyz` reports: listening, bus connected, directory reachable or cached.
    pub fn ready_report(&self) -> ReadyReport {
        let r = self.hub.readiness(Some(self.metrics.directory()));
        let mut checks = serde_json::Map::new();
        checks.insert("listening".into(), json!(r.listening));
        checks.insert(
            "bus".into(),
            json!(if r.bus_connected {
                "connected"
            } else {
                "disconnected"
            }),
        );
        checks.insert("directory".into(), json!(r.directory.as_str()));
        ReadyReport {
            ready: r.ready(),
            reason: r.reason().map(str::to_owned),
            checks,
        }
    }

    /// Answers one request (see the module table); 404 for other paths.
    pub async fn route<Body>(
        self: &Arc<Self>,
        request: Request<Body>,
        peer: SocketAddr,
    ) -> Response<OpsBody>
    where
        Body: hyper::body::Body<Data = Bytes>,
        Body::Error: std::error::Error + Send + Sync + 'static,
    {
        let path = request.uri().path().to_owned();
        let admin_ok = |request: &Request<Body>| {
            let authorization = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            self.admin
                .as_ref()
                .is_some_and(|a| a.accepts(authorization))
        };
        match (request.method(), path.as_str()) {
            (&Method::GET, "/metrics") => ops_respond::metrics(&self.metrics),
            (&Method::GET, "/healthz") => ops_respond::healthz(),
            (&Method::GET, "/readyz") => ops_respond::readyz(&self.ready_report()),
            (&Method::POST, "/publish") => {
                ops_publish::publish(&self.hub, request, peer, None).await
            }
            (&Method::POST, p) if p.starts_with("/services/") => {
                let channel = p.trim_start_matches("/services/");
                ops_publish::publish(&self.hub, request, peer, Some(channel)).await
            }
            (&Method::GET, "/") => {
                let html = ops_status::page(&self.snapshot(), self.admin.is_some());
                respond(StatusCode::OK, "text/html; charset=utf-8", html)
            }
            (&Method::GET, "/status.json") => json_response(StatusCode::OK, &self.snapshot()),
            (&Method::GET, "/status/events") => self.events(),
            (&Method::GET, "/admin") => match &self.admin {
                None => json_response(
                    StatusCode::NOT_FOUND,
                    &json!({"error": "admin pages are off (RADIOVIS_ADMIN_USER unset)"}),
                ),
                Some(_) if admin_ok(&request) => respond(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    ops_status::admin_page(&self.hub),
                ),
                Some(_) => ops_respond::unauthorized("admin credentials needed"),
            },
            _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
        }
    }

    /// The status snapshot, made at most once per [`SNAPSHOT_TTL`].
    fn snapshot(&self) -> serde_json::Value {
        let mut last = self.last_snapshot.lock();
        if let Some((at, snapshot)) = last.as_ref() {
            if at.elapsed() < SNAPSHOT_TTL {
                return snapshot.clone();
            }
        }
        let snapshot = ops_status::snapshot(
            &self.hub,
            &self.metrics,
            self.watchdog.as_deref(),
            &self.rate,
        );
        *last = Some((Instant::now(), snapshot.clone()));
        snapshot
    }

    /// `GET /status/events`: a snapshot now and every [`PUSH_EVERY`], until the client
    /// leaves or the server stops.
    fn events(self: &Arc<Self>) -> Response<OpsBody> {
        let Ok(permit) = self.streams.clone().try_acquire_owned() else {
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": format!("too many live status pages: limit is {MAX_EVENT_STREAMS}")}),
            );
        };
        let ops = self.clone();
        let stopped = self.hub.hub().session_token();
        let mut interval = tokio::time::interval(PUSH_EVERY);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stream = futures::stream::unfold(
            (ops, interval, stopped, permit),
            |(ops, mut interval, stopped, permit)| async move {
                tokio::select! {
                    _ = stopped.cancelled() => None,
                    _ = interval.tick() => {
                        let frame = Frame::data(ops_status::event(&ops.snapshot()));
                        Some((Ok(frame), (ops, interval, stopped, permit)))
                    }
                }
            },
        );
        let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
        response
    }
}

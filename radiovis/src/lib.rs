//! # radiovis
//!
//! A RadioVis server library: radios subscribe over STOMP to a station's `.../text` and
//! `.../image` topics and receive `TEXT ...` / `SHOW <url>` messages; broadcasters log in
//! and publish to their own channels; several instances share a message bus.
//!
//! ## Layout (following one message)
//!
//! | module | job |
//! |---|---|
//! | [`stomp::frame`] | `Frame`, `Command`, `Version`, header escaping per version |
//! | [`stomp::codec`] | incremental decoder with limits, typed `CodecError` |
//! | [`topic`] | topic shapes, CC -> GCC normalisation, `*` matching, FM fallback |
//! | [`server`] | [`StompHub`]: accept, connection limit, one session task per connection, shutdown |
//! | [`session`] | one connection's life: CONNECT -> frames -> close |
//! | `http` | the HTTP listener and the web transports: long-poll, server-sent events, WebSocket (feature `http`) |
//! | [`hub`] | shared state: subscription index, fan-out, last messages, channel rights |
//! | [`outbound`] | per-message encoding shared by all subscribers, outbound queue items |
//! | [`watchdog`] | the fallback watchdog: message log, defaults for quiet channels |
//! | [`monitoring`] | monitoring events through a bounded, never-blocking buffer |
//! | [`metrics`] | Prometheus metrics: collectors over the hub's and watchdog's counters, timed backends |
//! | [`backend`] | the four traits (bus, directory, cache, log store) and in-process backends |
//! | [`singleflight`] | bounded TTL cache where concurrent misses make one call (CC -> GCC, channel rights) |
//! | [`client`] | a small STOMP client (examples, tests, benchmarks) |
//! | `tls` | TLS listeners: certificate files, bounded handshakes, reload on SIGHUP (feature `tls`) |
//! | `config` | environment variables and flags -> typed configuration and backends (feature `cli`, for the binaries) |
//!
//! The protocol these modules implement is specified in `docs/protocol.md` in the
//! repository; comments cite its sections as `docs/protocol.md#<anchor>`.
//!
//! Data path: socket -> codec -> session (SEND) -> [`MessageBus::publish`] -> every
//! instance's bus stream -> hub (normalise, remember as last message, encode once) ->
//! subscription index -> each subscriber's bounded queue -> its session -> socket.
//!
//! Dependencies go one way: `server` -> `session` -> `hub`, and `server` -> `hub`; the
//! hub knows nothing of sessions.

#![deny(missing_docs)]

pub mod backend;
pub mod client;
#[cfg(feature = "cli")]
pub mod config;
#[cfg(feature = "http")]
pub mod http;
pub mod hub;
pub mod metrics;
pub mod monitoring;
pub mod outbound;
pub mod server;
pub mod session;
pub mod singleflight;
pub mod stomp;
#[cfg(feature = "tls")]
pub mod tls;
pub mod topic;
pub mod watchdog;

pub use backend::{BusMessage, Cache, DirectoryApi, LogStore, MessageBus};
pub use hub::HubConfig;
pub use server::{Admitted, Refused, StompHub};

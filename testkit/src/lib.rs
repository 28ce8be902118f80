//! `testkit`: what the integration tests of every crate in the workspace share.
//!
//! | module | job |
//! |---|---|
//! | [`services`] | real RabbitMQ / memcached: reachable, skip with a printed reason, or fail under `RADIOVIS_REQUIRE_SERVICES=1`; broker clean-up |
//! | [`browser`] | headless Debian `chromium` through the DevTools protocol: open a page, evaluate, wait, screenshot |
//! | [`broker`] | the RabbitMQ bus tests' broker check (with logs), unique names, bus configuration |
//! | [`harness`] | a hub on `127.0.0.1:0` inside the test and a raw STOMP client that parses the wire itself |
//! | [`plugit_server`] | a PlugIt HTTP API test server with injectable faults (errors, hangs, refusals) |
//! | [`processes`] | the workspace's binaries as real processes with their logs captured, a private memcached, a guard that restarts a stopped RabbitMQ |
//! | [`ops`] | operations tests: one series of a `/metrics` answer, the real `curl`, a TCP proxy a test can cut |
//! | [`web`] | the hub's HTTP listener in the test, and a raw HTTP client (whole responses, server-sent event streams) |
//! | [`traffic`] | radios and a numbered broadcaster that record what was confirmed and received; recovery time after a fault |

pub mod broker;
pub mod browser;
pub mod harness;
pub mod ops;
pub mod plugit_server;
pub mod processes;
pub mod services;
pub mod traffic;
pub mod web;

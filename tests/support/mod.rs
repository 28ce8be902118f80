//! Helpers shared by the integration tests (each test file does `mod support;`).
#![allow(dead_code)]

pub mod harness;
pub mod plugit_server;
pub mod services;

//! HTTP endpoints (feature `http`).

pub mod ops;
mod ops_publish;
pub mod ops_respond;
mod ops_status;

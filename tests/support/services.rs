//! External services for the integration tests: skip when absent, unless
//! `RADIOVIS_REQUIRE_SERVICES=1` (CI), then fail.

use std::time::Duration;

/// Whether missing services must fail the tests instead of skipping them.
pub fn services_required() -> bool {
    std::env::var("RADIOVIS_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Call when a service is missing: panics when services are required, otherwise prints
/// why the test is skipped (the caller then returns).
pub fn skip(test: &str, reason: &str) {
    if services_required() {
        panic!("{test}: {reason} (RADIOVIS_REQUIRE_SERVICES=1)");
    }
    eprintln!("SKIPPED {test}: {reason}");
}

/// Whether something accepts TCP connections at `addr` within a second.
pub async fn reachable(addr: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

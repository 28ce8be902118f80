//! What the RabbitMQ bus tests share: the broker check with the library's debug log in
//! the test output, names of the test's own, and a bus configuration for them.

use radiovis::backend::rabbitmq::RabbitConfig;

use crate::services::BROKER_URL;

/// Whether the broker is reachable ([`crate::services::broker_up`]), with the
/// library's log (`RUST_LOG`, else `radiovis=debug`) in the test output.
pub async fn broker_up_logged(test: &str) -> bool {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "radiovis=debug".into()),
        )
        .with_test_writer()
        .try_init();
    crate::services::broker_up(test).await
}

/// A name no other test run uses (exchanges, queues), so runs do not see each other.
pub fn unique(what: &str) -> String {
    format!("radiovis-test-{what}-{}", uuid::Uuid::new_v4())
}

/// The bus configuration of the test broker on `exchange`.
pub fn config(exchange: &str) -> RabbitConfig {
    RabbitConfig::from_url(BROKER_URL)
        .expect("the test broker URL parses")
        .with_exchange(exchange)
}

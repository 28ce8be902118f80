//! A custom message bus: any transport that can carry (topic, body, headers) to every
//! instance can back the hub. This one wraps the in-process bus and counts and logs
//! every message, the skeleton of a bus on another broker (NATS, Redis, Kafka...).
//!
//! ```text
//! cargo run --example custom_bus
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use radiovis::backend::memory::{LocalBus, MemoryCache, StaticDirectory};
use radiovis::backend::{BusError, BusMessage, BusStream, MessageBus};
use radiovis::{HubConfig, StompHub};
use tokio_util::sync::CancellationToken;

/// A bus that counts what it carries and delegates the transport.
struct CountingBus {
    inner: LocalBus,
    published: AtomicU64,
}

#[async_trait]
impl MessageBus for CountingBus {
    async fn publish(&self, message: BusMessage) -> Result<(), BusError> {
        let n = self.published.fetch_add(1, Ordering::Relaxed) + 1;
        println!(
            "bus: message #{n} to {} ({} bytes)",
            message.topic,
            message.body.len()
        );
        // A real broker would return Err(BusError::Unavailable(..)) while disconnected,
        // so that the publisher gets an ERROR instead of a silent loss.
        self.inner.publish(message).await
    }

    async fn subscribe(&self) -> Result<BusStream, BusError> {
        self.inner.subscribe().await
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let bus = Arc::new(CountingBus {
        inner: LocalBus::default(),
        published: AtomicU64::new(0),
    });
    let directory = StaticDirectory::from_file("examples/directory.toml".as_ref())?;
    let hub = StompHub::new(bus, directory, MemoryCache::new(), HubConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:61615").await?;
    println!("custom bus hub on 127.0.0.1:61615; publish with: cargo run --example publisher -- --server 127.0.0.1:61615");
    // Ctrl-C cancels the token; `run` then closes the sessions and returns.
    let stop = CancellationToken::new();
    let run = hub.run(vec![listener], stop.clone());
    tokio::pin!(run);
    tokio::select! {
        r = &mut run => r?,
        _ = tokio::signal::ctrl_c() => {
            stop.cancel();
            run.await?
        }
    }
    Ok(())
}

//! Embedding the hub in another tokio service, with backends of your own.
//!
//! The service here has its own station list in code (a `DirectoryApi` implementation),
//! runs the STOMP hub on a port of its choice, and publishes a clock slide every second
//! straight onto the bus, next to whatever broadcasters send.
//!
//! ```text
//! cargo run --example embed        # then: cargo run --example subscriber -- --server 127.0.0.1:61614 --topic /topic/id/clock.example/main/text
//! ```

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use radiovis::backend::memory::{LocalBus, MemoryCache};
use radiovis::backend::{
    BusMessage, ChannelDefault, ChannelRef, DirectoryApi, DirectoryError, MessageBus,
};
use radiovis::{HubConfig, StompHub};
use tokio_util::sync::CancellationToken;

/// The service's own directory: one station, one channel, no country codes.
struct MyDirectory;

#[async_trait]
impl DirectoryApi for MyDirectory {
    async fn check_auth(
        &self,
        user: &str,
        pass: &str,
        _ip: IpAddr,
    ) -> Result<bool, DirectoryError> {
        Ok(user == "9.clock" && pass == "tick")
    }
    async fn get_channels(&self, station: &str) -> Result<Vec<String>, DirectoryError> {
        Ok(if station == "9" {
            vec!["/topic/id/clock.example/main/".into()]
        } else {
            vec![]
        })
    }
    async fn get_gcc(&self, _cc: &str) -> Result<Option<String>, DirectoryError> {
        Ok(None)
    }
    async fn get_all_channels(&self) -> Result<Vec<ChannelRef>, DirectoryError> {
        Ok(vec![ChannelRef {
            topic: "/topic/id/clock.example/main/".into(),
            id: "1".into(),
        }])
    }
    async fn get_all_vis_channels(&self) -> Result<Vec<ChannelRef>, DirectoryError> {
        Ok(vec![])
    }
    async fn get_channel_default(
        &self,
        _id: &str,
    ) -> Result<Option<ChannelDefault>, DirectoryError> {
        Ok(None)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    // The bus is shared: the hub consumes it, the service publishes on it.
    let bus = Arc::new(LocalBus::default());
    let hub = StompHub::new(
        bus.clone(),
        MyDirectory,
        MemoryCache::new(),
        HubConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:61614").await?;

    let clock = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let msg = BusMessage {
                topic: "/topic/id/clock.example/main/text".into(),
                body: format!("TEXT It is {now} seconds past the epoch").into(),
                headers: vec![("when".into(), now.to_string())],
            };
            if let Err(e) = bus.publish(msg).await {
                eprintln!("clock: {e}");
            }
        }
    });

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
    clock.abort();
    Ok(())
}

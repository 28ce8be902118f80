//! 10,000 concurrent SUBSCRIBEs to CC-form topics cause at most one `get_gcc` call per
//! country code (issue: PlugIt must not be flooded after a restart).

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use radiovis::backend::memory::{LocalBus, MemoryCache};
use radiovis::backend::{ChannelDefault, ChannelRef, DirectoryApi, DirectoryError};
use radiovis::client::Client;
use radiovis::stomp::{Command, Frame};
use radiovis::{HubConfig, StompHub};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A slow directory that counts `get_gcc` calls per country code.
#[derive(Default)]
struct CountingDirectory {
    ch: AtomicUsize,
    de: AtomicUsize,
}

#[async_trait]
impl DirectoryApi for CountingDirectory {
    async fn check_auth(&self, _: &str, _: &str, _: IpAddr) -> Result<bool, DirectoryError> {
        Ok(false)
    }
    async fn get_channels(&self, _: &str) -> Result<Vec<String>, DirectoryError> {
        Ok(vec![])
    }
    async fn get_gcc(&self, cc: &str) -> Result<Option<String>, DirectoryError> {
        let (counter, gcc) = match cc {
            "ch" => (&self.ch, "4e1"),
            "de" => (&self.de, "de0"),
            _ => return Ok(None),
        };
        counter.fetch_add(1, Ordering::SeqCst);
        // Slow enough that all subscriptions arrive while the first call is pending.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(Some(gcc.to_owned()))
    }
    async fn get_all_channels(&self) -> Result<Vec<ChannelRef>, DirectoryError> {
        Ok(vec![])
    }
    async fn get_all_vis_channels(&self) -> Result<Vec<ChannelRef>, DirectoryError> {
        Ok(vec![])
    }
    async fn get_channel_default(&self, _: &str) -> Result<Option<ChannelDefault>, DirectoryError> {
        Ok(None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_cc_subscribes_make_one_get_gcc_per_country() {
    let directory = Arc::new(CountingDirectory::default());
    let hub = StompHub::new(
        LocalBus::default(),
        directory.clone(),
        MemoryCache::new(),
        HubConfig {
            // All 1,000 clients come from 127.0.0.1.
            max_connections_per_address: 10_000,
            ..HubConfig::default()
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let run = tokio::spawn({
        let stop = stop.clone();
        async move { hub.run(vec![listener], stop).await }
    });

    // 1,000 connections x 10 subscriptions = 10,000 SUBSCRIBEs, half per country.
    let mut tasks = Vec::new();
    for c in 0..1000u32 {
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr, &[]).await.expect("connect");
            for s in 0..10u32 {
                let cc = if s % 2 == 0 { "ch" } else { "de" };
                let pi = format!("{:04x}", (c * 10 + s) % 0xffff);
                let dest = format!("/topic/fm/{cc}/{pi}/09580/text");
                client
                    .send_frame(
                        &Frame::new(Command::Subscribe)
                            .header("destination", dest)
                            .header("id", s.to_string()),
                    )
                    .await
                    .expect("subscribe");
            }
            // A receipt after the last SUBSCRIBE: all ten were processed.
            client
                .send_with_receipt(Frame::new(Command::Other("NOOP".into())))
                .await
                .expect("receipt");
            client
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("in time")
                .expect("task"),
        );
    }
    assert_eq!(directory.ch.load(Ordering::SeqCst), 1, "one get_gcc for ch");
    assert_eq!(directory.de.load(Ordering::SeqCst), 1, "one get_gcc for de");
    drop(clients);
    stop.cancel();
    let _ = run.await;
}

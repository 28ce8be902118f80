//! Leadership among watchdogs ([`LeaderLock`]); used only by the watchdog binary.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::supervisor::close_connection;
use super::RabbitConfig;

/// Leadership among watchdogs sharing one broker: the holder of the exclusive queue
/// `<name>` is the active one. The broker deletes an exclusive queue when its
/// connection dies, so a standby that keeps trying to declare it takes over within one
/// retry period after the active process stops, however it stops.
pub struct LeaderLock {
    connection: Connection,
    lost: CancellationToken,
    watcher: JoinHandle<()>,
}

impl LeaderLock {
    /// Waits until this process holds the lock (retrying every `retry`), or `None` when
    /// `shutdown` is cancelled first.
    pub async fn acquire(
        config: &RabbitConfig,
        name: &str,
        retry: Duration,
        shutdown: &CancellationToken,
    ) -> Option<LeaderLock> {
        let mut waiting_logged = false;
        loop {
            match Self::try_acquire(config, name).await {
                Ok(lock) => {
                    info!(lock = name, "leadership acquired: this watchdog is active");
                    return Some(lock);
                }
                Err(why) => {
                    if !waiting_logged {
                        info!(lock = name, reason = %why, "standing by: another watchdog is active or the broker is unreachable");
                        waiting_logged = true;
                    } else {
                        tracing::trace!(lock = name, reason = %why, "still standing by");
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(retry) => {}
            }
        }
    }

    async fn try_acquire(config: &RabbitConfig, name: &str) -> Result<LeaderLock, String> {
        let connect = Connection::connect_uri(config.uri(), ConnectionProperties::default());
        let connection = tokio::time::timeout(config.connect_timeout, connect)
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| format!("connect: {e}"))?;
        let declared = async {
            let ch = connection.create_channel().await?;
            ch.queue_declare(
                name.into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
        };
        match tokio::time::timeout(config.connect_timeout, declared).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                close_connection(&connection, "lock held elsewhere").await;
                return Err(format!("lock queue: {e}"));
            }
            Err(_) => {
                close_connection(&connection, "lock timeout").await;
                return Err("lock queue declaration timed out".to_owned());
            }
        }
        let lost = CancellationToken::new();
        let status = connection.status().clone();
        let watcher = {
            let lost = lost.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                loop {
                    tick.tick().await;
                    if !status.connected() {
                        warn!("leadership lost: the lock connection closed");
                        lost.cancel();
                        return;
                    }
                }
            })
        };
        Ok(LeaderLock {
            connection,
            lost,
            watcher,
        })
    }

    /// Completes when the lock is lost (its connection closed); the holder must stop
    /// acting as the leader then.
    pub async fn lost(&self) {
        self.lost.cancelled().await
    }

    /// Gives the lock up.
    pub async fn release(self) {
        self.watcher.abort();
        close_connection(&self.connection, "released").await;
    }
}

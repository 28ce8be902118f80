//! Acknowledgements of deliveries handed to acked streams (`subscribe_acked`).
//!
//! One RabbitMQ delivery may be handed to several acked streams; it is acknowledged to
//! the broker only when every one of them acknowledged it, and requeued when any of
//! them dropped it unacknowledged (at least once for each stream: a stream that did
//! acknowledge may see it again). An acknowledgement for a delivery of a consuming
//! channel that was closed since (connection loss, or the durable queue paused) is not
//! sent: the broker requeued the delivery when the channel closed, and the same
//! channel number on the new channel means other deliveries (docs/protocol.md#rabbitmq-queues).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use tracing::debug;

use crate::backend::AckHandle;

/// The shared part: acknowledges or requeues when the last stream's handle is gone.
pub(super) struct RabbitAck {
    acker: lapin::Acker,
    /// Set when a stream dropped its handle unacknowledged.
    refused: AtomicBool,
    /// The consuming channel's epoch when the delivery arrived, and the current one.
    epoch: u64,
    current_epoch: Arc<AtomicU64>,
    tracker: tokio_util::task::TaskTracker,
}

impl RabbitAck {
    /// The acknowledgement of a delivery of the consuming channel of epoch `epoch`.
    pub(super) fn new(
        acker: lapin::Acker,
        epoch: u64,
        current_epoch: Arc<AtomicU64>,
        tracker: tokio_util::task::TaskTracker,
    ) -> Arc<RabbitAck> {
        Arc::new(RabbitAck {
            acker,
            refused: AtomicBool::new(false),
            epoch,
            current_epoch,
            tracker,
        })
    }
}

impl Drop for RabbitAck {
    fn drop(&mut self) {
        if self.current_epoch.load(Ordering::SeqCst) != self.epoch {
            debug!("delivery of a closed consuming channel: the broker requeued it, no acknowledgement sent");
            return;
        }
        let acker = self.acker.clone();
        let acked = !self.refused.load(Ordering::SeqCst);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            self.tracker.spawn_on(
                async move {
                    let r = if acked {
                        acker.ack(BasicAckOptions::default()).await
                    } else {
                        acker
                            .nack(BasicNackOptions {
                                requeue: true,
                                ..Default::default()
                            })
                            .await
                    };
                    if let Err(e) = r {
                        // The channel closed meanwhile: the broker requeues it anyway.
                        debug!(error = %e, acked, "delivery acknowledgement not sent");
                    }
                },
                &handle,
            );
        }
    }
}

/// One acked stream's share of a [`RabbitAck`]: dropped without [`AckHandle::ack`], it
/// refuses the delivery for every stream (so the broker redelivers it).
pub(super) struct RabbitAckHandle {
    shared: Arc<RabbitAck>,
    acked: bool,
}

impl RabbitAckHandle {
    pub(super) fn new(shared: Arc<RabbitAck>) -> RabbitAckHandle {
        RabbitAckHandle {
            shared,
            acked: false,
        }
    }
}

impl AckHandle for RabbitAckHandle {
    fn ack(mut self: Box<Self>) {
        self.acked = true;
    }
}

impl Drop for RabbitAckHandle {
    fn drop(&mut self) {
        if !self.acked {
            self.shared.refused.store(true, Ordering::SeqCst);
        }
    }
}

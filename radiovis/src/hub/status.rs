//! What the status page shows of the hub: the newest topics with their last message
//! and their subscribers (docs/protocol.md#status-page).

use std::sync::Arc;

use crate::backend::{Cache, DirectoryApi, MessageBus};
use crate::outbound::Published;

use super::Hub;

/// One topic's last message and how many subscriptions it has here.
#[derive(Debug, Clone)]
pub struct TopicStatus {
    /// The last message (normalised topic, body, headers).
    pub last: Arc<Published>,
    /// Subscriptions to exactly this topic on this instance (wildcards not counted).
    pub subscribers: usize,
}

impl<B: MessageBus, D: DirectoryApi, C: Cache> Hub<B, D, C> {
    /// The `max` topics whose last message is newest, newest first.
    pub fn topic_status(&self, max: usize) -> Vec<TopicStatus> {
        let newest = self.last.newest(max);
        let index = self.index.read();
        newest
            .into_iter()
            .map(|last| TopicStatus {
                subscribers: index.exact_count(&last.topic),
                last,
            })
            .collect()
    }
}

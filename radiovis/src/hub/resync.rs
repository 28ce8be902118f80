//! Resynchronising the last messages after the bus reconnected
//! (docs/protocol.md#rabbitmq-queues): while this instance was disconnected, other
//! instances went on publishing, and its exclusive queue (gone with the connection)
//! never saw those messages; but every instance writes the last message of each topic
//! to the shared cache (`radiovis_last_<topic>`). After a reconnection the hub re-reads
//! those entries for the topics it knows and keeps, per topic, the newer of the cached
//! and the local message (by their `when` header), so that replay converges.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use super::{Hub, LAST_MESSAGE_PREFIX};
use crate::backend::{Cache, DirectoryApi, MessageBus};
use crate::outbound::Published;

/// Cache reads in flight at once during a resynchronisation.
const PARALLEL_READS: usize = 32;

/// A last message as the cache holds it (the shape `last` writes).
#[derive(serde::Deserialize)]
struct Cached {
    topic: String,
    body: String,
    headers: Vec<(String, String)>,
}

impl<B: MessageBus, D: DirectoryApi, C: Cache> Hub<B, D, C> {
    /// Re-reads the cached last message of every topic this instance knows (`text` and
    /// `image` of the known channels, and every topic it holds a last message for) and
    /// keeps those newer than its own. Cache failures only leave a topic as it was.
    pub(super) async fn resync_last_messages(&self) {
        let mut topics: Vec<String> = self
            .known_channels()
            .iter()
            .flat_map(|c| [format!("{c}text"), format!("{c}image")])
            .collect();
        topics.extend(self.last.held_topics());
        topics.sort_unstable();
        topics.dedup();
        let asked = topics.len();
        let cache = &*self.cache;
        let found: Vec<Cached> = futures::stream::iter(topics)
            .map(|topic| async move {
                match cache.get(&format!("{LAST_MESSAGE_PREFIX}{topic}")).await {
                    Ok(Some(v)) => serde_json::from_slice::<Cached>(&v)
                        .ok()
                        .filter(|c| c.topic == topic),
                    _ => None,
                }
            })
            .buffer_unordered(PARALLEL_READS)
            .filter_map(|c| async move { c })
            .collect()
            .await;
        let mut taken = 0usize;
        for c in found {
            let published = Published::new(
                self.last.next_seq(),
                c.topic,
                Bytes::from(c.body),
                c.headers,
            );
            if self.last.record_if_newer(Arc::new(published)) {
                taken += 1;
            }
        }
        tracing::info!(
            topics = asked,
            updated = taken,
            "message bus reconnected: last messages resynchronised from the shared cache"
        );
    }
}

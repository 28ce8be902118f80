//! The last message of every topic, replayed to new subscriptions (unless they ask
//! `x-ebu-nofastreply`), bounded in the number of topics, and shared through the cache
//! (`radiovis_last_<topic>`) so that a freshly started instance replays the current
//! slide too.
//!
//! Replay to a pattern takes the newest matching topic from a trie of the topics by
//! segment, in which every node knows the newest message below it: a `*` walks the
//! children of its own level only, and branches with nothing newer than the best
//! match so far are skipped, so the cost follows what the pattern matches, not the
//! size of the store (docs/protocol.md#replay). The store has a lock of its own,
//! never the one the fan-out needs, and hands out `Arc`s.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::RwLock;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::index::IndexKey;
use crate::backend::Cache;
use crate::outbound::Published;

/// Prefix of the cache keys holding the last message of a normalised topic, so that a
/// newly started instance can replay the current slide.
pub const LAST_MESSAGE_PREFIX: &str = "radiovis_last_";

/// How long a last message stays in the shared cache.
const LAST_MESSAGE_TTL: Duration = Duration::from_secs(86_400);

/// Last-message cache writes waiting for the cache (excess ones are skipped: the next
/// message of the topic writes again).
const LAST_MESSAGE_QUEUE: usize = 1024;

/// A last message as stored in the shared cache (JSON).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct CachedMessage {
    topic: String,
    body: String,
    headers: Vec<(String, String)>,
}

/// Last messages by normalised topic, and the same by segment (for patterns).
#[derive(Default)]
struct Store {
    by_topic: HashMap<String, Arc<Published>>,
    trie: TopicNode,
}

/// A node of the topic trie: the message of the topic that ends here, and the highest
/// arrival number in this subtree (exact: arrival numbers only grow, and the trie is
/// rebuilt after an eviction).
#[derive(Default)]
struct TopicNode {
    children: HashMap<Box<str>, TopicNode>,
    message: Option<Arc<Published>>,
    newest: u64,
}

impl TopicNode {
    fn insert(&mut self, published: Arc<Published>) {
        let seq = published.seq;
        let mut node = self;
        node.newest = node.newest.max(seq);
        for seg in published.topic.split('/') {
            node = node.children.entry(seg.into()).or_default();
            node.newest = node.newest.max(seq);
        }
        node.message = Some(published);
    }

    /// The newest message under this node whose remaining segments match `segs`,
    /// if newer than `best`.
    fn newest_match<'s>(
        &self,
        mut segs: impl Iterator<Item = &'s str> + Clone,
        best: &mut Option<Arc<Published>>,
    ) {
        if best.as_ref().is_some_and(|b| b.seq >= self.newest) {
            return;
        }
        match segs.next() {
            None => {
                if let Some(m) = &self.message {
                    *best = Some(m.clone());
                }
            }
            Some("*") => {
                for child in self.children.values() {
                    child.newest_match(segs.clone(), best);
                }
            }
            Some(seg) => {
                if let Some(child) = self.children.get(seg) {
                    child.newest_match(segs, best);
                }
            }
        }
    }
}

/// Last messages by normalised topic.
pub(super) struct LastMessages {
    store: RwLock<Store>,
    /// Most topics kept (at least one).
    max: usize,
    /// Order of arrival, to find the newest of several topics and to evict the oldest.
    seq: AtomicU64,
    /// Hands messages to the cache writer task (set when the hub starts).
    writer: OnceLock<mpsc::Sender<Arc<Published>>>,
}

impl LastMessages {
    /// An empty store keeping at most `max` topics.
    pub fn new(max: usize) -> LastMessages {
        LastMessages {
            store: RwLock::new(Store::default()),
            max: max.max(1),
            seq: AtomicU64::new(0),
            writer: OnceLock::new(),
        }
    }

    /// The next arrival number.
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Remembers `published` as the last message of its topic. Returns whether the
    /// store is now over `max` topics: the caller then calls [`LastMessages::evict`]
    /// once it holds no lock the fan-out needs (eviction is a scan).
    #[must_use = "over `max`, call `evict` once no lock of the fan-out is held"]
    pub fn record(&self, published: Arc<Published>) -> bool {
        let mut store = self.store.write();
        store.trie.insert(published.clone());
        store.by_topic.insert(published.topic.clone(), published);
        store.by_topic.len() > self.max
    }

    /// Beyond `max` topics, forgets the oldest tenth at once, so that eviction stays
    /// rare. The new trie is built outside the store's lock.
    pub fn evict(&self) {
        let max = self.max;
        let (threshold, kept): (u64, Vec<Arc<Published>>) = {
            let store = self.store.read();
            let last = &store.by_topic;
            if last.len() <= max {
                return;
            }
            let mut seqs: Vec<u64> = last.values().map(|m| m.seq).collect();
            let cut = (last.len() - max + max / 10).min(seqs.len() - 1);
            let (_, &mut threshold, _) = seqs.select_nth_unstable(cut);
            let kept = last
                .values()
                .filter(|m| m.seq >= threshold)
                .cloned()
                .collect();
            (threshold, kept)
        };
        // Rebuilt rather than pruned: as rare as the eviction, and it keeps every
        // node's `newest` exact.
        let mut trie = TopicNode::default();
        let mut by_topic = HashMap::with_capacity(kept.len());
        for m in kept {
            trie.insert(m.clone());
            by_topic.insert(m.topic.clone(), m);
        }
        let mut store = self.store.write();
        // What arrived meanwhile is newer than the threshold: keep it too.
        for (topic, m) in store.by_topic.drain() {
            if m.seq >= threshold && by_topic.get(&topic).is_none_or(|k| k.seq < m.seq) {
                trie.insert(m.clone());
                by_topic.insert(topic, m);
            }
        }
        store.trie = trie;
        store.by_topic = by_topic;
        tracing::warn!(
            kept = store.by_topic.len(),
            max,
            "too many topics: oldest last messages forgotten"
        );
    }

    /// Queues `published` for the cache writer without waiting (skipped when busy).
    pub fn share(&self, published: Arc<Published>) {
        if let Some(tx) = self.writer.get() {
            if tx.try_send(published).is_err() {
                tracing::debug!("last-message cache writer busy; skipped");
            }
        }
    }

    /// The message to replay to a new subscription: the last of its topic, or for a
    /// pattern the newest of the matching topics.
    pub fn for_key(&self, key: &IndexKey) -> Option<Arc<Published>> {
        let store = self.store.read();
        match key {
            IndexKey::Exact(t) => store.by_topic.get(&**t).cloned(),
            IndexKey::Pattern(p) => {
                let mut best = None;
                store.trie.newest_match(p.split('/'), &mut best);
                best
            }
        }
    }

    /// The cache writer: the task the hub runs to store last messages in the cache
    /// until `shutdown`. Writing from one task keeps cache latency off the fan-out.
    pub fn writer<C: Cache>(
        &self,
        cache: Arc<C>,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (tx, mut rx) = mpsc::channel::<Arc<Published>>(LAST_MESSAGE_QUEUE);
        // Set once: a hub runs once; a second run keeps the first sender, as before.
        let _ = self.writer.set(tx);
        async move {
            loop {
                let p = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    p = rx.recv() => match p { Some(p) => p, None => break },
                };
                store(&*cache, &p).await;
            }
        }
    }

    /// Reads back from the shared cache the last `text` and `image` messages of every
    /// known channel, so that a fresh instance replays the current slide.
    pub async fn restore<C: Cache>(&self, cache: &C, known: &HashSet<String>) {
        let keys: Vec<String> = known
            .iter()
            .flat_map(|c| [format!("{c}text"), format!("{c}image")])
            .collect();
        let found: Vec<CachedMessage> = futures::stream::iter(keys)
            .map(|topic| async move {
                let key = format!("{LAST_MESSAGE_PREFIX}{topic}");
                match cache.get(&key).await {
                    Ok(Some(v)) => serde_json::from_slice::<CachedMessage>(&v).ok(),
                    _ => None,
                }
            })
            .buffer_unordered(32)
            .filter_map(|m| async move { m })
            .collect()
            .await;
        let restored = found.len();
        let mut store = self.store.write();
        for m in found {
            if store.by_topic.contains_key(&m.topic) {
                continue;
            }
            let seq = self.next_seq();
            let p = Arc::new(Published::new(seq, m.topic, Bytes::from(m.body), m.headers));
            store.trie.insert(p.clone());
            store.by_topic.insert(p.topic.clone(), p);
        }
        drop(store);
        self.evict();
        if restored > 0 {
            tracing::info!(restored, "last messages restored from the shared cache");
        }
    }

    /// The `max` newest last messages, newest first (the status page).
    pub fn newest(&self, max: usize) -> Vec<Arc<Published>> {
        let mut all: Vec<Arc<Published>> = self.store.read().by_topic.values().cloned().collect();
        // Linear selection of the newest `max`, then a sort of those only.
        if all.len() > max && max > 0 {
            all.select_nth_unstable_by_key(max - 1, |p| std::cmp::Reverse(p.seq));
        }
        all.truncate(max);
        all.sort_unstable_by_key(|p| std::cmp::Reverse(p.seq));
        all
    }

    /// Topics whose last message is held (for a resynchronisation, hub/resync.rs).
    pub fn held_topics(&self) -> Vec<String> {
        self.store.read().by_topic.keys().cloned().collect()
    }

    /// Keeps `published` as the last message of its topic unless the one held is as
    /// new by the `when` header (a message without one is older than any with one).
    /// Whether it was kept.
    pub fn record_if_newer(&self, published: Arc<Published>) -> bool {
        let when = |p: &Published| {
            p.headers
                .iter()
                .find(|(k, _)| k == "when")
                .and_then(|(_, v)| v.parse::<u64>().ok())
        };
        let mut store = self.store.write();
        if let Some(held) = store.by_topic.get(&published.topic) {
            if when(held) >= when(&published) {
                return false;
            }
        }
        store.trie.insert(published.clone());
        store.by_topic.insert(published.topic.clone(), published);
        let over = store.by_topic.len() > self.max;
        drop(store);
        if over {
            self.evict();
        }
        true
    }

    /// Topics currently remembered.
    #[cfg(test)]
    pub fn topics(&self) -> HashSet<String> {
        self.store.read().by_topic.keys().cloned().collect()
    }
}

/// Stores one last message in the shared cache (failures only cost a replay on a
/// fresh instance, so they are logged at debug level).
async fn store<C: Cache>(cache: &C, p: &Published) {
    let cached = CachedMessage {
        topic: p.topic.clone(),
        body: String::from_utf8_lossy(&p.body).into_owned(),
        headers: p.headers.clone(),
    };
    let Ok(json) = serde_json::to_vec(&cached) else {
        return;
    };
    let key = format!("{LAST_MESSAGE_PREFIX}{}", p.topic);
    if let Err(e) = cache.set(&key, Bytes::from(json), LAST_MESSAGE_TTL).await {
        tracing::debug!(error = %e, "cannot store last message in cache");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_messages_are_bounded_and_the_newest_kept() {
        let last = LastMessages::new(100);
        for i in 0..1000 {
            let seq = last.next_seq();
            if last.record(Arc::new(Published::new(
                seq,
                format!("/topic/id/x/{i}/text"),
                Bytes::from(format!("TEXT {i}")),
                vec![],
            ))) {
                last.evict();
            }
        }
        let topics = last.topics();
        assert!(topics.len() <= 100, "{}", topics.len());
        assert!(topics.len() >= 80, "{}", topics.len());
        assert!(
            topics.contains("/topic/id/x/999/text"),
            "the newest is kept"
        );
        assert!(
            !topics.contains("/topic/id/x/0/text"),
            "the oldest is forgotten"
        );
    }

    #[test]
    fn pattern_replay_is_the_newest_match_also_after_eviction() {
        use crate::topic;
        let last = LastMessages::new(150);
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let segs = ["a", "b", "c", "*"];
        let patterns = [
            "/t/*/*/text",
            "/t/a/*/text",
            "/t/*/b/*",
            "/t/*/*",
            "/t/c/c/image",
            "/*/*/*/*",
            "/t/*",
        ];
        for round in 0..2000u32 {
            let topic = format!(
                "/t/{}/{}/{}",
                segs[(next() % 4) as usize],
                segs[(next() % 3) as usize],
                ["text", "image"][(next() % 2) as usize]
            );
            let topic = if round.is_multiple_of(7) {
                format!("/t/{}", next() % 1000)
            } else {
                topic
            };
            let seq = last.next_seq();
            if last.record(Arc::new(Published::new(seq, topic, Bytes::new(), vec![]))) {
                last.evict();
            }
            if round.is_multiple_of(50) {
                let all: Vec<Arc<Published>> =
                    last.store.read().by_topic.values().cloned().collect();
                for p in patterns {
                    let want = all
                        .iter()
                        .filter(|m| topic::matches(p, &m.topic))
                        .max_by_key(|m| m.seq)
                        .map(|m| m.seq);
                    let got = last.for_key(&IndexKey::Pattern(p.into())).map(|m| m.seq);
                    assert_eq!(got, want, "pattern {p} at round {round}");
                }
            }
        }
    }
}

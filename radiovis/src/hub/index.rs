//! The subscription index: which local subscribers receive a message of a given
//! normalised topic. Exact topics are a hash lookup; `*` patterns are few (wildcard
//! subscriptions and the FM any-frequency fallback) and are matched one by one.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::monitoring::SessionInfo;
use crate::outbound::OutboundQueue;
use crate::stomp::Version;
use crate::topic;

/// Where a subscription sits in the index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum IndexKey {
    /// Receives messages whose normalised topic is exactly this.
    Exact(String),
    /// Receives messages whose normalised topic matches this `*` pattern.
    Pattern(String),
}

/// One subscription as the fan-out sees it: everything needed to deliver without
/// asking its session anything.
pub(crate) struct SubEntry {
    /// The MESSAGE head of this subscription, encoded once when it was made.
    pub head: Bytes,
    /// The STOMP version of the subscriber, to pick the message's tail.
    pub version: Version,
    /// The subscriber's outbound queue.
    pub queue: Arc<OutboundQueue>,
    /// Cancelled by the fan-out when the queue is full (slow consumer).
    pub kill: CancellationToken,
    /// Session and destination, for monitoring events (only when monitoring is on).
    pub monitor: Option<(Arc<SessionInfo>, Arc<str>)>,
}

/// Subscription id unique in the hub: (connection, subscription within it).
pub(crate) type SubKey = (u64, u64);

type Subscribers = HashMap<SubKey, SubEntry>;

/// Subscriptions by exact topic and by pattern.
#[derive(Default)]
pub(super) struct SubIndex {
    exact: HashMap<String, Subscribers>,
    patterns: HashMap<String, Subscribers>,
}

impl SubIndex {
    fn map<'a, 'k>(
        &'a mut self,
        key: &'k IndexKey,
    ) -> (&'a mut HashMap<String, Subscribers>, &'k str) {
        match key {
            IndexKey::Exact(k) => (&mut self.exact, k),
            IndexKey::Pattern(k) => (&mut self.patterns, k),
        }
    }

    /// Adds (or replaces) a subscription; true when it is a new one.
    pub fn insert(&mut self, key: &IndexKey, sub: SubKey, entry: SubEntry) -> bool {
        let (map, k) = self.map(key);
        map.entry(k.to_owned())
            .or_default()
            .insert(sub, entry)
            .is_none()
    }

    /// Removes a subscription; true when it was there.
    pub fn remove(&mut self, key: &IndexKey, sub: SubKey) -> bool {
        let (map, k) = self.map(key);
        let Some(subs) = map.get_mut(k) else {
            return false;
        };
        let removed = subs.remove(&sub).is_some();
        if subs.is_empty() {
            // Topics come and go; an empty entry would be kept forever.
            map.remove(k);
        }
        removed
    }

    /// Calls `deliver` for every subscription that receives a message of `topic`:
    /// those on the exact topic, then those whose pattern matches it.
    pub fn for_each_match(&self, topic: &str, mut deliver: impl FnMut(&SubEntry)) {
        if let Some(subs) = self.exact.get(topic) {
            subs.values().for_each(&mut deliver);
        }
        for (pattern, subs) in &self.patterns {
            if topic::matches(pattern, topic) {
                subs.values().for_each(&mut deliver);
            }
        }
    }
}

//! The subscriptions of one session, as the session knows them (the hub's index
//! knows them as [`SubEntry`](crate::hub::SubEntry)s).

use crate::hub::{IndexKey, SubscribeBudget};

/// One subscription as the session knows it.
pub(super) struct SubRecord {
    /// Subscription number within the hub (second half of its `SubKey`).
    pub sub: u64,
    /// Where it sits in the hub's index.
    pub key: IndexKey,
    /// As the client gave it (for UNSUBSCRIBE by destination and monitoring).
    pub destination: String,
}

/// A session's subscriptions by key (id, or destination when the client gave no id).
/// A small vector: sessions have one or two subscriptions, and a map would allocate
/// several buckets per radio.
#[derive(Default)]
pub(super) struct Subscriptions(Vec<(String, SubRecord)>, SubscribeBudget);

impl Subscriptions {
    pub fn contains_key(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }
    pub fn remove(&mut self, key: &str) -> Option<SubRecord> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.swap_remove(i).1)
    }
    pub fn insert(&mut self, key: String, record: SubRecord) {
        self.0.push((key, record));
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&String, &SubRecord)> {
        self.0.iter().map(|(k, r)| (k, r))
    }
    /// The session's SUBSCRIBE rate budget (docs/protocol.md#limits).
    pub fn budget(&mut self) -> &mut SubscribeBudget {
        &mut self.1
    }
    pub fn drain(&mut self) -> impl Iterator<Item = (String, SubRecord)> + '_ {
        self.0.drain(..)
    }
}

//! The subscriptions of one session, as the session knows them (the hub's index
//! knows them as [`SubEntry`](crate::hub::SubEntry)s).

use crate::hub::{IndexKey, SubscribeBudget};

/// One subscription as the session knows it. Its strings are held once: the id only
/// when the client gave one, the destination only when it differs from the index key's
/// text (usually it is the same: a DAB or GCC-form topic).
pub(super) struct SubRecord {
    /// Subscription number within the hub (second half of its `SubKey`).
    pub sub: u64,
    /// Where it sits in the hub's index.
    pub key: IndexKey,
    /// The client's `id`; `None`: the subscription is known by its destination.
    id: Option<Box<str>>,
    /// The destination as the client gave it, when it differs from `key`'s text.
    destination: Option<Box<str>>,
}

impl SubRecord {
    /// A record of subscription `sub` at `key`, for `destination` (and `id`).
    pub fn new(sub: u64, key: IndexKey, id: Option<&str>, destination: &str) -> SubRecord {
        let destination = (destination != key.as_str()).then(|| destination.into());
        SubRecord {
            sub,
            key,
            id: id.map(Into::into),
            destination,
        }
    }

    /// The destination as the client gave it (UNSUBSCRIBE by destination, monitoring).
    pub fn destination(&self) -> &str {
        self.destination.as_deref().unwrap_or(self.key.as_str())
    }

    /// What the session knows it by: its id, or its destination when it has none.
    pub fn key(&self) -> &str {
        self.id.as_deref().unwrap_or(self.destination())
    }
}

/// A session's subscriptions, found by key (id, or destination when the client gave no
/// id). A small vector grown one at a time: sessions have one or two subscriptions, and
/// a map (or a vector's first growth to four) would allocate room for several.
#[derive(Default)]
pub(super) struct Subscriptions(Vec<SubRecord>, SubscribeBudget);

impl Subscriptions {
    pub fn contains_key(&self, key: &str) -> bool {
        self.0.iter().any(|r| r.key() == key)
    }
    pub fn remove(&mut self, key: &str) -> Option<SubRecord> {
        let i = self.0.iter().position(|r| r.key() == key)?;
        let record = self.0.swap_remove(i);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        Some(record)
    }
    pub fn insert(&mut self, record: SubRecord) {
        self.0.reserve_exact(1);
        self.0.push(record);
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn iter(&self) -> impl Iterator<Item = &SubRecord> {
        self.0.iter()
    }
    /// The session's SUBSCRIBE rate budget (docs/protocol.md#limits).
    pub fn budget(&mut self) -> &mut SubscribeBudget {
        &mut self.1
    }
    pub fn drain(&mut self) -> impl Iterator<Item = SubRecord> + '_ {
        self.0.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_found_by_id_or_destination_and_keep_what_the_client_gave() {
        let mut subs = Subscriptions::default();
        let exact = IndexKey::Exact("/topic/a/text".into());
        subs.insert(SubRecord::new(1, exact.clone(), None, "/topic/a/text"));
        let fallback = IndexKey::Pattern("/topic/fm/*/x".into());
        subs.insert(SubRecord::new(2, fallback, Some("s2"), "/topic/fm/1/x"));
        assert!(subs.contains_key("/topic/a/text"));
        assert!(subs.contains_key("s2"));
        assert!(!subs.contains_key("/topic/fm/1/x"), "known by its id");
        let destinations: Vec<&str> = subs.iter().map(SubRecord::destination).collect();
        assert_eq!(destinations, ["/topic/a/text", "/topic/fm/1/x"]);
        let r = subs.remove("s2").expect("there");
        assert_eq!(
            (r.sub, r.key(), r.destination()),
            (2, "s2", "/topic/fm/1/x")
        );
        assert_eq!(subs.len(), 1);
        assert!(subs.remove("s2").is_none());
    }
}

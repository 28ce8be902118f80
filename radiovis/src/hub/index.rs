//! The subscription index: which local subscribers receive a message of a given
//! normalised topic. Exact topics are a hash lookup; `*` patterns (wildcard
//! subscriptions and the FM any-frequency fallback) sit in a [`PatternTrie`] by
//! segment, so that a message visits only the patterns that can match it, whatever
//! other clients subscribed to (docs/protocol.md#wildcards).

use std::collections::HashMap;
use std::sync::Arc;

use crate::monitoring::SessionInfo;
use crate::outbound::{Form, OutboundQueue};

/// Where a subscription sits in the index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum IndexKey {
    /// Receives messages whose normalised topic is exactly this. Once subscribed, the
    /// same allocation as the index's key of the topic (one per topic, not one per
    /// subscriber).
    Exact(Arc<str>),
    /// Receives messages whose normalised topic matches this `*` pattern.
    Pattern(String),
}

impl IndexKey {
    /// The topic or pattern.
    pub fn as_str(&self) -> &str {
        match self {
            IndexKey::Exact(s) => s,
            IndexKey::Pattern(s) => s,
        }
    }
}

/// One subscription as the fan-out sees it: everything needed to deliver without
/// asking its session anything.
pub(crate) struct SubEntry {
    /// The MESSAGE head of this subscription, encoded once when it was made.
    pub head: Arc<[u8]>,
    /// The form the subscriber receives messages in, to pick the message's tail.
    pub form: Form,
    /// The subscriber's outbound queue.
    pub queue: Arc<OutboundQueue>,
    /// Session and destination, for monitoring events (only when monitoring is on).
    /// Boxed: monitoring is off on most instances, and every entry would pay for it.
    pub monitor: Option<Box<(Arc<SessionInfo>, Arc<str>)>>,
}

/// Subscription id unique in the hub: (connection, subscription within it).
pub(crate) type SubKey = (u64, u64);

/// Most distinct MESSAGE heads a topic shares among its subscribers.
const SHARED_HEADS: usize = 8;

/// The subscribers of one topic or pattern, and the MESSAGE heads they share: most
/// subscribers of a topic have the same head (same destination, no or the same id,
/// same STOMP version), held once instead of once per subscriber.
#[derive(Default)]
struct Subscribers {
    subs: HashMap<SubKey, SubEntry>,
    heads: Vec<Arc<[u8]>>,
}

impl Subscribers {
    fn insert(&mut self, sub: SubKey, mut entry: SubEntry) -> bool {
        // Heads no subscriber holds any more go (at most SHARED_HEADS to look at).
        self.heads.retain(|h| Arc::strong_count(h) > 1);
        match self.heads.iter().find(|h| **h == entry.head) {
            Some(shared) => entry.head = shared.clone(),
            None if self.heads.len() < SHARED_HEADS => self.heads.push(entry.head.clone()),
            None => {}
        }
        self.subs.insert(sub, entry).is_none()
    }

    fn remove(&mut self, sub: &SubKey) -> bool {
        self.subs.remove(sub).is_some()
    }

    fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    fn values(&self) -> impl Iterator<Item = &SubEntry> {
        self.subs.values()
    }
}

/// Subscriptions by exact topic and by pattern.
#[derive(Default)]
pub(super) struct SubIndex {
    exact: HashMap<Arc<str>, Subscribers>,
    patterns: PatternTrie<Subscribers>,
}

impl SubIndex {
    /// Adds (or replaces) a subscription; true when it is a new one. An exact `key`
    /// is replaced by the index's own key of the topic (shared, see [`IndexKey`]).
    pub fn insert(&mut self, key: &mut IndexKey, sub: SubKey, entry: SubEntry) -> bool {
        match key {
            IndexKey::Exact(k) => {
                if let Some((shared, _)) = self.exact.get_key_value(&**k) {
                    *k = shared.clone();
                }
                self.exact.entry(k.clone()).or_default()
            }
            IndexKey::Pattern(p) => self.patterns.entry(p),
        }
        .insert(sub, entry)
    }

    /// Subscriptions to exactly `topic` (wildcards not counted).
    pub fn exact_count(&self, topic: &str) -> usize {
        self.exact.get(topic).map_or(0, |subs| subs.subs.len())
    }

    /// Removes a subscription; true when it was there.
    pub fn remove(&mut self, key: &IndexKey, sub: SubKey) -> bool {
        match key {
            IndexKey::Exact(k) => {
                let Some(subs) = self.exact.get_mut(&**k) else {
                    return false;
                };
                let removed = subs.remove(&sub);
                if subs.is_empty() {
                    // Topics come and go; an empty entry would be kept forever.
                    self.exact.remove(&**k);
                }
                removed
            }
            IndexKey::Pattern(p) => {
                let mut removed = false;
                self.patterns.remove_if(p, |subs| {
                    removed = subs.remove(&sub);
                    subs.is_empty()
                });
                removed
            }
        }
    }

    /// Calls `deliver` for every subscription that receives a message of `topic`:
    /// those on the exact topic, then those whose pattern matches it.
    pub fn for_each_match(&self, topic: &str, mut deliver: impl FnMut(&SubEntry)) {
        if let Some(subs) = self.exact.get(topic) {
            subs.values().for_each(&mut deliver);
        }
        self.patterns
            .for_each_match(topic, |subs| subs.values().for_each(&mut deliver));
    }
}

/// `*` patterns by segment: each node has a map of literal next segments and a `*`
/// child, and holds the value of the pattern that ends there. Matching a topic of `k`
/// segments follows at most two children per level and only paths that exist, so its
/// cost depends on the patterns that share the topic's prefix, not on how many
/// patterns there are. Patterns with the same text share one node (and one value).
///
/// A pattern segment `*` matches exactly one topic segment; `*` inside a longer segment
/// is literal, and a pattern only matches topics with as many segments (the rules of
/// [`topic::matches`](crate::topic::matches)).
pub struct PatternTrie<V> {
    root: Node<V>,
}

struct Node<V> {
    literal: HashMap<Box<str>, Node<V>>,
    star: Option<Box<Node<V>>>,
    value: Option<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            literal: HashMap::new(),
            star: None,
            value: None,
        }
    }
}

impl<V> Default for PatternTrie<V> {
    fn default() -> Self {
        PatternTrie {
            root: Node::default(),
        }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.value.is_none() && self.literal.is_empty() && self.star.is_none()
    }
}

impl<V: Default> PatternTrie<V> {
    /// The value of `pattern`, created (as `V::default()`) when it is not there.
    pub fn entry(&mut self, pattern: &str) -> &mut V {
        let mut node = &mut self.root;
        for seg in pattern.split('/') {
            node = if seg == "*" {
                node.star.get_or_insert_with(Box::default)
            } else {
                node.literal.entry(seg.into()).or_default()
            };
        }
        node.value.get_or_insert_with(V::default)
    }
}

impl<V> PatternTrie<V> {
    /// Calls `edit` on the value of `pattern` (when there is one) and removes the value
    /// when `edit` returns true, pruning the nodes left empty so that patterns that come
    /// and go leave nothing behind.
    pub fn remove_if(&mut self, pattern: &str, edit: impl FnOnce(&mut V) -> bool) {
        fn walk<'a, V>(
            node: &mut Node<V>,
            mut segs: impl Iterator<Item = &'a str>,
            edit: impl FnOnce(&mut V) -> bool,
        ) {
            let Some(seg) = segs.next() else {
                if node.value.as_mut().is_some_and(edit) {
                    node.value = None;
                }
                return;
            };
            if seg == "*" {
                if let Some(child) = node.star.as_deref_mut() {
                    walk(child, segs, edit);
                    if child.is_empty() {
                        node.star = None;
                    }
                }
            } else if let Some(child) = node.literal.get_mut(seg) {
                walk(child, segs, edit);
                if child.is_empty() {
                    node.literal.remove(seg);
                }
            }
        }
        walk(&mut self.root, pattern.split('/'), edit);
    }

    /// Calls `f` with the value of every pattern that matches `topic` (each once).
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&V)) {
        fn walk<'a, V>(
            node: &Node<V>,
            mut segs: impl Iterator<Item = &'a str> + Clone,
            f: &mut impl FnMut(&V),
        ) {
            let Some(seg) = segs.next() else {
                if let Some(v) = &node.value {
                    f(v);
                }
                return;
            };
            // A topic segment that is itself `*` reaches the `*` child once, not twice.
            if seg != "*" {
                if let Some(child) = node.literal.get(seg) {
                    walk(child, segs.clone(), f);
                }
            }
            if let Some(child) = node.star.as_deref() {
                walk(child, segs, f);
            }
        }
        walk(&self.root, topic.split('/'), &mut f);
    }

    /// Whether no pattern is held.
    pub fn is_empty(&self) -> bool {
        self.root.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic;

    /// A small seeded generator (xorshift): the same cases on every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[(self.next() % from.len() as u64) as usize]
        }
    }

    const SEGMENTS: &[&str] = &["", "topic", "fm", "a", "b", "x*", "*"];

    fn random_path(rng: &mut Rng, star_weight: bool) -> String {
        let len = 1 + (rng.next() % 5) as usize;
        let mut segs = Vec::with_capacity(len);
        for _ in 0..len {
            let s = rng.pick(SEGMENTS);
            // Topics see `*` less often than patterns, but do see it.
            let s = if s == "*" && !star_weight && !rng.next().is_multiple_of(4) {
                "a"
            } else {
                s
            };
            segs.push(s);
        }
        segs.join("/")
    }

    #[test]
    fn the_trie_agrees_with_topic_matches() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _round in 0..200 {
            let mut trie: PatternTrie<Vec<usize>> = PatternTrie::default();
            let patterns: Vec<String> = (0..40).map(|_| random_path(&mut rng, true)).collect();
            for (i, p) in patterns.iter().enumerate() {
                trie.entry(p).push(i);
            }
            // Remove about a third again, as unsubscriptions do.
            let mut live: Vec<bool> = vec![true; patterns.len()];
            for (i, p) in patterns.iter().enumerate() {
                if rng.next().is_multiple_of(3) {
                    live[i] = false;
                    trie.remove_if(p, |v| {
                        v.retain(|&j| j != i);
                        v.is_empty()
                    });
                }
            }
            for _ in 0..50 {
                let t = random_path(&mut rng, false);
                let mut got: Vec<usize> = Vec::new();
                trie.for_each_match(&t, |v| got.extend(v));
                got.sort_unstable();
                let want: Vec<usize> = (0..patterns.len())
                    .filter(|&i| live[i] && topic::matches(&patterns[i], &t))
                    .collect();
                assert_eq!(got, want, "topic {t:?}, patterns {patterns:?}");
            }
            for (i, p) in patterns.iter().enumerate() {
                trie.remove_if(p, |v| {
                    v.retain(|&j| j != i);
                    v.is_empty()
                });
            }
            assert!(trie.is_empty(), "every node pruned");
        }
    }
}

//! Bus messages waiting for the CC -> GCC conversion of their country code
//! (docs/protocol.md#delivery): the bus consumer never waits on the directory, it parks
//! such a message here and a task per country code delivers the queue, in order, once
//! the directory answered (or failed). Messages of other topics flow meanwhile.
//!
//! Bounded three ways: country codes (two ASCII letters, so at most 26 x 26 queues),
//! messages per country code and messages (and body bytes) in total. Beyond a bound a
//! message is dropped, counted and logged.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;

use crate::backend::BusMessage;

/// Most messages waiting for one country code's conversion (the directory timeout, at
/// most, of one channel's traffic).
pub const MAX_PER_COUNTRY: usize = 1_000;
/// Most messages waiting for conversions in all.
pub const MAX_TOTAL: usize = 10_000;
/// Most body bytes waiting for conversions in all.
pub const MAX_TOTAL_BYTES: usize = 64 << 20;

/// What became of a message offered to [`Pending::push_if_waiting`] or [`Pending::start`].
pub(super) enum Parked {
    /// Queued behind its country code's look-up.
    Queued,
    /// Over a bound and dropped; `first` for the first drop of this queue (log it).
    Dropped { first: bool },
    /// No look-up of its country code is in progress: handle it now.
    NotWaiting(BusMessage),
}

struct Queue {
    messages: VecDeque<BusMessage>,
    dropped: u64,
}

#[derive(Default)]
struct Inner {
    queues: HashMap<String, Queue>,
    total: usize,
    bytes: usize,
}

/// The queues of messages waiting for a conversion, by country code.
#[derive(Default)]
pub(super) struct Pending {
    inner: Mutex<Inner>,
}

impl Pending {
    /// Queues `msg` behind the look-up of `cc` when one is in progress (so that the
    /// messages of a topic keep their order).
    pub fn push_if_waiting(&self, cc: &str, msg: BusMessage) -> Parked {
        let mut inner = self.inner.lock();
        let Inner {
            queues,
            total,
            bytes,
        } = &mut *inner;
        let Some(queue) = queues.get_mut(cc) else {
            return Parked::NotWaiting(msg);
        };
        if queue.messages.len() >= MAX_PER_COUNTRY
            || *total >= MAX_TOTAL
            || *bytes + msg.body.len() > MAX_TOTAL_BYTES
        {
            queue.dropped += 1;
            return Parked::Dropped {
                first: queue.dropped == 1,
            };
        }
        *total += 1;
        *bytes += msg.body.len();
        queue.messages.push_back(msg);
        Parked::Queued
    }

    /// Starts waiting for `cc` with `msg` first in its queue: `Queued` when the caller
    /// must now start the look-up task, `Dropped` when over the total bounds. The
    /// caller has checked that no look-up of `cc` is in progress.
    pub fn start(&self, cc: &str, msg: BusMessage) -> Parked {
        let mut inner = self.inner.lock();
        if inner.total >= MAX_TOTAL || inner.bytes + msg.body.len() > MAX_TOTAL_BYTES {
            return Parked::Dropped { first: true };
        }
        inner.total += 1;
        inner.bytes += msg.body.len();
        inner.queues.insert(
            cc.to_owned(),
            Queue {
                messages: VecDeque::from([msg]),
                dropped: 0,
            },
        );
        Parked::Queued
    }

    /// The messages queued for `cc` so far, oldest first, and the number dropped since
    /// the last call. When none are left, `cc` is no longer waited for: its next
    /// message goes straight through (after everything taken before).
    pub fn take(&self, cc: &str) -> (Vec<BusMessage>, u64) {
        let mut inner = self.inner.lock();
        let Some(queue) = inner.queues.get_mut(cc) else {
            return (Vec::new(), 0);
        };
        let dropped = std::mem::take(&mut queue.dropped);
        let messages: Vec<BusMessage> = queue.messages.drain(..).collect();
        if messages.is_empty() {
            inner.queues.remove(cc);
        }
        inner.total -= messages.len();
        inner.bytes -= messages.iter().map(|m| m.body.len()).sum::<usize>();
        (messages, dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: usize) -> BusMessage {
        BusMessage {
            topic: "/topic/fm/ch/4001/09580/text".into(),
            body: bytes::Bytes::from(format!("TEXT {i}")),
            headers: vec![],
        }
    }

    #[test]
    fn queues_in_order_bounded_and_released() {
        let p = Pending::default();
        assert!(matches!(
            p.push_if_waiting("ch", msg(0)),
            Parked::NotWaiting(_)
        ));
        assert!(matches!(p.start("ch", msg(0)), Parked::Queued));
        for i in 1..MAX_PER_COUNTRY {
            assert!(matches!(p.push_if_waiting("ch", msg(i)), Parked::Queued));
        }
        assert!(matches!(
            p.push_if_waiting("ch", msg(0)),
            Parked::Dropped { first: true }
        ));
        assert!(matches!(
            p.push_if_waiting("ch", msg(0)),
            Parked::Dropped { first: false }
        ));
        let (taken, dropped) = p.take("ch");
        assert_eq!(dropped, 2);
        assert_eq!(taken.len(), MAX_PER_COUNTRY);
        assert_eq!(taken[7].body, "TEXT 7");
        // Still waited for until a take finds nothing.
        assert!(matches!(p.push_if_waiting("ch", msg(1)), Parked::Queued));
        assert_eq!(p.take("ch").0.len(), 1);
        assert!(p.take("ch").0.is_empty());
        assert!(matches!(
            p.push_if_waiting("ch", msg(0)),
            Parked::NotWaiting(_)
        ));
        let inner = p.inner.lock();
        assert_eq!((inner.total, inner.bytes, inner.queues.len()), (0, 0, 0));
    }
}

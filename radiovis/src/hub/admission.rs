//! Per-session limits on SUBSCRIBE that keep one client from making the hub work for
//! it without end (docs/protocol.md#limits): how many wildcard subscriptions a session
//! may hold, and how fast it may send SUBSCRIBE frames. The session keeps only a
//! [`SubscribeBudget`] (one instant); the rules live here.

use std::time::Duration;

use tokio::time::Instant;

use super::Hub;
use crate::backend::{Cache, DirectoryApi, MessageBus};

/// Why the hub refuses a SUBSCRIBE; the Display text is the ERROR's `message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SubscribeLimit {
    /// The session already holds `RADIOVIS_MAX_WILDCARDS` wildcard subscriptions.
    #[error("too many wildcard subscriptions: limit is {0} per session")]
    Wildcards(usize),
    /// The session sends SUBSCRIBE faster than `RADIOVIS_SUBSCRIBE_RATE`.
    #[error("too many SUBSCRIBE frames: limit is {rate} per second (burst of {burst})")]
    Rate {
        /// Sustained SUBSCRIBE frames per second.
        rate: u32,
        /// How many may come at once.
        burst: u32,
    },
}

/// One session's SUBSCRIBE rate budget: the generic cell rate algorithm, whose whole
/// state is the theoretical arrival time of the next frame (16 bytes, no timer).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SubscribeBudget {
    tat: Option<Instant>,
}

impl SubscribeBudget {
    /// Takes one frame from the budget at `now`; false (and nothing taken) when the
    /// session is over `rate` per second with bursts of `burst`.
    fn take(&mut self, now: Instant, rate: u32, burst: u32) -> bool {
        let interval = Duration::from_secs(1) / rate.max(1);
        let tolerance = interval * burst.max(1).saturating_sub(1);
        let tat = self.tat.map_or(now, |t| t.max(now));
        if tat.saturating_duration_since(now) > tolerance {
            return false;
        }
        self.tat = Some(tat + interval);
        true
    }
}

impl<B: MessageBus, D: DirectoryApi, C: Cache> Hub<B, D, C> {
    /// Admits one SUBSCRIBE of a session: within the session's rate, and for a
    /// wildcard destination, within the wildcard limit given the `wildcards_held`
    /// other wildcard subscriptions of the session (a replaced one not counted).
    pub(crate) fn admit_subscribe(
        &self,
        budget: &mut SubscribeBudget,
        wildcard: bool,
        wildcards_held: usize,
    ) -> Result<(), SubscribeLimit> {
        let (rate, burst) = (self.config.subscribe_rate, self.config.subscribe_burst);
        if !budget.take(Instant::now(), rate, burst) {
            return Err(SubscribeLimit::Rate { rate, burst });
        }
        let max = self.config.max_wildcards;
        if wildcard && wildcards_held >= max {
            return Err(SubscribeLimit::Wildcards(max));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_the_burst_then_the_rate() {
        let start = Instant::now();
        let mut b = SubscribeBudget::default();
        for i in 0..100 {
            assert!(b.take(start, 20, 100), "frame {i} of the burst");
        }
        assert!(!b.take(start, 20, 100), "101st at once");
        // 50 ms later (one interval at 20/s) one more, not two.
        let later = start + Duration::from_millis(50);
        assert!(b.take(later, 20, 100));
        assert!(!b.take(later, 20, 100));
        // After a quiet 5 s the whole burst again.
        let quiet = later + Duration::from_secs(5) + Duration::from_millis(50);
        for i in 0..100 {
            assert!(b.take(quiet, 20, 100), "frame {i} after a pause");
        }
        assert!(!b.take(quiet, 20, 100));
    }
}

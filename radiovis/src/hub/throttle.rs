//! Login throttling (docs/protocol.md#connect): failed logins per client address, and
//! the bound on credential checks in flight at the directory.
//!
//! An address's failures are counted for `auth_block` after its last failure; each
//! failure's ERROR is delayed (`auth_failure_delay`, doubling per failure, at most
//! [`MAX_FAILURE_DELAY`]); after `auth_max_failures` the address is refused without
//! asking the directory until the count expires. A success forgets the address. The
//! table is a moka cache: bounded in size and expiring by itself.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use moka::ops::compute::Op;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::HubConfig;

/// Most addresses tracked at once; beyond it moka evicts the least useful ones.
const MAX_TRACKED_ADDRESSES: u64 = 100_000;

/// Longest delay of a failed login's ERROR.
pub const MAX_FAILURE_DELAY: Duration = Duration::from_secs(8);

/// Failed-login counts per address, and the directory's concurrency bound.
pub(crate) struct LoginThrottle {
    failures: Cache<IpAddr, u32>,
    permits: Arc<Semaphore>,
    max_failures: u32,
    base_delay: Duration,
}

impl LoginThrottle {
    /// A throttle with the hub's `auth_*` settings.
    pub fn new(config: &HubConfig) -> LoginThrottle {
        LoginThrottle {
            failures: Cache::builder()
                .max_capacity(MAX_TRACKED_ADDRESSES)
                .time_to_live(config.auth_block)
                .build(),
            permits: Arc::new(Semaphore::new(config.auth_concurrency.max(1))),
            max_failures: config.auth_max_failures.max(1),
            base_delay: config.auth_failure_delay,
        }
    }

    /// Whether `ip` has used up its failed logins (refuse without asking the directory).
    pub async fn is_blocked(&self, ip: IpAddr) -> bool {
        self.failures
            .get(&address_key(ip))
            .await
            .is_some_and(|n| n >= self.max_failures)
    }

    /// A permit to ask the directory, waiting at most `within` for one.
    pub async fn permit(&self, within: Duration) -> Option<OwnedSemaphorePermit> {
        tokio::time::timeout(within, self.permits.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }

    /// Counts a failed login of `ip`; returns how long to wait before answering it.
    pub async fn failed(&self, ip: IpAddr) -> Duration {
        let entry = self
            .failures
            .entry(address_key(ip))
            .and_compute_with(|e| {
                let n = e.map_or(0, |e| e.into_value());
                std::future::ready(Op::Put(n.saturating_add(1)))
            })
            .await;
        let n = entry.into_entry().map_or(1, |e| e.into_value());
        failure_delay(self.base_delay, n)
    }

    /// A successful login forgets the address's failures.
    pub async fn succeeded(&self, ip: IpAddr) {
        self.failures.invalidate(&address_key(ip)).await;
    }
}

/// The delay of the `n`th failure (1-based): the base, doubled per earlier failure.
fn failure_delay(base: Duration, n: u32) -> Duration {
    let doublings = n.saturating_sub(1).min(16);
    base.saturating_mul(1 << doublings).min(MAX_FAILURE_DELAY)
}

/// The address a client counts as (failed logins, connections per address): an IPv4
/// client seen through a dual-stack listener is its IPv4 address, and an IPv6 host
/// usually owns a whole /64, so that is what counts (one client cannot make up fresh
/// addresses without end).
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match ip {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let base = Duration::from_millis(500);
        assert_eq!(failure_delay(base, 1), base);
        assert_eq!(failure_delay(base, 2), Duration::from_secs(1));
        assert_eq!(failure_delay(base, 3), Duration::from_secs(2));
        assert_eq!(failure_delay(base, 10), MAX_FAILURE_DELAY);
        assert_eq!(failure_delay(base, u32::MAX), MAX_FAILURE_DELAY);
    }

    #[test]
    fn ipv6_hosts_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let v4: IpAddr = "192.0.2.1".parse().expect("ip");
        assert_eq!(address_key(v4), v4);
    }

    #[tokio::test]
    async fn failures_block_and_a_success_forgets() {
        let config = HubConfig {
            auth_max_failures: 2,
            ..HubConfig::default()
        };
        let t = LoginThrottle::new(&config);
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        assert!(!t.is_blocked(ip).await);
        t.failed(ip).await;
        assert!(!t.is_blocked(ip).await);
        t.succeeded(ip).await;
        t.failed(ip).await;
        t.failed(ip).await;
        assert!(t.is_blocked(ip).await);
        assert!(!t.is_blocked("192.0.2.2".parse().expect("ip")).await);
    }
}

//! A small in-process cache with a TTL where concurrent misses for one key make a
//! single call: 10,000 radios subscribing to the same CC-form topic right after a
//! restart cause one `get_gcc`, not 10,000.
//!
//! A thin wrapper over [`moka::future::Cache`]: moka gives the TTL, a bound on the
//! number of keys (the hand-written map this replaces kept one entry per key ever
//! asked for, for ever) and the coalescing of concurrent misses (`try_get_with`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;

/// Most keys kept: far above the country codes and stations of a deployment, low
/// enough that a client inventing keys cannot grow the process without bound.
pub const MAX_KEYS: u64 = 100_000;

/// Values by key, each fetched at most once per `ttl` however many callers ask at once.
/// A failed fetch is not cached: the next caller tries again. Clones share the values.
#[derive(Clone)]
pub struct SingleFlight<V> {
    cache: Cache<String, V>,
}

impl<V: Clone + Send + Sync + 'static> SingleFlight<V> {
    /// An empty cache whose values live `ttl` after they were fetched, holding at most
    /// [`MAX_KEYS`] keys.
    pub fn new(ttl: Duration) -> SingleFlight<V> {
        SingleFlight::with_capacity(ttl, MAX_KEYS)
    }

    /// Like [`SingleFlight::new`] with another bound on the number of keys.
    pub fn with_capacity(ttl: Duration, max_keys: u64) -> SingleFlight<V> {
        SingleFlight {
            cache: Cache::builder()
                .time_to_live(ttl)
                .max_capacity(max_keys)
                .build(),
        }
    }

    /// The cached value of `key`, if any; never fetches (an in-memory look-up).
    pub async fn get(&self, key: &str) -> Option<V> {
        self.cache.get(key).await
    }

    /// Forgets the value of `key`: the next caller fetches again.
    pub async fn invalidate(&self, key: &str) {
        self.cache.invalidate(key).await
    }

    /// The cached value of `key`, or the result of `fetch` (shared with every caller
    /// waiting for the same key meanwhile). `fetch` is called only when this caller's
    /// fetch is the one elected; a failure is handed to every caller that waited for
    /// it and is not cached.
    pub async fn get_or_fetch<E, F, Fut>(&self, key: &str, fetch: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: Clone + Send + Sync + 'static,
    {
        // The async block defers `fetch()` until moka polls it, which it does for one
        // caller per key only.
        self.cache
            .try_get_with_by_ref(key, async move { fetch().await })
            .await
            // Waiters share the elected caller's error: hand each its own copy.
            .map_err(|e| Arc::try_unwrap(e).unwrap_or_else(|shared| (*shared).clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    // moka measures the TTL on its own (real) clock, not tokio's: this test sleeps for
    // real, with a TTL short enough to keep it fast.
    #[tokio::test]
    async fn concurrent_misses_make_one_call_and_ttl_expires() {
        let sf = Arc::new(SingleFlight::<u32>::new(Duration::from_millis(300)));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (sf, calls) = (sf.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                sf.get_or_fetch("k", || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, ()>(7)
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.expect("task"), Ok(7));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let v = sf
            .get_or_fetch("k", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(8)
            })
            .await;
        assert_eq!(v, Ok(8));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn failures_are_not_cached() {
        let sf = SingleFlight::<u32>::new(Duration::from_secs(60));
        assert_eq!(
            sf.get_or_fetch("k", || async { Err::<u32, _>("down") })
                .await,
            Err("down")
        );
        assert_eq!(
            sf.get_or_fetch("k", || async { Ok::<_, &str>(1) }).await,
            Ok(1)
        );
    }

    #[tokio::test]
    async fn waiters_share_one_failure() {
        let sf = Arc::new(SingleFlight::<u32>::new(Duration::from_secs(60)));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (sf, calls) = (sf.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                sf.get_or_fetch("k", || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err::<u32, _>("down")
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.expect("task"), Err("down"));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_number_of_keys_is_bounded() {
        let sf = SingleFlight::<u32>::with_capacity(Duration::from_secs(60), 10);
        for i in 0..1_000u32 {
            let v = sf
                .get_or_fetch(&i.to_string(), || async move { Ok::<_, ()>(i) })
                .await;
            assert_eq!(v, Ok(i));
        }
        sf.cache.run_pending_tasks().await;
        assert!(sf.cache.entry_count() <= 10, "{}", sf.cache.entry_count());
    }
}

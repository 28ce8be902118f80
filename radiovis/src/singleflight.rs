//! A small in-process cache with a TTL where concurrent misses for one key make a
//! single call: 10,000 radios subscribing to the same CC-form topic right after a
//! restart cause one `get_gcc`, not 10,000.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;

type Cell<V> = Arc<OnceCell<(V, Instant)>>;

/// Values by key, each fetched at most once per `ttl` however many callers ask at once.
/// A failed fetch is not cached: the next caller tries again.
pub struct SingleFlight<V> {
    ttl: Duration,
    cells: Mutex<HashMap<String, Cell<V>>>,
}

impl<V: Clone> SingleFlight<V> {
    pub fn new(ttl: Duration) -> SingleFlight<V> {
        SingleFlight {
            ttl,
            cells: Mutex::new(HashMap::new()),
        }
    }

    /// The cached value of `key`, or the result of `fetch` (shared with every caller
    /// waiting for the same key meanwhile).
    pub async fn get_or_fetch<E, F, Fut>(&self, key: &str, fetch: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let cell = {
            let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
            let fresh = cells
                .get(key)
                .filter(|c| c.get().is_none_or(|(_, at)| at.elapsed() < self.ttl))
                .cloned();
            match fresh {
                Some(c) => c,
                None => {
                    let c: Cell<V> = Arc::new(OnceCell::new());
                    cells.insert(key.to_owned(), c.clone());
                    c
                }
            }
        };
        cell.get_or_try_init(|| async { fetch().await.map(|v| (v, Instant::now())) })
            .await
            .map(|(v, _)| v.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_make_one_call_and_ttl_expires() {
        let sf = Arc::new(SingleFlight::<u32>::new(Duration::from_secs(60)));
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
        tokio::time::advance(Duration::from_secs(61)).await;
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
}

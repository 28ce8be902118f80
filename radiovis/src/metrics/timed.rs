//! [`Timed`]: a directory or cache that records the latency and the outcome of every
//! call in [`CallMetrics`], and otherwise passes each call through unchanged.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use super::CallMetrics;
use crate::backend::{
    Cache, CacheError, CacheItem, ChannelDefault, ChannelRef, DirectoryApi, DirectoryError,
};

/// A backend whose calls are timed into `metrics` (the directory's or the cache's
/// [`CallMetrics`] of a [`Metrics`](super::Metrics)).
#[derive(Debug)]
pub struct Timed<T> {
    inner: T,
    metrics: Arc<CallMetrics>,
}

impl<T> Timed<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, metrics: Arc<CallMetrics>) -> Timed<T> {
        Timed { inner, metrics }
    }

    async fn time<R, E>(
        &self,
        call: &'static str,
        f: impl Future<Output = Result<R, E>>,
    ) -> Result<R, E> {
        let start = Instant::now();
        let result = f.await;
        self.metrics
            .observe(call, start.elapsed().as_secs_f64(), result.is_ok());
        result
    }
}

#[async_trait]
impl<T: DirectoryApi> DirectoryApi for Timed<T> {
    async fn check_auth(
        &self,
        username: &str,
        password: &str,
        ip: IpAddr,
    ) -> Result<bool, DirectoryError> {
        self.time("check_auth", self.inner.check_auth(username, password, ip))
            .await
    }

    async fn get_channels(&self, station_id: &str) -> Result<Vec<String>, DirectoryError> {
        self.time("get_channels", self.inner.get_channels(station_id))
            .await
    }

    async fn get_gcc(&self, cc: &str) -> Result<Option<String>, DirectoryError> {
        self.time("get_gcc", self.inner.get_gcc(cc)).await
    }

    async fn get_all_channels(&self) -> Result<Vec<ChannelRef>, DirectoryError> {
        self.time("get_all_channels", self.inner.get_all_channels())
            .await
    }

    async fn get_all_vis_channels(&self) -> Result<Vec<ChannelRef>, DirectoryError> {
        self.time("get_all_vis_channels", self.inner.get_all_vis_channels())
            .await
    }

    async fn get_channel_default(
        &self,
        id: &str,
    ) -> Result<Option<ChannelDefault>, DirectoryError> {
        self.time("get_channel_default", self.inner.get_channel_default(id))
            .await
    }
}

#[async_trait]
impl<T: Cache> Cache for Timed<T> {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        self.time("get", self.inner.get(key)).await
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), CacheError> {
        self.time("set", self.inner.set(key, value, ttl)).await
    }

    // Forwarded, not left to the trait's defaults: those drop the flags that values
    // shared with the original carry (docs/protocol.md#cache-values).
    async fn get_item(&self, key: &str) -> Result<Option<CacheItem>, CacheError> {
        self.time("get", self.inner.get_item(key)).await
    }

    async fn set_item(&self, key: &str, item: CacheItem, ttl: Duration) -> Result<(), CacheError> {
        self.time("set", self.inner.set_item(key, item, ttl)).await
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn flags_pass_through() {
        use crate::backend::memory::MemoryCache;
        let metrics = crate::metrics::Metrics::new();
        let inner = std::sync::Arc::new(MemoryCache::new());
        let cache = Timed::new(inner.clone(), metrics.cache().clone());
        let item = CacheItem {
            flags: 1,
            data: Bytes::from_static(b"pickled"),
        };
        cache
            .set_item("k", item.clone(), Duration::from_secs(5))
            .await
            .expect("set_item");
        assert_eq!(
            inner.get_item("k").await.expect("inner"),
            Some(item.clone())
        );
        assert_eq!(cache.get_item("k").await.expect("get_item"), Some(item));
    }

    use super::*;
    use crate::backend::memory::MemoryCache;
    use crate::metrics::Metrics;

    #[tokio::test]
    async fn calls_are_timed_and_failures_counted() {
        let metrics = Metrics::new();
        let cache = Timed::new(MemoryCache::new(), metrics.cache().clone());
        cache
            .set("k", Bytes::from_static(b"v"), Duration::from_secs(5))
            .await
            .expect("set");
        assert_eq!(
            cache.get("k").await.expect("get").as_deref(),
            Some(&b"v"[..])
        );
        let text = metrics.encode();
        assert!(
            text.contains("radiovis_cache_request_duration_seconds_count{call=\"get\"} 1"),
            "{text}"
        );
        assert!(!metrics.cache().failing());

        let mut failing = crate::backend::MockDirectoryApi::new();
        failing
            .expect_get_gcc()
            .returning(|_| Err(DirectoryError::Status(500)));
        let directory = Timed::new(failing, metrics.directory().clone());
        assert!(directory.get_gcc("ch").await.is_err());
        assert!(metrics.directory().failing());
        assert_eq!(metrics.directory().errors(), 1);
        let text = metrics.encode();
        assert!(
            text.contains("radiovis_directory_errors_total{call=\"get_gcc\"} 1"),
            "{text}"
        );
    }
}

//! The memcached cache against a real memcached: the one at 127.0.0.1:11211 and, for the
//! outage test, a private one started on 127.0.0.1:11299. Skipped (with the reason
//! printed) when memcached is not there, unless `RADIOVIS_REQUIRE_SERVICES=1`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use radiovis::backend::memcached::{MemcachedCache, MemcachedConfig};
use radiovis::backend::{Cache, CacheError};
use testkit::processes::Memcached;
use testkit::services::{memcached_up, skip, MEMCACHED as SHARED};

const PRIVATE_PORT: u16 = 11299;

/// The cache on the shared memcached, or `None` (test skipped) when it is not running.
async fn shared_cache(test: &str) -> Option<MemcachedCache> {
    if !memcached_up(test).await {
        return None;
    }
    Some(MemcachedCache::from_host(SHARED).expect("valid host"))
}

/// A key unique to this test run, so that runs do not see each other's values.
fn key(name: &str) -> String {
    format!(
        "radiovis_test_{}_{}_{name}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

#[tokio::test]
async fn set_get_overwrite_missing() {
    let Some(c) = shared_cache("set_get_overwrite_missing").await else {
        return;
    };
    let k = key("a");
    assert_eq!(c.get(&k).await.expect("get"), None);
    c.set(
        &k,
        Bytes::from_static(b"[\"4e1\"]"),
        Duration::from_secs(60),
    )
    .await
    .expect("set");
    assert_eq!(
        c.get(&k).await.expect("get"),
        Some(Bytes::from_static(b"[\"4e1\"]"))
    );
    c.set(&k, Bytes::from_static(b"second"), Duration::from_secs(60))
        .await
        .expect("overwrite");
    assert_eq!(
        c.get(&k).await.expect("get"),
        Some(Bytes::from_static(b"second"))
    );
    // Binary values with CRLF and NUL inside, and the empty value.
    let odd = Bytes::from_static(b"a\r\nEND\r\n\0b");
    c.set(&k, odd.clone(), Duration::from_secs(60))
        .await
        .expect("set");
    assert_eq!(c.get(&k).await.expect("get"), Some(odd));
    c.set(&k, Bytes::new(), Duration::from_secs(60))
        .await
        .expect("set");
    assert_eq!(c.get(&k).await.expect("get"), Some(Bytes::new()));
    assert_eq!(c.get(&key("never-set")).await.expect("get"), None);
}

#[tokio::test]
async fn values_expire() {
    let Some(c) = shared_cache("values_expire").await else {
        return;
    };
    let k = key("ttl");
    c.set(&k, Bytes::from_static(b"v"), Duration::from_secs(1))
        .await
        .expect("set");
    assert_eq!(
        c.get(&k).await.expect("get"),
        Some(Bytes::from_static(b"v"))
    );
    // memcached expires on whole seconds: 1 s may last up to 2 s (plus load).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(c.get(&k).await.expect("get"), None);
    // A zero TTL stores nothing visible.
    c.set(&k, Bytes::from_static(b"v"), Duration::ZERO)
        .await
        .expect("set");
    assert_eq!(c.get(&k).await.expect("get"), None);
}

#[tokio::test]
async fn long_and_odd_keys_work_and_stay_distinct() {
    let Some(c) = shared_cache("long_and_odd_keys_work_and_stay_distinct").await else {
        return;
    };
    let base = key("odd");
    let keys = [
        format!("{base} with spaces"),
        format!("{base}_with_spaces"),
        format!("{base}\nnew\tline\r\0"),
        format!("{base}%20"),
        format!("{base}_topic_/topic/fm/ch/4001/09580/é"),
        format!("{base}{}", "x".repeat(300)),
        format!("{base}{}", "x".repeat(301)),
        format!("{base}{}", "é ".repeat(200)),
    ];
    for (i, k) in keys.iter().enumerate() {
        c.set(
            k,
            Bytes::from(format!("value {i}")),
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|e| panic!("set {k:?}: {e}"));
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            c.get(k).await.unwrap_or_else(|e| panic!("get {k:?}: {e}")),
            Some(Bytes::from(format!("value {i}"))),
            "{k:?}"
        );
    }
}

#[tokio::test]
async fn concurrent_operations() {
    let Some(c) = shared_cache("concurrent_operations").await else {
        return;
    };
    let c = std::sync::Arc::new(c);
    let base = key("conc");
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let c = c.clone();
            let k = format!("{base}_{i}");
            tokio::spawn(async move {
                c.set(&k, Bytes::from(i.to_string()), Duration::from_secs(60))
                    .await
                    .expect("set");
                assert_eq!(
                    c.get(&k).await.expect("get"),
                    Some(Bytes::from(i.to_string()))
                );
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
}

#[tokio::test]
async fn outage_fails_fast_and_recovers() {
    let test = "outage_fails_fast_and_recovers";
    let mut server = match Memcached::start(PRIVATE_PORT).await {
        Ok(s) => s,
        Err(reason) => {
            skip(test, &reason);
            return;
        }
    };
    let mut config =
        MemcachedConfig::from_host(&format!("127.0.0.1:{PRIVATE_PORT}")).expect("valid host");
    config.timeout = Duration::from_millis(300);
    config.retry_after = Duration::from_millis(500);
    let c = MemcachedCache::new(config);
    c.set("k", Bytes::from_static(b"v"), Duration::from_secs(60))
        .await
        .expect("set");
    assert_eq!(
        c.get("k").await.expect("get"),
        Some(Bytes::from_static(b"v"))
    );

    // memcached dies with a pooled connection open.
    server.kill();
    for _ in 0..5 {
        let start = Instant::now();
        let err = c.get("k").await.expect_err("memcached is down");
        assert!(matches!(err, CacheError::Unavailable(_)), "{err:?}");
        assert!(
            start.elapsed() < Duration::from_millis(300 + 500),
            "slow failure"
        );
        let start = Instant::now();
        let err = c
            .set("k", Bytes::from_static(b"w"), Duration::from_secs(60))
            .await
            .expect_err("memcached is down");
        assert!(matches!(err, CacheError::Unavailable(_)), "{err:?}");
        assert!(
            start.elapsed() < Duration::from_millis(300 + 500),
            "slow failure"
        );
    }

    // Back again (empty, as a restarted memcached is): the cache recovers by itself
    // once the retry delay has passed.
    server.restart().await.expect("memcached restarts");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(c.get("k").await.expect("get after restart"), None);
    c.set("k", Bytes::from_static(b"again"), Duration::from_secs(60))
        .await
        .expect("set after restart");
    assert_eq!(
        c.get("k").await.expect("get"),
        Some(Bytes::from_static(b"again"))
    );
}

#[tokio::test]
async fn unresponsive_server_times_out() {
    // A listener that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut config = MemcachedConfig::from_host(&addr.to_string()).expect("valid host");
    config.timeout = Duration::from_millis(200);
    let c = MemcachedCache::new(config);
    let start = Instant::now();
    let err = c.get("k").await.expect_err("no answer");
    assert!(matches!(err, CacheError::Unavailable(_)), "{err:?}");
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed < Duration::from_millis(700),
        "{elapsed:?}"
    );
    // One slow reply does not mark the cache down; consecutive ones do
    // (docs/protocol.md#cache): within the retry delay, the next call does not wait.
    for _ in 1..radiovis::backend::memcached::FAILURES_BEFORE_DOWN {
        assert!(c.get("k").await.is_err());
    }
    let start = Instant::now();
    assert!(c.get("k").await.is_err());
    assert!(start.elapsed() < Duration::from_millis(50));
    hold.abort();
}

#[test]
fn invalid_hosts_are_refused() {
    assert!(MemcachedCache::from_host("host:port").is_err());
    assert!(MemcachedCache::from_host("").is_err());
    assert_eq!(
        MemcachedCache::from_host("cache.internal")
            .expect("valid")
            .config()
            .port,
        11211
    );
}

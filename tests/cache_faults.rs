//! memcached faults against a fake memcached in the test (a TcpListener speaking just
//! enough of the text protocol), so that its answers can be slowed on purpose
//! (docs/protocol.md#cache).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use radiovis::backend::memcached::{MemcachedCache, MemcachedConfig};
use radiovis::backend::{Cache, CacheError};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A fake memcached: answers `get` with a miss (`END`), holding back the answers of
/// the first `slow` commands (it never answers them: longer than any op timeout).
/// Counts the commands it read.
struct FakeMemcached {
    addr: std::net::SocketAddr,
    commands: Arc<AtomicUsize>,
}

async fn fake_memcached(slow: usize) -> FakeMemcached {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let commands = Arc::new(AtomicUsize::new(0));
    let counted = commands.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if !line.starts_with("get ") {
                        continue;
                    }
                    let n = counted.fetch_add(1, Ordering::SeqCst);
                    if n < slow {
                        // Stuck: this connection never answers again.
                        std::future::pending::<()>().await;
                    }
                    if write.write_all(b"END\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    FakeMemcached { addr, commands }
}

fn cache(fake: &FakeMemcached) -> MemcachedCache {
    MemcachedCache::new(MemcachedConfig {
        host: fake.addr.ip().to_string(),
        port: fake.addr.port(),
        timeout: Duration::from_millis(300),
        // Long, so that "marked down" cannot expire during the test.
        retry_after: Duration::from_secs(60),
        max_connections: 4,
    })
}

/// Before: the first timeout marked the cache down for `retry_after`, so the second
/// `get` failed at once with "is down" and never reached memcached (1 command seen).
#[tokio::test]
async fn one_slow_reply_does_not_take_the_cache_down() {
    let fake = fake_memcached(1).await;
    let c = cache(&fake);
    let first = c.get("radiovis_isoecc_a").await;
    assert!(
        matches!(first, Err(CacheError::Unavailable(_))),
        "the slow reply times out: {first:?}"
    );
    let second = c.get("radiovis_isoecc_b").await;
    assert_eq!(second, Ok(None), "the next operation is served");
    assert_eq!(
        fake.commands.load(Ordering::SeqCst),
        2,
        "both reached memcached"
    );
}

/// Consecutive timeouts still mark the cache down: then operations fail at once,
/// without reaching memcached.
#[tokio::test]
async fn consecutive_timeouts_mark_the_cache_down() {
    let fake = fake_memcached(usize::MAX).await;
    let c = cache(&fake);
    for i in 0..3 {
        let r = c.get(&format!("k{i}")).await;
        assert!(matches!(r, Err(CacheError::Unavailable(_))), "{r:?}");
    }
    assert_eq!(fake.commands.load(Ordering::SeqCst), 3);
    for i in 0..5 {
        let r = c.get(&format!("again{i}")).await;
        assert!(matches!(r, Err(CacheError::Unavailable(_))), "{r:?}");
    }
    assert_eq!(
        fake.commands.load(Ordering::SeqCst),
        3,
        "a cache marked down is skipped"
    );
}

/// A refused connection marks the cache down at once (nothing listens).
#[tokio::test]
async fn refused_connection_marks_the_cache_down_at_once() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let c = MemcachedCache::new(MemcachedConfig {
        host: "127.0.0.1".into(),
        port,
        timeout: Duration::from_millis(300),
        retry_after: Duration::from_secs(60),
        max_connections: 4,
    });
    let first = c.get("k").await;
    let text = format!("{:?}", first);
    assert!(matches!(first, Err(CacheError::Unavailable(_))), "{text}");
    let second = c.get("k").await;
    let second = format!("{:?}", second);
    assert!(second.contains("is down"), "skipped at once: {second}");
}

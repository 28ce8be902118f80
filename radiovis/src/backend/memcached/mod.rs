//! memcached as the shared cache (docs/protocol.md#cache), with a minimal client of the text
//! protocol (`get`, `set`) over tokio.
//!
//! Why hand-written: the shared cache is an optimisation that must never slow a login or
//! a subscription down, and the memcached crates lack what that takes: a pool that
//! keeps a few idle connections and replaces a broken one by itself, one bound (500 ms)
//! on each whole operation including the connect, and a circuit breaker that, after a
//! refused connect or consecutive failures, marks the cache down for a while so that
//! operations fail at once instead of each waiting for the timeout, and warns at most
//! once a minute. It also maps every key
//! to a valid memcached key. With `get` and `set` only, that is less code than wrapping
//! a client in all of it.
//!
//! * `MEMCACHED_HOST` is `host` or `host:port` (default port 11211; IPv6 as `[::1]:11211`
//!   or a bare `::1`).
//! * Connections are pooled (a few idle ones are kept); a connection that failed in any
//!   way is dropped and a new one is opened by the next operation, so the cache recovers
//!   by itself when memcached comes back.
//! * Every operation (connect included) is bounded by [`MemcachedConfig::timeout`]
//!   (default 500 ms). A refused or failed connect, or [`FAILURES_BEFORE_DOWN`]
//!   consecutive timeouts or broken connections, make the cache "down" for
//!   [`MemcachedConfig::retry_after`] (default 1 s): operations then fail at once with
//!   [`CacheError::Unavailable`] instead of each waiting for the timeout. One slow reply
//!   fails only its own operation: it does not take the cache away from every caller.
//!   The warning that the cache is down is logged at most once a minute; its return is
//!   logged once.
//! * Keys: memcached refuses keys over 250 bytes or with spaces or control characters.
//!   [`memcached_key`] maps every key deterministically (the same on every instance) to a
//!   valid one: a valid key without `%` is used as is (so keys stay those of the original
//!   Python server); otherwise `%`, space, control bytes and DEL are percent-escaped
//!   (`%25`, `%20`, ...), and a result over 250 bytes becomes its first 180 bytes, `%#`
//!   and the hex SHA-256 of the whole original key. The mapping is injective in practice
//!   (escaping is injective; `%#` never appears in an escaped key; SHA-256).
//! * Values are bytes with flags (docs/protocol.md#cache-values): radiovis's own keys
//!   use flags 0, the keys shared with the original Python server pylibmc's flags.

use parking_lot::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use tokio::io::BufReader;
use tokio::net::TcpStream;

use super::{Cache, CacheError, CacheItem, Reason};

mod conn;
use conn::{Conn, OpError};

/// memcached's longest key.
const MAX_KEY_LEN: usize = 250;
/// Idle connections kept for reuse.
const MAX_IDLE: usize = 8;
/// Expiration times above this many seconds are absolute Unix times for memcached.
const RELATIVE_EXPTIME_MAX: u64 = 60 * 60 * 24 * 30;
/// Consecutive timeouts (or connections broken during an operation) after which the
/// cache is considered down; a failed connect counts as down at once.
pub const FAILURES_BEFORE_DOWN: u32 = 3;
/// Minimum interval between two "cache down" warnings.
const WARN_INTERVAL: Duration = Duration::from_secs(60);

/// Configuration of a [`MemcachedCache`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemcachedConfig {
    /// Host name or address.
    pub host: String,
    /// TCP port (default 11211).
    pub port: u16,
    /// Bound on every operation, connection included (default 500 ms).
    pub timeout: Duration,
    /// After a failure to connect or a timeout, operations fail at once for this long
    /// before the next attempt (default 1 s).
    pub retry_after: Duration,
    /// Most operations in flight (hence connections in use) at once (default 16);
    /// further operations wait for their turn within their own timeout (a cache that
    /// cannot keep up is then treated as unavailable, like a slow one).
    pub max_connections: usize,
}

/// A `MEMCACHED_HOST` value that is not `host` or `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid memcached host {0:?} (expected host or host:port)")]
pub struct InvalidMemcachedHost(pub String);

impl MemcachedConfig {
    /// The configuration for a `MEMCACHED_HOST` value (`host` or `host:port`), with
    /// default timeouts.
    pub fn from_host(spec: &str) -> Result<MemcachedConfig, InvalidMemcachedHost> {
        let invalid = || InvalidMemcachedHost(spec.to_owned());
        let s = spec.trim();
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            // [v6] or [v6]:port
            let (host, after) = rest.split_once(']').ok_or_else(invalid)?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(invalid)?),
            };
            (host, port)
        } else if s.matches(':').count() > 1 {
            (s, None) // bare IPv6 address
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(invalid());
        }
        let port = match port {
            None => 11211,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(invalid)?,
        };
        Ok(MemcachedConfig {
            host: host.to_owned(),
            port,
            timeout: Duration::from_millis(500),
            retry_after: Duration::from_secs(1),
            max_connections: 16,
        })
    }
}

/// The memcached key used for a cache key (see the module documentation).
pub fn memcached_key(key: &str) -> String {
    let valid = |b: u8| b > b' ' && b != 0x7f;
    if !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| valid(b) && b != b'%') {
        return key.to_owned();
    }
    let mut escaped = String::with_capacity(key.len() + 8);
    for c in key.chars() {
        if c.is_ascii() && (!valid(c as u8) || c == '%') {
            escaped.push_str(&format!("%{:02X}", c as u8));
        } else {
            escaped.push(c);
        }
    }
    if escaped.is_empty() {
        // The empty key: memcached has no empty key.
        return "%".to_owned();
    }
    if escaped.len() <= MAX_KEY_LEN {
        return escaped;
    }
    let mut cut = 180;
    while !escaped.is_char_boundary(cut) {
        cut -= 1;
    }
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(cut + 2 + 64);
    out.push_str(&escaped[..cut]);
    out.push_str("%#");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The memcached exptime for a TTL: at least one second (0 would mean "never"),
/// absolute beyond 30 days; -1 (already expired) for a zero TTL.
fn exptime(ttl: Duration) -> i64 {
    if ttl.is_zero() {
        return -1;
    }
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    if secs <= RELATIVE_EXPTIME_MAX {
        return secs as i64;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    i64::try_from(now.saturating_add(secs)).unwrap_or(i64::MAX)
}

#[derive(Debug, Default)]
struct Health {
    /// Operations fail at once until then.
    down_until: Option<Instant>,
    /// Whether the last operation found the cache down (for the "back" message).
    down: bool,
    /// Timeouts and broken connections since the last success.
    failures: u32,
    last_warning: Option<Instant>,
}

/// The memcached [`Cache`].
pub struct MemcachedCache {
    config: MemcachedConfig,
    idle: Mutex<Vec<Conn>>,
    health: Mutex<Health>,
    /// One permit per operation in flight.
    permits: tokio::sync::Semaphore,
}

impl std::fmt::Debug for MemcachedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemcachedCache")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl MemcachedCache {
    /// A cache with this configuration. Connects lazily, on the first operation.
    pub fn new(config: MemcachedConfig) -> MemcachedCache {
        MemcachedCache {
            permits: tokio::sync::Semaphore::new(config.max_connections.max(1)),
            config,
            idle: Mutex::new(Vec::new()),
            health: Mutex::new(Health::default()),
        }
    }

    /// A cache for a `MEMCACHED_HOST` value (`host` or `host:port`), default timeouts.
    pub fn from_host(spec: &str) -> Result<MemcachedCache, InvalidMemcachedHost> {
        MemcachedConfig::from_host(spec).map(MemcachedCache::new)
    }

    /// The configuration in use.
    pub fn config(&self) -> &MemcachedConfig {
        &self.config
    }

    async fn connect(&self) -> Result<Conn, Reason> {
        let stream = TcpStream::connect((self.config.host.as_str(), self.config.port))
            .await
            .map_err(|e| Reason::caused_by(format!("cannot connect: {e}"), e))?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream: BufReader::new(stream),
        })
    }

    /// Runs one operation on a pooled (or new) connection, within the timeout, and keeps
    /// the health state. A pooled connection that fails at the connection level (closed
    /// by a restarted memcached) is replaced by a new one once.
    async fn run<T, F>(&self, op: F) -> Result<T, CacheError>
    where
        F: for<'c> Fn(&'c mut Conn) -> BoxFuture<'c, Result<T, OpError>>,
    {
        {
            let health = self.health.lock();
            if health
                .down_until
                .is_some_and(|until| Instant::now() < until)
            {
                return Err(CacheError::Unavailable(
                    format!(
                        "memcached {}:{} is down (retrying shortly)",
                        self.config.host, self.config.port
                    )
                    .into(),
                ));
            }
        }
        let attempt = async {
            // Never closed, so acquiring only waits.
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|e| Reason::caused_by(e.to_string(), e))?;
            let pooled = self.idle.lock().pop();
            if let Some(mut conn) = pooled {
                match op(&mut conn).await {
                    Err(OpError::Io(e)) => {
                        tracing::debug!(error = %e, "pooled memcached connection failed, reconnecting");
                    }
                    result => return Ok((conn, result)),
                }
            }
            let mut conn = self.connect().await?;
            let result = op(&mut conn).await;
            Ok::<_, Reason>((conn, result))
        };
        match tokio::time::timeout(self.config.timeout, attempt).await {
            // One slow reply is not an outage: the connection it was on is dropped (it
            // is out of step), and only consecutive failures mark the cache down.
            Err(elapsed) => Err(self.failed(Reason::caused_by(
                format!("no answer within {:?}", self.config.timeout),
                elapsed,
            ))),
            Ok(Ok((_, Err(OpError::Io(e))))) => Err(self.failed(e)),
            // Connect refused or failed: memcached is not there.
            Ok(Err(e)) => Err(self.mark_down(e)),
            Ok(Ok((conn, Err(OpError::Server(e))))) => {
                self.release(conn);
                self.mark_up();
                Err(CacheError::BadAnswer(e.into()))
            }
            Ok(Ok((_, Err(OpError::Protocol(e))))) => {
                // The connection is out of step: drop it; memcached itself is there.
                self.mark_up();
                Err(CacheError::BadAnswer(e.into()))
            }
            Ok(Ok((conn, Ok(v)))) => {
                self.release(conn);
                self.mark_up();
                Ok(v)
            }
        }
    }

    fn release(&self, conn: Conn) {
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    fn mark_up(&self) {
        let mut health = self.health.lock();
        health.down_until = None;
        health.failures = 0;
        if health.down {
            health.down = false;
            tracing::info!(
                host = %self.config.host,
                port = self.config.port,
                "memcached reachable again"
            );
        }
    }

    /// One operation timed out or lost its connection: the cache is down after
    /// [`FAILURES_BEFORE_DOWN`] of them in a row.
    fn failed(&self, reason: Reason) -> CacheError {
        let failures = {
            let mut health = self.health.lock();
            health.failures = health.failures.saturating_add(1);
            health.failures
        };
        if failures >= FAILURES_BEFORE_DOWN {
            return self.mark_down(reason);
        }
        tracing::debug!(error = %reason, failures, "memcached operation failed");
        CacheError::Unavailable(reason.context(format_args!(
            "memcached {}:{}",
            self.config.host, self.config.port
        )))
    }

    fn mark_down(&self, reason: Reason) -> CacheError {
        // Idle connections are likely dead too.
        self.idle.lock().clear();
        let now = Instant::now();
        let mut health = self.health.lock();
        health.down = true;
        health.failures = 0;
        health.down_until = Some(now + self.config.retry_after);
        let warn = health
            .last_warning
            .is_none_or(|t| now.duration_since(t) >= WARN_INTERVAL);
        if warn {
            health.last_warning = Some(now);
            tracing::warn!(
                host = %self.config.host,
                port = self.config.port,
                error = %reason,
                "memcached unavailable, working without the shared cache"
            );
        } else {
            tracing::debug!(error = %reason, "memcached unavailable");
        }
        CacheError::Unavailable(reason.context(format_args!(
            "memcached {}:{}",
            self.config.host, self.config.port
        )))
    }
}

#[async_trait]
impl Cache for MemcachedCache {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        Ok(self.get_item(key).await?.map(|item| item.data))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), CacheError> {
        let item = CacheItem {
            flags: 0,
            data: value,
        };
        self.set_item(key, item, ttl).await
    }

    async fn get_item(&self, key: &str) -> Result<Option<CacheItem>, CacheError> {
        let key = memcached_key(key);
        self.run(move |c| {
            let key = key.clone();
            Box::pin(async move { c.get(&key).await })
        })
        .await
    }

    async fn set_item(&self, key: &str, item: CacheItem, ttl: Duration) -> Result<(), CacheError> {
        let key = memcached_key(key);
        let exptime = exptime(ttl);
        self.run(move |c| {
            let (key, item) = (key.clone(), item.clone());
            Box::pin(async move { c.set(&key, &item, exptime).await })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_specs_parse() {
        let c = MemcachedConfig::from_host("cache").expect("ok");
        assert_eq!((c.host.as_str(), c.port), ("cache", 11211));
        let c = MemcachedConfig::from_host("127.0.0.1:11299").expect("ok");
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 11299));
        let c = MemcachedConfig::from_host("[::1]:5").expect("ok");
        assert_eq!((c.host.as_str(), c.port), ("::1", 5));
        let c = MemcachedConfig::from_host("::1").expect("ok");
        assert_eq!((c.host.as_str(), c.port), ("::1", 11211));
        for bad in ["", "host:", "host:x", "host:0", "host:70000", "a b", "[::1"] {
            assert!(MemcachedConfig::from_host(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn keys_are_made_valid_deterministically() {
        let plain = "radiovis_isoecc_/topic/fm/ch/4001/09580/";
        assert_eq!(memcached_key(plain), plain);
        assert_eq!(memcached_key("a b\n%"), "a%20b%0A%25");
        assert_ne!(memcached_key("a b"), memcached_key("a%20b"));
        assert_eq!(memcached_key(""), "%");
        let long = "k".repeat(300);
        let m = memcached_key(&long);
        assert!(m.len() <= MAX_KEY_LEN);
        assert_eq!(m, memcached_key(&long));
        assert_ne!(m, memcached_key(&"k".repeat(301)));
        let long_utf8 = "é".repeat(200);
        let m = memcached_key(&long_utf8);
        assert!(m.len() <= MAX_KEY_LEN);
        assert!(m.bytes().all(|b| b > b' ' && b != 0x7f));
    }

    #[test]
    fn down_warning_is_rate_limited() {
        let c = MemcachedCache::from_host("127.0.0.1:1").expect("valid");
        let e = c.mark_down("first".into());
        assert!(matches!(e, CacheError::Unavailable(_)));
        let first = c.health.lock().last_warning.expect("warned");
        c.mark_down("second".into());
        assert_eq!(c.health.lock().last_warning, Some(first));
        c.mark_up();
        assert!(!c.health.lock().down);
    }

    #[test]
    fn exptimes() {
        assert_eq!(exptime(Duration::ZERO), -1);
        assert_eq!(exptime(Duration::from_millis(10)), 1);
        assert_eq!(exptime(Duration::from_secs(600)), 600);
        assert!(exptime(Duration::from_secs(RELATIVE_EXPTIME_MAX + 1)) > 1_000_000_000);
    }
}

//! Topics: shape checks, CC -> GCC normalisation, channel prefixes, `*` matching and the
//! FM any-frequency fallback (docs/protocol.md#topics).
//!
//! A topic is a `/`-separated path such as `/topic/fm/4e1/4001/09580/image`. The FM
//! country segment may be an ISO code (`ch`) or a GCC (`4e1`); both name the same
//! channel, so all equality and matching is done on the *normalised* (GCC, lower-case)
//! form, which [`Normaliser`] computes with the directory's `get_gcc` and caches.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::backend::{pyvalue, Cache, DirectoryApi, DirectoryError};
use crate::singleflight::SingleFlight;

/// TTL of CC -> GCC conversions, in process and in the shared cache (docs/protocol.md#topic-normalisation).
pub const GCC_TTL: Duration = Duration::from_secs(600);

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// An FM destination without the shape of docs/protocol.md#fm-topics.
    #[error(
        "destination {0:?} does not match the required format /topic/fm/<cc|gcc>/<pi>/<frequency>/"
    )]
    BadFmFormat(String),
    /// A destination outside `/topic/`.
    #[error("destination {0:?} is not a /topic/ destination")]
    NotATopic(String),
}

/// True for an FM topic (`/topic/fm/...`).
pub fn is_fm(topic: &str) -> bool {
    topic.starts_with("/topic/fm/")
}

/// True when the topic contains a `*` segment.
pub fn is_wildcard(topic: &str) -> bool {
    topic.split('/').any(|s| s == "*")
}

/// Checks a SUBSCRIBE/SEND destination: it must start with `/topic/`, and an FM one must
/// have the shape `/topic/fm/<cc|gcc>/<pi>/<freq>/...` (`*` allowed in each segment).
pub fn check_shape(topic: &str) -> Result<(), TopicError> {
    if !topic.starts_with("/topic/") {
        return Err(TopicError::NotATopic(topic.to_owned()));
    }
    if !is_fm(topic) {
        return Ok(());
    }
    let mut segs = topic["/topic/fm/".len()..].split('/');
    let (Some(country), Some(pi), Some(freq), Some(_rest)) =
        (segs.next(), segs.next(), segs.next(), segs.next())
    else {
        return Err(TopicError::BadFmFormat(topic.to_owned()));
    };
    let star = |s: &str| s == "*";
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let country_ok = star(country)
        || (country.len() == 2 && country.bytes().all(|b| b.is_ascii_alphabetic()))
        || hex(country, 3);
    let pi_ok = star(pi) || hex(pi, 4);
    let freq_ok = star(freq) || (freq.len() == 5 && freq.bytes().all(|b| b.is_ascii_digit()));
    if country_ok && pi_ok && freq_ok {
        Ok(())
    } else {
        Err(TopicError::BadFmFormat(topic.to_owned()))
    }
}

/// Segment-wise match: a `*` in `pattern` matches exactly one segment of `topic`.
pub fn matches(pattern: &str, topic: &str) -> bool {
    let mut p = pattern.split('/');
    let mut t = topic.split('/');
    loop {
        match (p.next(), t.next()) {
            (None, None) => return true,
            (Some(ps), Some(ts)) if ps == "*" || ps == ts => {}
            _ => return false,
        }
    }
}

/// The channel of a topic: everything up to and including the last `/`
/// (`/topic/fm/4e1/4001/09580/image` -> `/topic/fm/4e1/4001/09580/`).
pub fn channel_of(topic: &str) -> &str {
    match topic.rfind('/') {
        Some(i) => &topic[..=i],
        None => topic,
    }
}

/// For a normalised FM topic, the same topic on any frequency
/// (`/topic/fm/4e1/4001/*/image`). `None` for other bearers.
pub fn fm_any_frequency(topic: &str) -> Option<String> {
    if !is_fm(topic) {
        return None;
    }
    let mut segs: Vec<&str> = topic.split('/').collect();
    // ["", "topic", "fm", country, pi, freq, rest...]
    if segs.len() < 7 {
        return None;
    }
    segs[5] = "*";
    Some(segs.join("/"))
}

/// If the FM country segment is an ISO code, returns it (lower-case).
pub fn fm_cc(topic: &str) -> Option<String> {
    if !is_fm(topic) {
        return None;
    }
    let country = topic["/topic/fm/".len()..].split('/').next()?;
    (country.len() == 2 && country.bytes().all(|b| b.is_ascii_alphabetic()))
        .then(|| country.to_ascii_lowercase())
}

/// Lower-cases the hex segments of an FM topic (country, PI), leaving other bearers
/// untouched: the normalised form when the country code cannot be converted.
pub fn lowercase_fm(topic: &str) -> String {
    if !is_fm(topic) || !topic.bytes().any(|b| b.is_ascii_uppercase()) {
        return topic.to_owned();
    }
    let mut out = String::with_capacity(topic.len());
    for (i, seg) in topic.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if (3..=4).contains(&i) {
            out.push_str(&seg.to_ascii_lowercase());
        } else {
            out.push_str(seg);
        }
    }
    out
}

/// Replaces the FM country segment with `gcc`.
fn with_country(topic: &str, gcc: &str) -> String {
    let rest = &topic["/topic/fm/".len()..];
    let after = rest.find('/').map(|i| &rest[i..]).unwrap_or("");
    format!("/topic/fm/{}{}", gcc.to_ascii_lowercase(), after)
}

/// Why a topic could not be normalised: its country code needs the directory, which
/// failed (or is in backoff after failing). `topic` is the fallback: the topic as
/// written, FM hex segments lower-cased, the CC form kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("country code of {topic:?} not converted: directory unavailable")]
pub struct Unconverted {
    /// The fallback form (CC kept).
    pub topic: String,
}

/// How long a CC -> GCC look-up may take when the caller gives no timeout.
pub const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a failed look-up is remembered at first when the caller gives no value.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(5);
/// Longest wait before asking the directory again after consecutive failures (unless
/// the configured first wait is longer) (docs/protocol.md#topic-normalisation).
pub const MAX_RETRY: Duration = Duration::from_secs(60);

/// A country code whose last look-up failed: when to ask again, and how many times in
/// a row it failed (the wait doubles with each).
struct Backoff {
    failures: u32,
    until: Instant,
}

/// What a look-up needs, shared with the detached task that runs it.
struct Lookup<D, C> {
    directory: Arc<D>,
    cache: Arc<C>,
    timeout: Duration,
    retry: Duration,
    /// Country codes whose last look-up failed. Bounded: `fm_cc` yields two ASCII
    /// letters only, so at most 26 x 26 keys.
    failed: Mutex<HashMap<String, Backoff>>,
}

/// Computes the normalised form of topics, asking the directory for CC -> GCC
/// conversions (docs/protocol.md#topic-normalisation). Conversions are cached in process
/// and in the shared cache (`radiovis_isoecc_<topic>`, 600 s); concurrent misses for
/// one country code make a single directory call, bounded by a timeout. A failed
/// look-up is remembered with backoff (5 s, doubling to 60 s by default): meanwhile the
/// topic stays in its CC form at once, without asking.
pub struct Normaliser<D, C> {
    lookup: Arc<Lookup<D, C>>,
    gcc: SingleFlight<Option<String>>,
}

impl<D: DirectoryApi, C: Cache> Normaliser<D, C> {
    /// A normaliser with [`DEFAULT_LOOKUP_TIMEOUT`] and [`DEFAULT_RETRY`].
    pub fn new(directory: Arc<D>, cache: Arc<C>) -> Normaliser<D, C> {
        Normaliser::with_timeouts(directory, cache, DEFAULT_LOOKUP_TIMEOUT, DEFAULT_RETRY)
    }

    /// A normaliser whose look-ups (shared cache and directory together) take at most
    /// `timeout`, and whose failed look-ups are not retried for `retry` (doubling per
    /// consecutive failure, up to [`MAX_RETRY`] or `retry` if larger).
    pub fn with_timeouts(
        directory: Arc<D>,
        cache: Arc<C>,
        timeout: Duration,
        retry: Duration,
    ) -> Normaliser<D, C> {
        Normaliser {
            lookup: Arc::new(Lookup {
                directory,
                cache,
                timeout,
                retry,
                failed: Mutex::new(HashMap::new()),
            }),
            gcc: SingleFlight::new(GCC_TTL),
        }
    }

    /// The normalised form of `topic`: FM country as GCC, FM hex segments lower-case.
    /// Other bearers are returned as they are. When the directory cannot convert the
    /// country code, the CC form stays (see [`Normaliser::try_normalise`]). Takes at
    /// most the look-up timeout.
    pub async fn normalise(&self, topic: &str) -> String {
        self.try_normalise(topic).await.unwrap_or_else(|u| u.topic)
    }

    /// Like [`Normaliser::normalise`], but says when the CC form was kept because the
    /// directory failed (or is in backoff), rather than because it knows no GCC.
    pub async fn try_normalise(&self, topic: &str) -> Result<String, Unconverted> {
        let topic = lowercase_fm(topic);
        let Some(cc) = fm_cc(&topic) else {
            return Ok(topic);
        };
        match self.gcc_of(&cc, &topic).await {
            Ok(Some(gcc)) => Ok(with_country(&topic, &gcc)),
            Ok(None) => Ok(topic),
            Err(()) => Err(Unconverted { topic }),
        }
    }

    /// The normalised form of `topic` if it is known without asking anyone: not a
    /// CC-form FM topic, a conversion held in process, or a country code in backoff
    /// (then the CC form). `None` when the directory must be asked: the bus consumer
    /// then resolves it off its path (docs/protocol.md#delivery).
    pub async fn normalise_cached(&self, topic: &str) -> Option<String> {
        let topic = lowercase_fm(topic);
        let Some(cc) = fm_cc(&topic) else {
            return Some(topic);
        };
        match self.gcc.get(&cc).await {
            Some(Some(gcc)) => Some(with_country(&topic, &gcc)),
            Some(None) => Some(topic),
            None => self.lookup.backing_off(&cc).then_some(topic),
        }
    }

    /// `Err` when the directory failed now or recently (backoff).
    async fn gcc_of(&self, cc: &str, topic: &str) -> Result<Option<String>, ()> {
        if self.lookup.backing_off(cc) {
            return Err(());
        }
        let (lookup, gcc) = (self.lookup.clone(), self.gcc.clone());
        let (cc, key) = (
            cc.to_owned(),
            format!("radiovis_isoecc_{}", channel_of(topic)),
        );
        // Detached, the shared look-up and its election both: a caller that gives up
        // (its own deadline, its connection closing) must not cancel the look-up, whose
        // outcome the other waiters and the backoff need. Were the elected caller's
        // future the look-up, the next caller would start a second one and wait a whole
        // timeout for it. Bounded: the look-up ends within its timeout.
        tokio::spawn(async move {
            gcc.get_or_fetch(
                &cc.clone(),
                move || async move { lookup.fetch(&cc, &key).await },
            )
            .await
        })
        .await
        .unwrap_or(Err(DirectoryError::Timeout(self.lookup.timeout)))
        .map_err(|_| ())
    }
}

impl<D: DirectoryApi, C: Cache> Lookup<D, C> {
    fn backing_off(&self, cc: &str) -> bool {
        self.failed
            .lock()
            .get(cc)
            .is_some_and(|b| Instant::now() < b.until)
    }

    /// One look-up, bounded by `timeout`; records its outcome for the backoff.
    async fn fetch(&self, cc: &str, key: &str) -> Result<Option<String>, DirectoryError> {
        let result = tokio::time::timeout(self.timeout, self.ask(cc, key))
            .await
            .unwrap_or(Err(DirectoryError::Timeout(self.timeout)));
        match &result {
            Ok(_) => {
                if self.failed.lock().remove(cc).is_some() {
                    tracing::info!(cc, "directory converts the country code again");
                }
            }
            Err(e) => {
                let mut failed = self.failed.lock();
                let b = failed.entry(cc.to_owned()).or_insert(Backoff {
                    failures: 0,
                    until: Instant::now(),
                });
                b.failures = b.failures.saturating_add(1);
                let wait = self
                    .retry
                    .saturating_mul(1 << (b.failures - 1).min(16))
                    .min(MAX_RETRY.max(self.retry));
                b.until = Instant::now() + wait;
                // Once per failed look-up, so once per key per backoff period.
                tracing::warn!(
                    cc,
                    error = %e,
                    failures = b.failures,
                    retry_in = ?wait,
                    "directory cannot convert country code: its CC-form topics stay as written until the next try"
                );
            }
        }
        result
    }

    /// The shared cache, then the directory.
    async fn ask(&self, cc: &str, key: &str) -> Result<Option<String>, DirectoryError> {
        if let Ok(Some(v)) = self.cache.get_item(key).await {
            // Plain text or pylibmc's unicode or pickle (docs/protocol.md#cache-values).
            let cached = pyvalue::read_text(&v);
            let gcc = cached
                .as_deref()
                .and_then(|t| t.strip_prefix("/topic/fm/"))
                .and_then(|r| r.split('/').next())
                .filter(|g| g.len() == 3);
            if let Some(gcc) = gcc {
                return Ok(Some(gcc.to_owned()));
            }
        }
        let gcc = self.directory.get_gcc(cc).await?;
        if let Some(g) = &gcc {
            let value = with_country(key.trim_start_matches("radiovis_isoecc_"), g);
            // A unicode string, as the original's pylibmc writes it.
            if let Err(e) = self
                .cache
                .set_item(key, pyvalue::text(&value), GCC_TTL)
                .await
            {
                tracing::warn!(error = %e, "cannot store CC -> GCC conversion in cache");
            }
        }
        Ok(gcc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryCache;
    use crate::backend::{DirectoryError, MockDirectoryApi};

    #[test]
    fn shapes() {
        assert!(check_shape("/topic/fm/4e1/4001/09580/image").is_ok());
        assert!(check_shape("/topic/fm/ch/4001/09580/").is_ok());
        assert!(check_shape("/topic/fm/4e1/4001/*/text").is_ok());
        assert!(check_shape("/topic/dab/4e1/4001/4001/0/text").is_ok());
        assert!(check_shape("/topic/fm/4e1/4001/09580").is_err());
        assert!(check_shape("/topic/fm/4e1/zzzz/09580/text").is_err());
        assert!(check_shape("/topic/fm/4e1/4001/958/text").is_err());
        assert!(check_shape("/topic/fm/chx/4001/09580/text").is_err());
        assert!(check_shape("/queue/x").is_err());
    }

    #[test]
    fn matching() {
        assert!(matches(
            "/topic/fm/4e1/4001/*/text",
            "/topic/fm/4e1/4001/09580/text"
        ));
        assert!(!matches(
            "/topic/fm/4e1/4001/*/text",
            "/topic/fm/4e1/4001/09580/image"
        ));
        assert!(!matches(
            "/topic/fm/4e1/4001/*/text",
            "/topic/fm/4e1/4001/text"
        ));
        assert!(matches("/topic/*/x/", "/topic/dab/x/"));
        assert!(matches("/a/b", "/a/b"));
        assert!(!matches("/a/b", "/a/b/"));
    }

    #[test]
    fn channel_and_fallback() {
        assert_eq!(
            channel_of("/topic/fm/4e1/4001/09580/image"),
            "/topic/fm/4e1/4001/09580/"
        );
        assert_eq!(
            channel_of("/topic/fm/4e1/4001/09580/"),
            "/topic/fm/4e1/4001/09580/"
        );
        assert_eq!(
            fm_any_frequency("/topic/fm/4e1/4001/09580/image").as_deref(),
            Some("/topic/fm/4e1/4001/*/image")
        );
        assert_eq!(fm_any_frequency("/topic/dab/4e1/4001/0/image"), None);
    }

    #[tokio::test]
    async fn normalises_cc_once_per_country() {
        let mut dir = MockDirectoryApi::new();
        dir.expect_get_gcc()
            .withf(|cc| cc == "ch")
            .times(1)
            .returning(|_| Ok(Some("4E1".into())));
        let n = Normaliser::new(Arc::new(dir), Arc::new(MemoryCache::new()));
        assert_eq!(
            n.normalise("/topic/fm/CH/4001/09580/image").await,
            "/topic/fm/4e1/4001/09580/image"
        );
        assert_eq!(
            n.normalise("/topic/fm/ch/4002/09580/text").await,
            "/topic/fm/4e1/4002/09580/text"
        );
        assert_eq!(
            n.normalise("/topic/fm/4E1/4001/09580/text").await,
            "/topic/fm/4e1/4001/09580/text"
        );
        assert_eq!(n.normalise("/topic/dab/CH/x").await, "/topic/dab/CH/x");
    }

    #[tokio::test]
    async fn cache_down_means_asking_the_directory() {
        use crate::backend::{CacheError, MockCache};
        let mut cache = MockCache::new();
        cache
            .expect_get_item()
            .returning(|_| Err(CacheError::Unavailable("down".into())));
        cache
            .expect_set_item()
            .returning(|_, _, _| Err(CacheError::Unavailable("down".into())));
        let mut dir = MockDirectoryApi::new();
        dir.expect_get_gcc()
            .times(1)
            .returning(|_| Ok(Some("4e1".into())));
        let n = Normaliser::new(Arc::new(dir), Arc::new(cache));
        assert_eq!(
            n.normalise("/topic/fm/ch/4001/09580/text").await,
            "/topic/fm/4e1/4001/09580/text"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn directory_failure_leaves_topic_and_retries_after_backoff() {
        let mut dir = MockDirectoryApi::new();
        let mut seq = mockall::Sequence::new();
        dir.expect_get_gcc()
            .times(2)
            .in_sequence(&mut seq)
            .returning(|_| Err(DirectoryError::Status(500)));
        dir.expect_get_gcc()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(Some("4e1".into())));
        let n = Normaliser::with_timeouts(
            Arc::new(dir),
            Arc::new(MemoryCache::new()),
            Duration::from_secs(1),
            Duration::from_secs(5),
        );
        let cc = "/topic/fm/ch/4001/09580/";
        assert_eq!(
            n.try_normalise(cc).await,
            Err(Unconverted { topic: cc.into() })
        );
        // In backoff: the CC form at once, without asking (the mock allows no more
        // calls before the second failure).
        assert_eq!(n.normalise_cached(cc).await.as_deref(), Some(cc));
        assert_eq!(n.normalise(cc).await, cc);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(n.normalise_cached(cc).await, None, "the backoff is over");
        assert_eq!(n.normalise(cc).await, cc, "second failure");
        // The wait doubled: still in backoff after 5 s, asking again after 10 s.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(n.normalise(cc).await, cc);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(n.normalise(cc).await, "/topic/fm/4e1/4001/09580/");
        assert_eq!(
            n.normalise_cached("/topic/fm/CH/4002/09580/text")
                .await
                .as_deref(),
            Some("/topic/fm/4e1/4002/09580/text")
        );
    }

    /// A directory whose `get_gcc` never answers; counts the calls.
    #[derive(Default)]
    struct HangingGcc {
        calls: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl DirectoryApi for HangingGcc {
        async fn check_auth(
            &self,
            _: &str,
            _: &str,
            _: std::net::IpAddr,
        ) -> Result<bool, DirectoryError> {
            Ok(false)
        }
        async fn get_channels(&self, _: &str) -> Result<Vec<String>, DirectoryError> {
            Ok(Vec::new())
        }
        async fn get_gcc(&self, _: &str) -> Result<Option<String>, DirectoryError> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::pending().await
        }
        async fn get_all_channels(
            &self,
        ) -> Result<Vec<crate::backend::ChannelRef>, DirectoryError> {
            Ok(Vec::new())
        }
        async fn get_all_vis_channels(
            &self,
        ) -> Result<Vec<crate::backend::ChannelRef>, DirectoryError> {
            Ok(Vec::new())
        }
        async fn get_channel_default(
            &self,
            _: &str,
        ) -> Result<Option<crate::backend::ChannelDefault>, DirectoryError> {
            Ok(None)
        }
    }

    /// A caller that gives up on a look-up (a session whose own deadline started just
    /// before the look-up's) must not take the shared look-up with it: a caller coming
    /// just then joins the one in flight and is answered when it ends. Failed before:
    /// the look-up was the elected caller's future, so the next caller started a second
    /// one and waited a whole timeout (a SUBSCRIBE answered 5 s late, seen in CI).
    #[tokio::test(start_paused = true)]
    async fn a_caller_giving_up_leaves_the_shared_lookup_running() {
        let dir = Arc::new(HangingGcc::default());
        let n = Normaliser::with_timeouts(
            dir.clone(),
            Arc::new(MemoryCache::new()),
            Duration::from_secs(5),
            Duration::from_secs(1),
        );
        let cc = "/topic/fm/de/d001/09580/text";
        let gave_up = tokio::time::timeout(Duration::from_millis(4_990), n.try_normalise(cc)).await;
        assert!(gave_up.is_err(), "the directory hangs");
        let asked = Instant::now();
        assert_eq!(
            n.try_normalise(cc).await,
            Err(Unconverted { topic: cc.into() })
        );
        assert!(
            asked.elapsed() <= Duration::from_millis(50),
            "answered when the first look-up timed out, not a timeout later: {:?}",
            asked.elapsed()
        );
        assert_eq!(
            dir.calls.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one look-up"
        );
    }
}

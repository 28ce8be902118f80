//! Topics: shape checks, CC -> GCC normalisation, channel prefixes, `*` matching and the
//! FM any-frequency fallback (docs/protocol.md#topics).
//!
//! A topic is a `/`-separated path such as `/topic/fm/4e1/4001/09580/image`. The FM
//! country segment may be an ISO code (`ch`) or a GCC (`4e1`); both name the same
//! channel, so all equality and matching is done on the *normalised* (GCC, lower-case)
//! form, which [`Normaliser`] computes with the directory's `get_gcc` and caches.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::backend::{Cache, DirectoryApi};
use crate::singleflight::SingleFlight;

/// TTL of CC -> GCC conversions, in process and in the shared cache (docs/protocol.md#topic-normalisation).
pub const GCC_TTL: Duration = Duration::from_secs(600);

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error(
        "destination {0:?} does not match the required format /topic/fm/<cc|gcc>/<pi>/<frequency>/"
    )]
    BadFmFormat(String),
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
fn fm_cc(topic: &str) -> Option<String> {
    if !is_fm(topic) {
        return None;
    }
    let country = topic["/topic/fm/".len()..].split('/').next()?;
    (country.len() == 2 && country.bytes().all(|b| b.is_ascii_alphabetic()))
        .then(|| country.to_ascii_lowercase())
}

/// Lower-cases the hex segments of an FM topic (country, PI), leaving other bearers
/// untouched.
fn lowercase_fm(topic: &str) -> String {
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

/// Computes the normalised form of topics, asking the directory for CC -> GCC
/// conversions. Conversions are cached in process and in the shared cache
/// (`radiovis_isoecc_<topic>`, 600 s); concurrent misses for one country code make a
/// single directory call. When the directory cannot answer, the topic stays as it is
/// (with a warning) and the next call asks again.
pub struct Normaliser<D, C> {
    directory: Arc<D>,
    cache: Arc<C>,
    gcc: SingleFlight<Option<String>>,
}

impl<D: DirectoryApi, C: Cache> Normaliser<D, C> {
    pub fn new(directory: Arc<D>, cache: Arc<C>) -> Normaliser<D, C> {
        Normaliser {
            directory,
            cache,
            gcc: SingleFlight::new(GCC_TTL),
        }
    }

    /// The normalised form of `topic`: FM country as GCC, FM hex segments lower-case.
    /// Other bearers are returned as they are.
    pub async fn normalise(&self, topic: &str) -> String {
        let topic = lowercase_fm(topic);
        let Some(cc) = fm_cc(&topic) else {
            return topic;
        };
        match self.gcc_of(&cc, &topic).await {
            Some(gcc) => with_country(&topic, &gcc),
            None => topic,
        }
    }

    async fn gcc_of(&self, cc: &str, topic: &str) -> Option<String> {
        self.gcc
            .get_or_fetch(cc, || async {
                let key = format!("radiovis_isoecc_{}", channel_of(topic));
                if let Ok(Some(v)) = self.cache.get(&key).await {
                    let cached = std::str::from_utf8(&v)
                        .ok()
                        .and_then(|t| t.strip_prefix("/topic/fm/"))
                        .and_then(|r| r.split('/').next())
                        .filter(|g| g.len() == 3);
                    if let Some(gcc) = cached {
                        return Ok(Some(gcc.to_owned()));
                    }
                }
                match self.directory.get_gcc(cc).await {
                    Ok(gcc) => {
                        if let Some(g) = &gcc {
                            let value = with_country(channel_of(topic), g);
                            if let Err(e) = self.cache.set(&key, Bytes::from(value), GCC_TTL).await {
                                tracing::warn!(error = %e, "cannot store CC -> GCC conversion in cache");
                            }
                        }
                        Ok(gcc)
                    }
                    Err(e) => {
                        tracing::warn!(cc, error = %e, "directory cannot convert country code; topic left as is");
                        Err(e)
                    }
                }
            })
            .await
            .ok()
            .flatten()
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
            .expect_get()
            .returning(|_| Err(CacheError::Unavailable("down".into())));
        cache
            .expect_set()
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

    #[tokio::test]
    async fn directory_failure_leaves_topic_and_retries() {
        let mut dir = MockDirectoryApi::new();
        let mut seq = mockall::Sequence::new();
        dir.expect_get_gcc()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Err(DirectoryError::Status(500)));
        dir.expect_get_gcc()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(Some("4e1".into())));
        let n = Normaliser::new(Arc::new(dir), Arc::new(MemoryCache::new()));
        assert_eq!(
            n.normalise("/topic/fm/ch/4001/09580/").await,
            "/topic/fm/ch/4001/09580/"
        );
        assert_eq!(
            n.normalise("/topic/fm/ch/4001/09580/").await,
            "/topic/fm/4e1/4001/09580/"
        );
    }
}

//! Channels: the known channel topics (for the FM any-frequency fallback of
//! subscriptions) and the channels each station may publish to (its SEND rights).

use std::collections::HashSet;
use std::sync::Arc;

use super::index::IndexKey;
use super::{Hub, CHANNELS_CACHE_KEY};
use crate::backend::{pyvalue, Cache, DirectoryApi, DirectoryError, MessageBus};
use crate::topic;

/// A channel a station may publish to, as the directory wrote it and normalised.
#[derive(Debug, Clone)]
pub(crate) struct StationChannel {
    /// As the directory wrote it (`/topic/*/...` SENDs are expanded on it).
    pub raw: String,
    /// Normalised, to check a SEND destination against.
    pub normalised: String,
}

impl<B: MessageBus, D: DirectoryApi, C: Cache> Hub<B, D, C> {
    /// Where a SUBSCRIBE destination goes in the index: its normalised form, or a `*`
    /// pattern for wildcards and for FM channels the directory does not know (then the
    /// radio gets that PI on any frequency). Takes at most `directory_timeout` (the CC
    /// form is kept when the directory does not answer).
    pub(crate) async fn index_key_for(&self, destination: &str) -> IndexKey {
        let normalised = self.normaliser.normalise(destination).await;
        self.index_key_of(destination, normalised)
    }

    /// Where a SUBSCRIBE destination goes when its conversion could not wait: as
    /// [`Hub::index_key_for`] with the CC form kept (docs/protocol.md#topic-normalisation).
    pub(crate) fn unconverted_index_key(&self, destination: &str) -> IndexKey {
        self.index_key_of(destination, topic::lowercase_fm(destination))
    }

    fn index_key_of(&self, destination: &str, normalised: String) -> IndexKey {
        if topic::is_wildcard(destination) {
            return IndexKey::Pattern(normalised);
        }
        if topic::is_fm(&normalised) {
            let known = self.known_channels.read().clone();
            if !known.contains(topic::channel_of(&normalised)) {
                if let Some(any) = topic::fm_any_frequency(&normalised) {
                    tracing::debug!(%destination, pattern = %any, "unknown FM channel: any-frequency fallback");
                    return IndexKey::Pattern(any);
                }
            }
        }
        IndexKey::Exact(normalised.into())
    }

    /// The channels a station may publish to (cached for `channel_cache_ttl`). A list
    /// in which some CC-form channel could not be converted (directory down) is used
    /// once and not cached, so that rights follow the directory when it is back.
    pub(crate) async fn station_channels(
        &self,
        station: &str,
    ) -> Result<Arc<Vec<StationChannel>>, DirectoryError> {
        let mut unconverted = false;
        let list = self
            .station_channels
            .get_or_fetch(station, || async {
                let raw = tokio::time::timeout(
                    self.config.directory_timeout,
                    self.directory.get_channels(station),
                )
                .await
                .map_err(|_| DirectoryError::Timeout(self.config.directory_timeout))??;
                let mut list = Vec::with_capacity(raw.len());
                for r in raw {
                    let normalised = match self.normaliser.try_normalise(&r).await {
                        Ok(n) => n,
                        Err(u) => {
                            unconverted = true;
                            u.topic
                        }
                    };
                    list.push(StationChannel { raw: r, normalised });
                }
                Ok(Arc::new(list))
            })
            .await?;
        if unconverted {
            self.station_channels.invalidate(station).await;
        }
        Ok(list)
    }

    /// The known channel topics (normalised) as last loaded.
    pub(crate) fn known_channels(&self) -> Arc<HashSet<String>> {
        self.known_channels.read().clone()
    }

    /// Reloads the known channel topics: from the cache, whoever wrote it (a watchdog,
    /// radiovis's or the original's, keeps it fresh), else from the directory, and then
    /// shares them through the cache, so that a fleet asks the directory no more often
    /// than the original's did (docs/protocol.md#cache-values). On failure the previous
    /// list stays.
    pub(super) async fn refresh_known_channels(&self, at_start: bool) {
        let mut topics: Option<Vec<String>> = None;
        let mut from_directory = false;
        match self.cache.get_item(CHANNELS_CACHE_KEY).await {
            Ok(Some(v)) => {
                topics = pyvalue::read_topic_list(&v);
                if topics.is_none() {
                    tracing::warn!(
                        flags = v.flags,
                        "known channels in the cache not understood, asking the directory"
                    );
                }
            }
            Ok(None) => {}
            Err(e) if at_start => {
                tracing::debug!(error = %e, "cannot read known channels from cache")
            }
            Err(e) => tracing::warn!(error = %e, "cannot read known channels from cache"),
        }
        if topics.is_none() {
            match tokio::time::timeout(
                self.config.directory_timeout,
                self.directory.get_all_channels(),
            )
            .await
            {
                Ok(Ok(list)) => {
                    from_directory = true;
                    topics = Some(list.into_iter().map(|c| c.topic).collect());
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot load known channels from directory")
                }
                Err(_) => tracing::warn!("directory timed out loading known channels"),
            }
        }
        let Some(topics) = topics else { return };
        let mut set = HashSet::with_capacity(topics.len());
        let mut normalised = Vec::with_capacity(topics.len());
        for t in topics {
            let n = self.normaliser.normalise(&t).await;
            if set.insert(n.clone()) {
                normalised.push(n);
            }
        }
        if from_directory {
            // Normalised, as the watchdogs (the original's and radiovis's) write it.
            let item = pyvalue::topic_list(&normalised);
            if let Err(e) = self
                .cache
                .set_item(CHANNELS_CACHE_KEY, item, topic::GCC_TTL)
                .await
            {
                tracing::warn!(error = %e, "cannot share known channels through cache");
            }
        }
        tracing::debug!(count = set.len(), "known channels refreshed");
        *self.known_channels.write() = Arc::new(set);
    }
}

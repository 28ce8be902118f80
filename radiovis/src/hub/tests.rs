//! The hub driven directly: bounded last messages, the newest kept.

use super::*;
use crate::backend::memory::{LocalBus, MemoryCache, StaticDirectory};

#[tokio::test]
async fn bus_messages_are_remembered_per_normalised_topic_and_bounded() {
    let hub = Arc::new(Hub::new(
        LocalBus::default(),
        StaticDirectory::default(),
        MemoryCache::new(),
        HubConfig {
            max_last_messages: 100,
            ..HubConfig::default()
        },
    ));
    for i in 0..1000 {
        hub.on_bus_message(BusMessage {
            topic: format!("/topic/id/x/{i}/text"),
            body: bytes::Bytes::from(format!("TEXT {i}")),
            headers: vec![],
        })
        .await;
    }
    let topics = hub.last.topics();
    assert!(topics.len() <= 100, "{}", topics.len());
    assert!(
        topics.contains("/topic/id/x/999/text"),
        "the newest is kept"
    );
    let newest = hub
        .last
        .for_key(&IndexKey::Exact("/topic/id/x/999/text".into()))
        .expect("replayed");
    assert!(
        newest.headers.iter().any(|(k, _)| k == "message-id"),
        "a message-id is added"
    );
    assert_eq!(hub.stats().snapshot().bus_messages, 1000);
}

/// With nothing in the cache, the known channels come from the directory and are
/// shared in the original's format: a pickled list of normalised (GCC-form) topics
/// (docs/protocol.md#cache-values).
#[tokio::test]
async fn known_channels_are_shared_normalised_in_the_originals_format() {
    let dir = StaticDirectory::from_toml(
        r#"
        [gcc]
        ch = "4e1"
        [[channel]]
        id = "1"
        topic = "/topic/fm/ch/4001/09580/"
        [[channel]]
        id = "2"
        topic = "/topic/fm/4e1/4001/09580/"
        "#,
    )
    .expect("directory");
    let cache = Arc::new(MemoryCache::new());
    let hub = Arc::new(Hub::new(
        LocalBus::default(),
        dir,
        cache.clone(),
        HubConfig::default(),
    ));
    hub.refresh_known_channels(true).await;
    let item = cache
        .get_item(CHANNELS_CACHE_KEY)
        .await
        .expect("cache")
        .expect("shared");
    assert_eq!(item.flags, crate::backend::pyvalue::FLAG_PICKLE);
    assert_eq!(
        crate::backend::pyvalue::read_topic_list(&item),
        Some(vec!["/topic/fm/4e1/4001/09580/".to_owned()])
    );
}

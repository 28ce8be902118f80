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

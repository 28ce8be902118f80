//! A station's publish, whatever the transport (STOMP SEND, HTTP `POST /publish`):
//! its channel rights, the forwarded headers, the bus (docs/protocol.md#send).

use std::sync::atomic::Ordering;

use crate::backend::{BusError, BusMessage, Cache, DirectoryApi, MessageBus};
use crate::stomp::v10_safe;

use super::{Hub, Transport};

/// Why a publish was refused; the Display text is the STOMP ERROR's `message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The station has no rights on the destination.
    #[error("You cannot do that. (no rights on {0:?})")]
    NotAllowed(String),
    /// The station's channels could not be read in time.
    #[error("cannot check channel rights: directory unavailable")]
    DirectoryUnavailable,
    /// A header value that STOMP 1.0 radios cannot receive safely.
    #[error("header {0} not forwarded: a line break or NUL cannot reach STOMP 1.0 radios")]
    UnsafeHeader(&'static str),
    /// The bus did not take the message.
    #[error("message not sent: {0}")]
    Bus(#[from] BusError),
}

/// What a station publishes: a destination, a body and the optional forwarded
/// headers (empty values count as absent).
#[derive(Debug, Clone, Default)]
pub struct Publication<'a> {
    /// Where to (a topic, or `/topic/*/<rest>` for every channel of the station).
    pub destination: &'a str,
    /// `TEXT ...` or `SHOW <url>`, unchanged.
    pub body: bytes::Bytes,
    /// `trigger-time` header.
    pub trigger_time: Option<&'a str>,
    /// `link` header.
    pub link: Option<&'a str>,
    /// `message-id` header; a fresh UUID when absent.
    pub message_id: Option<&'a str>,
}

impl Publication<'_> {
    /// Refuses a destination or forwarded header holding a line break or NUL: STOMP
    /// 1.0 has no escaping, so it would write header lines of the sender's choosing
    /// into 1.0 radios' streams and the replay store (docs/protocol.md#send).
    pub fn check_headers(&self) -> Result<(), PublishError> {
        let values = [
            ("trigger-time", self.trigger_time),
            ("link", self.link),
            ("message-id", self.message_id),
            ("destination", Some(self.destination)),
        ];
        for (name, value) in values {
            if value.is_some_and(|v| !v10_safe(v)) {
                return Err(PublishError::UnsafeHeader(name));
            }
        }
        Ok(())
    }

    /// The published headers: `trigger-time` and `link` when given, `message-id`
    /// (as given or fresh) and `when` (now, Unix seconds).
    fn headers(&self) -> Vec<(String, String)> {
        let mut headers = Vec::with_capacity(4);
        let given = |v: Option<&str>| v.filter(|v| !v.is_empty()).map(str::to_owned);
        if let Some(v) = given(self.trigger_time) {
            headers.push(("trigger-time".to_owned(), v));
        }
        if let Some(v) = given(self.link) {
            headers.push(("link".to_owned(), v));
        }
        let message_id = given(self.message_id).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        headers.push(("message-id".to_owned(), message_id));
        headers.push(("when".to_owned(), unix_now().to_string()));
        headers
    }
}

impl<B: MessageBus, D: DirectoryApi, C: Cache> Hub<B, D, C> {
    /// Publishes `p` for `station` after checking its rights (bounded by the
    /// directory timeout), once per target topic; returns the message id. Counted as
    /// published through `transport`.
    pub async fn publish_as(
        &self,
        station: &str,
        p: &Publication<'_>,
        transport: Transport,
    ) -> Result<String, PublishError> {
        p.check_headers()?;
        // One deadline for the whole rights check (channel list and conversions): a
        // directory that hangs gets the client an error, not a hang.
        let targets = tokio::time::timeout(
            self.config().directory_timeout,
            self.allowed_targets(station, p.destination),
        )
        .await
        .map_err(|_| {
            tracing::warn!("directory did not answer in time: channel rights unknown");
            PublishError::DirectoryUnavailable
        })??;
        let headers = p.headers();
        let message_id = headers
            .iter()
            .find(|(k, _)| k == "message-id")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        for topic in targets {
            tracing::debug!(%topic, bytes = p.body.len(), "publishing");
            self.publish(BusMessage {
                topic,
                body: p.body.clone(),
                headers: headers.clone(),
            })
            .await?;
            self.stats()
                .transport(transport)
                .published
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(message_id)
    }

    /// The topics a publish of `station` to `destination` goes to, if it has the
    /// rights: an expansion of `/topic/*/...` over its channels, or the destination.
    async fn allowed_targets(
        &self,
        station: &str,
        destination: &str,
    ) -> Result<Vec<String>, PublishError> {
        let channels = self.station_channels(station).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot load station channels");
            PublishError::DirectoryUnavailable
        })?;
        Ok(match destination.strip_prefix("/topic/*/") {
            Some(rest) => channels
                .iter()
                .map(|c| {
                    let sep = if c.raw.ends_with('/') { "" } else { "/" };
                    format!("{}{sep}{rest}", c.raw)
                })
                .collect(),
            None => {
                let normalised = self.normalise(destination).await;
                if !channels
                    .iter()
                    .any(|c| normalised.starts_with(&c.normalised))
                {
                    return Err(PublishError::NotAllowed(destination.to_owned()));
                }
                vec![destination.to_owned()]
            }
        })
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

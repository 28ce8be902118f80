//! The frames of a connected session: SUBSCRIBE, UNSUBSCRIBE, SEND (and DISCONNECT),
//! with the receipt and ERROR rules of each STOMP version.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::backend::{Cache, DirectoryApi, MessageBus};
use crate::hub::{Publication, PublishError, SubEntry, SubscribeLimit};
use crate::monitoring::Event;
use crate::outbound::{encode_head, Outbound};
use crate::stomp::{Command, Frame, Version};
use crate::topic::{self, TopicError};

use super::subscriptions::SubRecord;
use super::{Session, SessionError, SessionIo};

/// Why one frame was refused; the Display text is the ERROR's `message` header.
#[derive(Debug, thiserror::Error)]
enum FrameError {
    #[error("I need a destination")]
    NoDestination,
    #[error("{0}")]
    BadDestination(#[from] TopicError),
    #[error("too many subscriptions: limit is {0} per session")]
    TooManySubscriptions(usize),
    #[error("{0}")]
    OverLimit(#[from] SubscribeLimit),
    #[error("UNSUBSCRIBE needs an id or a destination")]
    NoIdOrDestination,
    #[error("unknown subscription id {0:?}")]
    UnknownId(String),
    #[error("not subscribed to {0:?}")]
    NotSubscribed(String),
    #[error("You cannot do that.")]
    NotAuthenticated,
    #[error("{0}")]
    Publish(#[from] PublishError),
}

/// What to do after a frame.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Flow {
    Continue,
    Close,
}

impl<I: SessionIo, B: MessageBus, D: DirectoryApi, C: Cache> Session<I, B, D, C> {
    /// Handles one frame of a connected client.
    pub(super) async fn handle(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        tracing::debug!(
            command = frame.command.as_str(),
            headers = frame.headers.len(),
            "frame"
        );
        let receipt = frame
            .get("receipt")
            .filter(|r| !r.is_empty())
            .map(str::to_owned);
        let v10 = self.version == Version::V1_0;
        if v10 {
            if let Some(r) = &receipt {
                self.write_frame(&Frame::new(Command::Receipt).header("receipt-id", r.clone()))
                    .await?;
            }
        }
        let result = match frame.command {
            Command::Disconnect => Ok(Flow::Close),
            Command::Subscribe => self.subscribe(&frame).await,
            Command::Unsubscribe => self.unsubscribe(&frame),
            Command::Send => self.send(frame).await,
            _ => {
                tracing::debug!("frame ignored");
                Ok(Flow::Continue)
            }
        };
        match result {
            Ok(flow) => {
                if !v10 {
                    if let Some(r) = receipt {
                        self.write_frame(&Frame::new(Command::Receipt).header("receipt-id", r))
                            .await?;
                    }
                }
                Ok(flow)
            }
            Err(e) => {
                let message = e.to_string();
                tracing::warn!(error = %message, "frame refused");
                let mut err = Frame::error(message.clone());
                if !v10 {
                    if let Some(r) = receipt {
                        err = err.header("receipt-id", r);
                    }
                }
                self.write_frame(&err).await?;
                // A 1.0 session survives a refused frame, as with the original; a
                // client over a limit does not (docs/protocol.md#limits).
                let over_limit = matches!(
                    e,
                    FrameError::TooManySubscriptions(_) | FrameError::OverLimit(_)
                );
                if v10 && !over_limit {
                    Ok(Flow::Continue)
                } else {
                    Err(SessionError::FrameFailed(message))
                }
            }
        }
    }

    async fn subscribe(&mut self, frame: &Frame) -> Result<Flow, FrameError> {
        let destination = frame
            .get("destination")
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .ok_or(FrameError::NoDestination)?
            .to_owned();
        if topic::is_fm(&destination) {
            topic::check_shape(&destination)?;
        }
        let id = frame.get("id").filter(|i| !i.is_empty()).map(str::to_owned);
        let key = id.clone().unwrap_or_else(|| destination.clone());
        // Rate and wildcard limits (docs/protocol.md#limits); a replaced wildcard
        // subscription does not count against its replacement.
        let wildcard = topic::is_wildcard(&destination);
        let held = match wildcard {
            true => (self.subs.iter())
                .filter(|r| r.key() != key && topic::is_wildcard(r.destination()))
                .count(),
            false => 0,
        };
        self.hub
            .admit_subscribe(self.subs.budget(), wildcard, held)?;
        let max = self.hub.config().max_subscriptions;
        if !self.subs.contains_key(&key) && self.subs.len() >= max {
            return Err(FrameError::TooManySubscriptions(max));
        }
        // Bounded: the directory may not hold a SUBSCRIBE longer than its timeout;
        // past it the destination keeps its CC form (docs/protocol.md#topic-normalisation).
        let mut index_key = match tokio::time::timeout(
            self.hub.config().directory_timeout,
            self.hub.index_key_for(&destination),
        )
        .await
        {
            Ok(key) => key,
            Err(_) => {
                tracing::warn!(%destination, "directory did not convert the destination in time: subscribed in its CC form");
                self.hub.unconverted_index_key(&destination)
            }
        };
        // A replaced subscription leaves the index only now, once the new key is known
        // (the directory may take its timeout): no message falls between the two.
        if let Some(old) = self.subs.remove(&key) {
            self.hub.unsubscribe(&old.key, (self.conn, old.sub));
        }
        // 1.1/1.2 MESSAGE frames must name their subscription; use the destination when
        // the client gave no id.
        let sub_header = match (self.version, &id) {
            (Version::V1_0, id) => id.as_deref(),
            (_, Some(id)) => Some(id.as_str()),
            (_, None) => Some(destination.as_str()),
        };
        let head = encode_head(&destination, sub_header, self.version);
        let sub = self.hub.next_id();
        let replay = frame.get("x-ebu-nofastreply") != Some("yes");
        let last = self.hub.subscribe(
            &mut index_key,
            (self.conn, sub),
            SubEntry {
                head: head.clone(),
                form: self.version.into(),
                queue: self.queue.clone(),
                monitor: self
                    .info
                    .as_ref()
                    .map(|i| Box::new((i.clone(), Arc::from(destination.as_str())))),
            },
            replay,
        );
        if let Some(info) = &self.info {
            self.hub.monitor().emit(Event::Subscription(
                info.clone(),
                destination.as_str().into(),
            ));
        }
        tracing::debug!(%destination, id = ?id, key = ?index_key, "subscribed");
        self.subs
            .insert(SubRecord::new(sub, index_key, id.as_deref(), &destination));
        if let Some(last) = last {
            self.hub.stats().replays.fetch_add(1, Ordering::Relaxed);
            let item = Outbound {
                head,
                tail: last.tail(self.version),
            };
            // A failed write surfaces on the next read or write of the main loop.
            if let Err(e) = self.write_message(item).await {
                tracing::debug!(error = %e, "replay not written");
            }
        }
        Ok(Flow::Continue)
    }

    fn unsubscribe(&mut self, frame: &Frame) -> Result<Flow, FrameError> {
        let id = frame.get("id").filter(|i| !i.is_empty());
        let destination = frame
            .get("destination")
            .map(str::trim)
            .filter(|d| !d.is_empty());
        let key = match (id, destination) {
            (Some(id), _) => {
                if !self.subs.contains_key(id) {
                    return Err(FrameError::UnknownId(id.to_owned()));
                }
                id.to_owned()
            }
            (None, Some(d)) => self
                .subs
                .iter()
                .find(|r| r.destination() == d)
                .map(|r| r.key().to_owned())
                .ok_or_else(|| FrameError::NotSubscribed(d.to_owned()))?,
            (None, None) => return Err(FrameError::NoIdOrDestination),
        };
        if let Some(record) = self.subs.remove(&key) {
            self.hub.unsubscribe(&record.key, (self.conn, record.sub));
            tracing::debug!(destination = record.destination(), "unsubscribed");
            self.emit_unsubscription(&record);
        }
        Ok(Flow::Continue)
    }

    async fn send(&mut self, frame: Frame) -> Result<Flow, FrameError> {
        let Some(station) = self.station.clone() else {
            return Err(FrameError::NotAuthenticated);
        };
        let destination = frame
            .get("destination")
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .ok_or(FrameError::NoDestination)?;
        let publication = Publication {
            destination,
            body: frame.body.clone(),
            trigger_time: frame.get("trigger-time"),
            link: frame.get("link"),
            message_id: frame.get("message-id"),
        };
        self.hub
            .publish_as(&station, &publication, self.transport)
            .await?;
        Ok(Flow::Continue)
    }

    /// Removes every subscription of the closing session (and says so to monitoring,
    /// as the original did).
    pub(super) fn unsubscribe_all(&mut self) {
        let records: Vec<SubRecord> = self.subs.drain().collect();
        for record in records {
            self.hub.unsubscribe(&record.key, (self.conn, record.sub));
            self.emit_unsubscription(&record);
        }
    }

    fn emit_unsubscription(&self, record: &SubRecord) {
        if let Some(info) = &self.info {
            self.hub.monitor().emit(Event::Unsubscription(
                info.clone(),
                record.destination().into(),
            ));
        }
    }
}

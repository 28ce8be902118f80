//! What the hub hands to a connection, and the per-message encoding shared by all
//! subscribers.
//!
//! A MESSAGE frame is `head + tail`: the head (`MESSAGE`, `destination`, `subscription`)
//! is fixed per subscription and encoded once when it is made; the tail (forwarded
//! headers, `content-length`, blank line, body, NUL) is fixed per message and STOMP
//! version and encoded once per message (a long-poll's JSON answer is cut the same
//! way). Delivering to a subscriber is two reference
//! count increments and a bounded-queue push: no encoding, no allocation per
//! subscriber.
//!
//! | module | job |
//! |---|---|
//! | `queue` | [`OutboundQueue`]: a connection's bounded queue, and the kill signal it carries |
//! | `encode` | heads, tails and [`Published`]: each message encoded once per [`Form`] |

mod encode;
mod queue;

pub use encode::{encode_head, encode_json_head, Form, Published};
pub use queue::{Kill, OutboundQueue, PushError};

use std::sync::Arc;

use bytes::Bytes;

/// One message queued for a connection: a MESSAGE frame, or a long-poll's answer
/// ([`Form`]).
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Per-subscription part: `MESSAGE`, `destination`, `subscription`.
    pub head: Arc<[u8]>,
    /// Per-message part: forwarded headers, blank line, body, NUL.
    pub tail: Bytes,
}

//! RadioVIS HTTP long-poll, `GET /radiodns/vis/vis.json?topic=...&last_id=...`
//! (docs/protocol.md#http-long-poll): the newest message of the topics at once, unless
//! the client has it already; then a wait on the hub's fan-out (no polling), answered
//! by the next message or, after the hold time, by an empty `200` ("poll again"). A
//! client's subscriptions stay on its keep-alive connection for its next poll.
//!
//! A poll is the listener's most frequent request (one per radio per message), so it
//! is answered from the request target alone ([`Router::route_get`](super::Router)):
//! the query is read in place, and the answer is written from the message as the hub
//! encoded it, without `http` requests and responses.

use std::borrow::Cow;
use std::future::{ready, Future};

use futures::future::Either;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::header::HeaderValue;
use hyper::{Response, StatusCode, Version};

use super::watch::{Ended, Watch, WatchError};
use super::{Body, Connection, HttpConfig, Reply, ReplyKind, JSON_FIELDS};
use crate::backend::{Cache, DirectoryApi, MessageBus};
use crate::hub::{Hub, Transport};
use crate::outbound::Outbound;

/// The path of the long-poll.
pub(super) const PATH: &str = "/radiodns/vis/vis.json";

/// Most `topic=` parameters of one request.
const MAX_TOPICS: usize = 16;

/// What a long-poll asks for, read in place from its query string.
struct Query<'a> {
    query: &'a str,
    topics: usize,
    last_id: Option<Cow<'a, str>>,
}

impl<'a> Query<'a> {
    /// The `topic=` and `last_id=` parameters, or why the query is bad.
    fn of(query: &'a str) -> Result<Query<'a>, String> {
        let mut topics = 0;
        let mut last_id = None;
        for (k, v) in params(query) {
            if decoded_eq(k, "topic") {
                topics += 1;
            } else if decoded_eq(k, "last_id") && !v.is_empty() {
                last_id = Some(decode(v));
            }
        }
        if topics == 0 {
            return Err("a topic= parameter is required".into());
        }
        if topics > MAX_TOPICS {
            return Err(format!("too many topic= parameters: limit is {MAX_TOPICS}"));
        }
        Ok(Query {
            query,
            topics,
            last_id,
        })
    }

    /// The `topic=` values, as sent (percent-encoded).
    fn raw_topics(&self) -> impl Iterator<Item = &'a str> {
        params(self.query)
            .filter(|(k, _)| decoded_eq(k, "topic"))
            .map(|(_, v)| v)
    }

    /// Whether `watch` follows exactly these topics, in this order.
    fn followed_by<B: MessageBus, D: DirectoryApi, C: Cache>(
        &self,
        watch: &Watch<B, D, C>,
    ) -> bool {
        let followed = watch.destinations();
        followed.len() == self.topics
            && followed
                .zip(self.raw_topics())
                .all(|(have, want)| decoded_eq(want, have))
    }
}

/// The `key=value` pairs of a query string, as sent.
fn params(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// The bytes of a form-encoded value: `+` is a space, `%XX` a byte.
fn decoded(value: &str) -> impl Iterator<Item = u8> + '_ {
    value.split('+').enumerate().flat_map(|(i, part)| {
        (i > 0)
            .then_some(b' ')
            .into_iter()
            .chain(percent_encoding::percent_decode_str(part))
    })
}

/// Whether a form-encoded value decodes to `want` (compared as it is decoded; a
/// poll's topics are compared with its kept subscriptions on every poll).
fn decoded_eq(value: &str, want: &str) -> bool {
    match (value.contains('%'), value.contains('+')) {
        (false, false) => value == want,
        (true, false) => percent_encoding::percent_decode_str(value).eq(want.bytes()),
        _ => decoded(value).eq(want.bytes()),
    }
}

/// A form-encoded value, decoded (borrowed when nothing is encoded in it).
fn decode(value: &str) -> Cow<'_, str> {
    if value.contains(['+', '%']) {
        String::from_utf8_lossy(&decoded(value).collect::<Vec<u8>>())
            .into_owned()
            .into()
    } else {
        Cow::Borrowed(value)
    }
}

/// A long-poll client's subscriptions and the newest message of its topics. Kept on
/// its connection between polls: a client that polls the same topics again on a
/// keep-alive connection waits on them, and one message costs it an answer and the
/// next request, not an unsubscription and a subscription (docs/protocol.md#http-long-poll).
/// Its messages come as answers, encoded once per message and topic by the hub.
struct Poller<B: MessageBus, D: DirectoryApi, C: Cache> {
    watch: Watch<B, D, C>,
    /// The newest message of the topics: replayed when subscribing, or arrived since.
    newest: Option<Outbound>,
}

impl<B: MessageBus, D: DirectoryApi, C: Cache> Poller<B, D, C> {
    /// The newest message, counting what arrived since the last look.
    fn newest(&mut self) -> Option<&Outbound> {
        if let Some(arrived) = self.watch.take_newest() {
            self.newest = Some(arrived);
        }
        self.newest.as_ref()
    }

    /// Waits for a message the client does not have (of several that arrive
    /// together, the newest); an error when the client is gone or the server stops.
    async fn wait(&mut self, last_id: &LastId) -> Result<&Outbound, Ended> {
        loop {
            self.watch.next().await?;
            if self.newest().is_some_and(|m| !last_id.names(m)) {
                break;
            }
        }
        self.newest.as_ref().ok_or(Ended::Shutdown)
    }
}

/// The `last_id` of a poll.
struct LastId(Option<Box<str>>);

impl LastId {
    /// Whether the client has `message` already. Some handsets strip an `ID:` prefix
    /// from the id they were given, so it is ignored on both sides.
    fn names(&self, message: &Outbound) -> bool {
        fn bare(id: &str) -> &str {
            id.strip_prefix("ID:").unwrap_or(id)
        }
        match (&self.0, message.json_id().and_then(json_str)) {
            (Some(last), Some(id)) => bare(last) == bare(&id),
            _ => false,
        }
    }
}

/// The text of a JSON string as the hub wrote it (quotes included): read in place
/// unless it has escapes.
fn json_str(token: &[u8]) -> Option<Cow<'_, str>> {
    let inner = token.get(1..token.len().checked_sub(1)?)?;
    if inner.contains(&b'\\') {
        serde_json::from_slice::<String>(token).ok().map(Cow::Owned)
    } else {
        std::str::from_utf8(inner).ok().map(Cow::Borrowed)
    }
}

/// Answers one long-poll request, from its query string and connection. Nothing of
/// the request is kept: the future a held request is (all it costs besides its
/// subscriptions) holds only what the wait needs.
pub(super) fn handle<B: MessageBus, D: DirectoryApi, C: Cache>(
    hub: &Arc<Hub<B, D, C>>,
    config: &HttpConfig,
    query: Option<&str>,
    conn: Option<&Connection>,
    peer: SocketAddr,
) -> impl Future<Output = Reply> + Send + 'static {
    let query = match Query::of(query.unwrap_or("")) {
        Ok(query) => query,
        Err(e) => {
            return Either::Left(ready(super::error(StatusCode::BAD_REQUEST, &e).into()));
        }
    };
    let last_id = LastId(query.last_id.as_deref().map(Box::from));
    // The subscriptions of the client's last poll on this connection, if they are
    // to the same topics (those to others are given up here); else what subscribing
    // takes. The future holds only what its path needs.
    let place = conn.map(|c| c.place.clone());
    let start = match place
        .as_ref()
        .and_then(|p| p.take_kept::<Poller<B, D, C>>())
        .filter(|p| query.followed_by(&p.watch))
    {
        Some(parked) => Ok(parked),
        None => Err((
            hub.clone(),
            conn.map(|c| c.abort.0.clone()).unwrap_or_default(),
            query.raw_topics().map(|t| decode(t).into_owned()).collect(),
        )),
    };
    let hold = config.poll_hold;
    Either::Right(async move {
        let mut poller = match start {
            Ok(parked) => parked,
            // Boxed: subscribing is a moment, the wait is long.
            Err((hub, abort, topics)) => {
                match Box::pin(subscribe(hub, peer, abort, topics)).await {
                    Ok(poller) => poller,
                    Err(refusal) => return (*refusal).into(),
                }
            }
        };
        let answer = match poller.newest() {
            // The client does not have the newest: it gets it at once.
            Some(newest) if !last_id.names(newest) => Answer(Some(newest.clone())),
            // It has (or there is none): held until a newer one.
            _ => match tokio::time::timeout(hold, poller.wait(&last_id)).await {
                Ok(Ok(newest)) => Answer(Some(newest.clone())),
                Ok(Err(ended)) => {
                    tracing::debug!(%peer, ?ended, "long-poll ended");
                    return Answer(None).into();
                }
                // Hold time over: poll again.
                Err(_) => Answer(None),
            },
        };
        if let Some(place) = place {
            place.keep(poller);
        }
        answer.into()
    })
}

/// Subscribes a new long-poll client to `topics`, with the newest of their last
/// messages; or the refusal of a bad topic.
async fn subscribe<B: MessageBus, D: DirectoryApi, C: Cache>(
    hub: Arc<Hub<B, D, C>>,
    peer: SocketAddr,
    abort: tokio_util::sync::CancellationToken,
    topics: Vec<String>,
) -> Result<Box<Poller<B, D, C>>, Box<Response<Body>>> {
    let mut watch = Watch::new(hub, peer, abort, Transport::LongPoll);
    let mut newest: Option<(u64, Outbound)> = None;
    for topic in &topics {
        match watch.subscribe(topic).await {
            Ok(Some((seq, item))) => {
                if newest.as_ref().is_none_or(|(s, _)| seq > *s) {
                    newest = Some((seq, item));
                }
            }
            Ok(None) => {}
            Err(e @ WatchError::BadDestination(_)) => {
                return Err(Box::new(super::error(
                    StatusCode::BAD_REQUEST,
                    &e.to_string(),
                )))
            }
            Err(e) => {
                return Err(Box::new(super::error(
                    StatusCode::TOO_MANY_REQUESTS,
                    &e.to_string(),
                )))
            }
        }
    }
    Ok(Box::new(Poller {
        watch,
        newest: newest.map(|(_, item)| item),
    }))
}

/// A long-poll's answer: a message as RadioVIS HTTP clients read it (its JSON form as
/// the hub encoded it, and its id and destination as HTTP headers too, for clients
/// that read them there); or, with none, nothing new within the hold time: `200` with
/// an empty body, which handsets treat as "no message, ask again"
/// (docs/protocol.md#http-long-poll).
pub(super) struct Answer(Option<Outbound>);

impl From<Answer> for Reply {
    fn from(answer: Answer) -> Self {
        Reply(ReplyKind::Poll(answer))
    }
}

impl Answer {
    /// The message's id and destination, as header values (a value a header cannot
    /// carry is left out).
    fn fields(&self) -> [(&'static str, Option<Cow<'_, str>>); 2] {
        fn value(token: Option<&[u8]>) -> Option<Cow<'_, str>> {
            token
                .and_then(json_str)
                .filter(|v| v.bytes().all(|b| (b >= 0x20 && b != 0x7f) || b == b'\t'))
        }
        let message = self.0.as_ref();
        [
            (
                "radiovis-message-id",
                value(message.and_then(Outbound::json_id)),
            ),
            (
                "radiovis-destination",
                value(message.and_then(Outbound::json_destination)),
            ),
        ]
    }

    /// The whole answer on the wire, head and body in one buffer.
    pub(super) fn encode(&self, version: Version, keep_alive: bool) -> Vec<u8> {
        let fields = self.fields();
        let fields = JSON_FIELDS
            .iter()
            .map(|&(name, value)| (name, value.as_bytes()))
            .chain(
                fields
                    .iter()
                    .filter_map(|(name, v)| Some((*name, v.as_deref()?.as_bytes()))),
            );
        let body = match &self.0 {
            Some(m) => [&m.head[..], &m.tail[..]],
            None => [&[][..], &[][..]],
        };
        super::wire::encode_whole(StatusCode::OK, fields, &body, version, keep_alive)
    }

    /// The answer as an `http::Response`.
    pub(super) fn into_response(self) -> Response<Body> {
        let fields = self
            .fields()
            .map(|(name, value)| (name, value.and_then(|v| HeaderValue::from_str(&v).ok())));
        let body = self
            .0
            .as_ref()
            .map(|m| [&m.head[..], &m.tail[..]].concat())
            .unwrap_or_default();
        let mut response = super::json_bytes(StatusCode::OK, body);
        for (name, value) in fields {
            if let Some(value) = value {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

//! RadioVIS HTTP long-poll, `GET /radiodns/vis/vis.json?topic=...&last_id=...`
//! (docs/protocol.md#http-long-poll): the newest message of the topics at once, unless
//! the client has it already; then a wait on the hub's fan-out (no polling), answered
//! by the next message or, after the hold time, by an empty `200` ("poll again"). A
//! client's subscriptions stay on its keep-alive connection for its next poll.

use std::borrow::Cow;
use std::future::{ready, Future};

use futures::future::Either;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};

use super::watch::{Ended, Watch, WatchError};
use super::{Abort, Body, HttpConfig, Place};
use crate::backend::{Cache, DirectoryApi, MessageBus};
use crate::hub::{Hub, Transport};
use crate::outbound::Outbound;

/// Most `topic=` parameters of one request.
const MAX_TOPICS: usize = 16;

/// What a long-poll asks for.
struct Query {
    topics: Vec<String>,
    last_id: Option<String>,
}

impl Query {
    /// The `topic=` and `last_id=` parameters, or why the query is bad.
    fn of<T>(req: &Request<T>) -> Result<Query, String> {
        let mut query = Query {
            topics: Vec::new(),
            last_id: None,
        };
        for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
            match &*k {
                "topic" => query.topics.push(v.into_owned()),
                "last_id" if !v.is_empty() => query.last_id = Some(v.into_owned()),
                _ => {}
            }
        }
        if query.topics.is_empty() {
            return Err("a topic= parameter is required".into());
        }
        if query.topics.len() > MAX_TOPICS {
            return Err(format!("too many topic= parameters: limit is {MAX_TOPICS}"));
        }
        Ok(query)
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
    fn new(last_id: Option<String>) -> LastId {
        LastId(last_id.map(String::into_boxed_str))
    }

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

/// Answers one long-poll request. The request is read here and dropped: the future
/// a held request is (all it costs besides its subscriptions) holds only what the
/// wait needs.
pub(super) fn handle<T, B: MessageBus, D: DirectoryApi, C: Cache>(
    hub: &Arc<Hub<B, D, C>>,
    config: &HttpConfig,
    req: Request<T>,
    peer: SocketAddr,
) -> impl Future<Output = Response<Body>> + Send + 'static {
    let query = match Query::of(&req) {
        Ok(query) => query,
        Err(e) => return Either::Left(ready(super::error(StatusCode::BAD_REQUEST, &e))),
    };
    let place = Place::of(&req);
    let Query { topics, last_id } = query;
    let last_id = LastId::new(last_id);
    // The subscriptions of the client's last poll on this connection, if they are
    // to the same topics (those to others are given up here); else what subscribing
    // takes. The future holds only what its path needs.
    let start = match place
        .as_ref()
        .and_then(Place::take_kept::<Poller<B, D, C>>)
        .filter(|p| p.watch.follows(&topics))
    {
        Some(parked) => Ok(parked),
        None => Err((hub.clone(), Abort::of(&req), topics)),
    };
    drop(req);
    let hold = config.poll_hold;
    Either::Right(async move {
        let mut poller = match start {
            Ok(parked) => parked,
            // Boxed: subscribing is a moment, the wait is long.
            Err((hub, abort, topics)) => {
                match Box::pin(subscribe(hub, peer, abort, topics)).await {
                    Ok(poller) => poller,
                    Err(answer) => return *answer,
                }
            }
        };
        let answer = match poller.newest() {
            // The client does not have the newest: it gets it at once.
            Some(newest) if !last_id.names(newest) => answer(newest),
            // It has (or there is none): held until a newer one.
            _ => match tokio::time::timeout(hold, poller.wait(&last_id)).await {
                Ok(Ok(newest)) => answer(newest),
                Ok(Err(ended)) => {
                    tracing::debug!(%peer, ?ended, "long-poll ended");
                    return poll_again();
                }
                // Hold time over: poll again.
                Err(_) => poll_again(),
            },
        };
        if let Some(place) = place {
            place.keep(poller);
        }
        answer
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

/// A message as RadioVIS HTTP clients read it: its JSON form as the hub encoded it,
/// and its id and destination as HTTP headers too, for clients that read them there.
fn answer(message: &Outbound) -> Response<Body> {
    let mut body = Vec::with_capacity(message.head.len() + message.tail.len());
    body.extend_from_slice(&message.head);
    body.extend_from_slice(&message.tail);
    let mut response = super::json_bytes(StatusCode::OK, body);
    for (name, value) in [
        ("RadioVIS-Message-ID", message.json_id()),
        ("RadioVIS-Destination", message.json_destination()),
    ] {
        if let Some(v) = value
            .and_then(json_str)
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            response.headers_mut().insert(name, v);
        }
    }
    response
}

/// Nothing new within the hold time: `200` with an empty body, which handsets treat as
/// "no message, ask again" (docs/protocol.md#http-long-poll).
fn poll_again() -> Response<Body> {
    super::json_bytes(StatusCode::OK, Vec::new())
}

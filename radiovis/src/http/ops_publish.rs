//! HTTP publish for playout systems that cannot speak STOMP
//! (docs/protocol.md#http-publish): `POST /publish?topic=<channel or topic>` or the
//! BBC-style `POST /services/<channel>`, authenticated with HTTP Basic (the station's
//! login and passcode, checked and throttled as STOMP CONNECT), published with the
//! same rights and headers as SEND. Answers with the message ids.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::{header, Request, Response, StatusCode};
use serde_json::json;

use super::ops_respond::{basic_credentials, json_response, unauthorized, OpsBody};
use crate::backend::{Cache, DirectoryApi, MessageBus};
use crate::hub::{LoginRefused, Publication, PublishError, Transport};
use crate::server::StompHub;
use crate::session::canonical_ip;

/// What one request asks to publish.
#[derive(Debug, Default, PartialEq, Eq)]
struct Params {
    topic: Option<String>,
    text: Option<String>,
    image: Option<String>,
    link: Option<String>,
    trigger_time: Option<String>,
    message_id: Option<String>,
}

impl Params {
    /// Reads `key=value` pairs (query string or form body); later values win.
    fn read(&mut self, pairs: &[u8]) {
        for (k, v) in form_urlencoded::parse(pairs) {
            let slot = match k.as_ref() {
                "topic" | "destination" => &mut self.topic,
                "text" => &mut self.text,
                "image" => &mut self.image,
                "link" => &mut self.link,
                "trigger-time" | "trigger_time" => &mut self.trigger_time,
                "message-id" | "message_id" => &mut self.message_id,
                _ => continue,
            };
            let v = v.trim();
            *slot = (!v.is_empty()).then(|| v.to_owned());
        }
    }
}

/// The topic and body of each message to publish, in order (text first).
fn messages(
    destination: &str,
    params: &Params,
    raw: Option<Bytes>,
) -> Result<Vec<(String, Bytes)>, String> {
    let destination = destination.trim();
    if destination.is_empty() {
        return Err("no topic: give ?topic=<channel> or POST /services/<channel>".into());
    }
    // A topic ending in /text or /image names one topic; anything else is a channel.
    let (exact, channel) = match destination.rsplit_once('/') {
        Some((channel, "text" | "image")) => (Some(destination), format!("{channel}/")),
        _ if destination.ends_with('/') => (None, destination.to_owned()),
        _ => (None, format!("{destination}/")),
    };
    let mut out = Vec::with_capacity(2);
    if let Some(text) = &params.text {
        out.push((
            format!("{channel}text"),
            Bytes::from(format!("TEXT {text}")),
        ));
    }
    if let Some(image) = &params.image {
        out.push((
            format!("{channel}image"),
            Bytes::from(format!("SHOW {image}")),
        ));
    }
    if let Some(body) = raw.filter(|b| !b.trim_ascii().is_empty()) {
        let kind = if body.starts_with(b"TEXT ") {
            "text"
        } else if body.starts_with(b"SHOW ") {
            "image"
        } else {
            return Err("a raw body must be a RadioVis message: TEXT <text> or SHOW <url>".into());
        };
        let topic = exact.map_or_else(|| format!("{channel}{kind}"), str::to_owned);
        out.push((topic, body));
    }
    if out.is_empty() {
        return Err("nothing to publish: give text=, image=, or a TEXT/SHOW body".into());
    }
    Ok(out)
}

fn error(status: StatusCode, message: &str) -> Response<OpsBody> {
    json_response(status, &json!({ "error": message }))
}

/// `POST /publish` (`channel` `None`) or `POST /services/<channel>`.
pub async fn publish<B, D, C, Body>(
    hub: &StompHub<B, D, C>,
    request: Request<Body>,
    peer: SocketAddr,
    channel: Option<&str>,
) -> Response<OpsBody>
where
    B: MessageBus,
    D: DirectoryApi,
    C: Cache,
    Body: hyper::body::Body<Data = Bytes>,
    Body::Error: std::error::Error + Send + Sync + 'static,
{
    let stats = hub.hub().stats();
    stats.opened(Transport::Http);
    let response = publish_inner(hub, request, peer, channel).await;
    stats.closed(Transport::Http);
    response
}

async fn publish_inner<B, D, C, Body>(
    hub: &StompHub<B, D, C>,
    request: Request<Body>,
    peer: SocketAddr,
    channel: Option<&str>,
) -> Response<OpsBody>
where
    B: MessageBus,
    D: DirectoryApi,
    C: Cache,
    Body: hyper::body::Body<Data = Bytes>,
    Body::Error: std::error::Error + Send + Sync + 'static,
{
    let hub = hub.hub();
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some((login, passcode)) = basic_credentials(authorization)
        .map(|(l, p)| (l.trim().to_owned(), p.trim().to_owned()))
        .filter(|(l, p)| !l.is_empty() || !p.is_empty())
    else {
        return unauthorized("station credentials needed (HTTP Basic: login and passcode)");
    };
    let mut params = Params::default();
    if let Some(query) = request.uri().query() {
        params.read(query.as_bytes());
    }
    let form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    let limit = hub.config().limits.max_frame_size;
    // Bounded in time as a STOMP frame is: a body that stops arriving does not hold
    // the request (docs/protocol.md#http-publish).
    let wait = hub.config().frame_timeout;
    let read = tokio::time::timeout(wait, Limited::new(request.into_body(), limit).collect());
    let Ok(read) = read.await else {
        return error(
            StatusCode::REQUEST_TIMEOUT,
            &format!("body not received within {} s", wait.as_secs_f64()),
        );
    };
    let body = match read {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return match e.downcast_ref::<http_body_util::LengthLimitError>() {
                Some(_) => error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("body too large: limit is {limit} bytes"),
                ),
                None => error(StatusCode::BAD_REQUEST, "cannot read the body"),
            };
        }
    };
    // curl's `--data-binary` and `-d` label any body a form: a body that is a RadioVis
    // message is one, whatever its label (no form starts with `TEXT ` or `SHOW `).
    let form = form && !(body.starts_with(b"TEXT ") || body.starts_with(b"SHOW "));
    let raw = if form {
        params.read(&body);
        None
    } else {
        Some(body)
    };
    let destination = match channel {
        Some(c) => format!("/topic/{}", c.trim_start_matches('/')),
        None => params.topic.clone().unwrap_or_default(),
    };
    let messages = match messages(&destination, &params, raw) {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };

    let ip = canonical_ip(peer.ip());
    let station = match hub.log_in(&login, &passcode, ip).await {
        Ok(station) => station,
        Err(refused @ LoginRefused::WrongCredentials) => return unauthorized(&refused.to_string()),
        Err(refused @ LoginRefused::Throttled) => {
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, &refused.to_string());
            let retry = hub.config().auth_block.as_secs().to_string();
            if let Ok(v) = header::HeaderValue::from_str(&retry) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return response;
        }
        Err(refused @ LoginRefused::DirectoryUnavailable) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, &refused.to_string())
        }
    };

    let mut published = Vec::with_capacity(messages.len());
    for (topic, body) in messages {
        let publication = Publication {
            destination: &topic,
            body,
            trigger_time: params.trigger_time.as_deref(),
            link: params.link.as_deref(),
            message_id: params.message_id.as_deref(),
        };
        match hub
            .publish_as(&station, &publication, Transport::Http)
            .await
        {
            Ok(id) => published.push(json!({ "topic": topic, "message_id": id })),
            Err(e) => {
                let status = match e {
                    PublishError::NotAllowed(_) => StatusCode::FORBIDDEN,
                    PublishError::UnsafeHeader(_) => StatusCode::BAD_REQUEST,
                    PublishError::DirectoryUnavailable | PublishError::Bus(_) => {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                };
                tracing::warn!(%station, %topic, error = %e, "HTTP publish refused");
                let body = json!({ "error": e.to_string(), "published": published });
                return json_response(status, &body);
            }
        }
    }
    tracing::info!(%station, messages = published.len(), "published over HTTP");
    json_response(StatusCode::OK, &json!({ "published": published }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(query: &str) -> Params {
        let mut p = Params::default();
        p.read(query.as_bytes());
        p
    }

    #[test]
    fn text_and_image_go_to_the_channel_topics() {
        let p = params(
            "topic=/topic/fm/4e1/4001/09580&text=Now+playing&image=https://x/a.jpg&link=https://x",
        );
        let m = messages(p.topic.as_deref().unwrap_or(""), &p, None).expect("ok");
        assert_eq!(
            m,
            vec![
                (
                    "/topic/fm/4e1/4001/09580/text".into(),
                    Bytes::from("TEXT Now playing")
                ),
                (
                    "/topic/fm/4e1/4001/09580/image".into(),
                    Bytes::from("SHOW https://x/a.jpg")
                ),
            ]
        );
        assert_eq!(p.link.as_deref(), Some("https://x"));
    }

    #[test]
    fn a_raw_body_goes_to_its_kind_or_to_the_named_topic() {
        let p = Params::default();
        let m = messages(
            "/topic/fm/4e1/4001/09580/",
            &p,
            Some(Bytes::from("SHOW https://x/b.jpg")),
        )
        .expect("ok");
        assert_eq!(m[0].0, "/topic/fm/4e1/4001/09580/image");
        let m = messages(
            "/topic/fm/4e1/4001/09580/text",
            &p,
            Some(Bytes::from("TEXT hi")),
        )
        .expect("ok");
        assert_eq!(m[0].0, "/topic/fm/4e1/4001/09580/text");
        assert!(messages("/topic/fm/4e1/4001/09580/", &p, Some(Bytes::from("hello"))).is_err());
        assert!(messages("/topic/fm/4e1/4001/09580/", &p, None).is_err());
        assert!(messages("", &params("text=x"), None).is_err());
    }
}

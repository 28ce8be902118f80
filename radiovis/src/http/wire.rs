//! The HTTP/1 wire format of the listener's own reader (docs/protocol.md#http-listener):
//! request heads in (`httparse`) and answer heads out.

use std::io::{self, Write as _};
use std::net::SocketAddr;

use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri, Version};

/// Most headers in a request head.
const MAX_HEADERS: usize = 64;

/// A request head, parsed as far as routing it needs; [`request`] makes the whole
/// request of it when a handler needs one. Passed by value: a held connection's
/// future keeps no head it no longer needs.
#[derive(Clone, Copy)]
pub(super) struct Head {
    /// Bytes of the head in the buffer.
    pub(super) len: usize,
    pub(super) version: Version,
    /// A body follows (`content-length` above 0 or `transfer-encoding`).
    pub(super) has_body: bool,
    /// The client keeps the connection open after the answer.
    pub(super) keep_alive: bool,
    /// The client asks to switch protocols (`Upgrade`: a WebSocket handshake).
    pub(super) upgrade: bool,
    /// Where the request target is in the buffer, for a `GET` without a body or an
    /// upgrade (the requests a router may answer from their target alone).
    get_target: Option<(usize, usize)>,
}

impl Head {
    /// The request target of a `GET` without a body or an upgrade, read from `buf`
    /// (the buffer the head was parsed from).
    pub(super) fn get_target(self, buf: &[u8]) -> Option<&str> {
        let (start, end) = self.get_target?;
        let target = buf.get(start..end)?;
        std::str::from_utf8(target).ok()
    }
}

#[derive(Debug)]
pub(super) enum HeadError {
    /// The client closed the connection between requests.
    Closed,
    TooLarge,
    Bad(&'static str),
    Io(io::Error),
}

impl HeadError {
    /// The status a head that could not be read is refused with, if any (none: the
    /// connection just ends).
    pub(super) fn refusal(self, peer: SocketAddr) -> Option<StatusCode> {
        match self {
            HeadError::Closed => None,
            HeadError::Io(e) => {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
                None
            }
            HeadError::TooLarge => Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
            HeadError::Bad(reason) => {
                tracing::debug!(%peer, reason, "bad HTTP request");
                Some(StatusCode::BAD_REQUEST)
            }
        }
    }
}

impl From<io::Error> for HeadError {
    fn from(e: io::Error) -> Self {
        HeadError::Io(e)
    }
}

/// How an answer's body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body (`HEAD`, `101`, `204`, `304`).
    None,
    /// `content-length`.
    Length,
    /// A stream on HTTP/1.1.
    Chunked,
    /// A stream on HTTP/1.0: it ends with the connection.
    Close,
}

impl Framing {
    pub(super) fn is_stream(self) -> bool {
        matches!(self, Framing::Chunked | Framing::Close)
    }
}

/// The status line and headers of an answer, with the framing headers this writer
/// adds (`content-length` or chunked, `connection`, `date`).
pub(super) fn encode_head(
    parts: hyper::http::response::Parts,
    version: Version,
    length: Option<u64>,
    chunked: bool,
    keep_alive: bool,
) -> Vec<u8> {
    let status = parts.status;
    // Room for a whole body after the head: one block for the answer's one write.
    let body = length.map_or(0, |n| usize::try_from(n).unwrap_or(0).min(64 * 1024));
    let mut out = Vec::with_capacity(256 + body);
    status_line(&mut out, status);
    for (name, value) in &parts.headers {
        header_line(&mut out, name.as_str(), value.as_bytes());
    }
    if !parts.headers.contains_key(header::DATE) {
        date_line(&mut out);
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // The upgrade's own headers say the rest.
        out.extend_from_slice(b"\r\n");
        return out;
    }
    let no_length = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    framing_lines(
        &mut out,
        version,
        length.filter(|_| !no_length),
        chunked,
        keep_alive,
    );
    out
}

/// A whole answer with a body, head and body in one buffer: `status`, `fields` (each
/// a valid header field), the framing headers and the body, given in `pieces`.
pub(super) fn encode_whole<'a>(
    status: StatusCode,
    fields: impl IntoIterator<Item = (&'static str, &'a [u8])>,
    pieces: &[&[u8]],
    version: Version,
    keep_alive: bool,
) -> Vec<u8> {
    let length: usize = pieces.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(320 + length);
    status_line(&mut out, status);
    for (name, value) in fields {
        header_line(&mut out, name, value);
    }
    date_line(&mut out);
    framing_lines(&mut out, version, Some(length as u64), false, keep_alive);
    for piece in pieces {
        out.extend_from_slice(piece);
    }
    out
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// How the body is delimited and whether the connection stays open, then the blank
/// line that ends the head.
fn framing_lines(
    out: &mut Vec<u8>,
    version: Version,
    length: Option<u64>,
    chunked: bool,
    keep_alive: bool,
) {
    if let Some(n) = length {
        // Written in place: `to_string` would allocate for every answer.
        let _ = write!(out, "content-length: {n}\r\n");
    }
    if chunked {
        header_line(out, "transfer-encoding", b"chunked");
    }
    if !keep_alive {
        header_line(out, "connection", b"close");
    } else if version == Version::HTTP_10 {
        header_line(out, "connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
}

/// The `date` header, formatted once a second per thread: answers to held long-polls
/// are written per client per message.
fn date_line(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const {
            std::cell::RefCell::new((0, String::new()))
        };
    }
    let now = std::time::SystemTime::now();
    let second = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, date)| {
        if *at != second || date.is_empty() {
            *at = second;
            *date = httpdate::fmt_http_date(now);
        }
        header_line(out, "date", date.as_bytes());
    });
}

fn header_line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Parses the head at the start of `buf`; `None` while it is incomplete. Only what
/// routing needs is read; the header fields are checked when [`request`] builds them.
pub(super) fn parse(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Bad("malformed request head")),
    };
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let (mut has_body, mut upgrade, mut close, mut keep) = (false, false, false, false);
    for h in parsed.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("transfer-encoding")
            || (name.eq_ignore_ascii_case("content-length") && h.value != b"0")
        {
            has_body = true;
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let keep_alive = match version {
        Version::HTTP_10 => keep,
        _ => !close,
    };
    let get_target = match (parsed.method, parsed.path) {
        (Some("GET"), Some(path)) if !has_body && !upgrade => {
            // The target is a slice of `buf`: its place in it.
            let start = path.as_ptr() as usize - buf.as_ptr() as usize;
            Some((start, start + path.len()))
        }
        _ => None,
    };
    Ok(Some(Head {
        len,
        version,
        has_body,
        keep_alive,
        upgrade,
        get_target,
    }))
}

/// The whole request of the head at the start of `buf`, which [`parse`] found
/// complete: method, target, version and every header field, checked.
pub(super) fn request(buf: &[u8]) -> Result<Request<()>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    if !matches!(parsed.parse(buf), Ok(httparse::Status::Complete(_))) {
        return Err(HeadError::Bad("malformed request head"));
    }
    let method = Method::from_bytes(parsed.method.unwrap_or("").as_bytes())
        .map_err(|_| HeadError::Bad("bad method"))?;
    let uri: Uri = parsed
        .path
        .unwrap_or("")
        .parse()
        .map_err(|_| HeadError::Bad("bad request target"))?;
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let map = request.headers_mut();
    for h in parsed.headers.iter() {
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| HeadError::Bad("bad header"))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| HeadError::Bad("bad header"))?;
        map.append(name, value);
    }
    Ok(request)
}

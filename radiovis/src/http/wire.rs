//! The HTTP/1 wire format of the listener's own reader (docs/protocol.md#http-listener):
//! request heads in (`httparse`) and answer heads out.

use std::io;

use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri, Version};

/// Most headers in a request head.
const MAX_HEADERS: usize = 64;

/// A request head, parsed.
pub(super) struct Head {
    pub(super) request: Request<()>,
    /// Bytes of the head in the buffer.
    pub(super) len: usize,
    /// A body follows (`content-length` above 0 or `transfer-encoding`).
    pub(super) has_body: bool,
    /// The client keeps the connection open after the answer.
    pub(super) keep_alive: bool,
}

#[derive(Debug)]
pub(super) enum HeadError {
    /// The client closed the connection between requests.
    Closed,
    TooLarge,
    Bad(&'static str),
    Io(io::Error),
}

impl From<io::Error> for HeadError {
    fn from(e: io::Error) -> Self {
        HeadError::Io(e)
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
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
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
    if let (Some(n), false) = (length, no_length) {
        header_line(&mut out, "content-length", n.to_string().as_bytes());
    }
    if chunked {
        header_line(&mut out, "transfer-encoding", b"chunked");
    }
    if !keep_alive {
        header_line(&mut out, "connection", b"close");
    } else if version == Version::HTTP_10 {
        header_line(&mut out, "connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
    out
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

/// Parses the head at the start of `buf`; `None` while it is incomplete.
pub(super) fn parse(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Bad("malformed request head")),
    };
    let method = Method::from_bytes(parsed.method.unwrap_or("").as_bytes())
        .map_err(|_| HeadError::Bad("bad method"))?;
    let uri: Uri = parsed
        .path
        .unwrap_or("")
        .parse()
        .map_err(|_| HeadError::Bad("bad request target"))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    let map = request.headers_mut();
    let mut has_body = false;
    for h in parsed.headers.iter() {
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| HeadError::Bad("bad header"))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| HeadError::Bad("bad header"))?;
        if name == header::TRANSFER_ENCODING
            || (name == header::CONTENT_LENGTH && value.as_bytes() != b"0")
        {
            has_body = true;
        }
        map.append(name, value);
    }
    let tokens = |token: &str| {
        map.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let keep_alive = match version {
        Version::HTTP_10 => tokens("keep-alive"),
        _ => !tokens("close"),
    };
    Ok(Some(Head {
        request,
        len,
        has_body,
        keep_alive,
    }))
}

//! The hub's HTTP listener on `127.0.0.1:0` inside the test, and a raw HTTP/1.1 client
//! that writes the request and parses the answer itself (status, headers, body; a
//! chunked body is de-chunked), so tests assert on the wire as a handset sees it.
//! Every wait is bounded.

use std::time::Duration;

use radiovis::http::{HttpConfig, RadiovisRouter};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{TestHub, WAIT};

/// Starts the HTTP listener of `hub` with `config`; returns its `host:port`. It stops
/// with the hub.
pub async fn serve_http(hub: &TestHub, config: HttpConfig) -> String {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr").to_string();
    let router = RadiovisRouter::new(hub.hub.clone(), config);
    tokio::spawn(radiovis::http::serve(listener, router, hub.stop_token()));
    addr
}

/// An answer as received.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// `GET target` (path and query) with `Connection: close`; panics when no whole
/// answer comes within `within`.
pub async fn get(addr: &str, target: &str, within: Duration) -> HttpResponse {
    request(addr, "GET", target, &[], within).await
}

/// Sends one request and reads the whole answer (the server closes after it).
pub async fn request(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    within: Duration,
) -> HttpResponse {
    tokio::time::timeout(within, async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut head =
            format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader).await;
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        let length = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        let mut body = Vec::new();
        if chunked {
            while let Some(chunk) = read_chunk(&mut reader).await {
                body.extend_from_slice(&chunk);
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            reader.read_exact(&mut body).await.expect("read body");
        } else {
            reader.read_to_end(&mut body).await.expect("read body");
        }
        HttpResponse {
            status,
            headers,
            body,
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no whole answer to {method} {target} within {within:?}"))
}

/// Reads a status line and headers.
pub async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).await.expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await.expect("header line");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').expect("header has a colon");
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    (status, headers)
}

/// One chunk of a chunked body; `None` at the last (empty) chunk or the end.
pub async fn read_chunk<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> Option<Vec<u8>> {
    let mut line = String::new();
    if reader.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let size = usize::from_str_radix(line.trim(), 16).ok()?;
    if size == 0 {
        return None;
    }
    let mut chunk = vec![0; size + 2];
    reader.read_exact(&mut chunk).await.ok()?;
    chunk.truncate(size);
    Some(chunk)
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    /// The last `id:` line received so far.
    pub id: String,
    pub data: serde_json::Value,
}

/// A raw client of an event stream, reading the chunked body line by line.
pub struct SseClient {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    /// De-chunked bytes not yet split into lines.
    buffer: Vec<u8>,
    id: String,
    comments: usize,
}

/// A line of the stream, or why there is none.
enum Line {
    Text(String),
    Closed,
}

impl SseClient {
    /// `GET path` with `Accept: text/event-stream` (and `Last-Event-ID`), reading the
    /// response head.
    pub async fn open(addr: &str, path: &str, last_event_id: Option<&str>) -> SseClient {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut head =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        if let Some(id) = last_event_id {
            head.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut reader = BufReader::new(stream);
        let (status, headers) =
            tokio::time::timeout(Duration::from_secs(3), read_head(&mut reader))
                .await
                .expect("response head in time");
        SseClient {
            status,
            headers,
            reader,
            buffer: Vec::new(),
            id: String::new(),
            comments: 0,
        }
    }

    /// The first value of a response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    async fn line(&mut self) -> Line {
        loop {
            if let Some(i) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=i).collect();
                return Line::Text(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            match read_chunk(&mut self.reader).await {
                Some(chunk) => self.buffer.extend_from_slice(&chunk),
                None => return Line::Closed,
            }
        }
    }

    /// The next event (comments counted and skipped); panics after `within`.
    pub async fn event(&mut self, within: Duration) -> SseEvent {
        tokio::time::timeout(within, async {
            let mut event = String::from("message");
            let mut data = String::new();
            loop {
                let Line::Text(line) = self.line().await else {
                    panic!("stream closed while waiting for an event");
                };
                if line.is_empty() {
                    if data.is_empty() {
                        continue;
                    }
                    return SseEvent {
                        event,
                        id: self.id.clone(),
                        data: serde_json::from_str(&data).expect("data is JSON"),
                    };
                }
                if line.starts_with(':') {
                    self.comments += 1;
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_owned();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    self.id = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no event within {within:?}"))
    }

    /// Asserts that no event arrives within `within` (comments may).
    pub async fn expect_no_event(&mut self, within: Duration) {
        if let Ok(e) = tokio::time::timeout(within, self.event(within * 2)).await {
            panic!("unexpected event {e:?}");
        }
    }

    /// Waits until `n` comment lines (keep-alives) have arrived.
    pub async fn expect_comments(&mut self, n: usize, within: Duration) {
        tokio::time::timeout(within, async {
            while self.comments < n {
                match self.line().await {
                    Line::Text(l) if l.starts_with(':') => self.comments += 1,
                    Line::Text(_) => {}
                    Line::Closed => panic!("stream closed"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("fewer than {n} comments within {within:?}"));
    }

    /// Reads (and discards) until the server closes the connection.
    pub async fn expect_closed(mut self, within: Duration) {
        tokio::time::timeout(within, async {
            let mut sink = vec![0u8; 1 << 16];
            loop {
                match self.reader.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("connection still open after {within:?}"));
    }
}

/// A raw HTTP client on one socket: writes bytes, reads answers one by one.
pub struct RawHttp {
    /// The socket, for reads a test makes itself.
    pub reader: BufReader<TcpStream>,
}

impl RawHttp {
    pub async fn connect(addr: &str) -> RawHttp {
        let stream = TcpStream::connect(addr).await.expect("connect");
        RawHttp {
            reader: BufReader::new(stream),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        let stream = self.reader.get_mut();
        stream.write_all(bytes).await.expect("write request");
        stream.flush().await.expect("flush request");
    }

    /// Reads one answer whose body is framed by `content-length` (none for HEAD).
    pub async fn response(&mut self, head_only: bool) -> HttpResponse {
        tokio::time::timeout(WAIT, async {
            let (status, headers) = read_head(&mut self.reader).await;
            let mut r = HttpResponse {
                status,
                headers,
                body: Vec::new(),
            };
            assert!(
                r.header("transfer-encoding").is_none(),
                "a whole answer is not chunked: {r:?}"
            );
            let length: usize = r
                .header("content-length")
                .unwrap_or_else(|| panic!("no content-length: {r:?}"))
                .parse()
                .expect("content-length is a number");
            if !head_only {
                r.body.resize(length, 0);
                self.reader
                    .read_exact(&mut r.body)
                    .await
                    .expect("the whole body");
            }
            r
        })
        .await
        .expect("an answer in time")
    }

    /// The head of an answer whose body is read separately (a stream).
    pub async fn head(&mut self) -> HttpResponse {
        let (status, headers) = tokio::time::timeout(WAIT, read_head(&mut self.reader))
            .await
            .expect("an answer's head in time");
        HttpResponse {
            status,
            headers,
            body: Vec::new(),
        }
    }

    /// One chunk of a chunked body, checking its framing.
    pub async fn chunk(&mut self) -> Vec<u8> {
        tokio::time::timeout(WAIT, async {
            let mut line = String::new();
            self.reader.read_line(&mut line).await.expect("chunk size");
            assert!(line.ends_with("\r\n"), "chunk size line {line:?}");
            let size = usize::from_str_radix(line.trim_end(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk).await.expect("chunk");
            assert_eq!(&chunk[size..], b"\r\n", "a chunk ends with CRLF");
            chunk.truncate(size);
            chunk
        })
        .await
        .expect("a chunk in time")
    }

    /// Reads raw bytes until they contain `needle`; returns all of them.
    pub async fn read_until_contains(&mut self, needle: &str) -> String {
        let mut seen = Vec::new();
        tokio::time::timeout(WAIT, async {
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&seen).contains(needle) {
                let n = self.reader.read(&mut buf).await.expect("read");
                assert!(n > 0, "closed before {needle:?}: {seen:?}");
                seen.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no {needle:?} in time: {:?}",
                String::from_utf8_lossy(&seen)
            )
        });
        String::from_utf8_lossy(&seen).into_owned()
    }

    /// Reads until the server closes the connection; what came before the end.
    pub async fn until_closed(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, self.reader.read_to_end(&mut rest))
            .await
            .expect("the server closes the connection")
            .expect("a clean close");
        rest
    }

    /// Asserts that nothing arrives (and the connection stays open) for `within`.
    pub async fn expect_quiet(&mut self, within: Duration) {
        if let Ok(r) = tokio::time::timeout(within, self.reader.fill_buf()).await {
            let got = r.expect("read").to_vec();
            panic!(
                "unexpected bytes or close: {:?}",
                String::from_utf8_lossy(&got)
            );
        }
    }
}

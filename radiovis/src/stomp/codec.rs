//! Incremental STOMP decoder with limits.
//!
//! Bytes arrive in arbitrary pieces: several frames in one read, one frame over many
//! reads. [`Decoder::decode`] looks at the buffered bytes and either takes one whole
//! frame off the front, or leaves the buffer alone and asks for more. Nothing is
//! allocated for a partial frame, and the search for the end of a body resumes where
//! the previous call stopped, so a large frame arriving in small pieces costs linear
//! time.
//!
//! Framing rules (behaviour.md §3): EOLs before a frame are skipped (heart-beats); a
//! command line ended by NUL is a frame with no headers (`TEST\x00`); a header line
//! without `:` is a header with an empty value; `content-length`, when present, delimits
//! the body, which may then contain NUL; header escaping applies to 1.1/1.2 sessions,
//! except on CONNECT/STOMP/CONNECTED frames.

use bytes::{Buf, Bytes, BytesMut};

use super::frame::{Command, Frame, Version};

/// Bounds on what one client may make the server buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame (command, headers and body) accepted, in bytes.
    pub max_frame_size: usize,
    /// Most headers in one frame.
    pub max_headers: usize,
    /// Longest command or header line, in bytes.
    pub max_header_line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // RadioVis bodies are a line of text or a URL; 1 MiB leaves room for any
        // reasonable use while keeping a hostile client's cost small.
        Limits {
            max_frame_size: 1024 * 1024,
            max_headers: 64,
            max_header_line: 8 * 1024,
        }
    }
}

/// Why a byte stream is not acceptable STOMP. Every variant is fatal for the session:
/// the client gets an ERROR with [`CodecError`]'s message, then the connection closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("frame too large: limit is {limit} bytes")]
    FrameTooLarge { limit: usize },
    #[error("too many headers: limit is {limit} headers per frame")]
    TooManyHeaders { limit: usize },
    #[error("header line too long: limit is {limit} bytes")]
    HeaderLineTooLong { limit: usize },
    #[error("invalid escape sequence in header {header:?}")]
    InvalidEscape { header: String },
    #[error("invalid content-length {value:?}")]
    InvalidContentLength { value: String },
    #[error("frame body not terminated by NUL after content-length bytes")]
    BodyNotTerminated,
}

/// Incremental decoder for one connection.
#[derive(Debug, Clone)]
pub struct Decoder {
    version: Version,
    limits: Limits,
    /// Offset in the buffer up to which the current frame's body is known to hold no
    /// NUL; valid until a frame is taken off the buffer.
    body_scanned: usize,
    /// Bytes examined so far, counted once per pass over a byte (see
    /// [`Decoder::bytes_examined`]).
    examined: u64,
}

impl Decoder {
    /// A decoder for a session that has not negotiated yet (1.0 rules).
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            version: Version::V1_0,
            limits,
            body_scanned: 0,
            examined: 0,
        }
    }

    /// How many bytes this decoder has examined since it was created, counting a byte
    /// once per pass over it (searching for a terminator, checking escapes, building
    /// the frame). Deterministic, unlike time: tests use it to check that decoding
    /// costs work linear in the bytes received, however they are split.
    pub fn bytes_examined(&self) -> u64 {
        self.examined
    }

    /// Switches header unescaping to the negotiated version.
    pub fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Takes one complete frame off the front of `buf`, or returns `Ok(None)` when more
    /// bytes are needed. Leading EOLs (heart-beats) are consumed either way.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let skip = buf
            .iter()
            .position(|&b| b != b'\n' && b != b'\r')
            .unwrap_or(buf.len());
        self.examined += (skip + 1).min(buf.len()) as u64;
        if skip > 0 {
            buf.advance(skip);
            self.body_scanned = 0;
        }
        if buf.is_empty() {
            return Ok(None);
        }
        let limits = self.limits;

        // Command line.
        let found = find_line_end(buf, 0);
        self.examined += found.map_or(buf.len(), |(e, _)| e + 1) as u64;
        let Some((cmd_end, cmd_term)) = found else {
            return self.incomplete(buf, 0);
        };
        if cmd_end > limits.max_header_line {
            return Err(CodecError::HeaderLineTooLong {
                limit: limits.max_header_line,
            });
        }
        let command = Command::parse(trim_cr(&String::from_utf8_lossy(&buf[..cmd_end])).trim());
        if cmd_term == 0 {
            buf.advance(cmd_end + 1);
            self.body_scanned = 0;
            return Ok(Some(Frame::new(command)));
        }

        // Headers, up to an empty line (or a NUL that ends a body-less frame).
        let escape = self.version.escapes() && command.escapes_headers();
        let mut headers = Vec::new();
        let mut pos = cmd_end + 1;
        let body_start = loop {
            let found = find_line_end(buf, pos);
            self.examined += found.map_or(buf.len(), |(e, _)| e + 1).saturating_sub(pos) as u64;
            let Some((end, term)) = found else {
                return self.incomplete(buf, pos);
            };
            if end - pos > limits.max_header_line {
                return Err(CodecError::HeaderLineTooLong {
                    limit: limits.max_header_line,
                });
            }
            let line = trim_cr_bytes(&buf[pos..end]);
            if !line.is_empty() {
                if headers.len() >= limits.max_headers {
                    return Err(CodecError::TooManyHeaders {
                        limit: limits.max_headers,
                    });
                }
                self.examined += line.len() as u64;
                headers.push(parse_header(line, escape, self.version)?);
            }
            pos = end + 1;
            if term == 0 {
                // A NUL before the blank line: the frame has no body.
                buf.advance(pos);
                self.body_scanned = 0;
                return Ok(Some(Frame {
                    command,
                    headers,
                    body: Bytes::new(),
                }));
            }
            if line.is_empty() {
                break pos;
            }
        };

        // Body.
        let content_length = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map(|(_, v)| v.trim());
        let body_end = match content_length {
            Some(v) => {
                let len: usize = v.parse().map_err(|_| CodecError::InvalidContentLength {
                    value: v.to_owned(),
                })?;
                if body_start.saturating_add(len) >= limits.max_frame_size {
                    return Err(CodecError::FrameTooLarge {
                        limit: limits.max_frame_size,
                    });
                }
                if buf.len() <= body_start + len {
                    return Ok(None);
                }
                if buf[body_start + len] != 0 {
                    return Err(CodecError::BodyNotTerminated);
                }
                body_start + len
            }
            None => {
                let from = self.body_scanned.max(body_start);
                let found = memchr::memchr(0, &buf[from..]);
                self.examined += found.map_or(buf.len() - from, |i| i + 1) as u64;
                match found {
                    Some(i) => from + i,
                    None => {
                        self.body_scanned = buf.len();
                        return self.incomplete(buf, buf.len());
                    }
                }
            }
        };
        if body_end + 1 > limits.max_frame_size {
            return Err(CodecError::FrameTooLarge {
                limit: limits.max_frame_size,
            });
        }
        let mut frame_bytes = buf.split_to(body_end + 1);
        frame_bytes.truncate(body_end);
        let body = frame_bytes.split_off(body_start).freeze();
        self.body_scanned = 0;
        Ok(Some(Frame {
            command,
            headers,
            body,
        }))
    }

    /// More bytes are needed; fail instead when the buffered part of the frame is
    /// already over a limit (so a hostile client cannot make us buffer without end).
    fn incomplete(&self, buf: &BytesMut, line_start: usize) -> Result<Option<Frame>, CodecError> {
        if buf.len() > self.limits.max_frame_size {
            return Err(CodecError::FrameTooLarge {
                limit: self.limits.max_frame_size,
            });
        }
        if buf.len() - line_start.min(buf.len()) > self.limits.max_header_line
            && line_start < buf.len()
        {
            return Err(CodecError::HeaderLineTooLong {
                limit: self.limits.max_header_line,
            });
        }
        Ok(None)
    }
}

/// Position and byte (`\n` or NUL) of the first line terminator at or after `from`.
fn find_line_end(buf: &[u8], from: usize) -> Option<(usize, u8)> {
    memchr::memchr2(b'\n', 0, &buf[from..]).map(|i| (from + i, buf[from + i]))
}

fn trim_cr(s: &str) -> &str {
    s.strip_suffix('\r').unwrap_or(s)
}

fn trim_cr_bytes(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\r").unwrap_or(b)
}

fn parse_header(
    line: &[u8],
    escape: bool,
    version: Version,
) -> Result<(String, String), CodecError> {
    let (name, value) = match memchr::memchr(b':', line) {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &b""[..]),
    };
    let name = String::from_utf8_lossy(name);
    let value = String::from_utf8_lossy(value);
    if !escape {
        return Ok((name.into_owned(), value.into_owned()));
    }
    let n = unescape(&name, version).ok_or_else(|| CodecError::InvalidEscape {
        header: name.to_string(),
    })?;
    let v = unescape(&value, version).ok_or_else(|| CodecError::InvalidEscape {
        header: name.to_string(),
    })?;
    Ok((n, v))
}

/// Undoes 1.1/1.2 header escaping; `None` on an undefined escape sequence (a fatal
/// protocol error per the spec).
fn unescape(s: &str, version: Version) -> Option<String> {
    if !s.contains('\\') {
        return Some(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'n' => out.push('\n'),
            'c' => out.push(':'),
            '\\' => out.push('\\'),
            'r' if version == Version::V1_2 => out.push('\r'),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(dec: &mut Decoder, bytes: &[u8]) -> Result<Vec<Frame>, CodecError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(f) = dec.decode(&mut buf)? {
            out.push(f);
        }
        Ok(out)
    }

    /// Feeds `bytes` split at `cut`, decoding after each piece.
    fn decode_split(bytes: &[u8], cut: usize, version: Version) -> Vec<Frame> {
        let mut dec = Decoder::new(Limits::default());
        dec.set_version(version);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in [&bytes[..cut], &bytes[cut..]] {
            buf.extend_from_slice(piece);
            while let Some(f) = dec.decode(&mut buf).expect("valid input") {
                out.push(f);
            }
        }
        assert!(buf.is_empty(), "all bytes consumed");
        out
    }

    const SAMPLE: &[u8] = b"\n\r\nCONNECT\r\nlogin:a\npasscode:b\n\n\0\nSEND\ndestination:/topic/x/text\nnovalue\ndestination:/second\ncontent-length:5\n\nTE\0XT\0SUBSCRIBE\ndestination:/topic/a\\cb\nid:0\n\n\0TEST\0\0\n\n\0";

    #[test]
    fn every_split_decodes_the_same() {
        for version in [Version::V1_0, Version::V1_1, Version::V1_2] {
            let whole = decode_split(SAMPLE, SAMPLE.len(), version);
            assert_eq!(whole.len(), 6);
            for cut in 0..=SAMPLE.len() {
                assert_eq!(decode_split(SAMPLE, cut, version), whole, "cut at {cut}");
            }
        }
    }

    #[test]
    fn byte_by_byte_decodes_the_same() {
        let whole = decode_split(SAMPLE, SAMPLE.len(), Version::V1_0);
        let mut dec = Decoder::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in SAMPLE {
            buf.extend_from_slice(&[*b]);
            while let Some(f) = dec.decode(&mut buf).expect("valid") {
                out.push(f);
            }
        }
        assert_eq!(out, whole);
    }

    #[test]
    fn frame_rules() {
        let frames = decode_split(SAMPLE, SAMPLE.len(), Version::V1_0);
        assert_eq!(frames[0].command, Command::Connect);
        assert_eq!(frames[0].get("login"), Some("a"));
        let send = &frames[1];
        assert_eq!(send.command, Command::Send);
        assert_eq!(send.get("destination"), Some("/topic/x/text"), "first wins");
        assert_eq!(send.get("novalue"), Some(""));
        assert_eq!(&send.body[..], b"TE\0XT");
        // 1.0: no unescaping.
        assert_eq!(frames[2].get("destination"), Some("/topic/a\\cb"));
        assert_eq!(frames[3].command, Command::Other("TEST".into()));
        assert_eq!(frames[4].command, Command::Other(String::new()));
        assert_eq!(frames[5].command, Command::Other(String::new()));
    }

    #[test]
    fn unescapes_for_1_1_and_1_2_but_not_connect() {
        let mut dec = Decoder::new(Limits::default());
        dec.set_version(Version::V1_2);
        let frames = decode_all(
            &mut dec,
            b"SEND\na\\cb:c\\nd\\\\e\\rf\n\n\0CONNECT\nlogin:a\\cb\n\n\0",
        )
        .expect("valid");
        assert_eq!(frames[0].headers[0], ("a:b".into(), "c\nd\\e\rf".into()));
        assert_eq!(frames[1].get("login"), Some("a\\cb"));

        let mut dec11 = Decoder::new(Limits::default());
        dec11.set_version(Version::V1_1);
        assert_eq!(
            decode_all(&mut dec11, b"SEND\nk:\\r\n\n\0"),
            Err(CodecError::InvalidEscape { header: "k".into() }),
            "\\r is not defined in 1.1"
        );
        let mut dec12 = Decoder::new(Limits::default());
        dec12.set_version(Version::V1_2);
        assert!(matches!(
            decode_all(&mut dec12, b"SEND\nk:\\t\n\n\0"),
            Err(CodecError::InvalidEscape { .. })
        ));
    }

    #[test]
    fn crlf_lines_and_body_keep_bytes() {
        let mut dec = Decoder::new(Limits::default());
        let f =
            decode_all(&mut dec, b"SEND\r\ndestination:/x\r\n\r\nline1\r\nline2\0").expect("valid");
        assert_eq!(f[0].get("destination"), Some("/x"));
        assert_eq!(&f[0].body[..], b"line1\r\nline2");
    }

    #[test]
    fn frame_size_limit_without_content_length() {
        let limits = Limits {
            max_frame_size: 100,
            ..Limits::default()
        };
        let mut dec = Decoder::new(limits);
        let mut buf = BytesMut::from(&b"SEND\n\n"[..]);
        buf.extend_from_slice(&[b'x'; 200]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(CodecError::FrameTooLarge { limit: 100 })
        );
    }

    #[test]
    fn frame_size_limit_with_content_length() {
        let limits = Limits {
            max_frame_size: 100,
            ..Limits::default()
        };
        let mut dec = Decoder::new(limits);
        let mut buf = BytesMut::from(&b"SEND\ncontent-length:1000000\n\n"[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(CodecError::FrameTooLarge { limit: 100 })
        );
    }

    #[test]
    fn header_count_limit() {
        let limits = Limits {
            max_headers: 3,
            ..Limits::default()
        };
        let mut dec = Decoder::new(limits);
        let mut buf = BytesMut::from(&b"SEND\na:1\nb:2\nc:3\nd:4\n"[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(CodecError::TooManyHeaders { limit: 3 })
        );
    }

    #[test]
    fn header_line_limit_even_when_incomplete() {
        let limits = Limits {
            max_header_line: 10,
            ..Limits::default()
        };
        let mut dec = Decoder::new(limits);
        let mut buf = BytesMut::from(&b"SEND\naaaaaaaaaaaaaaaaaaaa"[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(CodecError::HeaderLineTooLong { limit: 10 })
        );
        let mut buf = BytesMut::from(&b"SENDSENDSENDSEND"[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(CodecError::HeaderLineTooLong { limit: 10 })
        );
    }

    #[test]
    fn bad_content_length() {
        let mut dec = Decoder::new(Limits::default());
        assert!(matches!(
            decode_all(&mut dec, b"SEND\ncontent-length:abc\n\n\0"),
            Err(CodecError::InvalidContentLength { .. })
        ));
        let mut dec = Decoder::new(Limits::default());
        assert_eq!(
            decode_all(&mut dec, b"SEND\ncontent-length:1\n\nab\0"),
            Err(CodecError::BodyNotTerminated)
        );
    }

    #[test]
    fn encode_then_decode_round_trips() {
        for version in [Version::V1_0, Version::V1_1, Version::V1_2] {
            let f = Frame::new(Command::Message)
                .header("destination", "/topic/a")
                .header(
                    "x",
                    if version.escapes() {
                        "a:b\\c\nd"
                    } else {
                        "plain"
                    },
                )
                .body(&b"body\0with nul"[..]);
            let mut dec = Decoder::new(Limits::default());
            dec.set_version(version);
            let mut buf = BytesMut::new();
            f.encode(version, &mut buf);
            let got = dec.decode(&mut buf).expect("valid").expect("complete");
            assert_eq!(got.get("x"), f.get("x"));
            assert_eq!(got.body, f.body);
        }
    }
}

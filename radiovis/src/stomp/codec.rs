//! Incremental STOMP decoder with limits.
//!
//! Bytes arrive in arbitrary pieces: several frames in one read, one frame over many
//! reads. [`Decoder::decode`] looks at the buffered bytes and either takes one whole
//! frame off the front, or leaves the buffer alone and asks for more. The decoder
//! remembers how far it got in a partial frame (next line, headers counted, where each
//! search stopped) and resumes there, so each byte is examined a bounded number of
//! times however the frame is split: a frame dripped one byte at a time costs linear
//! work, not quadratic. Nothing is allocated for a partial frame; the command and
//! headers are built once, when the frame is complete.
//!
//! Framing rules (docs/protocol.md#framing): EOLs before a frame are skipped (heart-beats); a
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
    /// The frame (or what is buffered of it) is over `max_frame_size`.
    #[error("frame too large: limit is {limit} bytes")]
    FrameTooLarge {
        /// `max_frame_size`.
        limit: usize,
    },
    /// The frame has more than `max_headers` headers.
    #[error("too many headers: limit is {limit} headers per frame")]
    TooManyHeaders {
        /// `max_headers`.
        limit: usize,
    },
    /// A command or header line (complete or not) is over `max_header_line`.
    #[error("header line too long: limit is {limit} bytes")]
    HeaderLineTooLong {
        /// `max_header_line`.
        limit: usize,
    },
    /// A 1.1/1.2 header holds an escape sequence its version does not define.
    #[error("invalid escape sequence in header {header:?}")]
    InvalidEscape {
        /// The header's name.
        header: String,
    },
    /// The first `content-length` header is not a number.
    #[error("invalid content-length {value:?}")]
    InvalidContentLength {
        /// The value received.
        value: String,
    },
    /// The byte after `content-length` body bytes is not NUL.
    #[error("frame body not terminated by NUL after content-length bytes")]
    BodyNotTerminated,
}

/// Incremental decoder for one connection.
///
/// It remembers how far it got in the frame at the front of the buffer (the next line
/// to parse, how many headers it has seen, where the search for the body's end
/// stopped), so each call only looks at bytes that arrived since the previous one.
/// Between calls the caller may only append to the buffer; the decoder alone takes
/// bytes off its front.
#[derive(Debug, Clone)]
pub struct Decoder {
    limits: Limits,
    /// Start of the next line to parse; in the body phases, start of the body.
    line: usize,
    /// Offset up to which the buffer is known to hold no terminator of what is being
    /// looked for (line end, or the body's NUL), so that a search resumes there.
    scanned: usize,
    /// Headers phase: start of the first `content-length` header line (0 when none
    /// yet: no header line starts at 0). `BodyLen` phase: the body's length.
    content_length: usize,
    /// Bytes examined so far (see [`Decoder::bytes_examined`]).
    examined: u64,
    /// Non-empty header lines seen in this frame. `u32` keeps the idle decoder, which
    /// every connection holds, at 64 bytes; a frame cannot carry 2^32 header lines.
    headers: u32,
    version: Version,
    phase: Phase,
    /// Whether this frame's headers are escaped (by version and command).
    escape: bool,
}

/// Where the decoder is in the frame at the front of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Looking for the end of the command line.
    Command,
    /// Looking for header lines, up to a blank line.
    Headers,
    /// Waiting for a `content-length` body and its NUL.
    BodyLen,
    /// Looking for the NUL that ends a body without `content-length`.
    BodyNul,
}

impl Decoder {
    /// A decoder for a session that has not negotiated yet (1.0 rules).
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            limits,
            line: 0,
            scanned: 0,
            content_length: 0,
            examined: 0,
            headers: 0,
            version: Version::V1_0,
            phase: Phase::Command,
            escape: false,
        }
    }

    /// Switches header unescaping to the negotiated version.
    pub fn set_version(&mut self, version: Version) {
        self.version = version;
        // A partly buffered frame is parsed again under the new rules, as if it had
        // arrived after the switch.
        self.restart();
    }

    /// How many bytes this decoder has examined since it was created, counting a byte
    /// once per pass over it (searching for a terminator, checking escapes, building
    /// the frame). Deterministic, unlike time: tests use it to check that decoding
    /// costs work linear in the bytes received, however they are split.
    pub fn bytes_examined(&self) -> u64 {
        self.examined
    }

    /// Takes one complete frame off the front of `buf`, or returns `Ok(None)` when more
    /// bytes are needed. Leading EOLs (heart-beats) are consumed either way.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if buf.len() < self.scanned {
            // The caller swapped the buffer: what we remembered is about other bytes.
            self.restart();
        }
        if self.phase == Phase::Command && self.scanned == 0 {
            // Nothing of a frame seen yet: skip heart-beats. Once the command line has
            // started, the buffer begins with a non-EOL byte, so this runs once per frame.
            let skip = buf
                .iter()
                .position(|&b| b != b'\n' && b != b'\r')
                .unwrap_or(buf.len());
            self.count((skip + 1).min(buf.len()));
            buf.advance(skip);
            if buf.is_empty() {
                return Ok(None);
            }
        }
        let limits = self.limits;

        if self.phase == Phase::Command {
            let Some((cmd_end, cmd_term)) = self.find_line_end(buf, 0) else {
                return self.incomplete(buf, 0);
            };
            if cmd_end > limits.max_header_line {
                return Err(CodecError::HeaderLineTooLong {
                    limit: limits.max_header_line,
                });
            }
            if cmd_term == 0 {
                let command = parse_command(&buf[..cmd_end]);
                self.count(cmd_end);
                buf.advance(cmd_end + 1);
                self.restart();
                return Ok(Some(Frame::new(command)));
            }
            // Classified without allocating: the Command itself is built once the
            // frame is complete.
            let known = std::str::from_utf8(&buf[..cmd_end])
                .ok()
                .and_then(|s| Command::known(trim_cr(s).trim()));
            self.count(cmd_end);
            self.escape = self.version.escapes() && known.is_none_or(|c| c.escapes_headers());
            self.phase = Phase::Headers;
            self.line = cmd_end + 1;
        }

        if self.phase == Phase::Headers {
            // Headers, up to an empty line (or a NUL that ends a body-less frame).
            loop {
                let pos = self.line;
                let Some((end, term)) = self.find_line_end(buf, pos) else {
                    return self.incomplete(buf, pos);
                };
                if end - pos > limits.max_header_line {
                    return Err(CodecError::HeaderLineTooLong {
                        limit: limits.max_header_line,
                    });
                }
                let line = trim_cr_bytes(&buf[pos..end]);
                if !line.is_empty() {
                    if self.headers as usize >= limits.max_headers {
                        return Err(CodecError::TooManyHeaders {
                            limit: limits.max_headers,
                        });
                    }
                    // Checked now, not when the frame completes, so that a bad escape
                    // fails the session as soon as its line is in.
                    if self.escape {
                        self.count(line.len());
                        check_escapes(line, self.version)?;
                    }
                    if self.content_length == 0 {
                        self.count(line.len().min(CONTENT_LENGTH.len() + 1));
                        if is_content_length(line) {
                            self.content_length = pos;
                        }
                    }
                    self.headers = self.headers.saturating_add(1);
                }
                self.line = end + 1;
                if term == 0 {
                    // A NUL before the blank line: the frame has no body.
                    let (command, headers) = self.parse_head(&buf[..end])?;
                    buf.advance(end + 1);
                    self.restart();
                    return Ok(Some(Frame {
                        command,
                        headers,
                        body: Bytes::new(),
                    }));
                }
                if line.is_empty() {
                    break;
                }
            }
            let body_start = self.line;
            if self.content_length != 0 {
                let len = self.parse_content_length(buf, self.content_length)?;
                if body_start.saturating_add(len) >= limits.max_frame_size {
                    return Err(CodecError::FrameTooLarge {
                        limit: limits.max_frame_size,
                    });
                }
                self.content_length = len;
                self.phase = Phase::BodyLen;
            } else {
                self.phase = Phase::BodyNul;
                self.scanned = body_start;
            }
        }

        // Body.
        let body_start = self.line;
        let body_end = if self.phase == Phase::BodyLen {
            let end = body_start + self.content_length;
            if buf.len() <= end {
                return Ok(None);
            }
            self.count(1);
            if buf[end] != 0 {
                return Err(CodecError::BodyNotTerminated);
            }
            end
        } else {
            let from = self.scanned.max(body_start);
            let found = memchr::memchr(0, &buf[from..]);
            self.count(found.map_or(buf.len() - from, |i| i + 1));
            match found {
                Some(i) => from + i,
                None => {
                    self.scanned = buf.len();
                    return self.incomplete(buf, buf.len());
                }
            }
        };
        if body_end + 1 > limits.max_frame_size {
            return Err(CodecError::FrameTooLarge {
                limit: limits.max_frame_size,
            });
        }
        // The head ends before the blank line's `\n`.
        let (command, headers) = self.parse_head(&buf[..body_start - 1])?;
        let mut frame_bytes = buf.split_to(body_end + 1);
        frame_bytes.truncate(body_end);
        let body = frame_bytes.split_off(body_start).freeze();
        self.restart();
        Ok(Some(Frame {
            command,
            headers,
            body,
        }))
    }

    /// Forgets the progress on the front frame (taken off, or to be parsed again).
    fn restart(&mut self) {
        self.line = 0;
        self.scanned = 0;
        self.content_length = 0;
        self.headers = 0;
        self.phase = Phase::Command;
        self.escape = false;
    }

    fn count(&mut self, bytes: usize) {
        self.examined = self.examined.saturating_add(bytes as u64);
    }

    /// Position and byte (`\n` or NUL) of the end of the line starting at `line_start`,
    /// resuming the search where the previous call stopped.
    fn find_line_end(&mut self, buf: &[u8], line_start: usize) -> Option<(usize, u8)> {
        let from = self.scanned.max(line_start);
        match memchr::memchr2(b'\n', 0, &buf[from..]) {
            Some(i) => {
                self.count(i + 1);
                self.scanned = from + i + 1;
                Some((from + i, buf[from + i]))
            }
            None => {
                self.count(buf.len() - from);
                self.scanned = buf.len();
                None
            }
        }
    }

    /// The value of the `content-length` header whose line starts at `pos`.
    fn parse_content_length(&mut self, buf: &[u8], pos: usize) -> Result<usize, CodecError> {
        // That line was ended by `\n` (a NUL would have ended the frame).
        let end = memchr::memchr(b'\n', &buf[pos..]).map_or(buf.len(), |i| pos + i);
        self.count(end - pos);
        let (_, value) = parse_header(trim_cr_bytes(&buf[pos..end]), self.escape, self.version)?;
        let value = value.trim();
        value.parse().map_err(|_| CodecError::InvalidContentLength {
            value: value.to_owned(),
        })
    }

    /// Builds the command and headers from the frame's head: the command line and the
    /// header lines, without the terminator of the last line. Lines were checked while
    /// scanning, so this is the one place that allocates for a frame.
    fn parse_head(&mut self, head: &[u8]) -> Result<(Command, Vec<(String, String)>), CodecError> {
        self.count(head.len());
        let mut ends = memchr::memchr_iter(b'\n', head).chain(std::iter::once(head.len()));
        let cmd_end = ends.next().unwrap_or(head.len());
        let command = parse_command(&head[..cmd_end]);
        let mut headers = Vec::with_capacity(self.headers as usize);
        let mut start = cmd_end + 1;
        for end in ends {
            let line = trim_cr_bytes(&head[start..end]);
            if !line.is_empty() {
                headers.push(parse_header(line, self.escape, self.version)?);
            }
            start = end + 1;
        }
        Ok((command, headers))
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

const CONTENT_LENGTH: &[u8] = b"content-length";

/// Whether a header line's name is `content-length`. No escape sequence unescapes to
/// any of its characters, so comparing the raw bytes is the same as comparing the
/// unescaped name.
fn is_content_length(line: &[u8]) -> bool {
    line.strip_prefix(CONTENT_LENGTH)
        .is_some_and(|rest| rest.first().is_none_or(|&b| b == b':'))
}

/// Fails with [`CodecError::InvalidEscape`] when a header line holds an escape sequence
/// that `version` does not define; allocates only for the error. Equivalent to
/// unescaping name and value: a `\` right before the first `:` is invalid either way.
fn check_escapes(line: &[u8], version: Version) -> Result<(), CodecError> {
    let mut from = 0;
    while let Some(at) = memchr::memchr(b'\\', &line[from..]) {
        let i = from + at;
        match line.get(i + 1) {
            Some(b'n' | b'c' | b'\\') => {}
            Some(b'r') if version == Version::V1_2 => {}
            _ => {
                let name = memchr::memchr(b':', line).map_or(line, |c| &line[..c]);
                return Err(CodecError::InvalidEscape {
                    header: String::from_utf8_lossy(name).into_owned(),
                });
            }
        }
        from = i + 2;
    }
    Ok(())
}

fn parse_command(line: &[u8]) -> Command {
    Command::parse(trim_cr(&String::from_utf8_lossy(line)).trim())
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
mod tests;

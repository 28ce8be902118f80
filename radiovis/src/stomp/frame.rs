//! The STOMP frame: a command, ordered headers and a body.

use bytes::{BufMut, Bytes, BytesMut};

/// STOMP protocol version of a session. Decides header escaping and which optional
/// features (heart-beats, mandatory `subscription` headers) apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// STOMP 1.0: what radios in the field speak. No header escaping.
    V1_0,
    /// STOMP 1.1: escaping of `\n`, `:`, `\\`; heart-beats.
    V1_1,
    /// STOMP 1.2: as 1.1, plus `\r` escaping.
    V1_2,
}

impl Version {
    /// The value of the `version` header for this version.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    /// Picks the highest version both sides support from an `accept-version` header
    /// (`None` when the header is absent: a 1.0 client). Returns `None` when the client
    /// lists versions but none of ours.
    pub fn negotiate(accept_version: Option<&str>) -> Option<Version> {
        let Some(list) = accept_version else {
            return Some(Version::V1_0);
        };
        let mut best = None;
        for v in list.split(',').map(str::trim) {
            let parsed = match v {
                "1.0" => Version::V1_0,
                "1.1" => Version::V1_1,
                "1.2" => Version::V1_2,
                _ => continue,
            };
            best = best.max(Some(parsed));
        }
        best
    }

    /// True when header names and values are escaped (1.1 and 1.2).
    pub fn escapes(self) -> bool {
        self != Version::V1_0
    }
}

/// The command line of a frame. Unknown commands are kept verbatim so that the session
/// can answer their `receipt` and otherwise ignore them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `CONNECT` (client).
    Connect,
    /// `STOMP`, the 1.1/1.2 synonym of CONNECT (client).
    Stomp,
    /// `CONNECTED` (server).
    Connected,
    /// `SEND` (client): publish.
    Send,
    /// `SUBSCRIBE` (client).
    Subscribe,
    /// `UNSUBSCRIBE` (client).
    Unsubscribe,
    /// `BEGIN` (client; transactions are ignored).
    Begin,
    /// `COMMIT` (client; ignored).
    Commit,
    /// `ABORT` (client; ignored).
    Abort,
    /// `ACK` (client; ignored).
    Ack,
    /// `NACK` (client; ignored).
    Nack,
    /// `DISCONNECT` (client).
    Disconnect,
    /// `MESSAGE` (server): a delivery.
    Message,
    /// `RECEIPT` (server).
    Receipt,
    /// `ERROR` (server).
    Error,
    /// Anything else, including the empty command of a bogus frame (`\x00` alone).
    Other(String),
}

impl Command {
    /// Parses a command line (already stripped of its EOL).
    pub fn parse(line: &str) -> Command {
        Command::known(line).unwrap_or_else(|| Command::Other(line.to_owned()))
    }

    /// The standard command spelled `line`, or `None` for anything else. Never
    /// allocates, so the decoder can classify a partial frame's command for free.
    pub(crate) fn known(line: &str) -> Option<Command> {
        Some(match line {
            "CONNECT" => Command::Connect,
            "STOMP" => Command::Stomp,
            "CONNECTED" => Command::Connected,
            "SEND" => Command::Send,
            "SUBSCRIBE" => Command::Subscribe,
            "UNSUBSCRIBE" => Command::Unsubscribe,
            "BEGIN" => Command::Begin,
            "COMMIT" => Command::Commit,
            "ABORT" => Command::Abort,
            "ACK" => Command::Ack,
            "NACK" => Command::Nack,
            "DISCONNECT" => Command::Disconnect,
            "MESSAGE" => Command::Message,
            "RECEIPT" => Command::Receipt,
            "ERROR" => Command::Error,
            _ => return None,
        })
    }

    /// The command as it appears on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Connected => "CONNECTED",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Disconnect => "DISCONNECT",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
            Command::Other(s) => s,
        }
    }

    /// CONNECT and CONNECTED frames never escape headers (STOMP 1.1/1.2 keep them
    /// compatible with 1.0 peers).
    pub fn escapes_headers(&self) -> bool {
        !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }
}

/// One STOMP frame. Headers keep their wire order; lookups return the first occurrence,
/// as the spec says for repeated headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The command line.
    pub command: Command,
    /// Headers, unescaped, in wire order (repeats kept).
    pub headers: Vec<(String, String)>,
    /// The body (up to the NUL, or `content-length` bytes).
    pub body: Bytes,
}

impl Frame {
    /// A frame with no headers and no body.
    pub fn new(command: Command) -> Frame {
        Frame {
            command,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Adds a header (builder style).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Frame {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body (builder style).
    pub fn body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = body.into();
        self
    }

    /// The value of the first header with this name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// An ERROR frame with a `message` header.
    pub fn error(message: impl Into<String>) -> Frame {
        Frame::new(Command::Error).header("message", message)
    }

    /// Appends the wire form of this frame to `out`. Header escaping follows `version`
    /// (never on CONNECT/CONNECTED). A `content-length` header is added when the body
    /// is not empty and either the session is 1.1+ or the body contains a NUL (a 1.0
    /// peer could not find its end otherwise), unless the frame already carries one.
    pub fn encode(&self, version: Version, out: &mut BytesMut) {
        let escape = version.escapes() && self.command.escapes_headers();
        out.reserve(64 + self.body.len());
        out.put_slice(self.command.as_str().as_bytes());
        out.put_u8(b'\n');
        for (k, v) in &self.headers {
            put_header_part(out, k, escape, version);
            out.put_u8(b':');
            put_header_part(out, v, escape, version);
            out.put_u8(b'\n');
        }
        if needs_content_length(version, &self.body) && self.get("content-length").is_none() {
            out.put_slice(b"content-length:");
            out.put_slice(self.body.len().to_string().as_bytes());
            out.put_u8(b'\n');
        }
        out.put_u8(b'\n');
        out.put_slice(&self.body);
        out.put_u8(0);
    }

    /// The wire form of this frame as one buffer.
    pub fn to_bytes(&self, version: Version) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(version, &mut out);
        out.freeze()
    }
}

/// Whether a header value can be written to a STOMP 1.0 peer as it is.
///
/// 1.0 has no header escaping, so a value holding `\n`, `\r` or NUL (which a 1.1/1.2
/// client can send escaped, e.g. in `link`) would end the header line early on a 1.0
/// radio and let the sender inject headers or end the frame. Callers refuse such values
/// before they reach 1.0 sessions.
pub fn v10_safe(value: &str) -> bool {
    !value.bytes().any(|b| matches!(b, b'\n' | b'\r' | 0))
}

/// Whether a body of this version needs an explicit `content-length` header.
pub(crate) fn needs_content_length(version: Version, body: &[u8]) -> bool {
    !body.is_empty() && (version.escapes() || memchr::memchr(0, body).is_some())
}

/// Writes a header name or value, escaped when the session version asks for it.
pub(crate) fn put_header_part(out: &mut BytesMut, s: &str, escape: bool, version: Version) {
    if !escape {
        out.put_slice(s.as_bytes());
        return;
    }
    for b in s.bytes() {
        match b {
            b'\\' => out.put_slice(b"\\\\"),
            b'\n' => out.put_slice(b"\\n"),
            b':' => out.put_slice(b"\\c"),
            b'\r' if version == Version::V1_2 => out.put_slice(b"\\r"),
            _ => out.put_u8(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_highest_common_version() {
        assert_eq!(Version::negotiate(None), Some(Version::V1_0));
        assert_eq!(Version::negotiate(Some("1.0,1.1,1.2")), Some(Version::V1_2));
        assert_eq!(Version::negotiate(Some("1.1, 1.0")), Some(Version::V1_1));
        assert_eq!(Version::negotiate(Some("2.0")), None);
    }

    #[test]
    fn v10_safe_refuses_line_breaks_and_nul() {
        assert!(v10_safe(""));
        assert!(v10_safe("http://example.org/a:b\\c?d=e f"));
        assert!(v10_safe("caf\u{e9} \t tab"));
        assert!(!v10_safe("a\nlink:evil"));
        assert!(!v10_safe("a\rb"));
        assert!(!v10_safe("a\0b"));
        assert!(!v10_safe("\n"));
    }

    #[test]
    fn parse_keeps_unknown_commands_verbatim() {
        assert_eq!(Command::parse("SEND"), Command::Send);
        assert_eq!(Command::known("send"), None);
        assert_eq!(Command::parse("send"), Command::Other("send".into()));
        assert_eq!(Command::parse(""), Command::Other(String::new()));
    }

    #[test]
    fn first_header_wins() {
        let f = Frame::new(Command::Send)
            .header("destination", "/a")
            .header("destination", "/b");
        assert_eq!(f.get("destination"), Some("/a"));
    }

    #[test]
    fn encodes_with_escaping_per_version() {
        let f = Frame::new(Command::Message).header("k", "a:b\nc\\d\re");
        let v10 = f.to_bytes(Version::V1_0);
        assert_eq!(&v10[..], b"MESSAGE\nk:a:b\nc\\d\re\n\n\0");
        let v11 = f.to_bytes(Version::V1_1);
        assert_eq!(&v11[..], b"MESSAGE\nk:a\\cb\\nc\\\\d\re\n\n\0");
        let v12 = f.to_bytes(Version::V1_2);
        assert_eq!(&v12[..], b"MESSAGE\nk:a\\cb\\nc\\\\d\\re\n\n\0");
    }

    #[test]
    fn connected_is_never_escaped() {
        let f = Frame::new(Command::Connected).header("server", "a:b");
        assert_eq!(
            &f.to_bytes(Version::V1_2)[..],
            b"CONNECTED\nserver:a:b\n\n\0"
        );
    }

    #[test]
    fn content_length_added_when_needed() {
        let f = Frame::new(Command::Message).body(&b"a\0b"[..]);
        assert_eq!(
            &f.to_bytes(Version::V1_0)[..],
            b"MESSAGE\ncontent-length:3\n\na\0b\0"
        );
        let g = Frame::new(Command::Message).body(&b"ab"[..]);
        assert_eq!(&g.to_bytes(Version::V1_0)[..], b"MESSAGE\n\nab\0");
        assert_eq!(
            &g.to_bytes(Version::V1_2)[..],
            b"MESSAGE\ncontent-length:2\n\nab\0"
        );
    }
}

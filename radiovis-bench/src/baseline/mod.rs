//! Baseline fan-out servers the benchmark measures radiovis against: CONNECT ->
//! CONNECTED, SUBSCRIBE (topic -> connections, RECEIPT when asked), SEND -> one
//! pre-encoded MESSAGE handed to every subscriber of the destination. Nothing else: no
//! auth, no topic normalisation, no last message, no heart-beats.
//!
//! | module | design |
//! |---|---|
//! | `lean` | the default: the leanest correct fan-out we could write (no per-connection channel, lazily grown buffers, writes straight from the shared message) |
//! | `channel` | the first baseline: a task per connection selecting between its socket and a bounded mpsc (250) |

pub mod channel;
pub mod lean;

/// A client frame (without its NUL), split into command, header lookup and body.
pub struct Parsed<'a> {
    pub command: &'a str,
    head: &'a str,
    pub body: &'a [u8],
}

impl<'a> Parsed<'a> {
    /// Parses a frame; `None` for heart-beat EOLs only or a head that is not UTF-8.
    pub fn new(frame: &'a [u8]) -> Option<Parsed<'a>> {
        // Heart-beat newlines may precede a frame.
        let start = frame.iter().position(|&b| b != b'\n' && b != b'\r')?;
        let frame = &frame[start..];
        let (head, body) = match memchr::memmem::find(frame, b"\n\n") {
            Some(i) => (&frame[..i], &frame[i + 2..]),
            None => (frame, &[][..]),
        };
        let head = std::str::from_utf8(head).ok()?;
        let command = head.lines().next().unwrap_or("").trim_end_matches('\r');
        Some(Parsed {
            command,
            head,
            body,
        })
    }

    /// The value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.head.lines().skip(1).find_map(|l| {
            l.trim_end_matches('\r')
                .strip_prefix(name)
                .and_then(|r| r.strip_prefix(':'))
        })
    }
}

//! Property tests of the STOMP codec: encode -> decode round trips per version, and
//! decoding gives the same result however the bytes are split.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use radiovis::stomp::{v10_safe, CodecError, Command, Decoder, Frame, Limits, Version};

const VERSIONS: [Version; 3] = [Version::V1_0, Version::V1_1, Version::V1_2];

/// What decoding a byte stream gave: the frames, then the error that ended it, if any.
#[derive(Debug, PartialEq)]
struct Outcome {
    frames: Vec<Frame>,
    error: Option<CodecError>,
}

/// Decodes `wire` fed in pieces ending at `cuts` (sorted, deduplicated offsets).
fn decode_pieces(wire: &[u8], cuts: &[usize], version: Version, limits: Limits) -> Outcome {
    let mut dec = Decoder::new(limits);
    dec.set_version(version);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&wire.len())) {
        buf.extend_from_slice(&wire[start..end]);
        start = end;
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                // A codec error ends the session: nothing more is decoded.
                Err(e) => {
                    return Outcome {
                        frames,
                        error: Some(e),
                    }
                }
            }
        }
    }
    Outcome {
        frames,
        error: None,
    }
}

fn decode_whole(wire: &[u8], version: Version, limits: Limits) -> Outcome {
    decode_pieces(wire, &[], version, limits)
}

fn sorted_cuts(mut cuts: Vec<usize>, len: usize) -> Vec<usize> {
    for c in &mut cuts {
        *c %= len + 1;
    }
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        prop::sample::select(vec![
            Command::Connect,
            Command::Stomp,
            Command::Connected,
            Command::Send,
            Command::Subscribe,
            Command::Unsubscribe,
            Command::Ack,
            Command::Disconnect,
            Command::Message,
            Command::Receipt,
            Command::Error,
        ]),
        // Unknown commands keep their spelling (a known spelling parses as known).
        "[A-Z][A-Za-z0-9_-]{0,11}".prop_map(|s| Command::parse(&s)),
    ]
}

/// Header names and values, rich in what needs escaping: `:`, `\n`, `\r`, `\\`.
fn header_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            3 => prop::sample::select(vec![':', '\n', '\r', '\\', 'c', 'n', 'r']),
            3 => prop::char::range('a', 'z'),
            1 => prop::sample::select(vec![' ', '/', '=', '-', 'é', '€', '\t']),
        ],
        0..12,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

fn header() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        (
            prop::sample::select(vec!["destination", "receipt", "id", "link", "trigger-time"]),
            header_text()
        )
            .prop_map(|(k, v)| (k.to_owned(), v)),
        // `content-length` stays out: the encoder trusts a caller-given one.
        (header_text(), header_text())
            .prop_filter("no content-length", |(k, _)| { k != "content-length" }),
    ]
}

fn body() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        Just(Vec::new()),
        prop::collection::vec(prop_oneof![Just(0u8), Just(b'\n'), any::<u8>()], 0..64),
    ]
    .prop_map(Bytes::from)
}

fn frame() -> impl Strategy<Value = Frame> {
    (command(), prop::collection::vec(header(), 0..6), body()).prop_map(
        |(command, headers, body)| Frame {
            command,
            headers,
            body,
        },
    )
}

/// Whether the wire form of `frame` in `version` carries its headers exactly.
fn representable(frame: &Frame, version: Version) -> bool {
    let escaped = version.escapes() && frame.command.escapes_headers();
    frame.headers.iter().all(|(k, v)| {
        if !escaped {
            // 1.0 rules: no escaping, so no line breaks anywhere (what v10_safe says)
            // and no `:` in a name (the first `:` ends it).
            v10_safe(k) && v10_safe(v) && !k.contains(':')
        } else if version == Version::V1_1 {
            // 1.1 does not escape `\r`; a trailing one is read as part of a CRLF.
            !v.ends_with('\r')
        } else {
            true
        }
    })
}

/// What the peer should decode: the frame plus the `content-length` the encoder adds.
fn expected(frame: &Frame, version: Version) -> Frame {
    let needs_length = !frame.body.is_empty() && (version.escapes() || frame.body.contains(&0));
    let mut f = frame.clone();
    if needs_length {
        f.headers
            .push(("content-length".into(), frame.body.len().to_string()));
    }
    f
}

proptest! {
    #[test]
    fn encode_then_decode_round_trips(
        frames in prop::collection::vec(frame(), 1..4),
        heart_beats in prop::collection::vec(prop::sample::select(vec!["", "\n", "\r\n", "\n\n"]), 4),
        cuts in prop::collection::vec(any::<usize>(), 0..4),
    ) {
        for version in VERSIONS {
            let frames: Vec<&Frame> = frames.iter().filter(|f| representable(f, version)).collect();
            let mut wire = BytesMut::new();
            for (f, hb) in frames.iter().zip(heart_beats.iter().cycle()) {
                wire.extend_from_slice(hb.as_bytes());
                f.encode(version, &mut wire);
            }
            let want: Vec<Frame> = frames.iter().map(|f| expected(f, version)).collect();
            let whole = decode_whole(&wire, version, Limits::default());
            prop_assert_eq!(&whole, &Outcome { frames: want, error: None }, "{:?}", version);
            let cuts = sorted_cuts(cuts.clone(), wire.len());
            prop_assert_eq!(&decode_pieces(&wire, &cuts, version, Limits::default()), &whole);
        }
    }

    #[test]
    fn v10_unsafe_values_are_the_ones_with_line_breaks_or_nul(value in header_text(), nul in any::<bool>()) {
        let value = if nul { format!("{value}\0") } else { value };
        prop_assert_eq!(v10_safe(&value), !value.contains(['\n', '\r', '\0']));
        // A safe value written to a 1.0 peer comes back as it was.
        let frame = Frame::new(Command::Message).header("link", value.clone());
        let decoded = decode_whole(&frame.to_bytes(Version::V1_0), Version::V1_0, Limits::default());
        if v10_safe(&value) {
            prop_assert_eq!(decoded.frames[0].get("link"), Some(value.as_str()));
        } else if value.contains('\n') {
            // The line break ends the header early: what v10_safe callers prevent.
            prop_assert!(decoded.frames.first().and_then(|f| f.get("link")) != Some(value.as_str()));
        }
    }

    #[test]
    fn any_split_decodes_like_the_whole(
        wire in prop::collection::vec(
            prop_oneof![
                4 => prop::sample::select(b"\n\r\0:\\cnSEND content-length:3\n".to_vec()),
                1 => any::<u8>(),
            ],
            0..200,
        ),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
        small in any::<bool>(),
    ) {
        let limits = if small {
            Limits { max_frame_size: 64, max_headers: 3, max_header_line: 16 }
        } else {
            Limits::default()
        };
        let cuts = sorted_cuts(cuts, wire.len());
        for version in VERSIONS {
            let whole = decode_whole(&wire, version, limits);
            let split = decode_pieces(&wire, &cuts, version, limits);
            // The same frames; an error in both or neither (which limit trips first
            // may depend on how much was buffered when it tripped).
            prop_assert_eq!(&split.frames, &whole.frames);
            prop_assert_eq!(split.error.is_some(), whole.error.is_some());
            let dripped: Vec<usize> = (1..wire.len()).collect();
            let drip = decode_pieces(&wire, &dripped, version, limits);
            prop_assert_eq!(&drip.frames, &whole.frames);
            prop_assert_eq!(drip.error.is_some(), whole.error.is_some());
        }
    }
}

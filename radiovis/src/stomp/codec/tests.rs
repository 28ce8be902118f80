//! The decoder against sample streams split at every byte, escaping per version,
//! every limit, and the work it does per byte received.

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
fn idle_decoder_stays_small() {
    // Every connection holds one; it was 40 bytes before it became incremental.
    assert!(std::mem::size_of::<Decoder>() <= 64);
}

#[test]
fn set_version_mid_frame_parses_the_frame_again_under_the_new_rules() {
    let mut dec = Decoder::new(Limits::default());
    let mut buf = BytesMut::from(&b"SEND\nk:a\\cb\n"[..]);
    assert_eq!(dec.decode(&mut buf), Ok(None));
    dec.set_version(Version::V1_1);
    buf.extend_from_slice(b"\n\0");
    let f = dec.decode(&mut buf).expect("valid").expect("complete");
    assert_eq!(f.get("k"), Some("a:b"));
}

#[test]
fn bad_escape_fails_as_soon_as_its_line_is_in() {
    let mut dec = Decoder::new(Limits::default());
    dec.set_version(Version::V1_2);
    let mut buf = BytesMut::from(&b"SEND\nok:\\\\\nbad\\:x\n"[..]);
    assert_eq!(
        dec.decode(&mut buf),
        Err(CodecError::InvalidEscape {
            header: "bad\\".into()
        })
    );
}

#[test]
fn first_content_length_counts_even_when_escaped_or_without_colon() {
    let mut dec = Decoder::new(Limits::default());
    dec.set_version(Version::V1_1);
    // `\n` unescapes to a newline, which trimming removes, as before.
    let f = decode_all(
        &mut dec,
        b"SEND\ncontent-length:2\\n\ncontent-length:9\n\na\0\0",
    )
    .expect("valid");
    assert_eq!(&f[0].body[..], b"a\0");
    let mut dec = Decoder::new(Limits::default());
    assert_eq!(
        decode_all(&mut dec, b"SEND\ncontent-length\n\nab\0"),
        Err(CodecError::InvalidContentLength {
            value: String::new()
        })
    );
    // `content-lengthx` is another header.
    let mut dec = Decoder::new(Limits::default());
    let f = decode_all(&mut dec, b"SEND\ncontent-lengthx:1\n\nab\0").expect("valid");
    assert_eq!(&f[0].body[..], b"ab");
}

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
    let f = decode_all(&mut dec, b"SEND\r\ndestination:/x\r\n\r\nline1\r\nline2\0").expect("valid");
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

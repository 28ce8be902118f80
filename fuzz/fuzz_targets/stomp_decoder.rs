//! Arbitrary bytes, fed to the STOMP decoder at arbitrary split points.
//!
//! Checks, besides "no panic": splitting never changes the frames decoded (nor whether
//! the stream ends in an error); the limits hold for every frame and for what the
//! decoder keeps buffered; the work done stays linear in the bytes received.

#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use radiovis::stomp::{CodecError, Decoder, Frame, Limits, Version};

#[derive(Debug, Arbitrary)]
struct Input {
    version: u8,
    small_limits: bool,
    cuts: Vec<u16>,
    data: Vec<u8>,
}

struct Outcome {
    frames: Vec<Frame>,
    error: Option<CodecError>,
}

fn decode(data: &[u8], cuts: &[usize], version: Version, limits: Limits) -> Outcome {
    let mut dec = Decoder::new(limits);
    dec.set_version(version);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut start = 0;
    let mut calls = 0u64;
    for &end in cuts.iter().chain(std::iter::once(&data.len())) {
        buf.extend_from_slice(&data[start..end]);
        start = end;
        loop {
            calls += 1;
            match dec.decode(&mut buf) {
                Ok(Some(f)) => {
                    assert!(f.headers.len() <= limits.max_headers);
                    assert!(f.body.len() < limits.max_frame_size);
                    frames.push(f);
                }
                Ok(None) => {
                    assert!(
                        buf.len() <= limits.max_frame_size,
                        "buffered past the limit"
                    );
                    break;
                }
                Err(error) => {
                    return Outcome {
                        frames,
                        error: Some(error),
                    }
                }
            }
        }
    }
    // Each byte is examined a bounded number of times, plus one per call.
    assert!(dec.bytes_examined() <= 5 * start as u64 + calls);
    Outcome {
        frames,
        error: None,
    }
}

fuzz_target!(|input: Input| {
    let version = match input.version % 3 {
        0 => Version::V1_0,
        1 => Version::V1_1,
        _ => Version::V1_2,
    };
    let limits = if input.small_limits {
        Limits {
            max_frame_size: 256,
            max_headers: 4,
            max_header_line: 32,
        }
    } else {
        Limits::default()
    };
    let data = &input.data;
    let mut cuts: Vec<usize> = input
        .cuts
        .iter()
        .map(|&c| usize::from(c) % (data.len() + 1))
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let whole = decode(data, &[], version, limits);
    let split = decode(data, &cuts, version, limits);
    assert_eq!(split.frames, whole.frames);
    assert_eq!(split.error.is_some(), whole.error.is_some());
});

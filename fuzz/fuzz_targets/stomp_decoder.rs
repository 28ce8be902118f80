//! Arbitrary bytes, fed to the STOMP decoder at arbitrary split points.
//!
//! Checks, besides "no panic": splitting never changes the frames decoded (nor whether
//! the stream ends in an error); the limits hold for every frame and for what the
//! decoder keeps buffered; the work done stays linear in the bytes received.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use radiovis::stomp::{Limits, Version};

#[path = "../common/decoder.rs"]
mod decoder;
use decoder::decode;

#[derive(Debug, Arbitrary)]
struct Input {
    version: u8,
    small_limits: bool,
    cuts: Vec<u16>,
    data: Vec<u8>,
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

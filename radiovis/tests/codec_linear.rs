//! The decoder's work is linear in the bytes received, however they are split.
//!
//! Reliability finding: a client that drips a 64 KiB frame one byte at a time must not
//! cost quadratic CPU. Time is too noisy to test on shared machines, so these tests
//! count the bytes the decoder examines ([`Decoder::bytes_examined`]) instead.

use bytes::BytesMut;
use radiovis::stomp::{Command, Decoder, Frame, Limits, Version};

/// At most this many passes over each received byte.
const MAX_PASSES: u64 = 4;

/// Feeds `wire` to a fresh decoder `piece` bytes at a time, decoding after each piece.
/// Returns the frames and the bytes examined.
fn drip(wire: &[u8], piece: usize, version: Version) -> (Vec<Frame>, u64) {
    let mut dec = Decoder::new(Limits::default());
    dec.set_version(version);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in wire.chunks(piece) {
        buf.extend_from_slice(chunk);
        while let Some(f) = dec.decode(&mut buf).expect("valid input") {
            frames.push(f);
        }
    }
    assert!(buf.is_empty(), "all bytes consumed");
    (frames, dec.bytes_examined())
}

/// Asserts that dripping `wire` one byte at a time gives the same frames as decoding it
/// whole, and that both cost at most `MAX_PASSES` per byte.
fn assert_linear(wire: &[u8], version: Version) -> Vec<Frame> {
    let (whole, whole_work) = drip(wire, wire.len(), version);
    let (dripped, drip_work) = drip(wire, 1, version);
    assert_eq!(dripped, whole);
    let len = wire.len() as u64;
    eprintln!(
        "{} bytes: {whole_work} examined whole, {drip_work} byte by byte",
        wire.len()
    );
    assert!(
        whole_work <= MAX_PASSES * len,
        "whole: {whole_work} examined for {len} bytes"
    );
    assert!(
        drip_work <= MAX_PASSES * len,
        "byte by byte: {drip_work} examined for {len} bytes"
    );
    whole
}

/// A 1.2 SEND of about 64 KiB made of headers: the default limit of 64 headers, each
/// line about 1 KiB, with escapes so that the escape check is part of the work.
fn many_headers() -> Vec<u8> {
    let mut wire = b"SEND\ndestination:/topic/fm/ch/4001/09580/text\n".to_vec();
    for i in 0..63 {
        wire.extend_from_slice(format!("h{i}:").as_bytes());
        for _ in 0..100 {
            wire.extend_from_slice(b"abc\\cdef\\n\r");
        }
        wire.push(b'\n');
    }
    wire.extend_from_slice(b"\nTEXT hello\0");
    wire
}

#[test]
fn headers_dripped_byte_by_byte_cost_linear_work() {
    let wire = many_headers();
    assert!(wire.len() > 64 * 1000);
    let frames = assert_linear(&wire, Version::V1_2);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].command, Command::Send);
    assert_eq!(frames[0].headers.len(), 64);
    assert_eq!(&frames[0].body[..], b"TEXT hello");
}

#[test]
fn long_header_line_dripped_byte_by_byte_costs_linear_work() {
    // One line just under the 8 KiB default limit: the search for its end must resume,
    // not restart, on each byte.
    let mut wire = b"SEND\nx:".to_vec();
    wire.extend(std::iter::repeat_n(b'v', 8 * 1024 - 3));
    wire.extend_from_slice(b"\n\n\0");
    let frames = assert_linear(&wire, Version::V1_1);
    assert_eq!(frames[0].get("x").map(str::len), Some(8 * 1024 - 3));
}

#[test]
fn body_without_content_length_dripped_byte_by_byte_costs_linear_work() {
    let mut wire = b"SEND\ndestination:/topic/fm/ch/4001/09580/text\n\n".to_vec();
    wire.extend(std::iter::repeat_n(b'b', 64 * 1024));
    wire.push(0);
    let frames = assert_linear(&wire, Version::V1_0);
    assert_eq!(frames[0].body.len(), 64 * 1024);
}

#[test]
fn body_with_content_length_dripped_byte_by_byte_costs_linear_work() {
    let mut wire = b"SEND\ncontent-length:65536\n\n".to_vec();
    wire.extend(std::iter::repeat_n(0u8, 64 * 1024));
    wire.push(0);
    let frames = assert_linear(&wire, Version::V1_2);
    assert_eq!(frames[0].body.len(), 64 * 1024);
}

#[test]
fn many_small_frames_in_one_read_cost_linear_work() {
    let one = b"\nSEND\ndestination:/topic/a\nreceipt:r\n\nTEXT x\0";
    let wire: Vec<u8> = one.iter().copied().cycle().take(one.len() * 2000).collect();
    let frames = assert_linear(&wire, Version::V1_1);
    assert_eq!(frames.len(), 2000);
}

//! The STOMP decoder under arbitrary input, shared by the `stomp_decoder` fuzz target
//! and the stable smoke test `radiovis/tests/codec_fuzz_smoke.rs` (included by path in
//! both, so the checks are written once).

use bytes::BytesMut;
use radiovis::stomp::{CodecError, Decoder, Frame, Limits, Version};

/// What decoding a stream gave.
pub struct Outcome {
    /// The frames decoded, in order.
    pub frames: Vec<Frame>,
    /// The error the stream ended in, if any.
    pub error: Option<CodecError>,
}

/// Decodes `data` fed in pieces cut at `cuts`, checking on the way that the limits hold
/// for every frame and for what the decoder keeps buffered, and that its work stays
/// linear in the bytes received.
pub fn decode(data: &[u8], cuts: &[usize], version: Version, limits: Limits) -> Outcome {
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
    assert!(
        dec.bytes_examined() <= 5 * start as u64 + calls,
        "{} examined for {start} bytes in {calls} calls",
        dec.bytes_examined()
    );
    Outcome {
        frames,
        error: None,
    }
}

//! Bounded, stable-toolchain stand-in for the `stomp_decoder` fuzz target (fuzz/).
//!
//! 200,000 inputs from a seeded RNG: valid frames mutated (bit flips, interesting bytes
//! inserted, bytes dropped or repeated, truncation), fed to the decoder whole and in
//! random pieces. Checks: no panic; splitting changes neither the frames nor whether
//! the stream ends in an error; limits hold for each frame and for what stays
//! buffered; the work done stays linear in the bytes received. Deterministic: a
//! failure reproduces with the same seed.

use radiovis::stomp::{Command, Frame, Limits, Version};

#[path = "../../fuzz/common/decoder.rs"]
mod decoder;
use decoder::decode;

const INPUTS: usize = 200_000;

/// xorshift64*: tiny, seeded, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const SMALL: Limits = Limits {
    max_frame_size: 256,
    max_headers: 4,
    max_header_line: 32,
};

/// Bytes that matter to the codec, for insertion.
const INTERESTING: &[u8] = b"\n\r\0:\\cnr0123456789";

fn seed_frames() -> Vec<Frame> {
    vec![
        Frame::new(Command::Connect)
            .header("accept-version", "1.0,1.1,1.2")
            .header("login", "a:b"),
        Frame::new(Command::Send)
            .header("destination", "/topic/fm/4e1/4001/09580/text")
            .header("link", "x:\\y\nz")
            .body(&b"TEXT hi"[..]),
        Frame::new(Command::Subscribe)
            .header("destination", "/topic/fm/*/4001/*/image")
            .header("id", "0"),
        Frame::new(Command::Message)
            .header("content-type", "text/plain")
            .body(&b"a\0b\r\nc"[..]),
        Frame::new(Command::Other("TEST".into())),
        Frame::new(Command::Disconnect).header("receipt", "r\r"),
    ]
}

fn mutate(rng: &mut Rng, wire: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        if wire.is_empty() {
            wire.push(*rng.pick(INTERESTING));
            continue;
        }
        let at = rng.below(wire.len());
        match rng.below(6) {
            0 => wire[at] ^= 1 << rng.below(8),
            1 => wire.insert(at, *rng.pick(INTERESTING)),
            2 => {
                wire.remove(at);
            }
            3 => {
                let b = wire[at];
                let n = rng.below(40);
                wire.splice(at..at, std::iter::repeat_n(b, n));
            }
            4 => wire.truncate(at),
            _ => wire[at] = rng.next() as u8,
        }
    }
}

#[test]
fn mutated_frames_in_random_pieces() {
    let versions = [Version::V1_0, Version::V1_1, Version::V1_2];
    // Encoded once per version: the loop below is what should cost the time.
    let seeds: Vec<Vec<Vec<u8>>> = versions
        .iter()
        .map(|&v| {
            seed_frames()
                .iter()
                .map(|f| f.to_bytes(v).to_vec())
                .collect()
        })
        .collect();
    let mut rng = Rng(0x5eed_2ad1_0c0d_ec01);
    let mut errors = 0usize;
    let mut data = Vec::new();
    for i in 0..INPUTS {
        let v = rng.below(versions.len());
        let version = versions[v];
        let limits = if rng.below(2) == 0 {
            SMALL
        } else {
            Limits::default()
        };
        data.clear();
        for _ in 0..=rng.below(3) {
            if rng.below(4) == 0 {
                data.push(b'\n');
            }
            let seed: &Vec<u8> = rng.pick(&seeds[v]);
            data.extend_from_slice(seed);
        }
        mutate(&mut rng, &mut data);
        let mut cuts: Vec<usize> = (0..rng.below(5))
            .map(|_| rng.below(data.len() + 1))
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let whole = decode(&data, &[], version, limits);
        let split = decode(&data, &cuts, version, limits);
        assert_eq!(
            split.frames, whole.frames,
            "input {i}: {data:?} cut at {cuts:?}"
        );
        assert_eq!(
            split.error.is_some(),
            whole.error.is_some(),
            "input {i}: {data:?} cut at {cuts:?}: {:?} vs {:?}",
            split.error,
            whole.error
        );
        errors += usize::from(whole.error.is_some());
    }
    // The mutations must reach the error paths, not only the happy one.
    assert!(
        errors > INPUTS / 20,
        "only {errors} inputs failed to decode"
    );
}

//! Bounded, stable-toolchain stand-in for the `plugit_json` fuzz target (fuzz/), with
//! the same generator and check (fuzz/common/plugit.rs): 100,000 PlugIt answers from a
//! seeded RNG, of the right shape with arbitrary contents or of any shape, often
//! mutated at the byte level (bit flips, JSON punctuation inserted, truncation, deep
//! nesting), decoded for each action. Checks: no panic; errors are typed
//! (`DirectoryError::BadAnswer`), name the action and never repeat the body; what is
//! decoded is what docs/protocol.md#directory says. Deterministic: a failure
//! reproduces with the same seed.

#![cfg(feature = "plugit")]

#[path = "../../fuzz/common/plugit.rs"]
mod plugit;
#[path = "../../fuzz/common/source.rs"]
mod source;

use radiovis::backend::plugit::answer::{check_auth, Action};

use crate::source::Source;

const INPUTS: usize = 100_000;

/// xorshift64*: tiny, seeded, good enough to draw choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn mutated_answers_decode_as_documented() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..INPUTS {
        let len = (rng.next() % 256) as usize;
        let choices = rng.bytes(len);
        let mut src = Source::new(&choices);
        let action = *src.pick(&Action::ALL);
        if i % 10 == 0 {
            // Raw bytes, as the network could deliver them.
            plugit::check(action, src.rest());
        } else {
            let body = plugit::body(&mut src, action);
            plugit::check(action, &body);
        }
    }
}

/// docs/protocol.md#directory: "a non-zero number is true". Found by the `plugit_json`
/// target: a fraction or an integer above `i64::MAX` was read as false (failed before
/// with `ok: false` for each of these).
#[test]
fn any_non_zero_number_accepts() {
    for result in ["0.5", "-1.5", "18446744073709551615", "1e300", "2"] {
        let body = format!(r#"{{"result": {result}}}"#);
        let answer = check_auth(body.as_bytes()).expect("a number is a valid result");
        assert!(answer.ok, "{result}");
    }
    for result in ["0", "0.0", "-0.0", "null", "false"] {
        let body = format!(r#"{{"result": {result}}}"#);
        let answer = check_auth(body.as_bytes()).expect("a valid result");
        assert!(!answer.ok, "{result}");
    }
}

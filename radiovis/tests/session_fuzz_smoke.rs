//! Bounded, stable-toolchain stand-in for the `session_frames` fuzz target (fuzz/),
//! with the same generator and checks (fuzz/common/session.rs): 1000 random frame
//! sequences (CONNECT/STOMP, SUBSCRIBE, UNSUBSCRIBE, SEND, DISCONNECT, unknown
//! commands; login, passcode, receipt, id, destination, accept-version, heart-beat,
//! content-length... with known or arbitrary values; bodies up to the frame limit),
//! each on its own TCP connection to one hub. Checks: no panic, in the hub's tasks
//! neither; every reply parses as STOMP frames of the negotiated version, only server
//! commands, CONNECTED first, nothing after a 1.1/1.2 ERROR; the hub keeps running;
//! every 100 connections, a fresh radio subscribes and receives what the
//! station publishes and no session or subscription is left. Deterministic inputs: a
//! failure reproduces with the same seed.

#[path = "../../fuzz/common/session.rs"]
mod session;
#[path = "../../fuzz/common/source.rs"]
mod source;

use crate::session::Target;

const INPUTS: usize = 1000;
const CHECK_EVERY: usize = 100;

/// xorshift64*: tiny, seeded, good enough to draw choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn random_frame_sequences_leave_the_hub_serving() {
    session::install_panic_hook(false);
    let target = Target::start();
    target.check_serves();
    let mut rng = Rng(0x5eed_0f5e_5510_2500);
    for i in 1..=INPUTS {
        let len = (rng.next() % 512) as usize;
        let input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        target.input(&input);
        if i % CHECK_EVERY == 0 {
            target.check_serves();
        }
    }
}

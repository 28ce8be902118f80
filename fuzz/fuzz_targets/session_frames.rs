//! Sequences of STOMP frames, built from the input, written to a real hub over TCP
//! (fuzz/common/session.rs): one hub per process, started on first use; one connection
//! per input.
//!
//! Checks: no panic anywhere, the hub's tasks included (the panic hook aborts); every
//! reply parses as STOMP frames of the negotiated version, only server commands,
//! CONNECTED first and once, nothing after a 1.1/1.2 ERROR; the hub keeps running; and
//! every [`CHECK_EVERY`] inputs a fresh radio still subscribes and receives what the
//! station publishes, and no session outlives its connection.

#![no_main]

#[path = "../common/session.rs"]
mod session;
#[path = "../common/source.rs"]
mod source;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

use crate::session::Target;

/// Inputs between two health checks (a check takes a few round trips).
const CHECK_EVERY: u64 = 64;

static TARGET: OnceLock<Target> = OnceLock::new();
static INPUTS: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|data: &[u8]| {
    let target = TARGET.get_or_init(|| {
        session::install_panic_hook(true);
        Target::start()
    });
    target.input(data);
    if INPUTS.fetch_add(1, Ordering::Relaxed) % CHECK_EVERY == 0 {
        target.check_serves();
    }
});

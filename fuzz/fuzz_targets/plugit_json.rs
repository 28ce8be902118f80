//! PlugIt answers through `radiovis::backend::plugit::answer` (what the HTTP client
//! decodes every 2xx body with): arbitrary bytes, and JSON of the right shape or of any
//! shape with arbitrary contents, maybe mutated (fuzz/common/plugit.rs).
//!
//! Checks, besides "no panic": errors are typed (`DirectoryError::BadAnswer`), name
//! the action and never repeat the body; what is decoded is what
//! docs/protocol.md#directory says. Work stays bounded (serde_json refuses nesting
//! deeper than 128 instead of overflowing the stack; libFuzzer's -timeout catches
//! anything slow).

#![no_main]

#[path = "../common/plugit.rs"]
mod plugit;
#[path = "../common/source.rs"]
mod source;

use libfuzzer_sys::fuzz_target;
use radiovis::backend::plugit::answer::Action;

use crate::source::Source;

fuzz_target!(|data: &[u8]| {
    let mut src = Source::new(data);
    if src.byte() & 1 == 0 {
        // Raw bytes, through every action.
        let body = src.rest();
        for action in Action::ALL {
            plugit::check(action, body);
        }
    } else {
        let action = *src.pick(&Action::ALL);
        let body = plugit::body(&mut src, action);
        plugit::check(action, &body);
    }
});

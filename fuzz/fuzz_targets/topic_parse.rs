//! Arbitrary strings through the topic functions: no panic (they slice strings by byte
//! offsets, so multi-byte characters are the interesting input), and their results
//! agree with each other.

#![no_main]

use libfuzzer_sys::fuzz_target;
use radiovis::topic::{channel_of, check_shape, fm_any_frequency, matches};

fuzz_target!(|input: (&str, &str)| {
    let (a, b) = input;
    for s in [a, b] {
        let shape = check_shape(s);
        assert!(matches(s, s), "a topic matches itself");
        let channel = channel_of(s);
        assert!(s.starts_with(channel));
        if s.contains('/') {
            assert!(channel.ends_with('/'));
        }
        if let Some(any) = fm_any_frequency(s) {
            assert!(matches(&any, s), "{any:?} should match {s:?}");
            if shape.is_ok() {
                assert!(check_shape(&any).is_ok(), "{any:?} from {s:?}");
            }
        }
    }
    let _ = matches(a, b);
});

//! Choices read from fuzzer bytes. Shared (with `#[path]`) by the fuzz targets in
#![allow(dead_code)] // each user draws only the choices it needs
//! fuzz/fuzz_targets and their stable smoke versions in radiovis/tests, which feed it
//! bytes from a seeded generator instead of libFuzzer's: one generator, two drivers.
//!
//! Once the bytes run out every choice is 0, so any input, even empty, decodes to a
//! finite structure.

/// A cursor over the input bytes.
pub struct Source<'a> {
    data: &'a [u8],
}

impl<'a> Source<'a> {
    /// Choices drawn from `data`, in order.
    pub fn new(data: &'a [u8]) -> Source<'a> {
        Source { data }
    }

    /// True when every byte has been used.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte (0 once exhausted).
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// A little-endian `u64` from the next eight bytes.
    pub fn u64(&mut self) -> u64 {
        (0..8).fold(0u64, |acc, i| acc | u64::from(self.byte()) << (8 * i))
    }

    /// A number in `0..n` (`n > 0`), from one byte when `n` fits in one.
    pub fn below(&mut self, n: usize) -> usize {
        if n <= 256 {
            usize::from(self.byte()) % n
        } else {
            (self.u64() % n as u64) as usize
        }
    }

    /// True about once in `n` draws; false once the bytes have run out, so that a
    /// short input takes the common path (a complete frame, not a truncated one).
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == n - 1
    }

    /// One of `items` (not empty).
    pub fn pick<'b, T>(&mut self, items: &'b [T]) -> &'b T {
        &items[self.below(items.len())]
    }

    /// Up to `max` raw bytes (the length comes first).
    pub fn bytes(&mut self, max: usize) -> &'a [u8] {
        let len = self.below(max + 1).min(self.data.len());
        let (taken, rest) = self.data.split_at(len);
        self.data = rest;
        taken
    }

    /// Every byte not used yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

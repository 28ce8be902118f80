//! `radiovis-suite`: the root package that owns the top-level `examples/` (clients,
//! embedding, a custom bus) and `tests/` (integration tests over real sockets). The
//! library itself is the `radiovis` crate.

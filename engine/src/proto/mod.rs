//! The sans-IO core: decisions and codecs that touch no socket, file or clock.
//!
//! Everything here is a pure function of its inputs; time (`Instant`s) and randomness (a
//! jitter in `[0, 1)`) come in as arguments, so every decision is unit-tested without a
//! socket. The data plane (`download/`) performs what these decide. Not here: any I/O, any
//! `unsafe` (forbidden for the whole module tree, below).
#![forbid(unsafe_code)]

pub(crate) mod file;
pub(crate) mod http1;
pub(crate) mod plan;
pub(crate) mod retry;
pub(crate) mod sources;

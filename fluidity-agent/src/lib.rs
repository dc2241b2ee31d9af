//! The Fluidity agent: a local HTTP proxy that carries traffic over one tunnel.
//!
//! Not built yet: this crate will expose `run(config, listener, shutdown)` on top of
//! `fluidity-core` (tracked by the agent/server issue).
#![forbid(unsafe_code)]

pub use fluidity_core;

//! The Fluidity server: accepts tunnels and makes the real requests.
//!
//! Not built yet: this crate will expose `run(config, listener, shutdown)` on top of
//! `fluidity-core` (tracked by the agent/server issue).
#![forbid(unsafe_code)]

pub use fluidity_core;

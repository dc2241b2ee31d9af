//! The Fluidity control plane (Wake, Query, CA, Sleep, Kill).
//!
//! Not built yet: tracked by the control-plane issue. AWS SDK crates belong here, never in
//! `fluidity-core`.
#![forbid(unsafe_code)]

pub use fluidity_core;

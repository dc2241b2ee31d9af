//! Fluidity's system tests live in `tests/`: each drives the agent, the server and (for the
//! AWS flow) the control plane together through real sockets, curl, tinyproxy, moto and the
//! built binaries. `cargo test --workspace` builds the binaries they start.
#![forbid(unsafe_code)]

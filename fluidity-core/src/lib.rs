//! Fluidity's transport-agnostic core.
//!
//! Fluidity carries many HTTP exchanges, CONNECT streams and WebSocket sessions over one
//! mutual-TLS connection. This crate holds everything both ends share:
//!
//! - [`envelope`]: the message model (the Go upstream's twelve types plus extensions);
//! - [`codec`]: the Go-compatible JSON lines codec and the binary codec;
//! - [`session`]: the multiplexer as a sans-IO state machine (bytes and time in, bytes and
//!   events out) with per-stream flow control and heartbeats;
//! - [`driver`]: a thin tokio driver that runs a session over any `AsyncRead + AsyncWrite`
//!   and hands out streams that are themselves `AsyncRead + AsyncWrite`;
//! - [`transport`], [`issue`], [`locate`]: the seams binaries and embedders plug into;
//! - [`pki`] and [`tls`]: ARN-bound certificates, the CA's signing rules, the verifiers, and
//!   the mutual-TLS 1.3 transport.
//!
//! See `docs/protocol.md` for the wire format and `docs/security.md` for the trust model.
#![forbid(unsafe_code)]

pub mod backoff;
#[cfg(feature = "cli")]
pub mod cli;
pub mod codec;
#[cfg(feature = "config")]
pub mod config;
pub mod control;
#[cfg(feature = "runtime")]
pub mod driver;
pub mod envelope;
pub mod error;
pub mod headers;
#[cfg(feature = "runtime")]
pub mod http_server;
#[cfg(feature = "runtime")]
pub mod issue;
#[cfg(feature = "runtime")]
pub mod locate;
#[cfg(feature = "tls")]
pub mod pki;
#[cfg(feature = "runtime")]
pub mod relay;
pub mod session;
#[cfg(feature = "runtime")]
pub mod shutdown;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "runtime")]
pub mod transport;

pub use error::{Error, Result};

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
pub mod codec;
pub mod config;
pub mod control;
pub mod driver;
pub mod envelope;
pub mod error;
pub mod headers;
pub mod http_server;
pub mod issue;
pub mod locate;
pub mod pki;
pub mod relay;
pub mod session;
pub mod shutdown;
pub mod tls;
pub mod transport;

pub use error::{Error, Result};

//! Fluidity's transport-agnostic core.
//!
//! Fluidity carries many HTTP exchanges, CONNECT streams and WebSocket sessions over one
//! mutual-TLS connection. This crate holds everything both ends share. The types most
//! programs need are at the root:
//!
//! - the protocol: [`Session`] (the multiplexer as a sans-IO state machine: bytes, events and
//!   time in; bytes and events out), its [`SessionConfig`], [`Event`]s, stream [`Target`]s and
//!   [`Reply`]s, and why things end ([`CloseReason`], [`StreamError`], [`Violation`]);
//! - with the `runtime` feature, its tokio driver: a [`Connection`] hands out streams as
//!   [`StreamHandle`]s (`AsyncRead + AsyncWrite`) and [`IncomingStream`]s;
//! - the seams binaries and embedders plug into: [`Transport`] (how tunnels are made:
//!   [`TlsTransport`], [`WebSocketTransport`], [`TcpTransport`], [`MemoryTransport`]),
//!   [`CertIssuer`] (who signs certificates) and [`ServerLocator`] (where the server is);
//! - [`Backoff`], the one retry schedule; [`Error`] and [`Result`].
//!
//! Modules hold the rest: [`envelope`] and [`codec`] (the wire format), [`pki`] and [`tls`]
//! (ARN-bound certificates and mutual TLS 1.3), [`transport`] (transports and socket set-up),
//! [`config`], [`control`] (the control plane's wire types), [`relay`], [`http_server`],
//! [`headers`], [`shutdown`] and `cli`.
//!
//! Features: `runtime` (tokio driver, transports, seams), `tls` (PKI and mutual TLS),
//! `config` (YAML configuration), all three by default; `cli` (logging set-up for binaries).
//! Without default features the crate is the protocol alone: no tokio, rustls or YAML.
//!
//! See `docs/protocol.md` for the wire format and `docs/security.md` for the trust model.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backoff;
#[cfg(feature = "cli")]
pub mod cli;
pub mod codec;
#[cfg(feature = "config")]
pub mod config;
pub mod control;
#[cfg(feature = "runtime")]
mod driver;
pub mod envelope;
mod error;
pub mod headers;
#[cfg(feature = "runtime")]
pub mod http_server;
#[cfg(feature = "runtime")]
mod issue;
#[cfg(feature = "runtime")]
mod locate;
#[cfg(feature = "tls")]
pub mod pki;
#[cfg(feature = "runtime")]
pub mod relay;
mod session;
#[cfg(feature = "runtime")]
pub mod shutdown;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "runtime")]
pub mod transport;

pub use backoff::Backoff;
pub use codec::CodecKind;
#[cfg(feature = "runtime")]
pub use driver::{Connection, Driver, IncomingStream, StreamHandle, StreamReader, StreamWriter};
pub use envelope::RefusalCode;
pub use error::{BoxError, Error, Result};
#[cfg(feature = "runtime")]
pub use issue::{CertIssuer, FnIssuer, IssuedCertificate};
#[cfg(feature = "runtime")]
pub use locate::{ServerInfo, ServerLocator, StaticLocator};
pub use session::{
    Buffered, Chunk, CloseReason, Event, Recv, Refusal, Reply, Role, Session, SessionConfig,
    StreamError, Target, Violation,
};
#[cfg(feature = "tls")]
pub use tls::{TlsTransport, WebSocketTransport};
#[cfg(feature = "runtime")]
pub use transport::{Established, MemoryTransport, TcpTransport, Transport};

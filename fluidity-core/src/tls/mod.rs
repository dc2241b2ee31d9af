//! Mutual TLS 1.3 for tunnel connections: the [`TlsAcceptor`] (server side), the
//! [`TlsConnector`] (agent side) and [`TlsTransport`], which puts them behind the
//! [`Transport`](crate::Transport) seam over TCP.
//!
//! Both sides verify each other (see [`crate::pki::verify`]); ALPN `fluidity/2` selects the
//! binary codec, no ALPN (a Go peer) the JSON codec. Every handshake has a deadline, and the
//! server reads the ClientHello before anything else, so a TCP connection that never speaks
//! TLS costs a timer, not a certificate signing.

mod acceptor;
mod client;
mod connector;
mod read_ahead;
mod transport;
mod websocket;
mod ws_bytes;

use std::time::Duration;

pub use acceptor::TlsAcceptor;
pub use client::{ClientIdentity, TlsClient};
pub use connector::TlsConnector;
pub use read_ahead::{READ_AHEAD, ReadAhead};
pub use tokio_rustls::TlsStream;

/// A tunnel's mutual TLS straight over TCP, with [`ReadAhead`] under rustls (what
/// [`TlsTransport`] and [`TlsConnector::connect`] make).
pub type TlsTcpStream = TlsStream<ReadAhead<tokio::net::TcpStream>>;
pub use transport::TlsTransport;
pub use websocket::{TunnelStream, WebSocketClient, WebSocketServer, WebSocketTransport};
pub use ws_bytes::WsBytes;

use crate::error::Error;
use crate::pki::Rejection;

/// Default deadline for a whole TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default deadline for a client's complete ClientHello, counted from the TCP accept: a
/// connection that says nothing (or dribbles) loses its handshake slot quickly.
pub const DEFAULT_CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Default deadline for the TCP connect to the server.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Most encrypted bytes rustls holds for the socket (its default is 64 KiB). A write to the
/// tunnel encrypts up to this much before it goes to the socket as one `writev`: at 64 KiB the
/// sender made three times the system calls, and woke the peer three times as often, for the
/// same bytes (docs/performance.md). It is also the most a tunnel holds in rustls while its
/// peer does not read, beside the session's output (`transmit_high_water`).
pub(crate) const SEND_BUFFER_LIMIT: usize = 256 * 1024;

/// Applies [`SEND_BUFFER_LIMIT`] to a tunnel's TLS connection once its handshake is done
/// (either side).
pub(crate) fn limit_send_buffer<Data>(connection: &mut rustls::ConnectionCommon<Data>) {
    connection.set_buffer_limit(Some(SEND_BUFFER_LIMIT));
}

/// Turns a failed handshake's I/O error into the most precise [`Error`].
pub(crate) fn handshake_error(context: String, error: std::io::Error) -> Error {
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(tls) => match Rejection::from_tls_error(tls) {
            Some(rejection) => Error::CertificateRejected(rejection),
            None => Error::Tls {
                context,
                source: tls.clone(),
            },
        },
        None => Error::io(context, error),
    }
}

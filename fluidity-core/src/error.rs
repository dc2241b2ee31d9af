//! The crate's one error type.

use std::time::Duration;

use crate::codec::FrameError;
use crate::envelope::StreamId;
use crate::session::{CloseReason, StreamError};

/// Everything that can go wrong in `fluidity-core`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The byte stream is not a sequence of envelopes; the connection is closed.
    #[error(transparent)]
    Frame(#[from] FrameError),

    /// An envelope could not be encoded (e.g. a payload field outside the wire format's range).
    #[error("cannot encode {kind}: {reason}")]
    Encode {
        /// Envelope type.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },

    /// The tunnel is closed.
    #[error("tunnel closed: {0}")]
    Closed(CloseReason),

    /// A stream ended (refused, reset, the tunnel closed under it); other streams are
    /// unaffected unless the tunnel closed.
    #[error("stream {id}: {error}")]
    Stream {
        /// The stream.
        id: StreamId,
        /// Why.
        error: StreamError,
    },

    /// The stream id is not (or no longer) known to this session.
    #[error("unknown stream {0}")]
    UnknownStream(StreamId),

    /// The operation does not fit the stream's state (e.g. writing after `finish`).
    #[error("stream {id}: {reason}")]
    StreamState {
        /// The stream.
        id: StreamId,
        /// What is not allowed.
        reason: &'static str,
    },

    /// The session already runs its maximum number of concurrent streams.
    #[error("too many concurrent streams (limit {0})")]
    TooManyStreams(usize),

    /// A transport, certificate or locator operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A peer's certificate (or its absence, or its TLS version) was rejected during or right
    /// after the TLS handshake; the reason names what was expected and what was found.
    #[cfg(feature = "tls")]
    #[error("peer rejected: {0}")]
    CertificateRejected(#[source] crate::pki::Rejection),

    /// The TLS layer failed for a reason other than a certificate check (the peer's alert,
    /// a protocol error, an unusable key).
    #[cfg(feature = "tls")]
    #[error("{context}: {source}")]
    Tls {
        /// What was being done.
        context: String,
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },

    /// Certificate or key material could not be parsed, generated or used.
    #[error("{context}: {reason}")]
    Certificate {
        /// Which material (a file name, "CA certificate", ...).
        context: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The CA refused a certificate signing request.
    #[cfg(feature = "tls")]
    #[error("certificate request refused: {0}")]
    CsrRefused(#[source] crate::pki::CsrRefusal),

    /// The certificate issuer (CA service, local CA) could not be reached, failed, or returned
    /// a certificate that does not fit. The issuer's own error is the source (a
    /// `fluidity_aws::Error` for the CA service, for instance) and is part of the message.
    #[error("certificate issuer failed: {0}")]
    Issuer(#[source] BoxError),

    /// The server could not be found or started (a [`crate::ServerLocator`] failed); the
    /// locator's own error is the source.
    #[error("finding the server failed: {0}")]
    Locate(#[source] BoxError),

    /// A configuration value is missing, malformed or inconsistent.
    #[error("configuration error in {origin}: {reason}")]
    Config {
        /// Where the value came from (file and key, environment variable, flag).
        origin: String,
        /// What is wrong.
        reason: String,
    },

    /// An operation did not finish within its time limit.
    #[error("{0} timed out after {1:?}")]
    Timeout(&'static str, Duration),
}

/// Any error, for the sources of errors that embedders' implementations produce.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl Error {
    /// An issuer failure; `source` may be a message (`String`, `&str`) or any error.
    pub fn issuer(source: impl Into<BoxError>) -> Self {
        Error::Issuer(source.into())
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Wraps a certificate/key problem with the material it concerns.
    pub fn certificate(context: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Error::Certificate {
            context: context.into(),
            reason: reason.to_string(),
        }
    }

    /// Whether this error means the whole tunnel is gone (as opposed to one stream).
    pub fn is_connection_level(&self) -> bool {
        matches!(self, Error::Frame(_) | Error::Closed(_))
    }

    /// The peer's refusal (code and reason), if the peer refused to open the stream.
    pub fn refusal(&self) -> Option<&crate::session::Refusal> {
        match self {
            Error::Stream {
                error: StreamError::Refused(refusal),
                ..
            } => Some(refusal),
            _ => None,
        }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for std::io::Error {
    fn from(err: Error) -> Self {
        let kind = match &err {
            Error::Stream {
                error: StreamError::Refused(_),
                ..
            } => std::io::ErrorKind::ConnectionRefused,
            Error::Stream {
                error: StreamError::TunnelClosed(_),
                ..
            }
            | Error::Closed(_) => std::io::ErrorKind::ConnectionAborted,
            Error::Stream { .. } => std::io::ErrorKind::ConnectionReset,
            Error::Timeout(..) => std::io::ErrorKind::TimedOut,
            #[cfg(feature = "tls")]
            Error::CertificateRejected(_) | Error::Tls { .. } => std::io::ErrorKind::InvalidData,
            Error::Io { source, .. } => source.kind(),
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, err)
    }
}

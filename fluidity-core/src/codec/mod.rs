//! Turning envelopes into bytes and back.
//!
//! Two wire formats share one [`Codec`] trait:
//! - [`JsonCodec`]: the Go upstream's format, one compact JSON object plus `\n` per envelope,
//!   base64 for bytes. Used when TLS negotiated no ALPN (every Go peer).
//! - [`BinaryCodec`]: length-prefixed frames carrying raw bytes. Used when both peers negotiated
//!   ALPN [`ALPN_BINARY`].
//!
//! Both enforce a maximum frame size *before* buffering or allocating a large frame.

mod binary;
mod json;

pub use binary::BinaryCodec;
pub use json::JsonCodec;

use bytes::BytesMut;

use crate::envelope::{Envelope, StreamId};
use crate::error::Result;

/// ALPN protocol id that selects the binary codec between Rust peers.
pub const ALPN_BINARY: &[u8] = b"fluidity/2";

/// Default largest frame a decoder accepts: 1 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 1024 * 1024;

/// What a decoder produced from one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A well-formed envelope.
    Envelope(Envelope),
    /// A well-framed envelope this side ignores: an unknown `type`, or a payload whose fields do
    /// not fit (Go peers skip these too). The connection stays up.
    Skipped {
        /// The envelope's `type`.
        kind: String,
        /// Why it was skipped.
        reason: String,
    },
    /// (JSON) The head of a long `http_request` or `http_response` line: the envelope with an
    /// empty body, which follows as [`Decoded::LineBody`] pieces and one
    /// [`Decoded::LineEnd`]. A Go peer's body of any size is thus never held whole.
    LineStart(Envelope),
    /// (JSON) The next piece of the current line's body.
    LineBody(bytes::Bytes),
    /// (JSON) The current line ended. `aborted`: the sender abandoned the body midway (it cut
    /// the base64 with a character outside the alphabet), with its reason if it gave one.
    LineEnd {
        /// Why the body is incomplete, if it is.
        aborted: Option<String>,
    },
}

/// Why a byte stream is not a sequence of frames (the connection is then closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame announced or reached more bytes than the decoder accepts.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Bytes announced (binary) or seen so far without a frame end (JSON).
        size: usize,
        /// The decoder's limit.
        limit: usize,
    },
    /// Not an envelope: bad JSON, a missing `type`, a truncated binary header.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// A wire format: envelopes in, bytes out; bytes in, envelopes out.
///
/// Decoding is incremental: `decode` consumes one whole frame from the front of `src` and
/// returns `Ok(None)` while the frame is incomplete. An `Err` means the stream is corrupt and the
/// connection must be closed.
pub trait Codec: Send + std::fmt::Debug {
    /// Appends the encoding of `envelope` to `dst`.
    fn encode(&mut self, envelope: &Envelope, dst: &mut BytesMut) -> Result<()>;

    /// Appends one data frame encoded straight from a borrowed slice (the hot path: no
    /// intermediate [`Envelope`] and no extra copy).
    fn encode_data(&mut self, frame: DataFrame<'_>, dst: &mut BytesMut) -> Result<()>;

    /// Starts an `http_request` or `http_response` whose body follows in pieces
    /// ([`Codec::encode_line_body`]) and ends with [`Codec::encode_line_end`]; nothing else
    /// may be encoded in between. Only the JSON codec has such lines (the Go format puts a
    /// whole body in one envelope); the binary codec streams bodies as chunks and refuses.
    fn encode_line_start(&mut self, envelope: &Envelope, dst: &mut BytesMut) -> Result<()>;

    /// Appends body bytes to the line started with [`Codec::encode_line_start`].
    fn encode_line_body(&mut self, data: &[u8], dst: &mut BytesMut);

    /// Ends the line; `aborted` marks the body as incomplete, with a reason (see
    /// [`Decoded::LineEnd`]).
    fn encode_line_end(&mut self, aborted: Option<&str>, dst: &mut BytesMut);

    /// Removes one frame from the front of `src` and decodes it.
    fn decode(&mut self, src: &mut BytesMut) -> std::result::Result<Option<Decoded>, FrameError>;

    /// Which wire format this is.
    fn kind(&self) -> CodecKind;
}

/// A data-carrying envelope whose payload is borrowed.
#[derive(Debug, Clone, Copy)]
pub enum DataFrame<'a> {
    /// `connect_data`.
    Connect(StreamId, &'a [u8]),
    /// `body_chunk`.
    Body(StreamId, &'a [u8]),
    /// `ws_message` with its message type.
    WebSocket(StreamId, u8, &'a [u8]),
}

impl<'a> DataFrame<'a> {
    /// The data the frame carries.
    pub fn data(&self) -> &'a [u8] {
        match *self {
            DataFrame::Connect(_, data)
            | DataFrame::Body(_, data)
            | DataFrame::WebSocket(_, _, data) => data,
        }
    }
}

/// The two wire formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodecKind {
    /// Go-compatible JSON lines.
    Json,
    /// Length-prefixed binary frames.
    Binary,
}

impl CodecKind {
    /// The codec a TLS connection uses, given the ALPN protocol it negotiated.
    pub fn from_alpn(alpn: Option<&[u8]>) -> CodecKind {
        match alpn {
            Some(p) if p == ALPN_BINARY => CodecKind::Binary,
            _ => CodecKind::Json,
        }
    }

    /// A fresh codec of this kind with the given decode limit.
    pub fn new_codec(self, max_frame_size: usize) -> Box<dyn Codec> {
        match self {
            CodecKind::Json => Box::new(JsonCodec::new(max_frame_size)),
            CodecKind::Binary => Box::new(BinaryCodec::new(max_frame_size)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_selects_the_codec() {
        assert_eq!(CodecKind::from_alpn(Some(b"fluidity/2")), CodecKind::Binary);
        assert_eq!(CodecKind::from_alpn(None), CodecKind::Json);
        assert_eq!(CodecKind::from_alpn(Some(b"h2")), CodecKind::Json);
    }
}

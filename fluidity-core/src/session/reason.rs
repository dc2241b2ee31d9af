//! Why a tunnel or a stream ended, as types: callers match variants, never message text.

use std::time::Duration;

use crate::codec::FrameError;
use crate::envelope::RefusalCode;

/// Why a tunnel closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CloseReason {
    /// This side closed it ([`crate::Connection::close`]); the text says why.
    #[error("closed: {0}")]
    Local(String),
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    PeerClosed,
    /// A peer that announced heartbeats was silent this long.
    #[error("peer silent for {0:?}: heartbeat timeout")]
    HeartbeatTimeout(Duration),
    /// The peer read nothing we sent for this long.
    #[error("the peer read nothing for {0:?}")]
    WriteStalled(Duration),
    /// The byte stream is not a sequence of frames.
    #[error("corrupt byte stream: {0}")]
    Corrupt(FrameError),
    /// The peer broke a connection-wide rule.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Reading or writing the socket failed.
    #[error("{context}: {message}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The kind of the I/O error.
        kind: std::io::ErrorKind,
        /// Its message.
        message: String,
    },
}

impl CloseReason {
    /// An I/O failure while doing `context`.
    pub fn io(context: &'static str, error: &std::io::Error) -> Self {
        CloseReason::Io {
            context,
            kind: error.kind(),
            message: error.to_string(),
        }
    }

    /// Whether the tunnel ended because something went wrong (as opposed to an orderly close
    /// by either side).
    pub fn is_failure(&self) -> bool {
        !matches!(self, CloseReason::Local(_) | CloseReason::PeerClosed)
    }
}

/// What a peer did wrong on one stream (that stream is reset; the others carry on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// A frame for a stream id this session does not know.
    #[error("unknown stream id")]
    UnknownStream,
    /// An open for an id already in use.
    #[error("duplicate open of a stream id in use")]
    DuplicateOpen,
    /// A server tried to open a stream.
    #[error("only the client opens streams")]
    OnlyClientOpens,
    /// An answer (ack, response head) that does not fit the stream.
    #[error("unexpected answer to an open")]
    UnexpectedAnswer,
    /// More data than the stream's window allows.
    #[error("flow-control window exceeded")]
    WindowExceeded,
    /// More data than the connection's window allows.
    #[error("connection flow-control window exceeded")]
    ConnectionWindowExceeded,
    /// Credit beyond 2^31 − 1.
    #[error("flow-control window overflow")]
    WindowOverflow,
    /// Data of another kind than the stream's (body data on a CONNECT stream, ...).
    #[error("data of the wrong kind for this stream")]
    WrongKind,
    /// Data after the peer's end of stream.
    #[error("data after end of stream")]
    DataAfterEnd,
    /// Data before the stream was accepted.
    #[error("data before the stream was accepted")]
    DataBeforeAccept,
    /// The end of stream, twice.
    #[error("end of stream twice")]
    EndTwice,
    /// The end of a stream we opened, before the peer answered the open.
    #[error("end of stream before the answer to the open")]
    EndBeforeAnswer,
    /// A whole-body HTTP envelope (the Go dialect) on a binary session.
    #[error("a whole-body HTTP envelope on a binary session")]
    WholeBodyOnBinary,
}

/// A peer's refusal to open a stream: what kind, and its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refusal {
    /// The kind (`Other` from peers that send none, such as Go servers).
    pub code: RefusalCode,
    /// The peer's message.
    pub reason: String,
}

/// Why a stream ended before both sides finished it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The peer refused to open it (target unreachable, egress denied, ...).
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The peer reset it: its reason.
    #[error("reset by the peer: {0}")]
    PeerReset(String),
    /// The peer broke a stream rule; this side reset it.
    #[error("protocol violation: {0}")]
    Violation(Violation),
    /// This side reset it (the application, or a dropped handle): the reason sent along.
    #[error("reset: {0}")]
    Reset(String),
    /// The whole tunnel closed.
    #[error("tunnel closed: {0}")]
    TunnelClosed(CloseReason),
}

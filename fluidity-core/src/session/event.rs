//! What a session tells its driver and application.

use super::{Chunk, CloseReason, Refusal, Reply, StreamError, Target};
use crate::envelope::{Hello, IamAuthRequest, IamAuthResponse, StreamId};

/// Something the application should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// (Server) the peer opened a stream; answer with [`Session::accept`](crate::Session::accept) or [`Session::refuse`](crate::Session::refuse).
    Incoming {
        /// The new stream.
        id: StreamId,
        /// What it wants to reach.
        target: Target,
    },
    /// (Client) the peer accepted a stream.
    Accepted {
        /// The stream.
        id: StreamId,
        /// The answer (the response head for HTTP).
        reply: Reply,
    },
    /// (Client) the peer refused a stream.
    Refused {
        /// The stream.
        id: StreamId,
        /// The peer's code and reason.
        refusal: Refusal,
    },
    /// Data (or the end of data) is ready for [`Session::recv`](crate::Session::recv).
    Readable(StreamId),
    /// Send credit or buffer space became available to a writer that had to wait.
    Writable(StreamId),
    /// The stream died: reset by the peer or by a protocol violation. Only it is affected.
    Reset {
        /// The stream.
        id: StreamId,
        /// Why.
        error: StreamError,
    },
    /// The peer announced its extensions.
    PeerHello(Hello),
    /// (Server) a Go agent authenticated with `iam_auth_request`; it was answered `ok`
    /// (mutual TLS is the real authentication).
    IamAuth(IamAuthRequest),
    /// (Client) the answer to our `iam_auth_request`.
    IamAuthResponse(IamAuthResponse),
    /// The tunnel is closed; every stream is gone.
    Closed(CloseReason),
}

/// What [`Session::recv`](crate::Session::recv) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recv {
    /// Bytes (or one whole WebSocket message).
    Data(Chunk),
    /// The peer finished sending; nothing more will come.
    End,
    /// Nothing yet: wait for [`Event::Readable`].
    Pending,
}

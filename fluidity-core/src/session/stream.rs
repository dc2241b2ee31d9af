//! One multiplexed stream: what it carries, where it is in its life, and its buffers.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::flow::{RecvWindow, SendWindow};
use crate::envelope::Headers;

/// What a stream opens on the far side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An HTTP exchange; the request body follows as stream data.
    Http {
        /// Request method.
        method: String,
        /// Absolute URL.
        url: String,
        /// Request headers.
        headers: Headers,
    },
    /// A raw TCP stream to `host:port` (HTTP CONNECT).
    Connect {
        /// The CONNECT authority.
        address: String,
    },
    /// A WebSocket session whose data are whole messages (Go `ws_open`).
    WebSocket {
        /// `ws://` or `wss://` URL.
        url: String,
        /// Handshake headers.
        headers: Headers,
    },
}

/// How the far side answered an open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The HTTP response head; the body follows as stream data.
    Http {
        /// Status code.
        status_code: u16,
        /// Response headers.
        headers: Headers,
    },
    /// The TCP connection to the target is up.
    Connect,
    /// The WebSocket handshake with the target succeeded.
    WebSocket,
}

/// The kind of a stream, which fixes its envelope types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Http,
    Connect,
    WebSocket,
}

impl Target {
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Target::Http { .. } => Kind::Http,
            Target::Connect { .. } => Kind::Connect,
            Target::WebSocket { .. } => Kind::WebSocket,
        }
    }
}

/// Where the open handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// We opened it and wait for the peer's answer.
    Opening,
    /// The peer opened it and our application has not answered yet.
    Incoming,
    /// Accepted: data may flow.
    Open,
    /// Refused or reset: only `release` remains.
    Dead,
}

/// A chunk of received data. `ws_type` is the WebSocket message type on WebSocket streams,
/// 0 elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The bytes.
    pub data: Bytes,
    /// WebSocket message type (see [`crate::envelope::ws_type`]) or 0.
    pub ws_type: u8,
}

impl Chunk {
    /// Bytes of a CONNECT stream or an HTTP body (no WebSocket type).
    pub(crate) fn plain(data: Bytes) -> Self {
        Chunk { data, ws_type: 0 }
    }
}

#[derive(Debug)]
pub(crate) struct Stream {
    pub(crate) kind: Kind,
    /// The peer does not speak the extensions (Go): whole-body HTTP, no credit, no half-close.
    pub(crate) legacy: bool,
    pub(crate) phase: Phase,
    /// Why the stream died, reported to the application on its next call.
    pub(crate) error: Option<super::StreamError>,

    pub(crate) recv: VecDeque<Chunk>,
    pub(crate) recv_buffered: usize,
    pub(crate) recv_window: RecvWindow,
    /// The peer sent its last byte.
    pub(crate) recv_fin: bool,

    pub(crate) send_window: SendWindow,
    /// We sent our last byte.
    pub(crate) send_fin: bool,
    /// The peer can no longer receive (a Go-style full close arrived).
    pub(crate) send_closed: bool,
    /// The application waits for send credit.
    pub(crate) send_blocked: bool,

    /// Legacy HTTP: a Go peer needs the whole body in one envelope, so it is held here until
    /// `finish` (bounded by `SessionConfig::max_legacy_body`).
    pub(crate) legacy_body: BytesMut,
    /// Legacy HTTP, server side: the response head waiting for the body to complete.
    pub(crate) legacy_reply: Option<(u16, Headers)>,
    /// Legacy HTTP, client side: the request head waiting for the body to complete.
    pub(crate) legacy_target: Option<Target>,
}

impl Stream {
    pub(crate) fn new(
        kind: Kind,
        legacy: bool,
        phase: Phase,
        recv_window: u32,
        send_window: Option<u32>,
    ) -> Self {
        Stream {
            kind,
            legacy,
            phase,
            error: None,
            recv: VecDeque::new(),
            recv_buffered: 0,
            recv_window: RecvWindow::new(recv_window),
            recv_fin: false,
            send_window: SendWindow::new(send_window),
            send_fin: false,
            send_closed: false,
            send_blocked: false,
            legacy_body: BytesMut::new(),
            legacy_reply: None,
            legacy_target: None,
        }
    }

    /// Both directions are over and everything received was consumed.
    pub(crate) fn is_done(&self) -> bool {
        self.phase == Phase::Dead
            || ((self.send_fin || self.send_closed) && self.recv_fin && self.recv.is_empty())
    }
}

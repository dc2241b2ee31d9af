//! The message model: every envelope that crosses a tunnel.
//!
//! The first twelve variants are the Go upstream's message types with its exact payload fields
//! (see `docs/protocol.md`). The rest are extensions that only Rust peers send; Go peers skip
//! unknown `type`s, so a Rust peer can always offer them.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;

/// HTTP header map as the Go peer writes it: canonical name → values, keys sorted.
///
/// A `BTreeMap` keeps keys in byte order, which is also Go's `encoding/json` map order, so our
/// JSON output matches Go's byte for byte.
pub type Headers = BTreeMap<String, Vec<String>>;

/// Identifier of one multiplexed stream (an HTTP exchange, a CONNECT tunnel or a WebSocket).
///
/// On the JSON wire it is 16 lowercase hex digits, as the Go agent generates them (8 random
/// bytes); on the binary wire it is a big-endian `u64`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct StreamId(pub u64);

impl StreamId {
    /// Parses the Go textual form: exactly 16 hex digits.
    pub fn parse(text: &str) -> Option<StreamId> {
        if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(text, 16).ok().map(StreamId)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({self})")
    }
}

/// WebSocket message kinds, numbered as in RFC 6455 (and gorilla/websocket).
pub mod ws_type {
    /// A UTF-8 text message.
    pub const TEXT: u8 = 1;
    /// A binary message.
    pub const BINARY: u8 = 2;
    /// A close frame.
    pub const CLOSE: u8 = 8;
    /// A ping frame.
    pub const PING: u8 = 9;
    /// A pong frame.
    pub const PONG: u8 = 10;
}

/// `http_request`: a whole HTTP request in one envelope (Go compat).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpRequest {
    /// Correlation id.
    pub id: StreamId,
    /// Request method, as received by the proxy.
    pub method: String,
    /// Absolute target URL.
    pub url: String,
    /// Request headers.
    pub headers: Headers,
    /// The whole request body (omitted on the wire when empty).
    pub body: Bytes,
}

/// `http_response`: a whole HTTP response in one envelope (Go compat).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpResponse {
    /// Echoes the request id.
    pub id: StreamId,
    /// Target status, or 502 for a tunnel-side failure.
    pub status_code: u16,
    /// Response headers.
    pub headers: Headers,
    /// The whole response body (omitted on the wire when empty).
    pub body: Bytes,
    /// Tunnel-side failure text.
    pub error: Option<String>,
}

/// `connect_open`: open a raw TCP stream to `address` (`host:port`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectOpen {
    /// Stream id.
    pub id: StreamId,
    /// The CONNECT authority, verbatim.
    pub address: String,
}

/// `connect_ack`, `ws_ack`: the answer to an open.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ack {
    /// Stream id.
    pub id: StreamId,
    /// Whether the target was reached.
    pub ok: bool,
    /// Why not.
    pub error: Option<String>,
    /// Why not, as a code (`refusal`: an extension; Go peers neither send nor read it).
    pub refusal: Option<RefusalCode>,
}

impl Ack {
    /// A positive answer.
    pub fn accepted(id: StreamId) -> Self {
        Ack {
            id,
            ok: true,
            error: None,
            refusal: None,
        }
    }
}

/// Why a server could not reach a stream's target, as a code a client can act on (a SOCKS5
/// reply, an HTTP status) without reading the message. On the wire: the `refusal` field of a
/// refusing ack, as the lowercase names below; an unknown name reads as `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum RefusalCode {
    /// Anything else (a bad address, an old peer that sent no code).
    #[default]
    Other,
    /// The peer cannot take the stream now: it has as many open as it allows, or it is
    /// shutting down (`unavailable`). Nothing is known to be wrong with the target.
    Unavailable,
    /// The server's egress policy forbids the target (`denied`).
    Denied,
    /// No route to the target's network (`network_unreachable`).
    NetworkUnreachable,
    /// The name does not resolve, or the host does not answer (`host_unreachable`).
    HostUnreachable,
    /// The target refused the connection (`connection_refused`).
    ConnectionRefused,
    /// The target did not answer in time (`timed_out`).
    TimedOut,
}

impl RefusalCode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::Other => "other",
            RefusalCode::Unavailable => "unavailable",
            RefusalCode::Denied => "denied",
            RefusalCode::NetworkUnreachable => "network_unreachable",
            RefusalCode::HostUnreachable => "host_unreachable",
            RefusalCode::ConnectionRefused => "connection_refused",
            RefusalCode::TimedOut => "timed_out",
        }
    }

    /// From a wire name (unknown names, from newer peers, are `Other`).
    pub fn from_wire(name: &str) -> Self {
        match name {
            "unavailable" => RefusalCode::Unavailable,
            "denied" => RefusalCode::Denied,
            "network_unreachable" => RefusalCode::NetworkUnreachable,
            "host_unreachable" => RefusalCode::HostUnreachable,
            "connection_refused" => RefusalCode::ConnectionRefused,
            "timed_out" => RefusalCode::TimedOut,
            _ => RefusalCode::Other,
        }
    }
}

/// `connect_data`, `body_chunk`: bytes of one stream, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Data {
    /// Stream id.
    pub id: StreamId,
    /// The bytes (`chunk` for CONNECT, `data` for bodies).
    pub data: Bytes,
}

/// `connect_close`, `body_end`, `connect_fin`: the end of a stream (or of one direction).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Close {
    /// Stream id.
    pub id: StreamId,
    /// Set when the stream ended abnormally.
    pub error: Option<String>,
}

/// `ws_open`: open a WebSocket to `url`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WsOpen {
    /// Stream id.
    pub id: StreamId,
    /// Target URL (`ws://` or `wss://`; `http(s)://` from Go agents).
    pub url: String,
    /// Client handshake headers.
    pub headers: Headers,
}

/// `ws_message`: one whole WebSocket message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WsMessage {
    /// Stream id.
    pub id: StreamId,
    /// See [`ws_type`].
    pub message_type: u8,
    /// Message payload.
    pub data: Bytes,
}

/// `ws_close`: the WebSocket ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WsClose {
    /// Stream id.
    pub id: StreamId,
    /// Close code (omitted on the wire when 0).
    pub code: u16,
    /// Reason or failure text.
    pub error: Option<String>,
}

/// `iam_auth_request`: the Go server's mandatory first envelope.
///
/// Ids and the timestamp stay strings: they are not stream ids and must round-trip exactly.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IamAuthRequest {
    /// 32 hex digits in Go.
    pub id: String,
    /// RFC 3339 with nanoseconds.
    pub timestamp: String,
    /// Always `tunnel` in Go.
    pub service: String,
    /// AWS region.
    pub region: String,
    /// AWS access key id.
    pub access_key_id: String,
    /// The SigV4 `Authorization` header value of a dummy request.
    pub signature: String,
    /// Always empty in Go.
    pub signed_headers: String,
}

/// `iam_auth_response`: the server's answer to [`IamAuthRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IamAuthResponse {
    /// Echoes the request id.
    pub id: String,
    /// Accepted or not.
    pub ok: bool,
    /// Why not.
    pub error: Option<String>,
    /// Unused by Go; kept for completeness.
    pub session_token: Option<String>,
}

/// Extension `hello`: the first envelope a Rust peer sends; announces what it supports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hello {
    /// Protocol version; this crate speaks [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Capability names, see [`capability`].
    pub capabilities: Vec<String>,
    /// The window every new stream starts with, in bytes, for data the sender receives.
    pub initial_window: u32,
    /// The connection-wide window for data the sender receives.
    pub connection_window: u32,
    /// The largest frame the sender decodes.
    pub max_frame_size: u32,
}

/// This crate's protocol version, sent in [`Hello`].
pub const PROTOCOL_VERSION: u32 = 2;

/// Capability names carried in [`Hello::capabilities`].
pub mod capability {
    /// Credit-based flow control with `window_update`.
    pub const FLOW_CONTROL: &str = "flow_control";
    /// `ping` / `pong` heartbeats.
    pub const HEARTBEAT: &str = "heartbeat";
    /// Streamed HTTP bodies (`http_request_head`, `http_response_head`, `body_chunk`, `body_end`).
    pub const STREAMED_HTTP: &str = "streamed_http";
    /// `connect_fin` half-close and `stream_reset`.
    pub const HALF_CLOSE: &str = "half_close";
}

/// Extension `window_update`: grants the peer `increment` more bytes of data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WindowUpdate {
    /// The stream, or `None` for the connection-wide window.
    pub id: Option<StreamId>,
    /// Bytes granted.
    pub increment: u32,
}

/// Extension `ping` / `pong`: heartbeat; a pong echoes the ping's nonce.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Heartbeat {
    /// Opaque value echoed back.
    pub nonce: u64,
}

/// Extension `http_request_head`: opens an HTTP exchange whose body follows as `body_chunk`s.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpRequestHead {
    /// Stream id.
    pub id: StreamId,
    /// Request method.
    pub method: String,
    /// Absolute target URL.
    pub url: String,
    /// Request headers.
    pub headers: Headers,
}

/// Extension `http_response_head`: the response status and headers; the body follows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpResponseHead {
    /// Stream id.
    pub id: StreamId,
    /// Response status.
    pub status_code: u16,
    /// Response headers.
    pub headers: Headers,
}

/// Extension `stream_reset`: abort a stream of any kind, both directions, with a reason.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamReset {
    /// Stream id.
    pub id: StreamId,
    /// Why.
    pub error: String,
    /// Why, as a code, when a server refuses an HTTP stream before answering it.
    pub refusal: Option<RefusalCode>,
}

/// One message on the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope {
    /// `iam_auth_request` (Go).
    IamAuthRequest(IamAuthRequest),
    /// `iam_auth_response` (Go).
    IamAuthResponse(IamAuthResponse),
    /// `http_request` (Go): whole request.
    HttpRequest(HttpRequest),
    /// `http_response` (Go): whole response.
    HttpResponse(HttpResponse),
    /// `connect_open` (Go).
    ConnectOpen(ConnectOpen),
    /// `connect_ack` (Go).
    ConnectAck(Ack),
    /// `connect_data` (Go).
    ConnectData(Data),
    /// `connect_close` (Go): full close of a CONNECT stream.
    ConnectClose(Close),
    /// `ws_open` (Go).
    WsOpen(WsOpen),
    /// `ws_ack` (Go).
    WsAck(Ack),
    /// `ws_message` (Go).
    WsMessage(WsMessage),
    /// `ws_close` (Go).
    WsClose(WsClose),
    /// `hello` (extension).
    Hello(Hello),
    /// `window_update` (extension).
    WindowUpdate(WindowUpdate),
    /// `ping` (extension).
    Ping(Heartbeat),
    /// `pong` (extension).
    Pong(Heartbeat),
    /// `http_request_head` (extension).
    HttpRequestHead(HttpRequestHead),
    /// `http_response_head` (extension).
    HttpResponseHead(HttpResponseHead),
    /// `body_chunk` (extension).
    BodyChunk(Data),
    /// `body_end` (extension): the sender's body is complete (or aborted, with `error`).
    BodyEnd(Close),
    /// `connect_fin` (extension): the sender will send no more bytes on this stream.
    ConnectFin(Close),
    /// `stream_reset` (extension).
    StreamReset(StreamReset),
}

impl Envelope {
    /// The `type` string on the JSON wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            Envelope::IamAuthRequest(_) => "iam_auth_request",
            Envelope::IamAuthResponse(_) => "iam_auth_response",
            Envelope::HttpRequest(_) => "http_request",
            Envelope::HttpResponse(_) => "http_response",
            Envelope::ConnectOpen(_) => "connect_open",
            Envelope::ConnectAck(_) => "connect_ack",
            Envelope::ConnectData(_) => "connect_data",
            Envelope::ConnectClose(_) => "connect_close",
            Envelope::WsOpen(_) => "ws_open",
            Envelope::WsAck(_) => "ws_ack",
            Envelope::WsMessage(_) => "ws_message",
            Envelope::WsClose(_) => "ws_close",
            Envelope::Hello(_) => "hello",
            Envelope::WindowUpdate(_) => "window_update",
            Envelope::Ping(_) => "ping",
            Envelope::Pong(_) => "pong",
            Envelope::HttpRequestHead(_) => "http_request_head",
            Envelope::HttpResponseHead(_) => "http_response_head",
            Envelope::BodyChunk(_) => "body_chunk",
            Envelope::BodyEnd(_) => "body_end",
            Envelope::ConnectFin(_) => "connect_fin",
            Envelope::StreamReset(_) => "stream_reset",
        }
    }

    /// The stream this envelope belongs to, if it belongs to one.
    pub fn stream_id(&self) -> Option<StreamId> {
        match self {
            Envelope::HttpRequest(p) => Some(p.id),
            Envelope::HttpResponse(p) => Some(p.id),
            Envelope::ConnectOpen(p) => Some(p.id),
            Envelope::ConnectAck(p) | Envelope::WsAck(p) => Some(p.id),
            Envelope::ConnectData(p) | Envelope::BodyChunk(p) => Some(p.id),
            Envelope::ConnectClose(p) | Envelope::BodyEnd(p) | Envelope::ConnectFin(p) => {
                Some(p.id)
            }
            Envelope::WsOpen(p) => Some(p.id),
            Envelope::WsMessage(p) => Some(p.id),
            Envelope::WsClose(p) => Some(p.id),
            Envelope::WindowUpdate(p) => p.id,
            Envelope::HttpRequestHead(p) => Some(p.id),
            Envelope::HttpResponseHead(p) => Some(p.id),
            Envelope::StreamReset(p) => Some(p.id),
            Envelope::IamAuthRequest(_)
            | Envelope::IamAuthResponse(_)
            | Envelope::Hello(_)
            | Envelope::Ping(_)
            | Envelope::Pong(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_id_text_form_is_16_hex_digits() {
        let id = StreamId::parse("a1b2c3d4e5f60718").unwrap();
        assert_eq!(id.0, 0xa1b2_c3d4_e5f6_0718);
        assert_eq!(id.to_string(), "a1b2c3d4e5f60718");
        assert_eq!(StreamId(1).to_string(), "0000000000000001");
        for bad in [
            "",
            "x",
            "a1b2c3d4e5f6071",
            "a1b2c3d4e5f607189",
            "g1b2c3d4e5f60718",
            "+1b2c3d4e5f60718",
        ] {
            assert_eq!(StreamId::parse(bad), None, "{bad:?}");
        }
    }
}

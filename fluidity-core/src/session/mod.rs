//! The tunnel multiplexer as a sans-IO state machine.
//!
//! A [`Session`] owns no socket and reads no clock. Its driver feeds it received bytes
//! ([`Session::receive`]) and the current time ([`Session::handle_timeout`]), and takes out
//! bytes to send ([`Session::poll_transmit`]) and [`Event`]s. The application opens, accepts,
//! writes, reads, finishes and resets streams through methods that only change state and queue
//! output. Everything is therefore testable deterministically, without sockets or sleeps.
//!
//! Guarantees:
//! - bytes of one stream are delivered in order, exactly once;
//! - with the binary codec (both ends are Rust peers) each stream has its own credit window
//!   (default 256 KiB) and the connection a shared one, so a stalled reader only stops its own
//!   stream; HTTP bodies stream as chunks; CONNECT streams half-close;
//! - a protocol violation on one stream (unknown id, duplicate open, data after end, window
//!   overrun) resets that stream only; only a corrupt byte stream closes the connection;
//! - with the JSON codec the peer may be a Go peer, so streams keep the Go semantics: whole
//!   HTTP bodies (one envelope each, streamed when large: see `docs/protocol.md`), full closes, no credit; memory
//!   stays bounded because the session stops taking input ([`Session::wants_input`]) while
//!   unread data fills the connection window. `hello` and heartbeats still run between Rust
//!   peers over JSON.

mod config;
mod event;
mod flow;
mod input;
mod line;
mod open;
mod output;
mod reason;
mod recv;
mod send;
mod stream;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::codec::{Codec, CodecKind, DataFrame, Decoded};
use crate::envelope::*;
use crate::error::{Error, Result};
pub use config::SessionConfig;
use config::decode_limit;
pub use event::{Event, Recv};
use flow::{RecvWindow, SendWindow};
use open::tunnel_error_response;
use output::Output;
pub use reason::{CloseReason, Refusal, StreamError, Violation};
pub use stream::{Chunk, Reply, Target};
use stream::{Kind, Phase, Stream};

/// What a [`Session`] holds, from [`Session::buffered`], with the bound each part keeps
/// (given a driver that reads input only while [`Session::wants_input`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Buffered {
    /// Unread data of streams with flow control, all together: within `connection_window`.
    pub credited: usize,
    /// The most unread data one of those streams holds: within `initial_window`.
    pub largest_credited: usize,
    /// Unread data of a peer without flow control (Go): input stops once it reaches
    /// `connection_window`, so it stays within that plus one frame.
    pub uncredited: usize,
    /// Request or response bodies held to send whole to a Go peer: within
    /// `max_legacy_buffered`, plus the body of the stream that started first (which may
    /// always finish, and is at most `legacy_line_threshold`; larger bodies stream).
    pub bodies: usize,
    /// Output not yet taken by [`Session::poll_transmit`]: writers stop at
    /// `transmit_high_water` plus one chunk, and input stops a little beyond that.
    pub output: usize,
}

/// Which end of the tunnel this session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The agent: opens streams.
    Client,
    /// The server: accepts streams.
    Server,
}

/// How many recently released stream ids are remembered, so frames still in flight for them
/// are dropped quietly instead of answered with a reset.
const RECENTLY_CLOSED: usize = 4096;

/// Output that replies to the peer's frames (pongs, resets) may add beyond the writers'
/// high-water mark before the session stops reading input (see [`Session::wants_input`]).
const REPLY_ALLOWANCE: usize = 64 * 1024;

/// The longest `iam_auth_request` id answered (Go agents send a UUID); the answer echoes it.
const MAX_IAM_ID: usize = 256;

/// Room asked of the output for a control frame: most fit, a larger one still goes in whole.
const CONTROL_FRAME: usize = 512;

/// A binary data frame's bytes beyond its data: length, type, stream id, WebSocket type.
const DATA_FRAME_OVERHEAD: usize = 4 + 1 + 8 + 1;

/// Bytes of `n` bytes in base64 (JSON lines carry data that way).
fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// Received data chunks shorter than this are copied out of the read buffer instead of
/// sliced from it: a slice keeps the whole buffer allocation alive, and a peer could pin a
/// large allocation with a tiny chunk that the window barely charges.
const ZERO_COPY_MIN: usize = 32 * 1024;

/// A frame longer than this made the read buffer grow; what follows it is moved to a fresh
/// buffer so that later slices never keep the large allocation alive.
const LARGE_FRAME: usize = 64 * 1024;

/// The tunnel multiplexer as a sans-IO state machine.
///
/// A [`Session`] owns no socket and reads no clock. Its driver feeds it received bytes
/// ([`Session::receive`]) and the current time ([`Session::handle_timeout`]), and takes out
/// bytes to send ([`Session::poll_transmit`]) and [`Event`]s. The application opens, accepts,
/// writes, reads, finishes and resets streams through methods that only change state and queue
/// output. Everything is therefore testable deterministically, without sockets or sleeps.
///
/// Guarantees:
/// - bytes of one stream are delivered in order, exactly once;
/// - with the binary codec (both ends are Rust peers) each stream has its own credit window
///   (default 256 KiB) and the connection a shared one, so a stalled reader only stops its own
///   stream; HTTP bodies stream as chunks; CONNECT streams half-close;
/// - a protocol violation on one stream (unknown id, duplicate open, data after end, window
///   overrun) resets that stream only; only a corrupt byte stream closes the connection;
/// - with the JSON codec the peer may be a Go peer, so streams keep the Go semantics: whole
///   HTTP bodies (one envelope each, streamed when large: see `docs/protocol.md`), full closes, no credit; memory
///   stays bounded because the session stops taking input ([`Session::wants_input`]) while
///   unread data fills the connection window. `hello` and heartbeats still run between Rust
///   peers over JSON.
#[derive(Debug)]
pub struct Session {
    role: Role,
    config: SessionConfig,
    codec: Box<dyn Codec>,
    streams: HashMap<StreamId, Stream>,
    recently_closed: HashSet<StreamId>,
    recently_closed_order: VecDeque<StreamId>,
    next_id: u64,
    /// Streams use the extensions (credit, streamed HTTP, half-close): only with the binary
    /// codec, where both ends are Rust peers from the first byte. Over JSON every stream keeps
    /// the Go semantics, because a JSON peer may be a Go peer and both ends must agree on a
    /// stream's semantics without a round trip.
    extensions: bool,
    /// The peer's `hello`.
    peer: Option<Hello>,
    hello_sent: bool,
    conn_recv: RecvWindow,
    conn_send: SendWindow,
    /// Unread bytes held for streams of a peer without flow control.
    legacy_buffered: usize,
    /// Bytes of whole bodies held to send to a peer without flow control...
    legacy_held: usize,
    /// ...and the streams holding them, in the order they started.
    legacy_holders: VecDeque<StreamId>,
    /// A Go agent's `iam_auth_request` was answered (only the first one is).
    iam_answered: bool,
    /// The stream whose whole-body envelope is being written as a streamed line (Go peers):
    /// until it ends, nothing else may be written.
    line_out: Option<line::LineOut>,
    /// Output made while a line was being written, sent when it ends.
    deferred: BytesMut,
    /// The stream of the peer's streamed line being received, if any.
    line_in: Option<StreamId>,
    /// The latest time the driver told us (for the line stall check).
    now: Instant,
    /// Encoded frames waiting for the driver.
    transmit: Output,
    events: VecDeque<Event>,
    closed: Option<CloseReason>,
    last_rx: Instant,
    next_ping: Instant,
    ping_nonce: u64,
    /// A whole frame arrived from the peer: it speaks the protocol (over TLS 1.3 this is also
    /// when the client knows the server accepted its certificate).
    peer_heard: bool,
}

impl Session {
    /// The agent's end. It sends its opening at once: with the binary codec (ALPN
    /// `fluidity/2`: the server is a Rust peer) its `hello`; with JSON (no ALPN: the server may
    /// be the Go server) the Go server's mandatory `iam_auth_request` first, then `hello`.
    pub fn client(codec: CodecKind, config: SessionConfig, now: Instant) -> Self {
        let mut session = Session::new(Role::Client, codec, config, now);
        if codec == CodecKind::Json {
            session.emit(&Envelope::IamAuthRequest(go_iam_request()));
        }
        session.send_hello();
        session
    }

    /// The server's end. With the binary codec it sends `hello` at once; with JSON only in
    /// answer to the agent's, so Go agents see nothing new.
    pub fn server(codec: CodecKind, config: SessionConfig, now: Instant) -> Self {
        Session::new(Role::Server, codec, config, now)
    }

    pub(crate) fn new(role: Role, codec: CodecKind, config: SessionConfig, now: Instant) -> Self {
        let next_id = config
            .first_stream_id
            .unwrap_or_else(|| rand::random::<u64>() >> 1)
            .max(1);
        let mut session = Session {
            role,
            codec: codec.new_codec(decode_limit(codec, &config)),
            streams: HashMap::new(),
            recently_closed: HashSet::new(),
            recently_closed_order: VecDeque::new(),
            next_id,
            extensions: codec == CodecKind::Binary,
            peer: None,
            hello_sent: false,
            conn_recv: RecvWindow::new(config.connection_window),
            // Binary peers grant credit in their `hello`; nothing is sent before it arrives.
            conn_send: SendWindow::new((codec == CodecKind::Binary).then_some(0)),
            legacy_buffered: 0,
            legacy_held: 0,
            legacy_holders: VecDeque::new(),
            iam_answered: false,
            line_out: None,
            deferred: BytesMut::new(),
            line_in: None,
            now,
            transmit: Output::new(),
            events: VecDeque::new(),
            closed: None,
            last_rx: now,
            next_ping: now + config.heartbeat_interval,
            ping_nonce: 0,
            peer_heard: false,
            config,
        };
        if codec == CodecKind::Binary {
            session.send_hello();
        }
        session
    }

    /// Sends `hello` if not yet sent.
    pub(crate) fn send_hello(&mut self) {
        if self.hello_sent {
            return;
        }
        self.hello_sent = true;
        let hello = Hello {
            version: PROTOCOL_VERSION,
            capabilities: [
                capability::FLOW_CONTROL,
                capability::HEARTBEAT,
                capability::STREAMED_HTTP,
                capability::HALF_CLOSE,
            ]
            .map(String::from)
            .to_vec(),
            initial_window: self.config.initial_window,
            connection_window: self.config.connection_window,
            max_frame_size: u32::try_from(self.config.max_frame_size).unwrap_or(u32::MAX),
        };
        self.emit(&Envelope::Hello(hello));
    }

    /// How long the peer may stay silent (or leave our output unread) before the tunnel is
    /// closed.
    pub fn idle_timeout(&self) -> Duration {
        self.config.idle_timeout
    }

    /// This end's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The peer's `hello`, once it arrived (never, for a Go peer).
    pub fn peer_hello(&self) -> Option<&Hello> {
        self.peer.as_ref()
    }

    /// Whether a whole frame has arrived from the peer. Over TLS 1.3 a client's handshake
    /// completes before the server has checked the client's certificate, so only the peer's
    /// first frame proves the tunnel is really up.
    pub fn peer_heard(&self) -> bool {
        self.peer_heard
    }

    /// Why the session closed, if it did.
    pub fn closed_reason(&self) -> Option<&CloseReason> {
        self.closed.as_ref()
    }

    /// Number of streams in the table (open, or dead but not yet released).
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// What the session holds in memory now (see [`Buffered`] for the bound of each part).
    pub fn buffered(&self) -> Buffered {
        let mut held = Buffered {
            output: self.transmit.len() + self.deferred.len(),
            ..Buffered::default()
        };
        for stream in self.streams.values() {
            if stream.legacy {
                held.uncredited += stream.recv_buffered;
                held.bodies += stream.legacy_body.len();
            } else {
                held.credited += stream.recv_buffered;
                held.largest_credited = held.largest_credited.max(stream.recv_buffered);
            }
        }
        held
    }

    pub(super) fn peer_has(&self, cap: &str) -> bool {
        self.peer
            .as_ref()
            .is_some_and(|h| h.capabilities.iter().any(|c| c == cap))
    }

    /// Whether the driver should read more from the socket. `false` while a peer without flow
    /// control has filled the connection window with unread data (backpressure to the socket),
    /// and while output waits beyond what writers may queue: the peer is not reading, and
    /// what it sends (pings, frames for unknown streams) must not make us queue replies
    /// without bound.
    pub fn wants_input(&self) -> bool {
        self.closed.is_none()
            && self.legacy_buffered < self.config.connection_window as usize
            && self.transmit.len() + self.deferred.len() < self.output_limit()
    }

    /// Writers fill the output buffer up to `transmit_high_water` (plus one chunk); replies to
    /// the peer's frames may add this much more before input stops.
    pub(super) fn output_limit(&self) -> usize {
        self.config.transmit_high_water + self.config.max_chunk + REPLY_ALLOWANCE
    }

    /// Feeds received bytes. Complete frames are consumed from `src` while
    /// [`Session::wants_input`] holds; a partial frame stays, and so do whole frames left when
    /// input paused: feed `src` again once `wants_input` returns true, before waiting for more
    /// bytes (the peer may have nothing more to send). An error means the byte stream is
    /// corrupt: the session is closed.
    pub fn receive(&mut self, src: &mut BytesMut, now: Instant) -> Result<()> {
        if let Some(reason) = &self.closed {
            return Err(Error::Closed(reason.clone()));
        }
        if !src.is_empty() {
            self.last_rx = now;
        }
        self.now = self.now.max(now);
        while self.wants_input() {
            let before = src.len();
            let decoded = self.codec.decode(src);
            if before - src.len() > LARGE_FRAME {
                // Later data slices must not pin the allocation the large frame needed.
                *src = BytesMut::from(&src[..]);
            }
            match decoded {
                Ok(Some(Decoded::Envelope(envelope))) => {
                    self.peer_heard = true;
                    self.on_envelope(envelope);
                }
                Ok(Some(Decoded::Skipped { kind, reason })) => {
                    self.peer_heard = true;
                    tracing::debug!(kind, reason, "skipped envelope");
                }
                Ok(Some(Decoded::LineStart(envelope))) => {
                    self.peer_heard = true;
                    self.on_line_start(envelope);
                }
                Ok(Some(Decoded::LineBody(data))) => self.on_line_body(data),
                Ok(Some(Decoded::LineEnd { aborted })) => self.on_line_end(aborted),
                Ok(None) => break,
                Err(err) => {
                    self.close(CloseReason::Corrupt(err.clone()));
                    return Err(err.into());
                }
            }
        }
        Ok(())
    }

    /// The peer closed its side of the connection (EOF).
    pub fn receive_eof(&mut self) {
        self.close(CloseReason::PeerClosed);
    }

    /// Whether output is waiting for [`Session::poll_transmit`].
    pub fn has_transmit(&self) -> bool {
        !self.transmit.is_empty()
    }

    /// Bytes to write to the socket, if any. Taking them frees buffer space for writers.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        let out = self.transmit.take()?;
        self.wake_blocked_writers();
        Some(out)
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Session::handle_timeout`] must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed.is_some() {
            return None;
        }
        let heartbeat = self
            .peer_has(capability::HEARTBEAT)
            .then(|| self.next_ping.min(self.last_rx + self.config.idle_timeout));
        match (heartbeat, self.line_check()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Advances time: sends heartbeats, closes on a silent peer, abandons a stalled line.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.closed.is_some() {
            return;
        }
        self.check_line(now);
        if !self.peer_has(capability::HEARTBEAT) {
            return;
        }
        let silent = now.saturating_duration_since(self.last_rx);
        if silent >= self.config.idle_timeout {
            self.close(CloseReason::HeartbeatTimeout(silent));
            return;
        }
        if now >= self.next_ping {
            self.ping_nonce += 1;
            self.emit(&Envelope::Ping(Heartbeat {
                nonce: self.ping_nonce,
            }));
            self.next_ping = now + self.config.heartbeat_interval;
        }
    }

    /// Closes the session: every stream dies with `reason`.
    pub fn close(&mut self, reason: CloseReason) {
        if self.closed.is_some() {
            return;
        }
        tracing::debug!(%reason, "session closed");
        for stream in self.streams.values_mut() {
            if stream.phase != Phase::Dead {
                stream.phase = Phase::Dead;
                // A stream whose peer had finished sending got all its data: it stays
                // readable to the end (a server that closes right after a download's last
                // bytes must not cut that download). Any other stream is cut short.
                if !stream.recv_fin {
                    stream.error = Some(StreamError::TunnelClosed(reason.clone()));
                }
            }
        }
        self.closed = Some(reason.clone());
        self.events.push_back(Event::Closed(reason));
    }

    pub(super) fn check_open(&self) -> Result<()> {
        match &self.closed {
            Some(reason) => Err(Error::Closed(reason.clone())),
            None => Ok(()),
        }
    }

    pub(super) fn stream_mut(&mut self, id: StreamId) -> Result<&mut Stream> {
        self.streams.get_mut(&id).ok_or(Error::UnknownStream(id))
    }

    /// Queues an envelope: after the streamed line, if one is being written.
    pub(super) fn emit(&mut self, envelope: &Envelope) {
        let out = if self.line_out.is_some() {
            &mut self.deferred
        } else {
            self.transmit.room_for(CONTROL_FRAME)
        };
        if let Err(err) = self.codec.encode(envelope, out) {
            tracing::warn!(%err, "dropping an envelope that cannot be encoded");
        }
    }

    pub(super) fn emit_data(&mut self, frame: DataFrame<'_>) {
        let size = match self.codec.kind() {
            CodecKind::Binary => frame.data().len() + DATA_FRAME_OVERHEAD,
            CodecKind::Json => base64_len(frame.data().len()) + CONTROL_FRAME,
        };
        let out = if self.line_out.is_some() {
            &mut self.deferred
        } else {
            self.transmit.room_for(size)
        };
        if let Err(err) = self.codec.encode_data(frame, out) {
            tracing::warn!(%err, "dropping a data frame that cannot be encoded");
        }
    }

    pub(super) fn wake_blocked_writers(&mut self) {
        let conn = self.conn_send.available();
        // While a line is in flight only whole bodies can move (the line's own, or another
        // one being held): waking the rest would only have them find no room again.
        let line = self.line_out.is_some();
        for (id, stream) in self.streams.iter_mut() {
            let whole_body = stream.legacy && stream.kind == Kind::Http;
            if stream.send_blocked
                && (!line || whole_body)
                && (stream.legacy || (conn > 0 && stream.send_window.available() > 0))
            {
                stream.send_blocked = false;
                self.events.push_back(Event::Writable(*id));
            }
        }
    }
}

/// The Go server's mandatory first envelope. A Go server checks only that `id`,
/// `access_key_id` and `signature` are non-empty and that `timestamp` parses; it verifies
/// nothing (mutual TLS is the real authentication), so placeholders are sent, never AWS
/// credentials.
fn go_iam_request() -> IamAuthRequest {
    IamAuthRequest {
        id: format!("{:032x}", rand::random::<u128>()),
        timestamp: "1970-01-01T00:00:00Z".into(),
        service: "tunnel".into(),
        region: "us-east-1".into(),
        access_key_id: "fluidity-agent".into(),
        signature: "mutual-tls".into(),
        signed_headers: String::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

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
//!   HTTP bodies (bounded by [`SessionConfig::max_legacy_body`]), full closes, no credit; memory
//!   stays bounded because the session stops taking input ([`Session::wants_input`]) while
//!   unread data fills the connection window. `hello` and heartbeats still run between Rust
//!   peers over JSON.

mod flow;
mod stream;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::codec::{Codec, CodecKind, DEFAULT_MAX_FRAME_SIZE, DataFrame, Decoded};
use crate::envelope::*;
use crate::error::{Error, Result};
use flow::{RecvWindow, SendWindow};
pub use stream::{Chunk, Reply, Target};
use stream::{Kind, Phase, Stream};

/// Which end of the tunnel this session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The agent: opens streams.
    Client,
    /// The server: accepts streams.
    Server,
}

/// The decoder's frame limit: `max_frame_size`, except that over JSON a Go peer puts a whole
/// HTTP body (up to `max_legacy_body`) base64-encoded in one envelope, plus its headers.
fn decode_limit(codec: CodecKind, config: &SessionConfig) -> usize {
    match codec {
        CodecKind::Binary => config.max_frame_size,
        CodecKind::Json => config
            .max_frame_size
            .max(config.max_legacy_body.div_ceil(3) * 4 + 256 * 1024),
    }
}

/// Limits and timings of a session. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Largest frame the decoder accepts (default 1 MiB; over JSON at least what a body of
    /// `max_legacy_body` needs, since Go peers send whole bodies in one envelope).
    pub max_frame_size: usize,
    /// Per-stream receive window (default 256 KiB).
    pub initial_window: u32,
    /// Connection-wide receive window: the most unread data all streams together may hold
    /// (default 16 MiB).
    pub connection_window: u32,
    /// Most data bytes per frame (default 32 KiB, what Go peers expect).
    pub max_chunk: usize,
    /// Most concurrent streams; opens beyond it are refused (default 1024).
    pub max_streams: usize,
    /// Output buffered beyond this makes writers wait for the socket (default 1 MiB).
    pub transmit_high_water: usize,
    /// Largest HTTP body held whole for a Go peer (default 16 MiB).
    pub max_legacy_body: usize,
    /// Most bytes of whole bodies held for a Go peer across all streams (default 64 MiB).
    /// Beyond it writers wait, except the stream that started first, which may always
    /// complete its body, so the streams never wait on each other forever.
    pub max_legacy_buffered: usize,
    /// Ping interval when the peer supports heartbeats (default 10 s).
    pub heartbeat_interval: Duration,
    /// Close the tunnel when a heartbeat-capable peer is silent this long (default 30 s).
    pub idle_timeout: Duration,
    /// Stream ids start here and count up (default: random, so two agents never collide on a
    /// Go server, whose CONNECT table is process-wide).
    pub first_stream_id: Option<u64>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            initial_window: 256 * 1024,
            connection_window: 16 * 1024 * 1024,
            max_chunk: 32 * 1024,
            max_streams: 1024,
            transmit_high_water: 1024 * 1024,
            max_legacy_body: 16 * 1024 * 1024,
            max_legacy_buffered: 64 * 1024 * 1024,
            heartbeat_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            first_stream_id: None,
        }
    }
}

/// Something the application should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// (Server) the peer opened a stream; answer with [`Session::accept`] or [`Session::refuse`].
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
        /// The peer's reason.
        reason: String,
    },
    /// Data (or the end of data) is ready for [`Session::recv`].
    Readable(StreamId),
    /// Send credit or buffer space became available to a writer that had to wait.
    Writable(StreamId),
    /// The stream died: reset by the peer or by a protocol violation. Only it is affected.
    Reset {
        /// The stream.
        id: StreamId,
        /// Why.
        reason: String,
    },
    /// The peer announced its extensions.
    PeerHello(Hello),
    /// (Server) a Go agent authenticated with `iam_auth_request`; it was answered `ok`
    /// (mutual TLS is the real authentication).
    IamAuth(IamAuthRequest),
    /// (Client) the answer to our `iam_auth_request`.
    IamAuthResponse(IamAuthResponse),
    /// The tunnel is closed; every stream is gone.
    Closed {
        /// Why.
        reason: String,
    },
}

/// What [`Session::recv`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recv {
    /// Bytes (or one whole WebSocket message).
    Data(Chunk),
    /// The peer finished sending; nothing more will come.
    End,
    /// Nothing yet: wait for [`Event::Readable`].
    Pending,
}

/// How many recently released stream ids are remembered, so frames still in flight for them
/// are dropped quietly instead of answered with a reset.
const RECENTLY_CLOSED: usize = 4096;

/// Output that replies to the peer's frames (pongs, resets) may add beyond the writers'
/// high-water mark before the session stops reading input (see [`Session::wants_input`]).
const REPLY_ALLOWANCE: usize = 64 * 1024;

/// The longest `iam_auth_request` id answered (Go agents send a UUID); the answer echoes it.
const MAX_IAM_ID: usize = 256;

/// Received data chunks shorter than this are copied out of the read buffer instead of
/// sliced from it: a slice keeps the whole buffer allocation alive, and a peer could pin a
/// large allocation with a tiny chunk that the window barely charges.
const ZERO_COPY_MIN: usize = 32 * 1024;

/// A frame longer than this made the read buffer grow; what follows it is moved to a fresh
/// buffer so that later slices never keep the large allocation alive.
const LARGE_FRAME: usize = 64 * 1024;

/// The multiplexer. See the [module docs](self).
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
    transmit: BytesMut,
    events: VecDeque<Event>,
    closed: Option<String>,
    last_rx: Instant,
    next_ping: Instant,
    ping_nonce: u64,
    /// A whole frame arrived from the peer: it speaks the protocol (over TLS 1.3 this is also
    /// when the client knows the server accepted its certificate).
    peer_heard: bool,
}

impl Session {
    /// A new session. With the binary codec (ALPN `fluidity/2`, so the peer is a Rust peer)
    /// both sides send `hello` at once; with JSON a client sends it at once (after an optional
    /// [`Session::send_iam_auth`]) and a server only in answer, so Go agents see nothing new.
    pub fn new(role: Role, codec: CodecKind, config: SessionConfig, now: Instant) -> Self {
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
            transmit: BytesMut::with_capacity(64 * 1024),
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

    /// Sends the Go server's mandatory first envelope (client, JSON codec), then `hello`.
    pub fn send_iam_auth(&mut self, request: IamAuthRequest) {
        self.emit(&Envelope::IamAuthRequest(request));
        self.send_hello();
    }

    /// Sends `hello` if not yet sent. A JSON client calls this (or [`Session::send_iam_auth`])
    /// once after creation.
    pub fn send_hello(&mut self) {
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
    pub fn closed_reason(&self) -> Option<&str> {
        self.closed.as_deref()
    }

    /// Number of streams in the table (open, or dead but not yet released).
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    fn peer_has(&self, cap: &str) -> bool {
        self.peer
            .as_ref()
            .is_some_and(|h| h.capabilities.iter().any(|c| c == cap))
    }

    // -----------------------------------------------------------------------------------------
    // Driver side: bytes, time and events.

    /// Whether the driver should read more from the socket. `false` while a peer without flow
    /// control has filled the connection window with unread data (backpressure to the socket),
    /// and while output waits beyond what writers may queue: the peer is not reading, and
    /// what it sends (pings, frames for unknown streams) must not make us queue replies
    /// without bound.
    pub fn wants_input(&self) -> bool {
        self.closed.is_none()
            && self.legacy_buffered < self.config.connection_window as usize
            && self.transmit.len() < self.output_limit()
    }

    /// Writers fill the output buffer up to `transmit_high_water` (plus one chunk); replies to
    /// the peer's frames may add this much more before input stops.
    fn output_limit(&self) -> usize {
        self.config.transmit_high_water + self.config.max_chunk + REPLY_ALLOWANCE
    }

    /// Feeds received bytes. Complete frames are consumed from `src`; a partial frame stays.
    /// An error means the byte stream is corrupt: the session is closed.
    pub fn receive(&mut self, src: &mut BytesMut, now: Instant) -> Result<()> {
        if let Some(reason) = &self.closed {
            return Err(Error::ConnectionClosed(reason.clone()));
        }
        if !src.is_empty() {
            self.last_rx = now;
        }
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
                Ok(None) => break,
                Err(err) => {
                    self.close(err.to_string());
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// The peer closed its side of the connection (EOF).
    pub fn receive_eof(&mut self) {
        self.close("peer closed the connection".into());
    }

    /// Whether output is waiting for [`Session::poll_transmit`].
    pub fn has_transmit(&self) -> bool {
        !self.transmit.is_empty()
    }

    /// Bytes to write to the socket, if any. Taking them frees buffer space for writers.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if self.transmit.is_empty() {
            return None;
        }
        let out = self.transmit.split().freeze();
        self.wake_blocked_writers();
        Some(out)
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Session::handle_timeout`] must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed.is_some() || !self.peer_has(capability::HEARTBEAT) {
            return None;
        }
        Some(self.next_ping.min(self.last_rx + self.config.idle_timeout))
    }

    /// Advances time: sends heartbeats, closes on a silent peer.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed.is_some() || !self.peer_has(capability::HEARTBEAT) {
            return;
        }
        let silent = now.saturating_duration_since(self.last_rx);
        if silent >= self.config.idle_timeout {
            self.close(Error::HeartbeatTimeout(silent).to_string());
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
    pub fn close(&mut self, reason: String) {
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
                    stream.error = Some(format!("tunnel closed: {reason}"));
                }
            }
        }
        self.closed = Some(reason.clone());
        self.events.push_back(Event::Closed { reason });
    }

    fn check_open(&self) -> Result<()> {
        match &self.closed {
            Some(reason) => Err(Error::ConnectionClosed(reason.clone())),
            None => Ok(()),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Application side.

    /// (Client) opens a stream to `target`; the answer comes as [`Event::Accepted`] or
    /// [`Event::Refused`]. HTTP request bodies may be sent before the answer.
    pub fn open(&mut self, target: Target) -> Result<StreamId> {
        self.check_open()?;
        if self.role != Role::Client {
            return Err(Error::StreamState {
                id: StreamId(0),
                reason: "only the client opens streams",
            });
        }
        if self.streams.len() >= self.config.max_streams {
            return Err(Error::TooManyStreams(self.config.max_streams));
        }
        let id = StreamId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let legacy = !self.extensions;
        let mut stream = self.new_stream(target.kind(), legacy, Phase::Opening);
        match (&target, legacy) {
            (Target::Http { .. }, true) => stream.legacy_target = Some(target),
            (
                Target::Http {
                    method,
                    url,
                    headers,
                },
                false,
            ) => self.emit(&Envelope::HttpRequestHead(HttpRequestHead {
                id,
                method: method.clone(),
                url: url.clone(),
                headers: headers.clone(),
            })),
            (Target::Connect { address }, _) => self.emit(&Envelope::ConnectOpen(ConnectOpen {
                id,
                address: address.clone(),
            })),
            (Target::WebSocket { url, headers }, _) => self.emit(&Envelope::WsOpen(WsOpen {
                id,
                url: url.clone(),
                headers: headers.clone(),
            })),
        }
        self.streams.insert(id, stream);
        Ok(id)
    }

    fn new_stream(&self, kind: Kind, legacy: bool, phase: Phase) -> Stream {
        // Until the peer's hello arrives the window is 0: `on_hello` grants the initial window.
        let send_window = (!legacy).then(|| self.peer.as_ref().map_or(0, |h| h.initial_window));
        Stream::new(kind, legacy, phase, self.config.initial_window, send_window)
    }

    /// The stream, if it still waits for our answer to the peer's open.
    fn incoming_mut(&mut self, id: StreamId, reason: &'static str) -> Result<&mut Stream> {
        let stream = self.stream_mut(id)?;
        if stream.phase != Phase::Incoming {
            return Err(Error::StreamState { id, reason });
        }
        Ok(stream)
    }

    /// (Server) accepts an incoming stream.
    pub fn accept(&mut self, id: StreamId, reply: Reply) -> Result<()> {
        self.check_open()?;
        let stream = self.incoming_mut(id, "only an incoming stream can be accepted")?;
        stream.phase = Phase::Open;
        let legacy = stream.legacy;
        match reply {
            Reply::Connect => self.emit(&Envelope::ConnectAck(Ack {
                id,
                ok: true,
                error: None,
            })),
            Reply::WebSocket => self.emit(&Envelope::WsAck(Ack {
                id,
                ok: true,
                error: None,
            })),
            Reply::Http {
                status_code,
                headers,
            } if legacy => {
                self.stream_mut(id)?.legacy_reply = Some((status_code, headers));
            }
            Reply::Http {
                status_code,
                headers,
            } => self.emit(&Envelope::HttpResponseHead(HttpResponseHead {
                id,
                status_code,
                headers,
            })),
        }
        Ok(())
    }

    /// (Server) refuses an incoming stream; the client sees `reason`.
    pub fn refuse(&mut self, id: StreamId, reason: &str) -> Result<()> {
        self.check_open()?;
        let stream = self.incoming_mut(id, "only an incoming stream can be refused")?;
        let (kind, legacy) = (stream.kind, stream.legacy);
        self.kill(id, format!("refused: {reason}"));
        self.send_refusal(id, kind, legacy, reason);
        Ok(())
    }

    fn send_refusal(&mut self, id: StreamId, kind: Kind, legacy: bool, reason: &str) {
        let error = Some(reason.to_owned());
        match kind {
            // Go agents unblock on the ack and release their queue on the close: send both.
            Kind::Connect => {
                self.emit(&Envelope::ConnectAck(Ack {
                    id,
                    ok: false,
                    error: error.clone(),
                }));
                self.emit(&Envelope::ConnectClose(Close { id, error }));
            }
            Kind::WebSocket => {
                self.emit(&Envelope::WsAck(Ack {
                    id,
                    ok: false,
                    error: error.clone(),
                }));
                self.emit(&Envelope::WsClose(WsClose {
                    id,
                    code: 1011,
                    error,
                }));
            }
            Kind::Http if legacy => {
                self.emit(&Envelope::HttpResponse(tunnel_error_response(id, reason)))
            }
            Kind::Http => self.emit(&Envelope::StreamReset(StreamReset {
                id,
                error: reason.to_owned(),
            })),
        }
    }

    /// How many bytes [`Session::send`] would take now on this stream.
    pub fn send_capacity(&self, id: StreamId) -> usize {
        let Some(stream) = self.streams.get(&id) else {
            return 0;
        };
        if stream.legacy && stream.kind == Kind::Http {
            return self.legacy_capacity(id, stream.legacy_body.len());
        }
        let room = self
            .config
            .transmit_high_water
            .saturating_sub(self.transmit.len());
        if room == 0 {
            return 0;
        }
        let mut cap = room.max(self.config.max_chunk);
        if !stream.legacy {
            cap = cap
                .min(stream.send_window.available())
                .min(self.conn_send.available());
        }
        cap
    }

    /// How much more of a whole body stream `id` (holding `held`) may buffer now: up to its
    /// own limit, within the connection-wide budget unless it is the oldest holder.
    fn legacy_capacity(&self, id: StreamId, held: usize) -> usize {
        let own = self.config.max_legacy_body.saturating_sub(held);
        let first = self.legacy_holders.front().is_none_or(|front| *front == id);
        if first {
            own
        } else {
            own.min(
                self.config
                    .max_legacy_buffered
                    .saturating_sub(self.legacy_held),
            )
        }
    }

    /// Stream `id` no longer holds a whole body (sent, reset or dropped).
    fn legacy_release(&mut self, id: StreamId, held: usize) {
        if held == 0 {
            return;
        }
        self.legacy_held -= held;
        self.legacy_holders.retain(|holder| *holder != id);
        self.wake_blocked_writers();
    }

    fn writable_stream(&mut self, id: StreamId) -> Result<&mut Stream> {
        let stream = self.stream_mut(id)?;
        if let Some(reason) = &stream.error {
            return Err(Error::StreamReset {
                id,
                reason: reason.clone(),
            });
        }
        let reason = match stream.phase {
            Phase::Incoming => Some("accept the stream before sending"),
            // A Go server drops CONNECT/WebSocket data that arrives before its ack.
            Phase::Opening if stream.legacy && stream.kind != Kind::Http => {
                Some("wait for the peer's ack before sending")
            }
            _ if stream.send_fin => Some("send after finish"),
            _ if stream.send_closed => Some("the peer closed the stream"),
            _ => None,
        };
        match reason {
            Some(reason) => Err(Error::StreamState { id, reason }),
            None => Ok(stream),
        }
    }

    /// Queues up to `data.len()` bytes on a byte stream (HTTP body or CONNECT). Returns how many
    /// were taken; 0 means wait for [`Event::Writable`].
    pub fn send(&mut self, id: StreamId, data: &[u8]) -> Result<usize> {
        self.check_open()?;
        let limit = self.config.max_legacy_body;
        let stream = self.writable_stream(id)?;
        if stream.kind == Kind::WebSocket {
            return Err(Error::StreamState {
                id,
                reason: "WebSocket streams carry messages: use send_message",
            });
        }
        if stream.legacy && stream.kind == Kind::Http {
            let held = stream.legacy_body.len();
            if held + data.len() > limit {
                self.reset(id, &format!("body exceeds {limit} bytes"))?;
                return Err(Error::BodyTooLarge { id, limit });
            }
            let n = self.legacy_capacity(id, held).min(data.len());
            let stream = self.stream_mut(id)?;
            if n == 0 {
                stream.send_blocked = !data.is_empty();
                return Ok(0);
            }
            stream.legacy_body.extend_from_slice(&data[..n]);
            if held == 0 {
                self.legacy_holders.push_back(id);
            }
            self.legacy_held += n;
            return Ok(n);
        }
        let n = self.send_capacity(id).min(data.len());
        let (kind, legacy) = {
            let stream = self.stream_mut(id)?;
            if n == 0 {
                stream.send_blocked = !data.is_empty();
                return Ok(0);
            }
            stream.send_window.consume(n);
            (stream.kind, stream.legacy)
        };
        if !legacy {
            self.conn_send.consume(n);
        }
        for piece in data[..n].chunks(self.config.max_chunk) {
            let frame = if kind == Kind::Http {
                DataFrame::Body(id, piece)
            } else {
                DataFrame::Connect(id, piece)
            };
            self.emit_data(frame);
        }
        Ok(n)
    }

    /// Sends one whole WebSocket message. `Ok(false)` means no room yet: wait for
    /// [`Event::Writable`].
    pub fn send_message(&mut self, id: StreamId, ws_type: u8, data: &[u8]) -> Result<bool> {
        self.check_open()?;
        let max = self.config.max_frame_size.min(
            self.peer
                .as_ref()
                .map_or(usize::MAX, |h| h.max_frame_size as usize),
        );
        let peer_windows = self
            .peer
            .as_ref()
            .map(|peer| peer.initial_window.min(peer.connection_window) as usize);
        let stream = self.writable_stream(id)?;
        if stream.kind != Kind::WebSocket {
            return Err(Error::StreamState {
                id,
                reason: "send_message is for WebSocket streams",
            });
        }
        // Base64 and the envelope around it must fit the peer's frame limit.
        if data.len() > (max / 4 * 3).saturating_sub(256) {
            return Err(Error::StreamState {
                id,
                reason: "WebSocket message larger than the frame limit",
            });
        }
        // A message is sent whole, so it must fit the peer's receive windows: waiting for
        // more credit than the peer can ever grant would stall the stream forever.
        if !stream.legacy
            && let Some(windows) = peer_windows
            && data.len() > windows
        {
            return Err(Error::StreamState {
                id,
                reason: "WebSocket message larger than the peer's receive window",
            });
        }
        if self.send_capacity(id) < data.len().max(1) {
            self.stream_mut(id)?.send_blocked = true;
            return Ok(false);
        }
        let stream = self.stream_mut(id)?;
        stream.send_window.consume(data.len());
        if !stream.legacy {
            self.conn_send.consume(data.len());
        }
        self.emit_data(DataFrame::WebSocket(id, ws_type, data));
        Ok(true)
    }

    /// Takes received data: up to `max` bytes of a byte stream, or one whole WebSocket message.
    /// Consuming returns credit to the peer.
    pub fn recv(&mut self, id: StreamId, max: usize) -> Result<Recv> {
        let stream = self.stream_mut(id)?;
        if let Some(reason) = &stream.error {
            return Err(Error::StreamReset {
                id,
                reason: reason.clone(),
            });
        }
        let Some(front) = stream.recv.front_mut() else {
            return Ok(if stream.recv_fin {
                Recv::End
            } else {
                Recv::Pending
            });
        };
        let chunk = if front.ws_type != 0 || front.data.len() <= max {
            stream.recv.pop_front().unwrap_or(Chunk {
                data: Bytes::new(),
                ws_type: 0,
            })
        } else {
            Chunk {
                data: front.data.split_to(max),
                ws_type: 0,
            }
        };
        let n = chunk.data.len();
        stream.recv_buffered -= n;
        let (legacy, fin) = (stream.legacy, stream.recv_fin);
        if legacy {
            self.legacy_buffered -= n;
        } else {
            let stream_grant = if fin {
                None
            } else {
                stream.recv_window.on_consume(n)
            };
            if let Some(increment) = stream_grant {
                self.emit(&Envelope::WindowUpdate(WindowUpdate {
                    id: Some(id),
                    increment,
                }));
            }
            self.return_connection_credit(n);
        }
        Ok(Recv::Data(chunk))
    }

    fn return_connection_credit(&mut self, n: usize) {
        if let Some(increment) = self.conn_recv.on_consume(n) {
            self.emit(&Envelope::WindowUpdate(WindowUpdate {
                id: None,
                increment,
            }));
        }
    }

    /// Ends our sending direction (half-close). For Go peers, which have no half-close, a
    /// CONNECT stream is closed fully and an HTTP body is sent whole now.
    pub fn finish(&mut self, id: StreamId) -> Result<()> {
        self.check_open()?;
        let stream = self.stream_mut(id)?;
        if stream.send_fin {
            return Ok(());
        }
        if let Some(reason) = &stream.error {
            return Err(Error::StreamReset {
                id,
                reason: reason.clone(),
            });
        }
        if stream.phase == Phase::Incoming {
            return Err(Error::StreamState {
                id,
                reason: "accept the stream before finishing it",
            });
        }
        stream.send_fin = true;
        let held = stream.legacy_body.len();
        let envelope = match (stream.kind, stream.legacy) {
            (Kind::Http, true) => {
                let body = stream.legacy_body.split().freeze();
                self.legacy_release(id, held);
                let stream = self.stream_mut(id)?;
                match (stream.legacy_target.take(), stream.legacy_reply.take()) {
                    (
                        Some(Target::Http {
                            method,
                            url,
                            headers,
                        }),
                        _,
                    ) => Envelope::HttpRequest(HttpRequest {
                        id,
                        method,
                        url,
                        headers,
                        body,
                    }),
                    (_, Some((status_code, headers))) => Envelope::HttpResponse(HttpResponse {
                        id,
                        status_code,
                        headers,
                        body,
                        error: None,
                    }),
                    _ => return Ok(()),
                }
            }
            (Kind::Http, false) => Envelope::BodyEnd(Close { id, error: None }),
            (Kind::Connect, true) => Envelope::ConnectClose(Close { id, error: None }),
            (Kind::Connect, false) => Envelope::ConnectFin(Close { id, error: None }),
            (Kind::WebSocket, _) => Envelope::WsClose(WsClose {
                id,
                code: 1000,
                error: None,
            }),
        };
        self.emit(&envelope);
        Ok(())
    }

    /// Closes a WebSocket stream with a close code and reason (both directions).
    pub fn close_websocket(&mut self, id: StreamId, code: u16, reason: &str) -> Result<()> {
        self.check_open()?;
        let stream = self.stream_mut(id)?;
        if stream.kind != Kind::WebSocket {
            return Err(Error::StreamState {
                id,
                reason: "not a WebSocket stream",
            });
        }
        if stream.send_fin {
            return Ok(());
        }
        stream.send_fin = true;
        let error = (!reason.is_empty()).then(|| reason.to_owned());
        self.emit(&Envelope::WsClose(WsClose { id, code, error }));
        Ok(())
    }

    /// Aborts a stream in both directions; the peer learns `reason`.
    pub fn reset(&mut self, id: StreamId, reason: &str) -> Result<()> {
        self.check_open()?;
        let stream = self.stream_mut(id)?;
        if stream.phase == Phase::Dead {
            return Ok(());
        }
        let (kind, legacy, phase) = (stream.kind, stream.legacy, stream.phase);
        let reply_pending =
            stream.legacy_reply.is_some() || (phase == Phase::Incoming && kind == Kind::Http);
        self.kill(id, reason.to_owned());
        self.send_reset(id, kind, legacy, reason, reply_pending);
        Ok(())
    }

    fn send_reset(
        &mut self,
        id: StreamId,
        kind: Kind,
        legacy: bool,
        reason: &str,
        reply_pending: bool,
    ) {
        let error = Some(reason.to_owned());
        if !legacy {
            self.emit(&Envelope::StreamReset(StreamReset {
                id,
                error: reason.to_owned(),
            }));
            return;
        }
        match kind {
            Kind::Connect => self.emit(&Envelope::ConnectClose(Close { id, error })),
            Kind::WebSocket => self.emit(&Envelope::WsClose(WsClose {
                id,
                code: 1011,
                error,
            })),
            // A Go agent waits for exactly one response per request.
            Kind::Http if self.role == Role::Server && reply_pending => {
                self.emit(&Envelope::HttpResponse(tunnel_error_response(id, reason)))
            }
            // Client: nothing sent yet, or the Go server answers once anyway (dropped on arrival).
            Kind::Http => {}
        }
    }

    /// The application is done with the stream (its handle was dropped). A stream not yet
    /// finished both ways is reset.
    pub fn release(&mut self, id: StreamId) {
        let Some(stream) = self.streams.get(&id) else {
            return;
        };
        if self.closed.is_none() && stream.phase != Phase::Dead && !stream.is_done() {
            let _ = self.reset(id, "stream dropped by the application");
        }
        if let Some(stream) = self.streams.remove(&id) {
            if stream.legacy {
                self.legacy_buffered -= stream.recv_buffered;
            } else if self.closed.is_none() {
                self.return_connection_credit(stream.recv_buffered);
            }
            self.legacy_release(id, stream.legacy_body.len());
        }
        self.remember_closed(id);
    }

    fn remember_closed(&mut self, id: StreamId) {
        if self.recently_closed.insert(id) {
            self.recently_closed_order.push_back(id);
            if self.recently_closed_order.len() > RECENTLY_CLOSED
                && let Some(old) = self.recently_closed_order.pop_front()
            {
                self.recently_closed.remove(&old);
            }
        }
    }

    fn stream_mut(&mut self, id: StreamId) -> Result<&mut Stream> {
        self.streams.get_mut(&id).ok_or(Error::UnknownStream(id))
    }

    /// Marks a stream dead, drops its unread data (returning its connection credit) and wakes
    /// its reader and writer.
    fn kill(&mut self, id: StreamId, reason: String) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        stream.phase = Phase::Dead;
        stream.error = Some(reason);
        stream.recv.clear();
        let dropped = std::mem::take(&mut stream.recv_buffered);
        let held = std::mem::take(&mut stream.legacy_body).len();
        if stream.legacy {
            self.legacy_buffered -= dropped;
        } else {
            self.return_connection_credit(dropped);
        }
        self.legacy_release(id, held);
    }

    // -----------------------------------------------------------------------------------------
    // Output.

    fn emit(&mut self, envelope: &Envelope) {
        if let Err(err) = self.codec.encode(envelope, &mut self.transmit) {
            tracing::warn!(%err, "dropping an envelope that cannot be encoded");
        }
    }

    fn emit_data(&mut self, frame: DataFrame<'_>) {
        if let Err(err) = self.codec.encode_data(frame, &mut self.transmit) {
            tracing::warn!(%err, "dropping a data frame that cannot be encoded");
        }
    }

    fn wake_blocked_writers(&mut self) {
        let conn = self.conn_send.available();
        for (id, stream) in self.streams.iter_mut() {
            if stream.send_blocked
                && (stream.legacy || (conn > 0 && stream.send_window.available() > 0))
            {
                stream.send_blocked = false;
                self.events.push_back(Event::Writable(*id));
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Input.

    /// A violation on one stream: reset it (telling the peer) and carry on.
    fn violation(&mut self, id: StreamId, reason: &str) {
        tracing::debug!(%id, reason, "stream protocol violation");
        match self.streams.get(&id) {
            Some(stream) if stream.phase != Phase::Dead => {
                let _ = self.reset(id, reason);
                self.events.push_back(Event::Reset {
                    id,
                    reason: reason.to_owned(),
                });
            }
            Some(_) => {}
            None => {
                if self.extensions {
                    self.emit(&Envelope::StreamReset(StreamReset {
                        id,
                        error: reason.to_owned(),
                    }));
                }
                // One reset per unknown id: further frames for it are dropped quietly.
                self.remember_closed(id);
            }
        }
    }

    fn on_envelope(&mut self, envelope: Envelope) {
        match envelope {
            Envelope::Hello(hello) => self.on_hello(hello),
            Envelope::Ping(hb) => self.emit(&Envelope::Pong(hb)),
            Envelope::Pong(_) => {}
            Envelope::WindowUpdate(update) => self.on_window_update(update),
            Envelope::IamAuthRequest(request) => {
                if self.role != Role::Server || self.iam_answered {
                    return;
                }
                if request.id.len() > MAX_IAM_ID {
                    self.close(format!(
                        "protocol error: iam_auth_request id of {} bytes (at most {MAX_IAM_ID})",
                        request.id.len()
                    ));
                    return;
                }
                self.iam_answered = true;
                self.emit(&Envelope::IamAuthResponse(IamAuthResponse {
                    id: request.id.clone(),
                    ok: true,
                    error: None,
                    session_token: None,
                }));
                self.events.push_back(Event::IamAuth(request));
            }
            Envelope::IamAuthResponse(response) => {
                if self.role == Role::Client {
                    self.events.push_back(Event::IamAuthResponse(response));
                }
            }
            Envelope::HttpRequest(r) if self.extensions => {
                // Whole-body requests are the Go dialect; a binary peer streams bodies, and
                // accepting a whole one would let it bypass the windows.
                self.violation(r.id, "http_request (a whole body) on a binary session");
            }
            Envelope::HttpResponse(r) if self.extensions => {
                self.violation(r.id, "http_response (a whole body) on a binary session");
            }
            Envelope::HttpRequest(r) => {
                let target = Target::Http {
                    method: r.method,
                    url: r.url,
                    headers: r.headers,
                };
                // A whole request: the reply must be whole too, whatever the peer announced.
                if self.on_open(r.id, target, true) {
                    self.push_whole_body(r.id, r.body);
                }
            }
            Envelope::HttpRequestHead(r) => {
                let legacy = !self.extensions;
                self.on_open(
                    r.id,
                    Target::Http {
                        method: r.method,
                        url: r.url,
                        headers: r.headers,
                    },
                    legacy,
                );
            }
            Envelope::ConnectOpen(o) => {
                let legacy = !self.extensions;
                self.on_open(o.id, Target::Connect { address: o.address }, legacy);
            }
            Envelope::WsOpen(o) => {
                let legacy = !self.extensions;
                self.on_open(
                    o.id,
                    Target::WebSocket {
                        url: o.url,
                        headers: o.headers,
                    },
                    legacy,
                );
            }
            Envelope::ConnectAck(ack) => {
                self.on_ack(ack, Kind::Connect, Reply::Connect);
            }
            Envelope::WsAck(ack) => {
                self.on_ack(ack, Kind::WebSocket, Reply::WebSocket);
            }
            Envelope::HttpResponseHead(h) => {
                let ack = Ack {
                    id: h.id,
                    ok: true,
                    error: None,
                };
                self.on_ack(
                    ack,
                    Kind::Http,
                    Reply::Http {
                        status_code: h.status_code,
                        headers: h.headers,
                    },
                );
            }
            Envelope::HttpResponse(r) => {
                let id = r.id;
                let accepted = self.on_ack(
                    Ack {
                        id,
                        ok: true,
                        error: None,
                    },
                    Kind::Http,
                    Reply::Http {
                        status_code: r.status_code,
                        headers: r.headers,
                    },
                );
                if accepted {
                    self.push_whole_body(id, r.body);
                    if let Some(stream) = self.streams.get_mut(&id) {
                        stream.send_closed = true;
                    }
                }
            }
            Envelope::ConnectData(d) => self.on_data(
                d.id,
                Kind::Connect,
                Chunk {
                    data: d.data,
                    ws_type: 0,
                },
            ),
            Envelope::BodyChunk(d) => self.on_data(
                d.id,
                Kind::Http,
                Chunk {
                    data: d.data,
                    ws_type: 0,
                },
            ),
            Envelope::WsMessage(m) => self.on_data(
                m.id,
                Kind::WebSocket,
                Chunk {
                    data: m.data,
                    ws_type: m.message_type.max(1),
                },
            ),
            Envelope::ConnectFin(c) => self.on_fin(c.id, Kind::Connect, false),
            Envelope::BodyEnd(c) => match c.error {
                Some(error) => self.on_reset(c.id, format!("body aborted by peer: {error}")),
                None => self.on_fin(c.id, Kind::Http, false),
            },
            Envelope::ConnectClose(c) => {
                let opening = self.is_opening(c.id);
                if opening {
                    // Go servers report a failed dial with a close instead of a refusing ack.
                    let reason = c
                        .error
                        .unwrap_or_else(|| "closed by peer before ack".into());
                    self.on_refused(c.id, Kind::Connect, Reply::Connect, reason);
                } else {
                    self.on_fin(c.id, Kind::Connect, true);
                }
            }
            Envelope::WsClose(c) => {
                let opening = self.is_opening(c.id);
                if opening {
                    let reason = c
                        .error
                        .unwrap_or_else(|| format!("closed by peer before ack (code {})", c.code));
                    self.on_refused(c.id, Kind::WebSocket, Reply::WebSocket, reason);
                } else {
                    // Deliver the close as a final message in RFC 6455 close-frame layout.
                    if self
                        .streams
                        .get(&c.id)
                        .is_some_and(|s| !s.recv_fin && s.phase != Phase::Dead)
                    {
                        let mut payload = BytesMut::new();
                        if c.code != 0 {
                            payload.extend_from_slice(&c.code.to_be_bytes());
                            payload.extend_from_slice(c.error.unwrap_or_default().as_bytes());
                        }
                        self.push_chunk(
                            c.id,
                            Chunk {
                                data: payload.freeze(),
                                ws_type: ws_type::CLOSE,
                            },
                        );
                    }
                    self.on_fin(c.id, Kind::WebSocket, true);
                }
            }
            Envelope::StreamReset(r) => {
                let opening = self.is_opening(r.id);
                if opening {
                    let kind = self.streams.get(&r.id).map_or(Kind::Http, |s| s.kind);
                    let reply = match kind {
                        Kind::Http => Reply::Http {
                            status_code: 0,
                            headers: Headers::new(),
                        },
                        Kind::Connect => Reply::Connect,
                        Kind::WebSocket => Reply::WebSocket,
                    };
                    self.on_ack(
                        Ack {
                            id: r.id,
                            ok: false,
                            error: Some(r.error),
                        },
                        kind,
                        reply,
                    );
                } else {
                    self.on_reset(r.id, format!("reset by peer: {}", r.error));
                }
            }
        }
    }

    fn is_opening(&self, id: StreamId) -> bool {
        self.streams
            .get(&id)
            .is_some_and(|s| s.phase == Phase::Opening)
    }

    /// The peer refused (or failed) a stream we are opening.
    fn on_refused(&mut self, id: StreamId, kind: Kind, reply: Reply, reason: String) {
        let ack = Ack {
            id,
            ok: false,
            error: Some(reason),
        };
        self.on_ack(ack, kind, reply);
    }

    fn on_hello(&mut self, hello: Hello) {
        if self.peer.is_some() {
            return;
        }
        if self.extensions {
            self.conn_send = SendWindow::new(Some(hello.connection_window));
            // Streams opened before the hello have sent nothing yet: grant their first window.
            for stream in self.streams.values_mut().filter(|s| !s.legacy) {
                stream.send_window = SendWindow::new(Some(hello.initial_window));
            }
        }
        self.peer = Some(hello.clone());
        self.wake_blocked_writers();
        self.send_hello();
        self.events.push_back(Event::PeerHello(hello));
    }

    fn on_window_update(&mut self, update: WindowUpdate) {
        match update.id {
            None => {
                if !self.conn_send.grant(update.increment) {
                    // A connection-window overflow is the peer's bug; cap it rather than close.
                    self.conn_send = SendWindow::new(Some(i32::MAX as u32));
                }
                self.wake_blocked_writers();
            }
            Some(id) => {
                let Some(stream) = self.streams.get_mut(&id) else {
                    return;
                };
                if !stream.send_window.grant(update.increment) {
                    self.violation(id, "flow-control window overflow");
                    return;
                }
                if stream.send_blocked && self.conn_send.available() > 0 {
                    stream.send_blocked = false;
                    self.events.push_back(Event::Writable(id));
                }
            }
        }
    }

    /// Returns whether the stream was created.
    fn on_open(&mut self, id: StreamId, target: Target, legacy: bool) -> bool {
        if self.role != Role::Server {
            self.violation(id, "only the client opens streams");
            return false;
        }
        if self.streams.contains_key(&id) {
            self.violation(id, "duplicate open of a stream id in use");
            return false;
        }
        if self.streams.len() >= self.config.max_streams {
            let reason = Error::TooManyStreams(self.config.max_streams).to_string();
            self.send_refusal(id, target.kind(), legacy, &reason);
            return false;
        }
        self.recently_closed.remove(&id);
        let stream = self.new_stream(target.kind(), legacy, Phase::Incoming);
        self.streams.insert(id, stream);
        self.events.push_back(Event::Incoming { id, target });
        true
    }

    /// Returns whether the stream was accepted.
    fn on_ack(&mut self, ack: Ack, kind: Kind, reply: Reply) -> bool {
        let id = ack.id;
        let Some(stream) = self.streams.get_mut(&id) else {
            self.unknown_stream(id);
            return false;
        };
        if stream.phase == Phase::Dead {
            return false;
        }
        if stream.phase != Phase::Opening || stream.kind != kind {
            self.violation(id, "unexpected answer to an open");
            return false;
        }
        if ack.ok {
            stream.phase = Phase::Open;
            self.events.push_back(Event::Accepted { id, reply });
            true
        } else {
            let reason = ack.error.unwrap_or_else(|| "refused by peer".into());
            self.kill(id, format!("refused: {reason}"));
            self.events.push_back(Event::Refused { id, reason });
            false
        }
    }

    fn unknown_stream(&mut self, id: StreamId) {
        if !self.recently_closed.contains(&id) {
            self.violation(id, "unknown stream id");
        }
    }

    fn push_whole_body(&mut self, id: StreamId, body: Bytes) {
        if !body.is_empty() {
            self.push_chunk(
                id,
                Chunk {
                    data: body,
                    ws_type: 0,
                },
            );
        }
        if let Some(stream) = self.streams.get_mut(&id) {
            stream.recv_fin = true;
            self.events.push_back(Event::Readable(id));
        }
    }

    /// Queues received data (no checks: callers validated it).
    fn push_chunk(&mut self, id: StreamId, mut chunk: Chunk) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let n = chunk.data.len();
        if self.extensions && n < ZERO_COPY_MIN {
            // Own a small chunk, so it keeps at most its own size alive (see ZERO_COPY_MIN).
            chunk.data = Bytes::copy_from_slice(&chunk.data);
        }
        let was_empty = stream.recv.is_empty();
        stream.recv.push_back(chunk);
        stream.recv_buffered += n;
        if stream.legacy {
            self.legacy_buffered += n;
        }
        if was_empty {
            self.events.push_back(Event::Readable(id));
        }
    }

    fn on_data(&mut self, id: StreamId, kind: Kind, chunk: Chunk) {
        let n = chunk.data.len();
        let Some(stream) = self.streams.get_mut(&id) else {
            // Whatever arrives for a stream we do not hold still used connection credit.
            if self.extensions && self.conn_recv.on_receive(n) {
                self.return_connection_credit(n);
            }
            self.unknown_stream(id);
            return;
        };
        let flow = !stream.legacy;
        if flow && !self.conn_recv.on_receive(n) {
            self.violation(id, "connection flow-control window exceeded");
            return;
        }
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let problem = if stream.phase == Phase::Dead {
            None
        } else if stream.kind != kind {
            Some("data of the wrong kind for this stream")
        } else if stream.recv_fin {
            Some("data after end of stream")
        } else if stream.phase == Phase::Opening {
            Some("data before the stream was accepted")
        } else if flow && !stream.recv_window.on_receive(n) {
            Some("flow-control window exceeded")
        } else {
            self.push_chunk(id, chunk);
            return;
        };
        // Dropped bytes give their connection credit back.
        if flow {
            self.return_connection_credit(n);
        }
        if let Some(reason) = problem {
            self.violation(id, reason);
        }
    }

    /// The peer's last byte (`full`: and it will take no more, Go-style close).
    fn on_fin(&mut self, id: StreamId, kind: Kind, full: bool) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return self.unknown_stream(id);
        };
        if stream.phase == Phase::Dead || (full && stream.recv_fin && stream.send_closed) {
            return;
        }
        if stream.kind != kind {
            return self.violation(id, "end of the wrong kind for this stream");
        }
        if stream.recv_fin && !full {
            return self.violation(id, "end of stream twice");
        }
        stream.recv_fin = true;
        if full {
            stream.send_closed = true;
            if stream.send_blocked {
                stream.send_blocked = false;
                self.events.push_back(Event::Writable(id));
            }
        }
        self.events.push_back(Event::Readable(id));
    }

    fn on_reset(&mut self, id: StreamId, reason: String) {
        match self.streams.get_mut(&id) {
            // The peer already sent everything: what it sent stays readable, only our sending
            // direction ends (like a TCP peer that closed after `shutdown(WR)`).
            Some(stream) if stream.phase == Phase::Open && stream.recv_fin => {
                stream.send_closed = true;
                stream.send_blocked = false;
                self.events.push_back(Event::Writable(id));
            }
            Some(stream) if stream.phase != Phase::Dead => {
                self.kill(id, reason.clone());
                self.events.push_back(Event::Reset { id, reason });
            }
            _ => {}
        }
    }
}

/// The Go server's shape for a tunnel-side HTTP failure.
fn tunnel_error_response(id: StreamId, reason: &str) -> HttpResponse {
    HttpResponse {
        id,
        status_code: 502,
        headers: Headers::from([("Content-Type".to_owned(), vec!["text/plain".to_owned()])]),
        body: Bytes::from(format!("Tunnel error: {reason}")),
        error: Some(reason.to_owned()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

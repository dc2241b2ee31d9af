//! Fuzz targets: each takes arbitrary bytes, must never panic or hang, and checks invariants
//! of its own (an `assert!` failing is a finding). `src/bin/` wraps each in an AFL++ harness;
//! `tests/corpus.rs` replays every file under `corpus/<target>/` through it in
//! `cargo test --workspace`. See `docs/testing.md`.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use fluidity_core::envelope::*;
use fluidity_core::{
    CloseReason, CodecKind, Event, Recv, RefusalCode, Reply, Session, SessionConfig, StreamError,
    Target,
};

/// Decoder inputs above this are ignored: lines longer than the JSON codec's streaming
/// threshold (64 KiB) decode in another form when they arrive in pieces.
const MAX_DECODER_INPUT: usize = 60 * 1024;
const FRAME_LIMIT: usize = 1 << 20;

/// The Go-compatible JSON decoder, fed the input whole and in pieces.
pub fn json_decoder(data: &[u8]) {
    decoder(CodecKind::Json, data);
}

/// The binary decoder, fed the input whole and in pieces.
pub fn binary_decoder(data: &[u8]) {
    decoder(CodecKind::Binary, data);
}

/// What a decoder made of some bytes.
#[derive(Debug, PartialEq)]
struct Decoding {
    items: Vec<String>,
    envelopes: Vec<Envelope>,
    error: Option<String>,
}

fn decode_all(kind: CodecKind, input: &[u8], piece: usize) -> Decoding {
    use fluidity_core::codec::Decoded;
    let mut codec = kind.new_codec(FRAME_LIMIT);
    let mut buf = BytesMut::new();
    let mut out = Decoding {
        items: Vec::new(),
        envelopes: Vec::new(),
        error: None,
    };
    for chunk in input.chunks(piece.max(1)) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(Decoded::Envelope(e))) => {
                    out.items.push(format!("{e:?}"));
                    out.envelopes.push(e);
                }
                Ok(Some(other)) => out.items.push(format!("{other:?}")),
                Ok(None) => break,
                Err(e) => {
                    out.error = Some(e.to_string());
                    return out;
                }
            }
        }
    }
    out
}

fn decoder(kind: CodecKind, data: &[u8]) {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    if input.len() > MAX_DECODER_INPUT {
        return;
    }
    // How the bytes arrive must not change what they decode to.
    let whole = decode_all(kind, input, input.len());
    let pieces = decode_all(kind, input, usize::from(split) + 1);
    assert_eq!(whole, pieces, "decoding depended on how the bytes arrived");
    // Whatever decodes re-encodes to bytes that decode to the same envelope.
    for envelope in whole.envelopes {
        let mut codec = kind.new_codec(FRAME_LIMIT);
        let mut wire = BytesMut::new();
        if codec.encode(&envelope, &mut wire).is_err() {
            continue;
        }
        let again = decode_all(kind, &wire, wire.len());
        assert_eq!(again.error, None, "re-encoded {envelope:?}");
        assert_eq!(
            again.envelopes,
            vec![envelope],
            "re-encoding was not stable"
        );
    }
}

/// A CSR (PEM) signed by a CA with a fixed key: refusals are errors, never panics, and what
/// is signed holds the checks the CA promises.
pub fn csr(data: &[u8]) {
    sign_csr(data);
}

/// [`csr`]'s work: whether the CA signed `data`.
pub fn sign_csr(data: &[u8]) -> bool {
    use fluidity_core::pki::{SigningOptions, ca::CertificateAuthority};
    use std::sync::OnceLock;
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    let ca = CA.get_or_init(|| {
        CertificateAuthority::from_pem(CA_CERT, CA_KEY, SigningOptions::default())
            .unwrap_or_else(|e| panic!("the fuzz CA loads: {e}"))
    });
    let Ok(pem) = std::str::from_utf8(data) else {
        return false;
    };
    match ca.sign(pem, SystemTime::now()) {
        Ok(issued) => {
            assert!(issued.certificate_pem.contains("BEGIN CERTIFICATE"));
            true
        }
        Err(_) => false,
    }
}

/// A throwaway CA for the `csr` target (not a secret: it signs nothing outside the fuzzer).
const CA_CERT: &str = include_str!("../ca/ca.crt");
const CA_KEY: &str = include_str!("../ca/ca.key");

/// A session (either role, either codec) fed a sequence of the peer's envelopes, raw bytes,
/// clock ticks and application calls, decoded from the input, by a driver that reads only
/// while the session wants input (as the real one does). Checks: no panic; nothing is
/// delivered after a stream's end; the bytes a stream delivers follow one another as the peer
/// sent them (each data envelope carries the next bytes of a per-stream pattern, so a
/// reordering, a duplicate or a hole after the first delivered byte shows; where a stream
/// starts in the pattern is not checked, since the session may rightly refuse data sent
/// before a stream existed or after an id was reused); after every step, what the session
/// holds is within its configured bounds ([`fluidity_core::Buffered`]); a stream is refused
/// or reset at most once; and once the session closes, every stream has ended.
pub fn session(data: &[u8]) {
    let mut input = Input(data);
    let Some(mode) = input.byte() else {
        return;
    };
    let codec = if mode & 1 == 0 {
        CodecKind::Json
    } else {
        CodecKind::Binary
    };
    let config = SessionConfig {
        initial_window: 4096,
        connection_window: 16 * 1024,
        max_frame_size: 64 * 1024,
        max_streams: 8,
        transmit_high_water: 16 * 1024,
        legacy_line_threshold: 4096,
        max_legacy_buffered: 16 * 1024,
        max_json_line: 64 * 1024,
        first_stream_id: Some(1),
        ..SessionConfig::default()
    };
    let mut now = Instant::now();
    let mut session = if mode & 2 == 0 {
        Session::client(codec, config.clone(), now)
    } else {
        Session::server(codec, config.clone(), now)
    };
    let mut peer = codec.new_codec(FRAME_LIMIT);
    let mut wire = BytesMut::new();
    let mut sent: HashMap<u64, u64> = HashMap::new();
    let mut delivered: HashMap<u64, Option<u64>> = HashMap::new();
    let mut ended: HashMap<u64, bool> = HashMap::new();
    let mut opened: Vec<StreamId> = Vec::new();
    let mut terminal: HashMap<u64, u32> = HashMap::new();
    let mut steps = 0;
    while let Some(op) = input.byte() {
        steps += 1;
        if steps > 256 {
            break;
        }
        match op % 10 {
            0..=3 => {
                let envelope = peer_envelope(&mut input, &mut sent);
                if peer.encode(&envelope, &mut wire).is_err() {
                    continue;
                }
                if session.wants_input() {
                    let _ = session.receive(&mut wire, now);
                }
            }
            4 => {
                let len = usize::from(input.byte().unwrap_or(0));
                wire.extend_from_slice(input.take(len));
                if session.wants_input() {
                    let _ = session.receive(&mut wire, now);
                }
            }
            5 => {
                now += Duration::from_millis(u64::from(input.byte().unwrap_or(0)) * 200);
                if session.poll_timeout().is_some_and(|at| at <= now) {
                    session.handle_timeout(now);
                }
            }
            6 => {
                let target = match input.byte().unwrap_or(0) % 3 {
                    0 => Target::Connect {
                        address: "example.com:443".into(),
                    },
                    1 => Target::Http {
                        method: "GET".into(),
                        url: "http://example.com/".into(),
                        headers: Headers::new(),
                    },
                    _ => Target::WebSocket {
                        url: "ws://example.com/".into(),
                        headers: Headers::new(),
                    },
                };
                if let Ok(id) = session.open(target) {
                    opened.push(id);
                    delivered.insert(id.0, None);
                    ended.insert(id.0, false);
                    terminal.insert(id.0, 0);
                }
            }
            7 => {
                let id = pick(&mut input, &opened);
                let len = usize::from(input.byte().unwrap_or(0)) * 64;
                let _ = session.send(id, &vec![0x5a; len]);
            }
            8 => {
                let id = pick(&mut input, &opened);
                match input.byte().unwrap_or(0) % 3 {
                    0 => {
                        let _ = session.finish(id);
                    }
                    1 => {
                        let _ = session.reset(id, "fuzz");
                    }
                    _ => {
                        let _ = session.refuse(id, RefusalCode::Denied, "fuzz");
                    }
                }
            }
            _ => while session.poll_transmit().is_some() {},
        }
        // The application side: accept what comes in, read everything readable.
        while let Some(event) = session.poll_event() {
            match event {
                Event::Incoming { id, target } => {
                    opened.push(id);
                    // A new stream (perhaps on a reused id): its tracking starts afresh.
                    delivered.insert(id.0, None);
                    ended.insert(id.0, false);
                    terminal.insert(id.0, 0);
                    let reply = match target {
                        Target::Connect { .. } => Reply::Connect,
                        Target::WebSocket { .. } => Reply::WebSocket,
                        _ => Reply::Http {
                            status_code: 200,
                            headers: Headers::new(),
                        },
                    };
                    let _ = session.accept(id, reply);
                }
                Event::Readable(id) | Event::Accepted { id, .. } => {
                    read_all(&mut session, id, &mut delivered, &mut ended);
                }
                Event::Reset { id, error } => {
                    count_terminal(&mut terminal, id);
                    // What a reset stream still holds must be in order too.
                    if !matches!(error, StreamError::Refused(_)) {
                        read_all(&mut session, id, &mut delivered, &mut ended);
                    }
                }
                Event::Refused { id, .. } => count_terminal(&mut terminal, id),
                _ => {}
            }
        }
        check_bounds(&session, &config);
    }
    for id in opened.clone() {
        read_all(&mut session, id, &mut delivered, &mut ended);
    }
    // Once the session closes, no stream may be left waiting.
    session.close(CloseReason::Local("the script ended".into()));
    while session.poll_event().is_some() {}
    for id in opened {
        read_all(&mut session, id, &mut delivered, &mut ended);
        assert!(
            !matches!(session.recv(id, usize::MAX), Ok(Recv::Pending)),
            "{id}: still pending after the session closed"
        );
    }
}

/// Counts a stream's refusal or reset: there may be one per stream (per use of its id).
fn count_terminal(terminal: &mut HashMap<u64, u32>, id: StreamId) {
    if let Some(count) = terminal.get_mut(&id.0) {
        *count += 1;
        assert!(*count <= 1, "{id}: refused or reset twice");
    }
}

/// What the session holds is within the bounds its configuration sets.
fn check_bounds(session: &Session, config: &SessionConfig) {
    let held = session.buffered();
    let output_limit = config.transmit_high_water + config.max_chunk + 64 * 1024;
    assert!(
        held.largest_credited <= config.initial_window as usize,
        "a stream holds more than its window: {held:?}"
    );
    assert!(
        held.credited <= config.connection_window as usize,
        "the streams hold more than the connection window: {held:?}"
    );
    assert!(
        held.uncredited <= config.connection_window as usize + config.max_frame_size,
        "a Go peer's unread data passed the connection window: {held:?}"
    );
    assert!(
        held.bodies <= config.max_legacy_buffered + config.legacy_line_threshold,
        "held bodies passed their budget: {held:?}"
    );
    assert!(
        held.output <= output_limit + config.max_frame_size,
        "the output grew past its limit: {held:?}"
    );
}

/// Reads everything `id` has; checks order against the pattern and that the end comes once.
fn read_all(
    session: &mut Session,
    id: StreamId,
    delivered: &mut HashMap<u64, Option<u64>>,
    ended: &mut HashMap<u64, bool>,
) {
    loop {
        match session.recv(id, usize::MAX) {
            Ok(Recv::Data(chunk)) => {
                assert!(
                    !ended.get(&id.0).copied().unwrap_or(false),
                    "{id}: data after the end"
                );
                // WebSocket close frames are made by the session, not sent by the peer.
                if chunk.ws_type == ws_type::CLOSE {
                    continue;
                }
                let next = delivered.entry(id.0).or_default();
                for byte in chunk.data.iter() {
                    let n = next.unwrap_or_else(|| pattern_position(id.0, *byte));
                    assert_eq!(*byte, pattern(id.0, n), "{id}: a byte out of order");
                    *next = Some((n + 1) % 251);
                }
            }
            Ok(Recv::End) => {
                let end = ended.entry(id.0).or_default();
                // `End` may be read again (it is a state, not an event); data after it may not.
                *end = true;
                return;
            }
            Ok(Recv::Pending) | Err(_) => return,
        }
    }
}

/// The `n`th byte the peer sends on stream `id` (periodic in `n` with period 251).
fn pattern(id: u64, n: u64) -> u8 {
    (((n % 251) * 7 + id % 251) % 251) as u8
}

/// Where in the pattern (modulo 251) `byte` comes on stream `id`.
fn pattern_position(id: u64, byte: u8) -> u64 {
    // 36 is 7's inverse modulo 251 (7 × 36 = 252).
    ((u64::from(byte) + 251 - id % 251) % 251) * 36 % 251
}

/// One envelope from the peer, with data from each stream's pattern.
fn peer_envelope(input: &mut Input<'_>, sent: &mut HashMap<u64, u64>) -> Envelope {
    let kind = input.byte().unwrap_or(0);
    // Few ids, so that envelopes meet the same streams; now and then any id.
    let id = match input.byte().unwrap_or(0) {
        250..=255 => StreamId(input.u64()),
        n => StreamId(u64::from(n % 4) + 1),
    };
    let mut data = |input: &mut Input<'_>| -> Bytes {
        let len = usize::from(input.byte().unwrap_or(0)) * 32;
        let offset = sent.entry(id.0).or_default();
        let bytes: Vec<u8> = (0..len as u64)
            .map(|i| pattern(id.0, *offset + i))
            .collect();
        *offset += len as u64;
        Bytes::from(bytes)
    };
    let text = |input: &mut Input<'_>| -> Option<String> {
        match input.byte().unwrap_or(0) {
            0 => None,
            n => Some("x".repeat(usize::from(n % 16))),
        }
    };
    match kind % 22 {
        0 => Envelope::Hello(Hello {
            version: u32::from(input.byte().unwrap_or(1) % 3),
            capabilities: [
                capability::FLOW_CONTROL,
                capability::HEARTBEAT,
                capability::STREAMED_HTTP,
                capability::HALF_CLOSE,
            ]
            .iter()
            .enumerate()
            .filter(|(i, _)| input.byte().unwrap_or(0xff) & (1 << i) != 0)
            .map(|(_, c)| (*c).to_owned())
            .collect(),
            initial_window: input.u32() % (1 << 20),
            connection_window: input.u32() % (1 << 24),
            max_frame_size: input.u32() % (1 << 20),
        }),
        1 => Envelope::ConnectOpen(ConnectOpen {
            id,
            address: "example.com:443".into(),
        }),
        2 => Envelope::ConnectAck(Ack {
            id,
            ok: input.byte().unwrap_or(1) % 2 == 1,
            error: text(input),
            refusal: None,
        }),
        3 => Envelope::ConnectData(Data {
            id,
            data: data(input),
        }),
        4 => Envelope::ConnectClose(Close {
            id,
            error: text(input),
        }),
        5 => Envelope::ConnectFin(Close { id, error: None }),
        6 => Envelope::WsOpen(WsOpen {
            id,
            url: "ws://example.com/".into(),
            headers: Headers::new(),
        }),
        7 => Envelope::WsAck(Ack {
            id,
            ok: input.byte().unwrap_or(1) % 2 == 1,
            error: text(input),
            refusal: None,
        }),
        8 => Envelope::WsMessage(WsMessage {
            id,
            message_type: ws_type::BINARY,
            data: data(input),
        }),
        9 => Envelope::WsClose(WsClose {
            id,
            code: 1000,
            error: text(input),
        }),
        10 => Envelope::HttpRequest(HttpRequest {
            id,
            method: "POST".into(),
            url: "http://example.com/".into(),
            headers: Headers::new(),
            body: data(input),
        }),
        11 => Envelope::HttpResponse(HttpResponse {
            id,
            status_code: 200,
            headers: Headers::new(),
            body: data(input),
            error: text(input),
        }),
        12 => Envelope::HttpRequestHead(HttpRequestHead {
            id,
            method: "GET".into(),
            url: "http://example.com/".into(),
            headers: Headers::new(),
        }),
        13 => Envelope::HttpResponseHead(HttpResponseHead {
            id,
            status_code: 200,
            headers: Headers::new(),
        }),
        14 => Envelope::BodyChunk(Data {
            id,
            data: data(input),
        }),
        15 => Envelope::BodyEnd(Close { id, error: None }),
        16 => Envelope::StreamReset(StreamReset {
            id,
            error: "fuzz".into(),
            refusal: None,
        }),
        17 => Envelope::WindowUpdate(WindowUpdate {
            id: input.byte().unwrap_or(0).is_multiple_of(2).then_some(id),
            increment: input.u32() % (1 << 20),
        }),
        18 => Envelope::Ping(Heartbeat { nonce: input.u64() }),
        19 => Envelope::Pong(Heartbeat { nonce: input.u64() }),
        20 => Envelope::IamAuthRequest(IamAuthRequest {
            id: "x".repeat(usize::from(input.byte().unwrap_or(1))),
            timestamp: "2025-12-10T12:34:56Z".into(),
            service: "tunnel".into(),
            region: "us-east-1".into(),
            access_key_id: "a".into(),
            signature: "s".into(),
            signed_headers: String::new(),
        }),
        _ => Envelope::IamAuthResponse(IamAuthResponse {
            id: "x".into(),
            ok: true,
            error: None,
            session_token: None,
        }),
    }
}

fn pick(input: &mut Input<'_>, ids: &[StreamId]) -> StreamId {
    let n = usize::from(input.byte().unwrap_or(0));
    ids.get(n % ids.len().max(1))
        .copied()
        .unwrap_or(StreamId(1))
}

/// The fuzzer's bytes, read front to back (zeros once they run out).
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let (taken, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        taken
    }

    fn u32(&mut self) -> u32 {
        let mut bytes = [0u8; 4];
        let taken = self.take(4);
        bytes[..taken.len()].copy_from_slice(taken);
        u32::from_be_bytes(bytes)
    }

    fn u64(&mut self) -> u64 {
        (u64::from(self.u32()) << 32) | u64::from(self.u32())
    }
}

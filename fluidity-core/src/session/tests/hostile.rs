//! Hostile and broken peers: what they send never makes the session queue output, hold
//! memory or stall beyond its stated bounds, and never panics.

use super::*;

/// Encodes `envelopes` with a fresh codec of `codec`.
fn encode(codec: CodecKind, envelopes: &[Envelope]) -> BytesMut {
    let mut c = codec.new_codec(1 << 20);
    let mut buf = BytesMut::new();
    for e in envelopes {
        c.encode(e, &mut buf).unwrap();
    }
    buf
}

fn hello(initial_window: u32, max_frame_size: u32) -> Envelope {
    Envelope::Hello(Hello {
        version: PROTOCOL_VERSION,
        capabilities: vec![
            capability::FLOW_CONTROL.into(),
            capability::HEARTBEAT.into(),
        ],
        initial_window,
        connection_window: 16 << 20,
        max_frame_size,
    })
}

/// Every envelope in `bytes`, decoded.
fn decode_all(codec: CodecKind, bytes: &[u8]) -> Vec<Envelope> {
    let mut c = codec.new_codec(64 << 20);
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(decoded) = c.decode(&mut buf).unwrap() {
        if let Decoded::Envelope(e) = decoded {
            out.push(e);
        }
    }
    out
}

#[test]
fn a_peer_that_never_reads_cannot_make_us_queue_replies() {
    let now = Instant::now();
    let mut server = Session::new(Role::Server, CodecKind::Binary, config(), now);
    let ping = Envelope::Ping(Heartbeat { nonce: 7 });
    // 2 MiB of pings (13 bytes each), and we never take the output.
    let pings: Vec<Envelope> = std::iter::once(hello(1 << 18, 1 << 20))
        .chain(std::iter::repeat_n(ping, 160_000))
        .collect();
    let mut input = encode(CodecKind::Binary, &pings);
    server.receive(&mut input, now).unwrap();
    assert!(!server.wants_input(), "input stops while output waits");
    assert!(
        !input.is_empty(),
        "the rest of the flood stays unread (in the socket, in real life)"
    );
    let queued = server.transmit.len();
    assert!(
        queued <= server.output_limit() + 64,
        "{queued} bytes queued, the limit is {}",
        server.output_limit()
    );
    // Once the output drains, input resumes.
    server.poll_transmit().unwrap();
    assert!(server.wants_input());
    server.receive(&mut input, now).unwrap();
    assert!(server.closed_reason().is_none());
}

#[test]
fn only_the_first_iam_request_is_answered_and_a_huge_id_closes() {
    let now = Instant::now();
    let request = |id: String| {
        Envelope::IamAuthRequest(IamAuthRequest {
            id,
            timestamp: "t".into(),
            service: "tunnel".into(),
            region: "r".into(),
            access_key_id: "AK".into(),
            signature: "S".into(),
            signed_headers: String::new(),
        })
    };
    let mut server = Session::new(Role::Server, CodecKind::Json, config(), now);
    let mut input = encode(
        CodecKind::Json,
        &[
            request("a".repeat(32)),
            request("b".repeat(32)),
            request("c".repeat(32)),
        ],
    );
    server.receive(&mut input, now).unwrap();
    let answers = decode_all(CodecKind::Json, &server.poll_transmit().unwrap());
    assert_eq!(answers.len(), 1, "{answers:?}");

    let mut server = Session::new(Role::Server, CodecKind::Json, config(), now);
    let mut input = encode(CodecKind::Json, &[request("x".repeat(1 << 20))]);
    server.receive(&mut input, now).unwrap();
    assert!(
        server.poll_transmit().is_none(),
        "a megabyte id is never echoed"
    );
    let reason = server.closed_reason().unwrap();
    assert!(matches!(reason, CloseReason::Protocol(_)), "{reason}");
}

#[test]
fn frames_for_an_unknown_stream_get_one_reset_not_one_each() {
    let mut p = Pair::new(CodecKind::Binary);
    let stranger = StreamId(0xbad);
    let frames: Vec<Envelope> = (0..1000)
        .map(|_| {
            Envelope::ConnectData(Data {
                id: stranger,
                data: Bytes::from_static(b"x"),
            })
        })
        .collect();
    let mut input = encode(CodecKind::Binary, &frames);
    p.server.receive(&mut input, p.now).unwrap();
    let out = p.server.poll_transmit().unwrap();
    let resets = decode_all(CodecKind::Binary, &out)
        .into_iter()
        .filter(|e| matches!(e, Envelope::StreamReset(r) if r.id == stranger))
        .count();
    assert_eq!(resets, 1);
}

#[test]
fn whole_body_envelopes_are_refused_on_a_binary_session() {
    let mut p = Pair::new(CodecKind::Binary);
    let id = StreamId(41);
    let mut input = encode(
        CodecKind::Binary,
        &[Envelope::HttpRequest(HttpRequest {
            id,
            method: "GET".into(),
            url: "http://example.com/".into(),
            headers: Headers::new(),
            body: Bytes::from(vec![0u8; 1000]),
        })],
    );
    p.server.receive(&mut input, p.now).unwrap();
    let (_, server_events) = p.drain_events();
    assert!(
        !server_events
            .iter()
            .any(|e| matches!(e, Event::Incoming { .. })),
        "{server_events:?}"
    );
    let out = decode_all(CodecKind::Binary, &p.server.poll_transmit().unwrap());
    assert!(
        out.iter()
            .any(|e| matches!(e, Envelope::StreamReset(r) if r.id == id)),
        "{out:?}"
    );
}

/// A Rust client against a server whose hello announces `initial_window` and
/// `max_frame_size`, with one WebSocket stream accepted.
fn client_with_peer(initial_window: u32, max_frame_size: u32) -> (Session, StreamId) {
    let now = Instant::now();
    let mut client = Session::new(Role::Client, CodecKind::Binary, config(), now);
    let id = client
        .open(Target::WebSocket {
            url: "ws://example.com/".into(),
            headers: Headers::new(),
        })
        .unwrap();
    let mut input = encode(
        CodecKind::Binary,
        &[
            hello(initial_window, max_frame_size),
            Envelope::WsAck(Ack::accepted(id)),
        ],
    );
    client.receive(&mut input, now).unwrap();
    (client, id)
}

#[test]
fn a_tiny_announced_frame_limit_is_an_error_not_an_underflow() {
    let (mut client, id) = client_with_peer(1 << 18, 16);
    let err = client
        .send_message(id, ws_type::BINARY, b"hello")
        .unwrap_err();
    assert!(err.to_string().contains("frame limit"), "{err}");
}

#[test]
fn a_message_larger_than_the_peer_window_is_an_error_not_a_stall() {
    let (mut client, id) = client_with_peer(1024, 1 << 20);
    assert!(
        client
            .send_message(id, ws_type::BINARY, &[1; 1024])
            .unwrap()
    );
    let err = client
        .send_message(id, ws_type::BINARY, &[1; 2048])
        .unwrap_err();
    assert!(err.to_string().contains("receive window"), "{err}");
}

#[test]
fn whole_bodies_for_a_go_peer_share_a_connection_budget() {
    let now = Instant::now();
    let mib = 1 << 20;
    let config = SessionConfig {
        legacy_line_threshold: mib,
        max_legacy_buffered: mib + mib / 2,
        ..config()
    };
    let mut server = Session::new(Role::Server, CodecKind::Json, config, now);
    let ids = [StreamId(1), StreamId(2), StreamId(3)];
    let requests: Vec<Envelope> = ids
        .iter()
        .map(|id| {
            Envelope::HttpRequest(HttpRequest {
                id: *id,
                method: "GET".into(),
                url: "http://example.com/".into(),
                headers: Headers::new(),
                body: Bytes::new(),
            })
        })
        .collect();
    server
        .receive(&mut encode(CodecKind::Json, &requests), now)
        .unwrap();
    for id in ids {
        let reply = Reply::Http {
            status_code: 200,
            headers: Headers::new(),
        };
        server.accept(id, reply).unwrap();
    }
    let [a, b, c] = ids;
    let body = vec![7u8; mib];
    // The first holder may always complete its body; the others share what is left.
    assert_eq!(server.send(a, &body).unwrap(), mib);
    assert_eq!(server.send(b, &body).unwrap(), mib / 2);
    assert_eq!(server.send(c, &body).unwrap(), 0, "the budget is spent");
    assert_eq!(server.send_capacity(c), 0);
    std::iter::from_fn(|| server.poll_event()).for_each(drop);
    // A's body goes out: B (now the oldest holder) may complete, C waits for B.
    server.finish(a).unwrap();
    let events: Vec<Event> = std::iter::from_fn(|| server.poll_event()).collect();
    assert!(events.contains(&Event::Writable(c)), "{events:?}");
    assert_eq!(server.send(b, &body[..mib / 2]).unwrap(), mib / 2);
    assert!(server.send(c, &body).unwrap() <= mib / 2);
    // The peer reads A's response. B grows past the threshold: it streams as a line instead,
    // and gives its share back, so C may hold the rest of its body.
    std::iter::from_fn(|| server.poll_transmit()).for_each(drop);
    // (The held megabyte fills the output, so the new bytes themselves wait for room.)
    assert!(server.send(b, b"one byte more").unwrap() <= 13);
    assert!(server.is_line_out(b));
    assert_eq!(server.send(c, &body[..mib / 2]).unwrap(), mib / 2);
}

/// Found by the session fuzzer: a peer that ended a stream before answering its open, then
/// answered with a body, had that body delivered after the end. The early end now resets the
/// stream, and the late answer delivers nothing.
#[test]
fn an_end_before_the_answer_resets_the_stream() {
    let now = Instant::now();
    let mut client = Session::client(CodecKind::Json, config(), now);
    let id = client
        .open(Target::Http {
            method: "GET".into(),
            url: "http://example.com/".into(),
            headers: Headers::new(),
        })
        .unwrap();
    let mut input = encode(
        CodecKind::Json,
        &[
            Envelope::BodyEnd(Close { id, error: None }),
            Envelope::HttpResponse(HttpResponse {
                id,
                status_code: 200,
                headers: Headers::new(),
                body: Bytes::from_static(b"late"),
                error: None,
            }),
        ],
    );
    client.receive(&mut input, now).unwrap();
    let events: Vec<Event> = std::iter::from_fn(|| client.poll_event()).collect();
    assert!(
        events.contains(&Event::Reset {
            id,
            error: StreamError::Violation(Violation::EndBeforeAnswer),
        }),
        "{events:?}"
    );
    assert!(client.recv(id, usize::MAX).is_err());
}

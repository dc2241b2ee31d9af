//! Deterministic session tests: two sessions wired back to back, no sockets, explicit time.

mod go_dialect;
mod hostile;
mod lines;

use super::*;
use crate::codec::FrameError;

fn config() -> SessionConfig {
    SessionConfig {
        first_stream_id: Some(1),
        ..SessionConfig::default()
    }
}

struct Pair {
    client: Session,
    server: Session,
    now: Instant,
    to_server: BytesMut,
    to_client: BytesMut,
}

impl Pair {
    fn new(codec: CodecKind) -> Pair {
        Pair::with_config(codec, config())
    }

    fn with_config(codec: CodecKind, config: SessionConfig) -> Pair {
        let now = Instant::now();
        let mut client = Session::new(Role::Client, codec, config.clone(), now);
        if codec == CodecKind::Json {
            client.send_hello();
        }
        let server = Session::new(Role::Server, codec, config, now);
        let mut pair = Pair {
            client,
            server,
            now,
            to_server: BytesMut::new(),
            to_client: BytesMut::new(),
        };
        pair.pump();
        assert!(pair.client.peer_hello().is_some() && pair.server.peer_hello().is_some());
        pair.drain_events();
        pair
    }

    /// Moves bytes both ways until neither side has anything to send.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(b) = self.client.poll_transmit() {
                self.to_server.extend_from_slice(&b);
                moved = true;
            }
            while let Some(b) = self.server.poll_transmit() {
                self.to_client.extend_from_slice(&b);
                moved = true;
            }
            self.server.receive(&mut self.to_server, self.now).unwrap();
            self.client.receive(&mut self.to_client, self.now).unwrap();
            if !moved {
                break;
            }
        }
    }

    fn drain_events(&mut self) -> (Vec<Event>, Vec<Event>) {
        (
            std::iter::from_fn(|| self.client.poll_event()).collect(),
            std::iter::from_fn(|| self.server.poll_event()).collect(),
        )
    }

    /// Opens and accepts a CONNECT stream.
    fn connect(&mut self, address: &str) -> StreamId {
        let id = self
            .client
            .open(Target::Connect {
                address: address.into(),
            })
            .unwrap();
        self.pump();
        let (_, server_events) = self.drain_events();
        assert!(server_events.contains(&Event::Incoming {
            id,
            target: Target::Connect {
                address: address.into()
            }
        }));
        self.server.accept(id, Reply::Connect).unwrap();
        self.pump();
        let (client_events, _) = self.drain_events();
        assert!(client_events.contains(&Event::Accepted {
            id,
            reply: Reply::Connect
        }));
        id
    }
}

fn read_all(session: &mut Session, id: StreamId) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        match session.recv(id, usize::MAX).unwrap() {
            Recv::Data(c) => out.extend_from_slice(&c.data),
            Recv::End => return (out, true),
            Recv::Pending => return (out, false),
        }
    }
}

fn pattern(stream: u64, offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| (i as u64).wrapping_mul(31).wrapping_add(stream * 7) as u8)
        .collect()
}

#[test]
fn hundred_interleaved_streams_deliver_every_byte_in_order() {
    for codec in [CodecKind::Binary, CodecKind::Json] {
        let mut p = Pair::new(codec);
        let ids: Vec<StreamId> = (0..100)
            .map(|i| p.connect(&format!("host{i}:443")))
            .collect();
        let total = 200_000usize;
        let mut sent = vec![0usize; 100];
        let mut received: Vec<Vec<u8>> = vec![Vec::new(); 100];
        let mut back: Vec<Vec<u8>> = vec![Vec::new(); 100];
        let mut round = 0usize;
        while sent.iter().any(|s| *s < total) {
            round += 1;
            for (i, id) in ids.iter().enumerate() {
                // Odd, varying write sizes interleave the streams' frames on the wire.
                let want = ((i * 977 + round * 131) % 9000 + 1).min(total - sent[i]);
                if want == 0 {
                    continue;
                }
                let data = pattern(i as u64, sent[i], want);
                let n = p.client.send(*id, &data).unwrap();
                sent[i] += n;
            }
            p.pump();
            for (i, id) in ids.iter().enumerate() {
                received[i].extend(read_all(&mut p.server, *id).0);
            }
            p.pump();
        }
        // The way back flows before the client finishes: over JSON, as with Go, a finish is a
        // full close.
        for (i, id) in ids.iter().enumerate() {
            p.server
                .send(*id, &pattern(1000 + i as u64, 0, 5000))
                .unwrap();
        }
        for id in &ids {
            p.client.finish(*id).unwrap();
        }
        p.pump();
        for (i, id) in ids.iter().enumerate() {
            let (rest, end) = read_all(&mut p.server, *id);
            received[i].extend(rest);
            assert!(end, "stream {i} ended");
            assert_eq!(
                received[i],
                pattern(i as u64, 0, total),
                "stream {i} intact and in order ({codec:?})"
            );
            p.server.finish(*id).unwrap();
        }
        p.pump();
        for (i, id) in ids.iter().enumerate() {
            back[i] = read_all(&mut p.client, *id).0;
            assert_eq!(back[i], pattern(1000 + i as u64, 0, 5000));
            p.client.release(*id);
            p.server.release(*id);
        }
        assert_eq!(p.client.stream_count(), 0);
        assert_eq!(p.server.stream_count(), 0);
    }
}

#[test]
fn a_stalled_reader_on_one_stream_does_not_slow_another() {
    let mut p = Pair::new(CodecKind::Binary);
    let a = p.connect("a:1");
    let b = p.connect("b:1");
    // Fill A: nobody reads it on the server.
    let chunk = vec![0xaa; 64 * 1024];
    let mut a_sent = 0;
    loop {
        let n = p.client.send(a, &chunk).unwrap();
        p.pump();
        if n == 0 {
            break;
        }
        a_sent += n;
    }
    assert_eq!(a_sent, 256 * 1024, "A stops at its window");
    // B moves 20 MiB while A stays stalled, with no more pump rounds than bytes require.
    let mut b_sent = 0;
    let mut b_got = 0;
    let mut rounds = 0;
    while b_got < 20 << 20 {
        rounds += 1;
        if b_sent < 20 << 20 {
            b_sent += p.client.send(b, &chunk).unwrap();
        }
        p.pump();
        b_got += read_all(&mut p.server, b).0.len();
        p.pump();
        assert!(rounds < 1000, "B stalled");
    }
    assert_eq!(p.client.send(a, &chunk).unwrap(), 0, "A is still blocked");
    // Reading A releases its credit and wakes its writer.
    assert_eq!(read_all(&mut p.server, a).0.len(), 256 * 1024);
    p.pump();
    let (client_events, _) = p.drain_events();
    assert!(client_events.contains(&Event::Writable(a)));
    assert!(p.client.send(a, &chunk).unwrap() > 0);
}

/// Encodes envelopes as a (misbehaving) client would and feeds them to the server.
fn inject(p: &mut Pair, codec: CodecKind, envelopes: &[Envelope]) {
    let mut c = codec.new_codec(1 << 20);
    let mut buf = BytesMut::new();
    for e in envelopes {
        c.encode(e, &mut buf).unwrap();
    }
    p.server.receive(&mut buf, p.now).unwrap();
    p.pump();
}

fn sends_reset(events: &[Event], id: StreamId) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::Reset { id: i, .. } if *i == id))
}

#[test]
fn window_overrun_resets_only_that_stream() {
    let mut p = Pair::new(CodecKind::Binary);
    let a = p.connect("a:1");
    let b = p.connect("b:1");
    let too_much = Bytes::from(vec![1u8; 256 * 1024 + 1]);
    inject(
        &mut p,
        CodecKind::Binary,
        &[Envelope::ConnectData(Data {
            id: a,
            data: too_much,
        })],
    );
    let (client_events, server_events) = p.drain_events();
    assert!(sends_reset(&server_events, a), "{server_events:?}");
    assert!(
        sends_reset(&client_events, a),
        "the peer hears about it: {client_events:?}"
    );
    assert!(matches!(
        p.server.recv(a, 10),
        Err(Error::Stream {
            error: StreamError::Violation(Violation::WindowExceeded),
            ..
        })
    ));
    // B is untouched.
    p.client.send(b, b"still fine").unwrap();
    p.pump();
    assert_eq!(read_all(&mut p.server, b).0, b"still fine");
}

#[test]
fn unknown_ids_and_duplicate_opens_reset_only_that_stream() {
    let mut p = Pair::new(CodecKind::Binary);
    let a = p.connect("a:1");
    let b = p.connect("b:1");
    let stranger = StreamId(0xdead);
    let mut c = CodecKind::Binary.new_codec(1 << 20);
    let mut buf = BytesMut::new();
    c.encode(
        &Envelope::ConnectData(Data {
            id: stranger,
            data: Bytes::from_static(b"x"),
        }),
        &mut buf,
    )
    .unwrap();
    p.server.receive(&mut buf, p.now).unwrap();
    let mut out = BytesMut::from(&p.server.poll_transmit().unwrap()[..]);
    let answer = c.decode(&mut out).unwrap();
    assert!(
        matches!(answer, Some(Decoded::Envelope(Envelope::StreamReset(StreamReset { id, .. }))) if id == stranger),
        "{answer:?}"
    );

    inject(
        &mut p,
        CodecKind::Binary,
        &[Envelope::ConnectOpen(ConnectOpen {
            id: a,
            address: "evil:1".into(),
        })],
    );
    let (client_events, server_events) = p.drain_events();
    assert!(sends_reset(&server_events, a));
    assert!(sends_reset(&client_events, a));
    assert!(
        !server_events
            .iter()
            .any(|e| matches!(e, Event::Incoming { .. }))
    );

    inject(
        &mut p,
        CodecKind::Binary,
        &[Envelope::ConnectData(Data {
            id: b,
            data: Bytes::from_static(b"ok"),
        })],
    );
    assert_eq!(read_all(&mut p.server, b).0, b"ok");
    assert!(p.server.closed_reason().is_none());
}

#[test]
fn data_after_end_resets_the_stream() {
    let mut p = Pair::new(CodecKind::Binary);
    let a = p.connect("a:1");
    p.client.finish(a).unwrap();
    p.pump();
    inject(
        &mut p,
        CodecKind::Binary,
        &[Envelope::ConnectData(Data {
            id: a,
            data: Bytes::from_static(b"late"),
        })],
    );
    let (_, server_events) = p.drain_events();
    assert!(sends_reset(&server_events, a));
}

#[test]
fn an_oversized_frame_closes_the_connection_with_a_clear_error() {
    for codec in [CodecKind::Binary, CodecKind::Json] {
        let mut p = Pair::new(codec);
        let mut c = codec.new_codec(usize::MAX);
        let mut buf = BytesMut::new();
        // JSON takes lines up to `max_json_line` (16 MiB) whole (HTTP lines stream).
        let (size, expected_limit) = match codec {
            CodecKind::Binary => (2 << 20, 1 << 20),
            CodecKind::Json => (24 << 20, 16usize << 20),
        };
        c.encode(
            &Envelope::ConnectData(Data {
                id: StreamId(1),
                data: Bytes::from(vec![0u8; size]),
            }),
            &mut buf,
        )
        .unwrap();
        let err = p.server.receive(&mut buf, p.now).unwrap_err();
        assert!(
            matches!(err, Error::Frame(FrameError::TooLarge { limit, .. }) if limit == expected_limit),
            "{err}"
        );
        assert!(err.to_string().contains("exceeds the limit"));
        let (_, server_events) = p.drain_events();
        assert!(
            server_events
                .iter()
                .any(|e| matches!(e, Event::Closed(CloseReason::Corrupt(_))))
        );
        assert!(
            p.server
                .open(Target::Connect {
                    address: "x:1".into()
                })
                .is_err()
        );
    }
}

#[test]
fn heartbeats_flow_and_a_silent_peer_times_out() {
    let mut p = Pair::new(CodecKind::Binary);
    let start = p.now;
    // A live peer answers pings, so the tunnel survives well past the idle timeout.
    for step in 1..=10 {
        p.now = start + Duration::from_secs(10 * step);
        p.client.handle_timeout(p.now);
        p.server.handle_timeout(p.now);
        p.pump();
    }
    assert!(p.client.closed_reason().is_none());
    // Now the server goes silent.
    let deadline = p.client.poll_timeout().unwrap();
    let later = p.now + Duration::from_secs(31);
    assert!(deadline <= later);
    p.client.handle_timeout(p.now + Duration::from_secs(10));
    let _ = p.client.poll_transmit();
    p.client.handle_timeout(later);
    let reason = p.client.closed_reason().unwrap();
    assert!(
        matches!(reason, CloseReason::HeartbeatTimeout(silent) if *silent >= Duration::from_secs(30)),
        "{reason}"
    );
}

#[test]
fn streamed_http_between_rust_peers_never_builds_one_big_frame() {
    let mut p = Pair::new(CodecKind::Binary);
    let id = p
        .client
        .open(Target::Http {
            method: "POST".into(),
            url: "http://x/".into(),
            headers: Headers::new(),
        })
        .unwrap();
    let body = pattern(3, 0, 300_000);
    let mut off = 0;
    while off < body.len() {
        off += p.client.send(id, &body[off..]).unwrap();
        p.pump();
        read_all(&mut p.server, id);
    }
    p.client.finish(id).unwrap();
    p.pump();
    let (_, server_events) = p.drain_events();
    assert!(matches!(server_events[0], Event::Incoming { .. }));
    p.server
        .accept(
            id,
            Reply::Http {
                status_code: 201,
                headers: Headers::new(),
            },
        )
        .unwrap();
    p.server.send(id, b"done").unwrap();
    p.server.finish(id).unwrap();
    p.pump();
    let (client_events, _) = p.drain_events();
    assert!(client_events.contains(&Event::Accepted {
        id,
        reply: Reply::Http {
            status_code: 201,
            headers: Headers::new()
        }
    }));
    assert_eq!(read_all(&mut p.client, id), (b"done".to_vec(), true));
}

#[test]
fn refusal_and_reset_reach_the_client() {
    let mut p = Pair::new(CodecKind::Binary);
    let id = p
        .client
        .open(Target::Connect {
            address: "denied:22".into(),
        })
        .unwrap();
    p.pump();
    p.server
        .refuse(id, RefusalCode::Denied, "egress denied")
        .unwrap();
    p.pump();
    let (client_events, _) = p.drain_events();
    let refusal = Refusal {
        code: RefusalCode::Denied,
        reason: "egress denied".into(),
    };
    assert!(
        client_events.contains(&Event::Refused { id, refusal }),
        "{client_events:?}"
    );

    let a = p.connect("a:1");
    p.server.reset(a, "target went away").unwrap();
    p.pump();
    let (client_events, _) = p.drain_events();
    assert!(sends_reset(&client_events, a));
    assert!(matches!(
        p.client.send(a, b"x"),
        Err(Error::Stream { error: StreamError::PeerReset(reason), .. }) if reason == "target went away"
    ));
}

#[test]
fn a_reset_after_the_peers_end_keeps_what_it_sent() {
    let mut p = Pair::new(CodecKind::Binary);
    let a = p.connect("a:1");
    p.server.send(a, b"the answer").unwrap();
    p.server.finish(a).unwrap();
    p.server.release(a); // the client has not finished: this resets the stream
    p.pump();
    assert!(matches!(
        p.client.send(a, b"more"),
        Err(Error::StreamState { .. })
    ));
    assert_eq!(read_all(&mut p.client, a), (b"the answer".to_vec(), true));
}

#[test]
fn data_that_fully_arrived_stays_readable_after_the_tunnel_closes() {
    for codec in [CodecKind::Binary, CodecKind::Json] {
        let mut p = Pair::new(codec);
        let finished = p.connect("done:443");
        let unfinished = p.connect("cut:443");
        let body = pattern(1, 0, 100_000);
        assert_eq!(p.server.send(finished, &body).unwrap(), body.len());
        p.server.finish(finished).unwrap();
        p.server.send(unfinished, b"partial").unwrap();
        p.pump();
        // The server closes the connection before the client has read anything.
        p.client.receive_eof();
        assert_eq!(read_all(&mut p.client, finished), (body, true), "{codec:?}");
        assert!(
            matches!(
                p.client.recv(unfinished, usize::MAX),
                Err(Error::Stream {
                    error: StreamError::TunnelClosed(CloseReason::PeerClosed),
                    ..
                })
            ),
            "a stream without its end is cut short ({codec:?})"
        );
        assert!(
            p.client.send(finished, b"x").is_err(),
            "nothing is sent any more"
        );
    }
}

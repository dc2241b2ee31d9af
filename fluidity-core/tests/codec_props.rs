//! Property tests: both codecs round-trip arbitrary envelopes; arbitrary bytes never panic a
//! decoder nor make it buffer past its frame limit.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic

use bytes::{Bytes, BytesMut};
use fluidity_core::codec::{BinaryCodec, Codec, CodecKind, Decoded, JsonCodec};
use fluidity_core::envelope::*;
use proptest::prelude::*;

fn id() -> impl Strategy<Value = StreamId> {
    any::<u64>().prop_map(StreamId)
}
fn text() -> impl Strategy<Value = String> {
    ".{0,24}"
}
fn opt_text() -> impl Strategy<Value = Option<String>> {
    // Go's omitempty cannot tell "" from absent, so the model normalises Some("") to None.
    proptest::option::of(".{1,24}")
}
fn bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}
fn headers() -> impl Strategy<Value = Headers> {
    proptest::collection::btree_map(text(), proptest::collection::vec(text(), 0..3), 0..4)
}

fn envelope() -> impl Strategy<Value = Envelope> {
    prop_oneof![
        (id(), text(), text(), headers(), bytes()).prop_map(|(id, method, url, headers, body)| {
            Envelope::HttpRequest(HttpRequest {
                id,
                method,
                url,
                headers,
                body,
            })
        }),
        (id(), any::<u16>(), headers(), bytes(), opt_text()).prop_map(
            |(id, status_code, headers, body, error)| Envelope::HttpResponse(HttpResponse {
                id,
                status_code,
                headers,
                body,
                error
            })
        ),
        (id(), text()).prop_map(|(id, address)| Envelope::ConnectOpen(ConnectOpen { id, address })),
        (id(), any::<bool>(), opt_text(), refusal()).prop_map(|(id, ok, error, refusal)| {
            Envelope::ConnectAck(Ack {
                id,
                ok,
                error,
                refusal,
            })
        }),
        (id(), bytes()).prop_map(|(id, data)| Envelope::ConnectData(Data { id, data })),
        (id(), opt_text()).prop_map(|(id, error)| Envelope::ConnectClose(Close { id, error })),
        (id(), text(), headers()).prop_map(|(id, url, headers)| Envelope::WsOpen(WsOpen {
            id,
            url,
            headers
        })),
        (id(), any::<bool>(), opt_text(), refusal()).prop_map(|(id, ok, error, refusal)| {
            Envelope::WsAck(Ack {
                id,
                ok,
                error,
                refusal,
            })
        }),
        (id(), any::<u8>(), bytes()).prop_map(|(id, message_type, data)| Envelope::WsMessage(
            WsMessage {
                id,
                message_type,
                data
            }
        )),
        (id(), any::<u16>(), opt_text()).prop_map(|(id, code, error)| Envelope::WsClose(WsClose {
            id,
            code,
            error
        })),
        (text(), text(), text(), text(), text(), text(), text()).prop_map(
            |(id, timestamp, service, region, access_key_id, signature, signed_headers)| {
                Envelope::IamAuthRequest(IamAuthRequest {
                    id,
                    timestamp,
                    service,
                    region,
                    access_key_id,
                    signature,
                    signed_headers,
                })
            }
        ),
        (text(), any::<bool>(), opt_text(), opt_text()).prop_map(
            |(id, ok, error, session_token)| Envelope::IamAuthResponse(IamAuthResponse {
                id,
                ok,
                error,
                session_token
            })
        ),
        (
            any::<u32>(),
            proptest::collection::vec(text(), 0..4),
            any::<u32>(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(
                |(version, capabilities, initial_window, connection_window, max_frame_size)| {
                    Envelope::Hello(Hello {
                        version,
                        capabilities,
                        initial_window,
                        connection_window,
                        max_frame_size,
                    })
                }
            ),
        (proptest::option::of(id()), any::<u32>())
            .prop_map(|(id, increment)| Envelope::WindowUpdate(WindowUpdate { id, increment })),
        any::<u64>().prop_map(|nonce| Envelope::Ping(Heartbeat { nonce })),
        any::<u64>().prop_map(|nonce| Envelope::Pong(Heartbeat { nonce })),
        (id(), text(), text(), headers()).prop_map(|(id, method, url, headers)| {
            Envelope::HttpRequestHead(HttpRequestHead {
                id,
                method,
                url,
                headers,
            })
        }),
        (id(), any::<u16>(), headers()).prop_map(|(id, status_code, headers)| {
            Envelope::HttpResponseHead(HttpResponseHead {
                id,
                status_code,
                headers,
            })
        }),
        (id(), bytes()).prop_map(|(id, data)| Envelope::BodyChunk(Data { id, data })),
        (id(), opt_text()).prop_map(|(id, error)| Envelope::BodyEnd(Close { id, error })),
        (id(), opt_text()).prop_map(|(id, error)| Envelope::ConnectFin(Close { id, error })),
        (id(), text(), refusal()).prop_map(|(id, error, refusal)| {
            Envelope::StreamReset(StreamReset { id, error, refusal })
        }),
    ]
}

fn refusal() -> impl Strategy<Value = Option<RefusalCode>> {
    proptest::option::of(prop_oneof![
        Just(RefusalCode::Other),
        Just(RefusalCode::Unavailable),
        Just(RefusalCode::Denied),
        Just(RefusalCode::NetworkUnreachable),
        Just(RefusalCode::HostUnreachable),
        Just(RefusalCode::ConnectionRefused),
        Just(RefusalCode::TimedOut),
    ])
}

fn round_trip(kind: CodecKind, envelopes: &[Envelope], split: usize) -> Vec<Envelope> {
    let mut codec = kind.new_codec(1 << 20);
    let mut wire = BytesMut::new();
    for e in envelopes {
        codec.encode(e, &mut wire).unwrap();
    }
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in wire.chunks(split.max(1)) {
        buf.extend_from_slice(piece);
        while let Some(d) = codec.decode(&mut buf).unwrap() {
            match d {
                Decoded::Envelope(e) => out.push(e),
                Decoded::Skipped { kind, reason } => panic!("skipped {kind}: {reason}"),
                // Bodies here are far below the size at which a line is streamed.
                other => panic!("unexpected streamed line {other:?}"),
            }
        }
    }
    assert!(buf.is_empty());
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn json_round_trips(envelopes in proptest::collection::vec(envelope(), 1..8), split in 1usize..200) {
        prop_assert_eq!(round_trip(CodecKind::Json, &envelopes, split), envelopes);
    }

    #[test]
    fn binary_round_trips(envelopes in proptest::collection::vec(envelope(), 1..8), split in 1usize..200) {
        prop_assert_eq!(round_trip(CodecKind::Binary, &envelopes, split), envelopes);
    }

    #[test]
    fn json_output_is_one_line_per_envelope(e in envelope()) {
        let mut wire = BytesMut::new();
        JsonCodec::new(1 << 20).encode(&e, &mut wire).unwrap();
        prop_assert_eq!(wire.iter().filter(|b| **b == b'\n').count(), 1);
        prop_assert_eq!(wire.last(), Some(&b'\n'));
    }

    #[test]
    fn arbitrary_bytes_never_panic_or_overbuffer(
        input in proptest::collection::vec(any::<u8>(), 0..4096),
        binary in any::<bool>(),
        split in 1usize..512,
    ) {
        const LIMIT: usize = 512;
        let mut codec: Box<dyn Codec> = if binary { Box::new(BinaryCodec::new(LIMIT)) } else { Box::new(JsonCodec::new(LIMIT)) };
        let mut buf = BytesMut::new();
        'feed: for piece in input.chunks(split) {
            buf.extend_from_slice(piece);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
            // Waiting for the rest of a frame never holds (or reserves) more than a frame.
            prop_assert!(buf.len() <= LIMIT, "buffered {} past the limit", buf.len());
            prop_assert!(buf.capacity() <= 2 * LIMIT + split, "reserved {}", buf.capacity());
        }
    }

    #[test]
    fn arbitrary_json_lines_never_panic(lines in proptest::collection::vec("[ -~]{0,80}", 0..20)) {
        let mut codec = JsonCodec::new(1 << 16);
        let mut buf = BytesMut::new();
        for l in lines {
            buf.extend_from_slice(l.as_bytes());
            buf.extend_from_slice(b"\n");
        }
        while let Ok(Some(_)) = codec.decode(&mut buf) {}
    }
}

//! Golden tests: envelopes exactly as the Go encoder writes them.
//!
//! `tests/vectors/go-envelopes.jsonl` is a copy of `shared/vectors/go-envelopes.jsonl`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic

use bytes::{Bytes, BytesMut};
use fluidity_core::codec::{BinaryCodec, Codec, Decoded, JsonCodec};
use fluidity_core::envelope::*;

const VECTORS: &str = include_str!("vectors/go-envelopes.jsonl");

fn decode_one(codec: &mut dyn Codec, bytes: &[u8]) -> Envelope {
    let mut buf = BytesMut::from(bytes);
    match codec.decode(&mut buf).expect("decodes") {
        Some(Decoded::Envelope(e)) => {
            assert!(buf.is_empty(), "one frame, fully consumed");
            e
        }
        other => panic!("expected an envelope, got {other:?}"),
    }
}

#[test]
fn every_go_vector_decodes_and_round_trips_through_both_codecs() {
    let mut seen = std::collections::BTreeSet::new();
    for line in VECTORS.lines().filter(|l| !l.trim().is_empty()) {
        let framed = format!("{line}\n");
        let envelope = decode_one(&mut JsonCodec::new(1 << 20), framed.as_bytes());
        seen.insert(envelope.type_name());

        let mut out = BytesMut::new();
        JsonCodec::new(1 << 20).encode(&envelope, &mut out).unwrap();
        assert_eq!(
            decode_one(&mut JsonCodec::new(1 << 20), &out),
            envelope,
            "{line}"
        );
        // Go writes `null` for nil maps and slices where we write `{}` / `""`; every other line
        // must come out byte for byte as Go wrote it.
        if !line.contains("null") {
            assert_eq!(
                std::str::from_utf8(&out).unwrap(),
                framed,
                "byte-exact re-encoding"
            );
        }

        let mut bin = BytesMut::new();
        BinaryCodec::new(1 << 20)
            .encode(&envelope, &mut bin)
            .unwrap();
        assert_eq!(
            decode_one(&mut BinaryCodec::new(1 << 20), &bin),
            envelope,
            "{line}"
        );
    }
    let all12 = [
        "http_request",
        "http_response",
        "connect_open",
        "connect_ack",
        "connect_data",
        "connect_close",
        "ws_open",
        "ws_ack",
        "ws_message",
        "ws_close",
        "iam_auth_request",
        "iam_auth_response",
    ];
    for t in all12 {
        assert!(seen.contains(t), "vectors cover {t}");
    }
}

#[test]
fn go_vector_values_decode_to_what_go_meant() {
    let lines: Vec<Envelope> = VECTORS
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| decode_one(&mut JsonCodec::new(1 << 20), format!("{l}\n").as_bytes()))
        .collect();
    let find = |pred: &dyn Fn(&Envelope) -> bool| lines.iter().find(|e| pred(e)).cloned().unwrap();

    let Envelope::HttpRequest(get) =
        find(&|e| matches!(e, Envelope::HttpRequest(r) if r.method == "GET"))
    else {
        unreachable!()
    };
    assert_eq!(get.id, StreamId(0xa1b2c3d4e5f60718));
    assert_eq!(
        get.url, "http://example.com/path?q=1&r=<2>",
        "Go's \\u0026 escapes decode"
    );
    assert_eq!(get.headers["X-Multi"], vec!["one", "two"]);
    assert!(get.body.is_empty());

    let Envelope::HttpRequest(post) =
        find(&|e| matches!(e, Envelope::HttpRequest(r) if r.method == "POST"))
    else {
        unreachable!()
    };
    assert_eq!(&post.body[..], b"\x00\x01\x02\xfd\xfe\xffhi");

    let Envelope::HttpRequest(put) =
        find(&|e| matches!(e, Envelope::HttpRequest(r) if r.method == "PUT"))
    else {
        unreachable!()
    };
    assert!(put.headers.is_empty(), "null headers become an empty map");

    let Envelope::HttpResponse(ok) =
        find(&|e| matches!(e, Envelope::HttpResponse(r) if r.status_code == 200))
    else {
        unreachable!()
    };
    assert_eq!(ok.headers["Set-Cookie"].len(), 2);
    assert_eq!(std::str::from_utf8(&ok.body).unwrap(), "<html>é & ü</html>");

    let Envelope::HttpResponse(bad) =
        find(&|e| matches!(e, Envelope::HttpResponse(r) if r.status_code == 502))
    else {
        unreachable!()
    };
    assert_eq!(
        bad.error.as_deref(),
        Some("dial tcp 127.0.0.1:1: connect: connection refused")
    );
    assert!(bad.body.starts_with(b"Tunnel error: "));

    let nil_chunk = find(&|e| matches!(e, Envelope::ConnectData(d) if d.data.is_empty()));
    assert_eq!(
        nil_chunk,
        Envelope::ConnectData(Data {
            id: StreamId(0xc0ffee0000000001),
            data: Bytes::new()
        })
    );

    let Envelope::WsMessage(text) =
        find(&|e| matches!(e, Envelope::WsMessage(m) if m.message_type == ws_type::TEXT))
    else {
        unreachable!()
    };
    assert_eq!(
        std::str::from_utf8(&text.data).unwrap(),
        "hello \u{2028} world"
    );

    let refused = find(&|e| matches!(e, Envelope::ConnectAck(a) if !a.ok));
    assert_eq!(
        refused,
        Envelope::ConnectAck(Ack {
            id: StreamId(0xc0ffee0000000002),
            ok: false,
            error: Some("dial tcp: lookup nowhere.invalid: no such host".into()),
            // Go peers send no refusal code.
            refusal: None,
        })
    );

    let Envelope::IamAuthRequest(iam) = find(&|e| matches!(e, Envelope::IamAuthRequest(_))) else {
        unreachable!()
    };
    assert_eq!(iam.timestamp, "2025-12-10T12:34:56.123456789+02:00");
    assert_eq!(iam.signed_headers, "");

    let close = find(&|e| matches!(e, Envelope::WsClose(c) if c.code == 1011));
    assert_eq!(
        close,
        Envelope::WsClose(WsClose {
            id: StreamId(0xfeed000000000002),
            code: 1011,
            error: Some("upstream gone".into())
        })
    );
}

#[test]
fn a_go_stream_of_many_envelopes_decodes_in_order_from_arbitrary_splits() {
    let stream: String = VECTORS
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    let expected: Vec<_> = {
        let mut c = JsonCodec::new(1 << 20);
        let mut buf = BytesMut::from(stream.as_bytes());
        std::iter::from_fn(|| c.decode(&mut buf).unwrap()).collect()
    };
    assert_eq!(
        expected.len(),
        VECTORS.lines().filter(|l| !l.trim().is_empty()).count()
    );
    for step in [1, 2, 7, 64, 333] {
        let mut c = JsonCodec::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in stream.as_bytes().chunks(step) {
            buf.extend_from_slice(piece);
            while let Some(d) = c.decode(&mut buf).unwrap() {
                got.push(d);
            }
        }
        assert_eq!(got, expected, "split every {step} bytes");
    }
}

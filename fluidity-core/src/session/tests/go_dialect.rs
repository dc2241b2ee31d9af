//! Sessions with Go peers: whole-body HTTP envelopes, refusals as ack then close, no credit.

use super::*;

#[test]
fn a_go_agent_session_uses_whole_http_envelopes() {
    let now = Instant::now();
    let mut server = Session::new(Role::Server, CodecKind::Json, config(), now);
    let mut input = BytesMut::from(concat!(
        r#"{"type":"iam_auth_request","payload":{"id":"0123456789abcdef0123456789abcdef","timestamp":"t","service":"tunnel","region":"r","access_key_id":"AK","signature":"S","signed_headers":""}}"#,
        "\n",
        r#"{"type":"http_request","payload":{"id":"a1b2c3d4e5f60719","method":"POST","url":"http://127.0.0.1:8000/sha256","headers":{"Content-Type":["application/octet-stream"]},"body":"AAEC/f7/aGk="}}"#,
        "\n",
    ));
    server.receive(&mut input, now).unwrap();
    let out = server.poll_transmit().unwrap();
    assert_eq!(&out[..], br#"{"type":"iam_auth_response","payload":{"id":"0123456789abcdef0123456789abcdef","ok":true}}
"#);
    let events: Vec<Event> = std::iter::from_fn(|| server.poll_event()).collect();
    let id = StreamId(0xa1b2c3d4e5f60719);
    assert!(
        matches!(&events[1], Event::Incoming { id: i, target: Target::Http { method, .. } } if *i == id && method == "POST")
    );
    assert_eq!(
        read_all(&mut server, id),
        (b"\x00\x01\x02\xfd\xfe\xffhi".to_vec(), true)
    );
    server
        .accept(
            id,
            Reply::Http {
                status_code: 200,
                headers: Headers::new(),
            },
        )
        .unwrap();
    assert_eq!(server.send(id, b"hello ").unwrap(), 6);
    assert_eq!(server.send(id, b"go").unwrap(), 2);
    assert!(
        server.poll_transmit().is_none(),
        "nothing until the body is whole"
    );
    server.finish(id).unwrap();
    assert_eq!(
        &server.poll_transmit().unwrap()[..],
        b"{\"type\":\"http_response\",\"payload\":{\"id\":\"a1b2c3d4e5f60719\",\"status_code\":200,\"headers\":{},\"body\":\"aGVsbG8gZ28=\"}}\n"
    );
}

#[test]
fn a_go_agent_connect_refusal_gets_ack_then_close() {
    let now = Instant::now();
    let mut server = Session::new(Role::Server, CodecKind::Json, config(), now);
    let mut input = BytesMut::from(&b"{\"type\":\"connect_open\",\"payload\":{\"id\":\"c0ffee0000000002\",\"address\":\"nowhere.invalid:443\"}}\n"[..]);
    server.receive(&mut input, now).unwrap();
    server
        .refuse(
            StreamId(0xc0ffee0000000002),
            RefusalCode::HostUnreachable,
            "no such host",
        )
        .unwrap();
    assert_eq!(
        &server.poll_transmit().unwrap()[..],
        &b"{\"type\":\"connect_ack\",\"payload\":{\"id\":\"c0ffee0000000002\",\"ok\":false,\"error\":\"no such host\"}}\n{\"type\":\"connect_close\",\"payload\":{\"id\":\"c0ffee0000000002\",\"error\":\"no such host\"}}\n"[..]
    );
}

#[test]
fn a_go_peer_flooding_data_is_backpressured_not_dropped() {
    let now = Instant::now();
    let small = SessionConfig {
        connection_window: 100_000,
        ..config()
    };
    let mut server = Session::new(Role::Server, CodecKind::Json, small, now);
    let mut codec = CodecKind::Json.new_codec(1 << 20);
    let mut wire = BytesMut::new();
    let id = StreamId(7);
    codec
        .encode(
            &Envelope::ConnectOpen(ConnectOpen {
                id,
                address: "a:1".into(),
            }),
            &mut wire,
        )
        .unwrap();
    server.receive(&mut wire, now).unwrap();
    server.accept(id, Reply::Connect).unwrap();
    for i in 0..10u8 {
        codec
            .encode(
                &Envelope::ConnectData(Data {
                    id,
                    data: Bytes::from(vec![i; 32 * 1024]),
                }),
                &mut wire,
            )
            .unwrap();
    }
    server.receive(&mut wire, now).unwrap();
    assert!(
        !server.wants_input(),
        "stops reading at the connection window"
    );
    assert!(!wire.is_empty(), "the rest waits in the socket buffer");
    let mut got = Vec::new();
    while got.len() < 10 * 32 * 1024 {
        got.extend(read_all(&mut server, id).0);
        server.receive(&mut wire, now).unwrap();
    }
    let expected: Vec<u8> = (0..10u8).flat_map(|i| vec![i; 32 * 1024]).collect();
    assert_eq!(got, expected);
}

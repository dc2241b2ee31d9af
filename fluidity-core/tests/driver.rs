//! The tokio driver through real sockets and pipes: streams as AsyncRead + AsyncWrite.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic

use std::time::{Duration, Instant};

use fluidity_core::codec::{CodecKind, FrameError};
use fluidity_core::{
    CloseReason, Connection, Error, Established, RefusalCode, Reply, Role, ServerInfo, Session,
    SessionConfig, StreamError, Target, TcpTransport, Transport,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn session(role: Role, codec: CodecKind) -> Session {
    match role {
        Role::Client => Session::client(codec, SessionConfig::default(), Instant::now()),
        Role::Server => Session::server(codec, SessionConfig::default(), Instant::now()),
    }
}

fn pair(codec: CodecKind) -> (Connection, Connection) {
    let (a, b) = tokio::io::duplex(256 * 1024);
    (
        Connection::spawn(a, session(Role::Client, codec)),
        Connection::spawn(b, session(Role::Server, codec)),
    )
}

/// Serves every incoming CONNECT by dialling the address on loopback and relaying with
/// `copy_bidirectional`, as the real server's CONNECT exit does.
fn serve_connect(server: Connection) {
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                let Target::Connect { address } = incoming.target().clone() else {
                    return;
                };
                match TcpStream::connect(&address).await {
                    Ok(mut target) => {
                        let mut stream = incoming.accept(Reply::Connect).unwrap();
                        let _ = tokio::io::copy_bidirectional(&mut stream, &mut target).await;
                    }
                    Err(e) => {
                        let code = match e.kind() {
                            std::io::ErrorKind::ConnectionRefused => RefusalCode::ConnectionRefused,
                            _ => RefusalCode::Other,
                        };
                        let _ = incoming.refuse(code, &e.to_string());
                    }
                }
            });
        }
    });
}

/// A TCP echo origin on 127.0.0.1:0 that half-closes after echoing everything.
async fn echo_origin() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

async fn relay_round_trip(client: &Connection, origin: std::net::SocketAddr, size: usize) {
    let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4096) as u8).collect();
    let stream = client.connect(&origin.to_string()).await.unwrap();
    let (mut r, mut w) = tokio::io::split(stream);
    let writer = {
        let data = data.clone();
        tokio::spawn(async move {
            w.write_all(&data).await.unwrap();
            w
        })
    };
    // Read the echo before closing: over JSON a close is a full close, as with Go peers.
    let mut back = vec![0u8; size];
    r.read_exact(&mut back).await.unwrap();
    let mut w = writer.await.unwrap();
    w.shutdown().await.unwrap();
    assert_eq!(checksum(&back), checksum(&data));
}

#[tokio::test]
async fn connect_relay_with_copy_bidirectional_round_trips_8_mib_over_both_codecs() {
    let origin = echo_origin().await;
    for codec in [CodecKind::Binary, CodecKind::Json] {
        let (client, server) = pair(codec);
        serve_connect(server);
        relay_round_trip(&client, origin, 8 << 20).await;
    }
}

#[tokio::test]
async fn the_session_runs_over_real_tcp_through_a_transport() {
    let origin = echo_origin().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_transport = TcpTransport::new(Some(listener), CodecKind::Binary);
    tokio::spawn(async move {
        let (raw, peer) = server_transport.accept().await.unwrap();
        let Established { stream, codec, .. } =
            server_transport.handshake(raw, peer).await.unwrap();
        serve_connect(Connection::spawn(stream, session(Role::Server, codec)));
    });
    let server_info = ServerInfo {
        address: addr,
        server_arn: None,
        agent_ip: None,
    };
    let Established { stream, codec, .. } = TcpTransport::new(None, CodecKind::Binary)
        .connect(&server_info)
        .await
        .unwrap();
    let client = Connection::spawn(stream, session(Role::Client, codec));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { relay_round_trip(&client, origin, 512 * 1024).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn refused_and_unreachable_targets_fail_fast_with_the_reason() {
    let (client, server) = pair(CodecKind::Binary);
    serve_connect(server);
    // A port nothing listens on: bind then drop to find one.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let err = client.connect(&closed.to_string()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Stream { error: StreamError::Refused(refusal), .. }
            if refusal.code == RefusalCode::ConnectionRefused),
        "{err}"
    );
}

#[tokio::test]
async fn half_close_propagates_and_the_other_direction_keeps_flowing() {
    let (client, server) = pair(CodecKind::Binary);
    tokio::spawn(async move {
        let incoming = server.accept().await.unwrap();
        let mut s = incoming.accept(Reply::Connect).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap(); // sees the client's FIN
        s.write_all(format!("got {} bytes", got.len()).as_bytes())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        // Keep the handle until the client read everything.
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    let mut s = client.connect("x:1").await.unwrap();
    s.write_all(&[1u8; 100_000]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "got 100000 bytes");
}

#[tokio::test]
async fn a_stalled_stream_does_not_slow_a_busy_one() {
    let (client, server) = pair(CodecKind::Binary);
    let (stalled_tx, stalled_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        // The first stream is accepted and never read; the second is drained.
        let a = server
            .accept()
            .await
            .unwrap()
            .accept(Reply::Connect)
            .unwrap();
        let mut b = server
            .accept()
            .await
            .unwrap()
            .accept(Reply::Connect)
            .unwrap();
        let mut sink = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        loop {
            let n = b.read(&mut sink).await.unwrap();
            if n == 0 {
                break;
            }
            total += n;
        }
        let _ = stalled_tx.send((a, total));
    });
    let mut a = client.connect("a:1").await.unwrap();
    let mut b = client.connect("b:1").await.unwrap();
    // A's writer blocks once its window is full ...
    let a_writer = tokio::spawn(async move {
        let _ = a.write_all(&vec![0u8; 4 << 20]).await;
        a
    });
    // ... while B moves 64 MiB through the same tunnel.
    let chunk = vec![7u8; 256 * 1024];
    let moved = tokio::time::timeout(Duration::from_secs(60), async {
        for _ in 0..256 {
            b.write_all(&chunk).await.unwrap();
        }
        b.shutdown().await.unwrap();
        stalled_rx.await.unwrap().1
    })
    .await
    .expect("B was held up by the stalled stream A");
    assert_eq!(moved, 64 << 20);
    assert!(!a_writer.is_finished(), "A is still waiting for credit");
    a_writer.abort();
}

#[tokio::test]
async fn http_streams_carry_head_then_body_both_ways() {
    let (client, server) = pair(CodecKind::Binary);
    tokio::spawn(async move {
        let incoming = server.accept().await.unwrap();
        let Target::Http { method, .. } = incoming.target().clone() else {
            panic!()
        };
        let mut s = incoming
            .accept(Reply::Http {
                status_code: 200,
                headers: Default::default(),
            })
            .unwrap();
        let mut body = Vec::new();
        s.read_to_end(&mut body).await.unwrap();
        s.write_all(format!("{method} {}", checksum(&body)).as_bytes())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    let body = vec![42u8; 3 << 20];
    let mut s = client
        .open(Target::Http {
            method: "POST".into(),
            url: "http://x/".into(),
            headers: Default::default(),
        })
        .unwrap();
    s.write_all(&body).await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(
        s.reply().await.unwrap(),
        Reply::Http {
            status_code: 200,
            headers: Default::default()
        }
    );
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, format!("POST {}", checksum(&body)));
}

#[tokio::test]
async fn garbage_from_the_peer_closes_the_tunnel_with_a_clear_error() {
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let (server, driver) = Connection::new(a, session(Role::Server, CodecKind::Json));
    let driver = tokio::spawn(driver);
    b.write_all(b"this is not json\n").await.unwrap();
    let err = driver.await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::Frame(FrameError::Malformed(_))),
        "{err}"
    );
    assert!(matches!(
        server.closed_reason(),
        Some(CloseReason::Corrupt(FrameError::Malformed(_)))
    ));
    assert!(server.accept().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_detected_by_heartbeat() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let client = Connection::spawn(a, session(Role::Client, CodecKind::Binary));
    // The "server" says hello once and then never reads or writes again.
    let mut hello = bytes::BytesMut::new();
    let mut server_session = session(Role::Server, CodecKind::Binary);
    while let Some(b) = server_session.poll_transmit() {
        hello.extend_from_slice(&b);
    }
    let (mut rb, mut wb) = tokio::io::split(b);
    wb.write_all(&hello).await.unwrap();
    tokio::spawn(async move {
        let mut sink = vec![0u8; 1024];
        while rb.read(&mut sink).await.map(|n| n > 0).unwrap_or(false) {}
        drop(wb);
    });
    let reason = tokio::time::timeout(Duration::from_secs(120), client.closed())
        .await
        .unwrap();
    assert!(
        matches!(reason, CloseReason::HeartbeatTimeout(_)),
        "{reason}"
    );
}

/// The server reads a streamed request body before it knows its response (a real proxy
/// sends the body to the origin first), and the client writes the body from one task while
/// another waits for the response: `defer` + `respond` and `into_split`, over both codecs.
#[tokio::test]
async fn deferred_http_answers_after_reading_the_body_with_split_handles() {
    for codec in [CodecKind::Binary, CodecKind::Json] {
        let (client, server) = pair(codec);
        tokio::spawn(async move {
            let incoming = server.accept().await.unwrap();
            let mut s = incoming.defer();
            let mut body = Vec::new();
            s.read_to_end(&mut body).await.unwrap();
            s.respond(Reply::Http {
                status_code: 201,
                headers: [("x-sum".to_owned(), vec![checksum(&body).to_string()])].into(),
            })
            .unwrap();
            s.write_all(&body[..1000]).await.unwrap();
            s.shutdown().await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        });
        let stream = client
            .open(Target::Http {
                method: "PUT".into(),
                url: "http://x/upload".into(),
                headers: Default::default(),
            })
            .unwrap();
        let (mut reader, mut writer) = stream.into_split();
        let body: Vec<u8> = (0..(2 << 20)).map(|i| (i % 251) as u8).collect();
        let expected = checksum(&body).to_string();
        let upload = tokio::spawn(async move {
            writer.write_all(&body).await.unwrap();
            writer.shutdown().await.unwrap();
        });
        let Reply::Http {
            status_code,
            headers,
        } = reader.reply().await.unwrap()
        else {
            panic!("not an HTTP reply")
        };
        assert_eq!(status_code, 201, "{codec:?}");
        assert_eq!(headers["x-sum"], vec![expected], "{codec:?}");
        let mut answer = Vec::new();
        reader.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer.len(), 1000, "{codec:?}");
        upload.await.unwrap();
    }
}

/// Binary frames as a hostile client writes them: `hello`, then `pings` pings.
fn hello_then_pings(pings: usize) -> Vec<u8> {
    use fluidity_core::envelope::{Envelope, Heartbeat, Hello, PROTOCOL_VERSION, capability};
    let mut codec = CodecKind::Binary.new_codec(1 << 20);
    let mut out = bytes::BytesMut::new();
    let hello = Hello {
        version: PROTOCOL_VERSION,
        capabilities: vec![capability::HEARTBEAT.into()],
        initial_window: 1 << 18,
        connection_window: 1 << 24,
        max_frame_size: 1 << 20,
    };
    codec.encode(&Envelope::Hello(hello), &mut out).unwrap();
    for nonce in 0..pings {
        codec
            .encode(
                &Envelope::Ping(Heartbeat {
                    nonce: nonce as u64,
                }),
                &mut out,
            )
            .unwrap();
    }
    out.to_vec()
}

/// A peer that floods pings and never reads: the driver stops reading once its replies
/// back up, then closes the tunnel when nothing it writes is read for the idle timeout.
#[tokio::test(start_paused = true)]
async fn a_peer_that_never_reads_is_closed_and_the_driver_ends() {
    let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
    let config = SessionConfig {
        idle_timeout: Duration::from_secs(3),
        heartbeat_interval: Duration::from_secs(1),
        ..SessionConfig::default()
    };
    let session = Session::server(CodecKind::Binary, config, Instant::now());
    let (connection, driver) = Connection::new(ours, session);
    let driver = tokio::spawn(driver);
    let flood = hello_then_pings(400_000);
    let writer = tokio::spawn(async move {
        // Writes until the driver stops reading (the pipe fills), never reads.
        let _ = theirs.write_all(&flood).await;
        std::future::pending::<()>().await;
    });
    let result = tokio::time::timeout(Duration::from_secs(30), driver)
        .await
        .expect("the driver ends")
        .unwrap();
    assert!(
        matches!(result, Err(Error::Closed(CloseReason::WriteStalled(_)))),
        "{result:?}"
    );
    assert_eq!(
        connection.closed_reason(),
        Some(CloseReason::WriteStalled(Duration::from_secs(3)))
    );
    writer.abort();
}

/// After a local close, the driver tries to flush for a bounded time, then gives up: a peer
/// that reads nothing cannot keep it (and its socket) alive.
#[tokio::test(start_paused = true)]
async fn the_final_flush_after_close_has_a_deadline() {
    let (ours, theirs) = tokio::io::duplex(1024);
    let session = Session::client(CodecKind::Binary, SessionConfig::default(), Instant::now());
    let (connection, driver) = Connection::new(ours, session);
    let driver = tokio::spawn(driver);
    // Queue more than the pipe holds (a request head with a large header), then close; the
    // peer never reads.
    let headers = [("X-Large".to_owned(), vec!["x".repeat(64 * 1024)])].into();
    let stream = connection
        .open(Target::Http {
            method: "POST".into(),
            url: "http://example.com/".into(),
            headers,
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    connection.close("done");
    drop(stream);
    let started = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(60), driver)
        .await
        .expect("the driver gives up flushing")
        .unwrap()
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited <= Duration::from_secs(6),
        "{waited:?}"
    );
    drop(theirs);
}

/// Frames already read when input paused are decoded once input resumes, even if the socket
/// has nothing more to say. (The driver used to wait for the socket first, so a Go peer's
/// last envelopes, read together with a body that filled the connection window, stayed in
/// its read buffer forever: the 256 MiB `go_bodies` transfers hung now and then under load.)
#[tokio::test]
async fn frames_read_before_input_paused_are_decoded_when_it_resumes() {
    use base64::Engine as _;
    let (ours, mut theirs) = tokio::io::duplex(1 << 20);
    let config = SessionConfig {
        connection_window: 16 * 1024,
        ..SessionConfig::default()
    };
    let server = Connection::spawn(
        ours,
        Session::server(CodecKind::Json, config, Instant::now()),
    );
    // A Go agent writes two requests at once: the first one's body alone fills the
    // connection window, so the session stops decoding with the second still buffered.
    let body = vec![7u8; 32 * 1024];
    let encoded = base64::engine::general_purpose::STANDARD.encode(&body);
    let mut wire = Vec::new();
    for (id, body) in [
        ("00000000000000a1", encoded.as_str()),
        ("00000000000000a2", "aGk="),
    ] {
        wire.extend_from_slice(format!("{{\"type\":\"http_request\",\"payload\":{{\"id\":\"{id}\",\"method\":\"POST\",\"url\":\"http://example.com/\",\"headers\":{{}},\"body\":\"{body}\"}}}}\n").as_bytes());
    }
    theirs.write_all(&wire).await.unwrap();
    let first = server.accept().await.unwrap();
    let mut first = first.defer();
    // Let the driver read everything and pause before the application reads.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut received = Vec::new();
    first.read_to_end(&mut received).await.unwrap();
    assert_eq!(received, body);
    let second = tokio::time::timeout(Duration::from_secs(10), server.accept())
        .await
        .expect("the buffered second request must arrive once the first body was read")
        .unwrap();
    assert!(
        matches!(second.target(), Target::Http { url, .. } if url == "http://example.com/"),
        "{:?}",
        second.target()
    );
    drop(theirs);
}

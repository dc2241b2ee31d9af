//! Replays every corpus file through its target: the seeds, and every input a campaign found
//! interesting or crashing (saved here as regression tests). Runs in `cargo test --workspace`
//! in seconds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no inputs", dir.display());
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    for file in corpus(target) {
        let data = std::fs::read(&file).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{} fails", file.display());
    }
}

#[test]
fn json_decoder_corpus() {
    replay("json_decoder", fluidity_fuzz::json_decoder);
}

#[test]
fn binary_decoder_corpus() {
    replay("binary_decoder", fluidity_fuzz::binary_decoder);
}

#[test]
fn session_corpus() {
    replay("session", fluidity_fuzz::session);
}

#[test]
fn csr_corpus() {
    replay("csr", fluidity_fuzz::csr);
    // The seed is signed, so the fuzzer starts on the signing path, not only on refusals.
    let seed =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/csr/agent")).unwrap();
    assert!(fluidity_fuzz::sign_csr(&seed));
}

/// Writes the seed corpora: the Go encoder's golden envelopes (JSON, and the same envelopes
/// in the binary codec), a CSR as the agent makes it, and short session scripts.
/// `cargo test -p fluidity-fuzz --test corpus -- --ignored write_seeds`
#[test]
#[ignore = "regenerates the committed seeds"]
fn write_seeds() {
    use fluidity_core::codec::{CodecKind, Decoded};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let vectors =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors/go-envelopes.jsonl");
    let golden = std::fs::read_to_string(&vectors).unwrap();
    for dir in ["json_decoder", "binary_decoder", "session", "csr"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    for (i, line) in golden.lines().enumerate() {
        // The first byte is the target's piece size.
        let mut seed = vec![7u8];
        seed.extend_from_slice(line.as_bytes());
        seed.push(b'\n');
        std::fs::write(root.join(format!("json_decoder/golden-{i:02}")), &seed).unwrap();
        let mut json = CodecKind::Json.new_codec(1 << 20);
        let mut buf = bytes::BytesMut::from(&seed[1..]);
        if let Ok(Some(Decoded::Envelope(envelope))) = json.decode(&mut buf) {
            let mut binary = CodecKind::Binary.new_codec(1 << 20);
            let mut wire = bytes::BytesMut::new();
            binary.encode(&envelope, &mut wire).unwrap();
            let mut seed = vec![5u8];
            seed.extend_from_slice(&wire);
            std::fs::write(root.join(format!("binary_decoder/golden-{i:02}")), &seed).unwrap();
        }
    }
    let key =
        fluidity_core::pki::keys::generate(fluidity_core::pki::KeyAlgorithm::EcdsaP256).unwrap();
    let csr = fluidity_core::pki::csr::build(
        &key,
        "arn:aws:ecs:us-east-1:123456789012:task/fluidity/0123456789abcdef0123456789abcdef",
        &["203.0.113.7".parse().unwrap()],
    )
    .unwrap();
    std::fs::write(root.join("csr/agent"), csr).unwrap();
    // Session scripts: mode (bit 0: binary codec, bit 1: server), then operations.
    let scripts: [&[u8]; 4] = [
        // client, JSON: a Go server's hello-less session, a CONNECT open, acks and data
        &[0, 6, 0, 0, 2, 1, 1, 0, 3, 1, 4, 9, 5, 3],
        // client, binary: hello with every capability, open, ack, data, window, end
        &[
            1, 0, 0, 0, 2, 15, 0, 1, 0, 0, 0, 4, 0, 0, 0, 0, 16, 0, 6, 0, 2, 1, 1, 0, 3, 1, 8, 17,
            0, 0, 0, 16, 0, 5, 1, 9,
        ],
        // server, JSON: a Go agent's CONNECT and HTTP request with a body
        &[2, 1, 1, 3, 1, 4, 10, 2, 8, 9, 7, 0, 3, 8, 0, 0, 9],
        // server, binary: hello, streamed HTTP head, body chunks, end, ping
        &[
            3, 0, 0, 1, 15, 0, 1, 0, 0, 0, 4, 0, 0, 0, 0, 16, 0, 12, 1, 14, 1, 6, 15, 1, 18, 0, 1,
            2, 3, 4, 5, 6, 7, 8, 9,
        ],
    ];
    for (i, script) in scripts.iter().enumerate() {
        std::fs::write(root.join(format!("session/script-{i}")), script).unwrap();
    }
    // Recorded sessions: the bytes each side of a real exchange sends (hello, a CONNECT with
    // data both ways and a half-close, an HTTP request with a streamed response), as decoder
    // seeds, whole (piece size 0) and in 3-byte pieces.
    for (codec, target, name) in [
        (CodecKind::Json, "json_decoder", "json"),
        (CodecKind::Binary, "binary_decoder", "binary"),
    ] {
        let (to_server, to_client) = record_session(codec);
        for (direction, bytes) in [("to-server", to_server), ("to-client", to_client)] {
            for piece in [0u8, 3] {
                let mut seed = vec![piece];
                seed.extend_from_slice(&bytes);
                std::fs::write(
                    root.join(format!("{target}/recorded-{name}-{direction}-{piece}")),
                    &seed,
                )
                .unwrap();
            }
        }
    }
}

/// Runs a client and a server session back to back over `codec` and returns the bytes each
/// sent: what a tunnel carries for a CONNECT exchange and an HTTP request.
fn record_session(codec: fluidity_core::CodecKind) -> (Vec<u8>, Vec<u8>) {
    use fluidity_core::envelope::Headers;
    use fluidity_core::{Event, Reply, Session, SessionConfig, Target};
    let now = std::time::Instant::now();
    let mut client = Session::client(codec, SessionConfig::default(), now);
    let mut server = Session::server(codec, SessionConfig::default(), now);
    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    let mut shuttle = |client: &mut Session, server: &mut Session| {
        for _ in 0..8 {
            let mut wire = bytes::BytesMut::new();
            while let Some(bytes) = client.poll_transmit() {
                to_server.extend_from_slice(&bytes);
                wire.extend_from_slice(&bytes);
            }
            server.receive(&mut wire, now).unwrap();
            let mut wire = bytes::BytesMut::new();
            while let Some(bytes) = server.poll_transmit() {
                to_client.extend_from_slice(&bytes);
                wire.extend_from_slice(&bytes);
            }
            client.receive(&mut wire, now).unwrap();
            while let Some(event) = server.poll_event() {
                if let Event::Incoming { id, target } = event {
                    let connect = matches!(target, Target::Connect { .. });
                    let reply = if connect {
                        Reply::Connect
                    } else {
                        Reply::Http {
                            status_code: 200,
                            headers: Headers::from([(
                                "Content-Type".to_owned(),
                                vec!["text/plain".to_owned()],
                            )]),
                        }
                    };
                    server.accept(id, reply).unwrap();
                    server.send(id, b"hello from the server side").unwrap();
                    // Over JSON (Go semantics) an end closes both ways: the CONNECT stream
                    // stays open for the client's bytes.
                    if !connect {
                        server.finish(id).unwrap();
                    }
                }
            }
            while client.poll_event().is_some() {}
        }
    };
    let connect = client
        .open(Target::Connect {
            address: "example.com:443".into(),
        })
        .unwrap();
    let http = client
        .open(Target::Http {
            method: "POST".into(),
            url: "http://example.com/upload".into(),
            headers: Headers::from([("Host".to_owned(), vec!["example.com".to_owned()])]),
        })
        .unwrap();
    client.send(http, b"name=value&other=1").unwrap();
    client.finish(http).unwrap();
    shuttle(&mut client, &mut server);
    // A CONNECT stream carries data once the server accepted it.
    client
        .send(connect, b"\x16\x03\x01 a TLS ClientHello, say")
        .unwrap();
    client.finish(connect).unwrap();
    shuttle(&mut client, &mut server);
    (to_server, to_client)
}

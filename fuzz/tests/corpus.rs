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
}

//! Go peers put a whole HTTP body in one JSON line. Bodies of any size still cross Fluidity in
//! bounded memory: 256 MiB each way between a Go-format agent and the real server binary, and
//! between the real agent binary and a Go-format server, with the Fluidity process under
//! 64 MiB of peak RSS; and a target that fails mid-body never reaches a Go agent as a short
//! complete body.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use support::{
    DEV_ARN, FNV_START, StreamedLine, checksum, go_agent_tls, http_origin, pattern_checksum,
    pattern_slice, peak_rss_kib, read_streamed_line, start_server_process, write_base64_pattern,
};

/// The body size each way.
const SIZE: u64 = 256 << 20;
/// The Fluidity process's peak RSS must stay under this.
const RSS_LIMIT_KIB: u64 = 64 * 1024;

const IAM: &[u8] = b"{\"type\":\"iam_auth_request\",\"payload\":{\"id\":\"0123456789abcdef0123456789abcdef\",\"timestamp\":\"2025-12-10T12:34:56Z\",\"service\":\"tunnel\",\"region\":\"us-east-1\",\"access_key_id\":\"AKIDEXAMPLE\",\"signature\":\"x\",\"signed_headers\":\"\"}}\n";

/// A 256 MiB phase takes under a minute here even on a loaded machine; these tests have hung
/// under load (docs/testing.md, "Chasing a failure"): fail with a pointer instead of hanging.
const PHASE_LIMIT: Duration = Duration::from_secs(300);

fn mib_per_second(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
}

/// A Go-format agent downloads and uploads 256 MiB through `fluidity-server`: the server
/// streams the download into one `http_response` line and the upload out of one
/// `http_request` line, without holding either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_agent_moves_256_mib_each_way_through_the_server_in_bounded_memory() {
    let origin = http_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, mut read, mut write) = go_agent_session(dir.path()).await;
    let expected = pattern_checksum(SIZE);

    let started = Instant::now();
    write
        .write_all(format!("{{\"type\":\"http_request\",\"payload\":{{\"id\":\"00000000000000d1\",\"method\":\"GET\",\"url\":\"http://{origin}/bytes/{SIZE}\",\"headers\":{{}}}}}}\n").as_bytes())
        .await
        .unwrap();
    write.flush().await.unwrap();
    let download = tokio::time::timeout(PHASE_LIMIT, read_streamed_line(&mut read))
        .await
        .expect("the download hung: see docs/testing.md, \"Chasing a failure\"");
    let download_time = started.elapsed();
    eprintln!("the Go-format agent downloaded; uploading");
    assert!(
        download.head.starts_with("{\"type\":\"http_response\",\"payload\":{\"id\":\"00000000000000d1\",\"status_code\":200,"),
        "{download:?}"
    );
    assert!(!download.aborted && download.tail == "}}", "{download:?}");
    assert_eq!((download.length, download.checksum), (SIZE, expected));

    let started = Instant::now();
    write
        .write_all(format!("{{\"type\":\"http_request\",\"payload\":{{\"id\":\"00000000000000e1\",\"method\":\"POST\",\"url\":\"http://{origin}/checksum\",\"headers\":{{\"Content-Type\":[\"application/octet-stream\"]}},\"body\":\"").as_bytes())
        .await
        .unwrap();
    let upload = async {
        write_base64_pattern(&mut write, SIZE).await;
        write.write_all(b"\"}}\n").await.unwrap();
        // TLS may hold the last records until a flush (tokio-rustls returns from a write once
        // rustls took the bytes, whether or not the socket did).
        write.flush().await.unwrap();
        read_streamed_line(&mut read).await
    };
    let answer = tokio::time::timeout(PHASE_LIMIT, upload)
        .await
        .expect("the upload hung: see docs/testing.md, \"Chasing a failure\"");
    let upload_time = started.elapsed();
    let body = response_body(&answer);
    assert_eq!(body, format!("{SIZE} {expected:016x}"), "{answer:?}");

    let rss = peak_rss_kib(server.id().unwrap());
    eprintln!(
        "Go-format agent through fluidity-server: download {:.0} MiB/s, upload {:.0} MiB/s, \
         server peak RSS {} KiB",
        mib_per_second(SIZE, download_time),
        mib_per_second(SIZE, upload_time),
        rss
    );
    assert!(rss < RSS_LIMIT_KIB, "the server's peak RSS was {rss} KiB");
}

/// A target that fails mid-body: the Go agent never receives the partial body as a complete
/// response. The streamed line is cut by a mark outside base64 (a Go agent skips such an
/// envelope), and the usual 502 response follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_failing_mid_body_gives_a_go_agent_a_502_not_a_short_body() {
    let origin = http_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let (_server, mut read, mut write) = go_agent_session(dir.path()).await;
    // 8 MiB announced, 4 MiB sent: past the 1 MiB line threshold, so the body streams.
    write
        .write_all(format!("{{\"type\":\"http_request\",\"payload\":{{\"id\":\"00000000000000b1\",\"method\":\"GET\",\"url\":\"http://{origin}/broken/{}\",\"headers\":{{}}}}}}\n", 8 << 20).as_bytes())
        .await
        .unwrap();
    write.flush().await.unwrap();
    let cut = read_streamed_line(&mut read).await;
    assert!(cut.head.contains("\"status_code\":200"), "{cut:?}");
    assert!(
        cut.aborted,
        "the partial body must not decode as a whole one: {cut:?}"
    );
    assert!(cut.length < 8 << 20);
    assert!(cut.tail.contains("\"error\":"), "{cut:?}");
    let answer = read_streamed_line(&mut read).await;
    assert!(
        answer.head.starts_with("{\"type\":\"http_response\",\"payload\":{\"id\":\"00000000000000b1\",\"status_code\":502,"),
        "{answer:?}"
    );
}

/// The real agent against a Go-format server: a 256 MiB download arrives as one
/// `http_response` line and a 256 MiB upload leaves as one `http_request` line; the agent
/// streams both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_moves_256_mib_each_way_through_a_go_server_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = go_format_server(dir.path()).await;
    let (agent, proxy_port) = support::start_agent_process(dir.path(), server, &[]).await;
    let client = support::proxy_client(&format!("http://127.0.0.1:{proxy_port}"));
    let expected = pattern_checksum(SIZE);

    let started = Instant::now();
    let response = client
        .get("http://go-server.test/download")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (mut length, mut hash) = (0u64, FNV_START);
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        length += chunk.len() as u64;
        hash = checksum(&chunk, hash);
    }
    let download_time = started.elapsed();
    assert_eq!((length, hash), (SIZE, expected));
    eprintln!("downloaded; uploading");

    let started = Instant::now();
    let upload = futures::stream::unfold(0u64, |offset| async move {
        if offset >= SIZE {
            return None;
        }
        let n = (1 << 20).min(SIZE - offset) as usize;
        let piece = bytes::Bytes::from_static(pattern_slice(offset, n));
        Some((Ok::<_, std::io::Error>(piece), offset + n as u64))
    });
    // This phase has hung under heavy load (docs/testing.md, "Chasing a failure"): fail with
    // a pointer rather than hang the run.
    let answer = tokio::time::timeout(
        PHASE_LIMIT,
        client
            .post("http://go-server.test/upload")
            .body(reqwest::Body::wrap_stream(upload))
            .send(),
    )
    .await
    .expect("the upload hung: see docs/testing.md, \"Chasing a failure\"")
    .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.text().await.unwrap(),
        format!("{SIZE} {expected:016x}")
    );
    let upload_time = started.elapsed();

    let rss = peak_rss_kib(agent.id().unwrap());
    eprintln!(
        "fluidity-agent through a Go-format server: download {:.0} MiB/s, upload {:.0} MiB/s, \
         agent peak RSS {} KiB",
        mib_per_second(SIZE, download_time),
        mib_per_second(SIZE, upload_time),
        rss
    );
    assert!(rss < RSS_LIMIT_KIB, "the agent's peak RSS was {rss} KiB");
}

type GoAgentStream = fluidity_core::tls::TlsTcpStream;

/// A Go-format agent's session with a `fluidity-server` process started in `dir`: mutual TLS
/// up, the IAM exchange done. Returns the server process and both halves of the session.
async fn go_agent_session(
    dir: &std::path::Path,
) -> (
    tokio::process::Child,
    BufReader<tokio::io::ReadHalf<GoAgentStream>>,
    tokio::io::WriteHalf<GoAgentStream>,
) {
    let (server, port) = start_server_process(dir, &[]).await;
    let stream = go_agent_tls(
        &dir.join("ca"),
        ([127, 0, 0, 1], port).into(),
        DEV_ARN,
        fluidity_core::pki::KeyAlgorithm::EcdsaP256,
    )
    .await;
    let (read, mut write) = tokio::io::split(stream);
    let mut read = BufReader::with_capacity(256 * 1024, read);
    write.write_all(IAM).await.unwrap();
    write.flush().await.unwrap();
    let answer = read_streamed_line(&mut read).await;
    assert!(answer.head.contains("iam_auth_response"), "{answer:?}");
    (server, read, write)
}

/// The body of a small `http_response` line.
fn response_body(line: &StreamedLine) -> String {
    assert!(line.length < 4096, "{line:?}");
    String::from_utf8(line.start.clone()).unwrap()
}

/// A server that speaks like the Go server: a certificate for the development ARN and
/// 127.0.0.1 from the CA in `dir/ca`, TLS without ALPN, JSON lines, whole-body envelopes.
/// `GET …/download` answers 256 MiB (written as it is generated); any other request answers
/// its body's length and checksum (read as it arrives).
async fn go_format_server(dir: &std::path::Path) -> std::net::SocketAddr {
    let (_, identity) = support::issue_identity(
        &dir.join("ca"),
        DEV_ARN,
        fluidity_core::pki::KeyAlgorithm::EcdsaP256,
    );
    let config = rustls::ServerConfig::builder_with_provider(fluidity_core::pki::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let (read, mut write) = tokio::io::split(stream);
                let mut read = BufReader::with_capacity(256 * 1024, read);
                loop {
                    // The agent went away (the test ended).
                    if !matches!(read.fill_buf().await, Ok(buf) if !buf.is_empty()) {
                        return;
                    }
                    let line = read_streamed_line(&mut read).await;
                    let head = &line.head;
                    if head.contains("\"iam_auth_request\"") {
                        write
                            .write_all(b"{\"type\":\"iam_auth_response\",\"payload\":{\"id\":\"x\",\"ok\":true}}\n")
                            .await
                            .unwrap();
                        write.flush().await.unwrap();
                        continue;
                    }
                    if !head.starts_with("{\"type\":\"http_request\"") {
                        continue;
                    }
                    let id = head
                        .split("\"id\":\"")
                        .nth(1)
                        .and_then(|rest| rest.get(..16))
                        .unwrap()
                        .to_owned();
                    let start = format!(
                        "{{\"type\":\"http_response\",\"payload\":{{\"id\":\"{id}\",\"status_code\":200,\"headers\":{{\"Content-Type\":[\"application/octet-stream\"]}},\"body\":\""
                    );
                    write.write_all(start.as_bytes()).await.unwrap();
                    if head.contains("/download") {
                        write_base64_pattern(&mut write, SIZE).await;
                    } else {
                        use base64::Engine as _;
                        let text = format!("{} {:016x}", line.length, line.checksum);
                        let encoded = base64::engine::general_purpose::STANDARD.encode(text);
                        write.write_all(encoded.as_bytes()).await.unwrap();
                    }
                    write.write_all(b"\"}}\n").await.unwrap();
                    // Without it the answer's last records can stay in rustls while this
                    // task waits for the next request, which never comes: a hang.
                    write.flush().await.unwrap();
                    // (To tell, if the test hangs, whether the whole request line arrived.)
                    eprintln!(
                        "Go-format server: answered {id} after a {}-byte body (aborted: {})",
                        line.length, line.aborted
                    );
                }
            });
        }
    });
    address
}

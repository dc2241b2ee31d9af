//! The agent's front door under arbitrary bytes: a property-based campaign against the real
//! `fluidity-agent` binary (development mode, its server embedded). Thousands of connections
//! carry random bytes and mutations of real openings (HTTP requests, CONNECT, WebSocket
//! upgrades, SOCKS5 greetings and requests); each must end in an answer or a close within a
//! deadline, the agent must never panic, and a real request must still work afterwards.
//!
//! AFL++ is not used here: the front door is an async server with a tunnel behind it, which
//! does not fit a persistent-mode harness. Mutated targets may name any host, so the test
//! re-runs itself inside a network namespace with only loopback (`unshare --net`): no lookup
//! or connection can leave the machine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{IN_NAMESPACE, binary, curl_status, free_port, wait_for_port};

/// Connections per run (the seed varies per run; failures print it).
const CASES: usize = 5000;
/// An answer or a close must come within this (the proxy's own header deadline is 10 s;
/// the inputs end with a half-close, so nothing should wait for it).
const DEADLINE: Duration = Duration::from_secs(12);

#[test]
fn arbitrary_bytes_on_the_proxy_port_never_panic_or_hang() {
    support::run_in_network_namespace(
        "in_namespace_arbitrary_bytes_on_the_proxy_port",
        "",
        &[],
        "1".as_ref(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by arbitrary_bytes_on_the_proxy_port_never_panic_or_hang, inside a namespace"]
async fn in_namespace_arbitrary_bytes_on_the_proxy_port() {
    assert!(
        std::env::var(IN_NAMESPACE).is_ok(),
        "run only in the test's namespace"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("agent.log");
    let mut agent = tokio::process::Command::new(binary("fluidity-agent"))
        .args([
            "--dev",
            "--local-proxy-port",
            &port.to_string(),
            "--cache-dir",
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_port(port, &mut agent, "fluidity-agent").await;

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("front door campaign: seed {seed:#x}, {CASES} connections");
    let mut rng = XorShift(seed);
    let started = Instant::now();
    // What earlier campaigns found, first.
    for input in FOUND {
        let ended = tokio::time::timeout(DEADLINE, exchange(port, input)).await;
        assert!(
            ended.is_ok(),
            "{:?} hangs again",
            String::from_utf8_lossy(input)
        );
    }
    // A few at a time, as clients would come.
    for batch in 0..CASES / 10 {
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let input = arbitrary_opening(&mut rng);
            tasks.push(tokio::spawn(async move {
                let outcome = tokio::time::timeout(DEADLINE, exchange(port, &input)).await;
                (outcome.is_ok(), input)
            }));
        }
        for task in tasks {
            let (ended, input) = task.await.unwrap();
            assert!(
                ended,
                "seed {seed:#x}, batch {batch}: no answer or close within {DEADLINE:?} for {:?}",
                String::from_utf8_lossy(&input)
            );
        }
        assert!(
            agent.try_wait().unwrap().is_none(),
            "seed {seed:#x}: the agent exited"
        );
    }
    eprintln!("{CASES} connections in {:?}", started.elapsed());

    // Still serving, and nothing panicked.
    let (code, pac) = curl_status(&[], &format!("http://127.0.0.1:{port}/proxy.pac")).await;
    assert_eq!(code, 200, "{pac}");
    let _ = agent.start_kill();
    let _ = agent.wait().await;
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        !log.contains("panicked"),
        "seed {seed:#x}: the agent panicked:\n{log}"
    );
}

/// Inputs campaigns found. A chunked body that turns invalid before the server answers:
/// the agent reset the stream, but the request went on waiting for the answer the server
/// would never send (fixed in the driver: a local reset ends the wait).
const FOUND: &[&[u8]] = &[
    b"POST http://example.test/x HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n\r\n0\r\n\r\n",
];

/// Writes `input`, half-closes, and reads until the agent closes.
async fn exchange(port: u16, input: &[u8]) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return;
    };
    let _ = stream.write_all(input).await;
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

/// Random bytes, or a real opening mutated.
fn arbitrary_opening(rng: &mut XorShift) -> Vec<u8> {
    const OPENINGS: &[&[u8]] = &[
        b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n",
        b"POST http://example.test/x HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\n\r\nhello",
        b"POST http://example.test/x HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n",
        b"CONNECT example.test:443 HTTP/1.1\r\n\r\n\x16\x03\x01\x00\x05hello",
        b"GET ws://example.test/chat HTTP/1.1\r\nHost: example.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        b"GET /proxy.pac HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"\x05\x01\x00\x05\x01\x00\x03\x0cexample.test\x01\xbb",
        b"\x05\x02\x00\x02\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x09",
        b"\x05\x01\x00\x05\x01\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x09",
        b"\x05\x01\x00\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00",
    ];
    if rng.below(8) == 0 {
        let len = rng.below(512);
        return (0..len).map(|_| rng.next() as u8).collect();
    }
    let mut input = OPENINGS[rng.below(OPENINGS.len())].to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(input.len() + 1);
        match rng.below(6) {
            0 => input.truncate(at),
            1 if at < input.len() => input[at] = rng.next() as u8,
            2 => {
                let byte = rng.next() as u8;
                let run = rng.below(300);
                input.splice(at..at, std::iter::repeat_n(byte, run));
            }
            3 if at < input.len() => input[at] ^= 1 << rng.below(8),
            4 => {
                input.splice(at..at, b"\r\n".iter().copied());
            }
            _ => {
                let end = (at + rng.below(16)).min(input.len());
                input.drain(at..end);
            }
        }
    }
    input
}

/// A small deterministic generator (xorshift64), so a failing seed replays.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

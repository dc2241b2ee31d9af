//! Soaks against the real binaries (`fluidity-server --dev` and `fluidity-agent --dev
//! --server` as two processes): many streams open at once on one tunnel, many open/close
//! cycles of streams and of whole tunnels, and a mixed workload over time. What they use
//! (file descriptors, threads, resident memory, the server's open tunnels and streams, and
//! for tunnels dialled from this process its tokio tasks) must come back to where it started.
//!
//! `cargo test --workspace` runs short versions. The full ones are ignored:
//! `cargo test -p fluidity-system-tests --test soak -- --ignored --nocapture`
//! (`FLUIDITY_SOAK_MINUTES` sets the mixed workload's length, default 30).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Child;

use support::{DEV_ARN, free_port, http_origin, pattern_slice, proc_memory_kib, start_pair};

/// What a process holds.
#[derive(Debug, Clone, Copy)]
struct Usage {
    rss_kib: u64,
    fds: usize,
    threads: u64,
    /// Tokio tasks alive (the agent's `/status`, the server's `/health`).
    tasks: u64,
}

fn usage(pid: u32) -> Usage {
    Usage {
        rss_kib: proc_memory_kib(pid, "VmRSS"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count(),
        threads: proc_memory_kib(pid, "Threads"),
        tasks: 0,
    }
}

/// `GET path` from the HTTP server at `address`, as JSON.
async fn get_json(address: SocketAddr, path: &str) -> serde_json::Value {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    serde_json::from_str(body).unwrap()
}

/// An echo server in its own process (Python's asyncio), so that its sockets do not count
/// against this process's open-file limit.
async fn echo_origin() -> (Child, SocketAddr) {
    let mut child = tokio::process::Command::new("python3")
        .args([
            "-c",
            "import asyncio\n\
             async def echo(r, w):\n\
             \x20   try:\n\
             \x20       while data := await r.read(65536):\n\
             \x20           w.write(data)\n\
             \x20           await w.drain()\n\
             \x20   except Exception:\n\
             \x20       pass\n\
             \x20   w.close()\n\
             async def main():\n\
             \x20   s = await asyncio.start_server(echo, '127.0.0.1', 0, backlog=4096)\n\
             \x20   print(s.sockets[0].getsockname()[1], flush=True)\n\
             \x20   await s.serve_forever()\n\
             asyncio.run(main())\n",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8];
    while stdout.read(&mut byte).await.unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let port: u16 = String::from_utf8(line).unwrap().trim().parse().unwrap();
    (child, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// The two processes, their health port and shared directory.
struct Pair {
    server: Child,
    agent: Child,
    server_port: u16,
    proxy: SocketAddr,
    health: SocketAddr,
    dir: tempfile::TempDir,
}

impl Pair {
    async fn start(max_streams: usize) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let health = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let streams = max_streams.to_string();
        let health_text = health.to_string();
        let (server, agent, server_port, proxy_port) = start_pair(
            dir.path(),
            &[
                ("FLUIDITY_HEALTH_ADDR", &health_text),
                ("FLUIDITY_MAX_STREAMS", &streams),
                ("FLUIDITY_MAX_CONNECTIONS", "2000"),
                ("FLUIDITY_LOG_LEVEL", "warn"),
            ],
            &[
                ("FLUIDITY_MAX_STREAMS", &streams),
                ("FLUIDITY_MAX_CLIENTS", &streams),
                ("FLUIDITY_LOG_LEVEL", "warn"),
            ],
        )
        .await;
        Pair {
            server,
            agent,
            server_port,
            proxy: SocketAddr::from(([127, 0, 0, 1], proxy_port)),
            health,
            dir,
        }
    }

    async fn usage(&self) -> (Usage, Usage) {
        let mut agent = usage(self.agent.id().unwrap());
        agent.tasks = get_json(self.proxy, "/status").await["tasks"]
            .as_u64()
            .unwrap();
        let mut server = usage(self.server.id().unwrap());
        server.tasks = get_json(self.health, "/health").await["tasks"]
            .as_u64()
            .unwrap();
        (agent, server)
    }

    /// The server's open tunnels and streams (its `/health`).
    async fn open(&self) -> (u64, u64) {
        let health = get_json(self.health, "/health").await;
        (
            health["tunnels"].as_u64().unwrap(),
            health["streams"].as_u64().unwrap(),
        )
    }

    /// Waits until the server reports `tunnels` tunnels and no stream (10 s at most).
    async fn settle(&self, tunnels: u64) {
        let started = Instant::now();
        loop {
            let open = self.open().await;
            if open == (tunnels, 0) {
                // Closed streams' sockets and tasks go a moment after the count.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the server still holds (tunnels, streams) {open:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A CONNECT stream through the agent to `origin` that has echoed `payload` back.
async fn echoed_connect(proxy: SocketAddr, origin: SocketAddr, payload: &[u8]) -> TcpStream {
    let mut stream = support::connect_through(proxy, origin).await;
    stream.write_all(payload).await.unwrap();
    let mut echoed = vec![0; payload.len()];
    stream.read_exact(&mut echoed).await.unwrap();
    assert!(echoed == payload, "the echo differs");
    stream
}

/// An absolute-form GET of `/hello` through the agent, on a connection of its own.
async fn hello(proxy: SocketAddr, origin: SocketAddr) {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream
        .write_all(
            format!(
                "GET http://{origin}/hello HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello from origin"),
        "{answer}"
    );
}

fn kib_per(grown_kib: u64, count: usize) -> f64 {
    grown_kib as f64 / count as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streams_at_once_on_one_tunnel() {
    streams_at_once(1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: 10,000 streams at once (run with --ignored)"]
async fn ten_thousand_streams_at_once_on_one_tunnel() {
    streams_at_once(10_000).await;
}

/// `count` CONNECT streams on the one tunnel, each echoing 1 KiB, all open at once; then all
/// closed, and the processes back to their file descriptors.
async fn streams_at_once(count: usize) {
    let (_origin_process, origin) = echo_origin().await;
    let pair = Pair::start(count + 16).await;
    // One stream first: the tunnel and the first-use allocations are in the baseline.
    drop(echoed_connect(pair.proxy, origin, b"warm").await);
    pair.settle(1).await;
    let (agent_before, server_before) = pair.usage().await;

    let started = Instant::now();
    let opening = Arc::new(tokio::sync::Semaphore::new(256));
    let (release, released) = tokio::sync::watch::channel(false);
    let (opened, mut opened_rx) = tokio::sync::mpsc::channel::<()>(count);
    let mut streams = tokio::task::JoinSet::new();
    let proxy = pair.proxy;
    for i in 0..count {
        let (opening, opened, mut released) = (opening.clone(), opened.clone(), released.clone());
        streams.spawn(async move {
            let permit = opening.acquire_owned().await.unwrap();
            let offset = (i as u64) * 1024;
            let stream = echoed_connect(proxy, origin, pattern_slice(offset, 1024)).await;
            drop(permit);
            opened.send(()).await.unwrap();
            let _ = released.wait_for(|go| *go).await;
            drop(stream);
        });
    }
    for _ in 0..count {
        tokio::select! {
            _ = opened_rx.recv() => {}
            Some(result) = streams.join_next() => {
                result.unwrap();
                panic!("a stream ended before all were open");
            }
        }
    }
    let all_open = started.elapsed();
    let (tunnels, open) = pair.open().await;
    assert_eq!((tunnels, open), (1, count as u64));
    let (agent_open, server_open) = pair.usage().await;
    release.send(true).unwrap();
    while let Some(result) = streams.join_next().await {
        result.unwrap();
    }
    pair.settle(1).await;
    let (agent_after, server_after) = pair.usage().await;
    eprintln!(
        "{count} streams open at once after {all_open:.1?}; per stream: agent {:.1} KiB, server \
         {:.1} KiB resident, {} / {} file descriptors; after closing: agent {agent_after:?} \
         (before {agent_before:?}), server {server_after:?} (before {server_before:?})",
        kib_per(
            agent_open.rss_kib.saturating_sub(agent_before.rss_kib),
            count
        ),
        kib_per(
            server_open.rss_kib.saturating_sub(server_before.rss_kib),
            count
        ),
        agent_open.fds - agent_before.fds,
        server_open.fds - server_before.fds,
    );
    assert_eq!(agent_after.fds, agent_before.fds, "the agent's descriptors");
    assert_eq!(
        server_after.fds, server_before.fds,
        "the server's descriptors"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_stream_cycles_leave_nothing_behind() {
    stream_cycles(2000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: 10,000 stream cycles (run with --ignored)"]
async fn ten_thousand_stream_cycles_leave_nothing_behind() {
    stream_cycles(10_000).await;
}

/// Resident memory may drift this much over a soak (the allocator keeps freed pages a while).
const RSS_TOLERANCE_KIB: u64 = 2048;

/// `count` streams opened, used and closed, 16 at a time: three in four CONNECT with a 1 KiB
/// echo, one in four an absolute-form GET. The first tenth warms up; after the rest, the
/// processes hold the descriptors they held after the warm-up, and no more memory than
/// [`RSS_TOLERANCE_KIB`] over it, with no growth between the middle and the end.
async fn stream_cycles(count: usize) {
    use futures::StreamExt;
    let (_origin_process, echo) = echo_origin().await;
    let http = http_origin().await;
    let pair = Pair::start(1024).await;
    let proxy = pair.proxy;
    let run = |range: std::ops::Range<usize>| {
        futures::stream::iter(range).for_each_concurrent(16, move |i| async move {
            if i % 4 == 3 {
                hello(proxy, http).await;
            } else {
                let payload = pattern_slice(i as u64 * 1024, 1024);
                drop(echoed_connect(proxy, echo, payload).await);
            }
        })
    };
    let warm_up = count / 10;
    let middle = warm_up + (count - warm_up) / 2;
    run(0..warm_up).await;
    pair.settle(1).await;
    let before = pair.usage().await;
    run(warm_up..middle).await;
    pair.settle(1).await;
    let halfway = pair.usage().await;
    let started = Instant::now();
    run(middle..count).await;
    let second_half = started.elapsed();
    pair.settle(1).await;
    let after = pair.usage().await;
    eprintln!(
        "{count} stream cycles (second half at {:.0}/s): agent {:?} → {:?} → {:?}; server {:?} \
         → {:?} → {:?} (after the warm-up, halfway, at the end)",
        (count - middle) as f64 / second_half.as_secs_f64(),
        before.0,
        halfway.0,
        after.0,
        before.1,
        halfway.1,
        after.1
    );
    // The server may keep idle keep-alive connections to the HTTP origin, up to its pool's
    // bound per host; nothing else may stay.
    for (name, before, halfway, after, pool) in [
        ("agent", before.0, halfway.0, after.0, 0),
        ("server", before.1, halfway.1, after.1, 16),
    ] {
        assert!(
            after.fds <= before.fds + pool,
            "the {name}'s descriptors: {before:?} → {after:?}"
        );
        assert_eq!(after.tasks, before.tasks, "the {name}'s tasks");
        assert!(
            after.threads <= before.threads.max(halfway.threads),
            "the {name}'s threads grew: {before:?} → {after:?}"
        );
        assert!(
            after.rss_kib <= before.rss_kib + RSS_TOLERANCE_KIB
                && after.rss_kib <= halfway.rss_kib + RSS_TOLERANCE_KIB / 2,
            "the {name}'s memory grew: {before:?} → {halfway:?} → {after:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_tunnel_cycles_leave_nothing_behind() {
    tunnel_cycles(200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: 1,000 tunnel cycles (run with --ignored)"]
async fn a_thousand_tunnel_cycles_leave_nothing_behind() {
    tunnel_cycles(1000).await;
}

/// `count` whole tunnels, one after another, dialled from this process the way the agent
/// dials its own (`TlsConnector`, `Session::client`, `Connection`): mutual TLS, the server's
/// first frame, one CONNECT stream with an echo, then close. This process's descriptors and
/// tokio tasks and the server's descriptors, threads and memory return to where they were
/// after the first tenth. (The agent binary cannot be made to reconnect 1,000 times quickly:
/// its backoff grows after every short-lived tunnel, by design.)
async fn tunnel_cycles(count: usize) {
    use fluidity_core::{Connection, Session, SessionConfig};
    let (_origin_process, echo) = echo_origin().await;
    let pair = Pair::start(64).await;
    let (ca, identity) = support::issue_identity(
        &pair.dir.path().join("ca"),
        DEV_ARN,
        fluidity_core::pki::KeyAlgorithm::EcdsaP256,
    );
    let roots = fluidity_core::pki::root_store("CA", ca.certificate_pem().as_bytes()).unwrap();
    let connector = fluidity_core::tls::TlsConnector::arn(&identity, roots, DEV_ARN).unwrap();
    let server = SocketAddr::from(([127, 0, 0, 1], pair.server_port));
    let target = echo.to_string();
    let one = || async {
        let established = connector.connect(server).await.unwrap();
        let session = Session::client(established.codec, SessionConfig::default(), Instant::now());
        let connection = Connection::spawn(established.stream, session);
        connection.ready().await.unwrap();
        let mut stream = connection.connect(&target).await.unwrap();
        stream.write_all(b"ping").await.unwrap();
        let mut echoed = [0u8; 4];
        stream.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"ping");
        drop(stream);
        connection.close("cycle done");
        connection.closed().await;
    };
    let ours = || {
        (
            std::fs::read_dir("/proc/self/fd").unwrap().count(),
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
        )
    };
    // Our own side settles once the drivers have flushed and ended.
    let settle_ours = |baseline: (usize, usize)| async move {
        let started = Instant::now();
        while ours() != baseline && started.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ours()
    };
    for _ in 0..count / 10 {
        one().await;
    }
    pair.settle(1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ours_before = ours();
    let server_before = pair.usage().await.1;
    let started = Instant::now();
    for _ in count / 10..count {
        one().await;
    }
    let took = started.elapsed();
    pair.settle(1).await;
    let ours_after = settle_ours(ours_before).await;
    let server_after = pair.usage().await.1;
    eprintln!(
        "{count} tunnel cycles ({:.1} ms each): this process's (descriptors, tasks) \
         {ours_before:?} → {ours_after:?}; server {server_before:?} → {server_after:?}",
        took.as_secs_f64() * 1000.0 / (count - count / 10) as f64
    );
    assert_eq!(
        ours_after, ours_before,
        "this process's (descriptors, tasks)"
    );
    assert_eq!(
        server_after.fds, server_before.fds,
        "the server's descriptors"
    );
    assert!(
        server_after.threads <= server_before.threads + 1,
        "the server's threads: {server_before:?} → {server_after:?}"
    );
    assert!(
        server_after.rss_kib <= server_before.rss_kib + RSS_TOLERANCE_KIB,
        "the server's memory grew: {server_before:?} → {server_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_workload_holds_memory_flat_for_twenty_seconds() {
    mixed(Duration::from_secs(20), Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: a mixed workload for FLUIDITY_SOAK_MINUTES (default 30; run with --ignored)"]
async fn a_mixed_workload_holds_memory_flat() {
    let minutes: u64 = std::env::var("FLUIDITY_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(30);
    mixed(Duration::from_secs(minutes * 60), Duration::from_secs(15)).await;
}

/// Downloads and uploads of 8 MiB, WebSocket sessions, idle tunnels and stalled readers, all
/// at once for `length`, with both processes' resident memory sampled every `every`. After
/// the first quarter (warm-up), no sample may exceed the warm-up's peak by more than
/// [`RSS_TOLERANCE_KIB`] plus 5 %.
async fn mixed(length: Duration, every: Duration) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let http = http_origin().await;
    let websocket = support::websocket_origin().await;
    let pair = Pair::start(1024).await;
    let proxy = pair.proxy;
    let client = support::proxy_client(&format!("http://{proxy}"));
    let deadline = tokio::time::Instant::now() + length;
    let size = 8 * 1024 * 1024u64;
    let counts: Arc<[std::sync::atomic::AtomicU64; 3]> = Arc::default();
    let count = |i: usize| counts[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);

    // Stalled readers: downloads nobody reads, held for the whole run.
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        stream
            .write_all(
                format!("GET http://{http}/bytes/1073741824 HTTP/1.1\r\nHost: {http}\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        stalled.push(stream);
    }
    // Idle tunnels: ten more agents' worth of tunnels to the server, doing nothing.
    let idle = {
        let (ca, identity) = support::issue_identity(
            &pair.dir.path().join("ca"),
            DEV_ARN,
            fluidity_core::pki::KeyAlgorithm::EcdsaP256,
        );
        let roots = fluidity_core::pki::root_store("CA", ca.certificate_pem().as_bytes()).unwrap();
        let connector = fluidity_core::tls::TlsConnector::arn(&identity, roots, DEV_ARN).unwrap();
        let mut idle = Vec::new();
        for _ in 0..10 {
            let established = connector
                .connect(SocketAddr::from(([127, 0, 0, 1], pair.server_port)))
                .await
                .unwrap();
            let session = fluidity_core::Session::client(
                established.codec,
                fluidity_core::SessionConfig::default(),
                Instant::now(),
            );
            idle.push(fluidity_core::Connection::spawn(
                established.stream,
                session,
            ));
        }
        idle
    };

    let downloads = async {
        while tokio::time::Instant::now() < deadline {
            let body = client
                .get(format!("http://{http}/bytes/{size}"))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(body.len() as u64, size);
            assert!(body[..1024] == *pattern_slice(0, 1024));
            count(0);
        }
    };
    let uploads = async {
        let mut data = Vec::with_capacity(size as usize);
        for offset in (0..size).step_by(1 << 20) {
            data.extend_from_slice(pattern_slice(offset, 1 << 20));
        }
        let data = bytes::Bytes::from(data);
        let expected = format!("{size} {:016x}", support::pattern_checksum(size));
        while tokio::time::Instant::now() < deadline {
            let answer = client
                .post(format!("http://{http}/checksum"))
                .body(data.clone())
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert_eq!(answer, expected);
            count(1);
        }
    };
    let websockets = async {
        while tokio::time::Instant::now() < deadline {
            let stream = support::connect_through(proxy, websocket).await;
            let (mut ws, _) =
                tokio_tungstenite::client_async(format!("ws://{websocket}/echo"), stream)
                    .await
                    .unwrap();
            for i in 0..50u32 {
                let text = format!("message {i}");
                ws.send(Message::text(text.clone())).await.unwrap();
                let echoed = ws.next().await.unwrap().unwrap();
                assert_eq!(echoed.into_text().unwrap().as_str(), text);
            }
            ws.close(None).await.unwrap();
            count(2);
        }
    };
    let sampler = async {
        let mut samples = Vec::new();
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(every).await;
            let (agent, server) = pair.usage().await;
            samples.push((agent.rss_kib, server.rss_kib));
        }
        samples
    };
    let ((), (), (), samples) = tokio::join!(downloads, uploads, websockets, sampler);
    assert!(
        idle.iter().all(|c| c.closed_reason().is_none()),
        "an idle tunnel closed"
    );
    drop(stalled);
    drop(idle);
    let done: Vec<u64> = counts
        .iter()
        .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    let warm_up = samples.len().div_ceil(4);
    let peak = |part: &[(u64, u64)]| {
        part.iter().fold((0, 0), |(a, s), &(agent, server)| {
            (a.max(agent), s.max(server))
        })
    };
    let (warm_agent, warm_server) = peak(&samples[..warm_up]);
    let (later_agent, later_server) = peak(&samples[warm_up..]);
    eprintln!(
        "mixed workload for {length:?}: {} downloads and {} uploads of 8 MiB, {} WebSocket \
         sessions, 8 stalled readers, 10 idle tunnels; resident KiB (agent, server) every \
         {every:?}: {samples:?}",
        done[0], done[1], done[2]
    );
    assert!(
        done.iter().all(|&n| n > 0),
        "every kind of work ran: {done:?}"
    );
    for (name, warm, later) in [
        ("agent", warm_agent, later_agent),
        ("server", warm_server, later_server),
    ] {
        assert!(
            later <= warm + warm / 20 + RSS_TOLERANCE_KIB,
            "the {name}'s memory grew after the warm-up: peak {warm} KiB, then {later} KiB"
        );
    }
}

//! End-to-end load generator: agent, server and origins in this process on loopback, the
//! agent and server joined by real mutual TLS (ARN mode, binary codec).
//!
//! `cargo bench -p fluidity-benches --bench e2e` (add `-- --quick` for a short run)
//!
//! Measures:
//! 1. single-stream CONNECT download throughput, and a direct connection in the same run;
//!    the same download beside a stalled CONNECT stream;
//! 2. requests per second and p50/p99 latency of 1 KiB responses over keep-alive;
//! 3. RSS per idle CONNECT tunnel with 1000 open, and the time to open them.
//!
//! Everything shares this process's two cores, so the tunnel competes with the clients and
//! origins it is measured with.

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a failure should panic

use fluidity_core::config::CertificateSettings;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ARN: &str = "arn:aws:ecs:local:000000000000:task/fluidity-bench/0123456789abcdef";

/// Resident memory of this process, KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// An origin that sends `size` bytes to every connection, then closes.
async fn blast_origin(size: u64) -> SocketAddr {
    let listener = fluidity_core::transport::listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let chunk = vec![0x5au8; 256 * 1024];
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let chunk = chunk.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let mut left = size;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    if stream.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    left -= n as u64;
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    address
}

/// An origin that accepts and holds connections open (idle tunnels).
async fn idle_origin() -> SocketAddr {
    let listener = fluidity_core::transport::listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut byte = [0u8; 1];
                let _ = stream.read(&mut byte).await;
            });
        }
    });
    address
}

/// An HTTP origin answering every request with 1 KiB.
async fn http_origin() -> SocketAddr {
    let listener = fluidity_core::transport::listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let address = listener.local_addr().unwrap();
    let body = Bytes::from(vec![b'x'; 1024]);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request| {
                    let body = body.clone();
                    async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

/// Starts a server and an agent; returns the proxy address.
async fn tunnel(dir: &std::path::Path) -> SocketAddr {
    let server_config = fluidity_server::ServerConfig {
        listen_addr: [127, 0, 0, 1].into(),
        server_arn: Some(ARN.into()),
        server_ip: Some([127, 0, 0, 1].into()),
        certificates: CertificateSettings {
            ca_dir: Some(dir.join("ca")),
            ..Default::default()
        },
        egress_deny: Some(vec![]),
        max_connections: 10,
        ..Default::default()
    };
    // Create the CA before either side opens it.
    fluidity_core::pki::local_ca::LocalCa::open_or_create(&dir.join("ca"), Default::default())
        .unwrap();
    let listener = fluidity_core::transport::listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let server = listener.local_addr().unwrap();
    tokio::spawn(fluidity_server::run(
        server_config,
        listener,
        std::future::pending(),
    ));
    let agent_config = fluidity_agent::AgentConfig {
        server: Some(server.to_string()),
        server_arn: Some(ARN.into()),
        agent_ip: Some([127, 0, 0, 1].into()),
        certificates: CertificateSettings {
            ca_dir: Some(dir.join("ca")),
            ..Default::default()
        },
        ..Default::default()
    };
    let listener = fluidity_core::transport::listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let proxy = listener.local_addr().unwrap();
    tokio::spawn(fluidity_agent::run(
        agent_config,
        listener,
        std::future::pending(),
    ));
    proxy
}

/// Opens a CONNECT tunnel through the proxy; returns the stream after the 200.
async fn connect_via(proxy: SocketAddr, target: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let _ = stream.set_nodelay(true);
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.unwrap());
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

async fn drain(mut stream: TcpStream) -> u64 {
    let mut buffer = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return total,
            Ok(n) => total += n as u64,
        }
    }
}

fn gbit(bytes: u64, took: Duration) -> f64 {
    bytes as f64 * 8.0 / took.as_secs_f64() / 1e9
}

async fn throughput(proxy: SocketAddr, size: u64) {
    let origin = blast_origin(size).await;
    // Warm up the tunnel.
    drain(connect_via(proxy, blast_origin(1 << 20).await).await).await;
    for round in 0..2 {
        let started = Instant::now();
        let moved = drain(TcpStream::connect(origin).await.unwrap()).await;
        let direct = gbit(moved, started.elapsed());
        let started = Instant::now();
        let moved_tunnel = drain(connect_via(proxy, origin).await).await;
        let tunnelled = gbit(moved_tunnel, started.elapsed());
        assert_eq!(moved_tunnel, size);
        println!(
            "| CONNECT download, 1 stream (round {round}) | {tunnelled:.2} Gbit/s | direct {direct:.2} Gbit/s | ratio {:.2} |",
            tunnelled / direct
        );
    }
    // The same beside a stalled stream: a CONNECT whose reader never reads.
    let stalled_origin = blast_origin(1 << 30).await;
    let stalled = connect_via(proxy, stalled_origin).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let moved = drain(connect_via(proxy, origin).await).await;
    println!(
        "| CONNECT download beside a stalled stream | {:.2} Gbit/s | | |",
        gbit(moved, started.elapsed())
    );
    drop(stalled);
}

async fn requests(proxy: SocketAddr, duration: Duration, connections: usize) {
    let origin = http_origin().await;
    for (label, via_proxy) in [("through the tunnel", true), ("direct", false)] {
        let deadline = Instant::now() + duration;
        let mut tasks = Vec::new();
        for _ in 0..connections {
            tasks.push(tokio::spawn(async move {
                let stream = TcpStream::connect(if via_proxy { proxy } else { origin })
                    .await
                    .unwrap();
                let _ = stream.set_nodelay(true);
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(connection);
                let uri = if via_proxy {
                    format!("http://{origin}/")
                } else {
                    "/".to_owned()
                };
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let request = hyper::Request::get(&uri)
                        .header("host", origin.to_string())
                        .body(Empty::new())
                        .unwrap();
                    let started = Instant::now();
                    let response = sender.send_request(request).await.unwrap();
                    let body = response.into_body().collect().await.unwrap().to_bytes();
                    assert_eq!(body.len(), 1024);
                    latencies.push(started.elapsed());
                }
                latencies
            }));
        }
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.unwrap());
        }
        latencies.sort();
        let percentile =
            |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
        println!(
            "| 1 KiB GET, {connections} keep-alive connections, {label} | {:.0} req/s | p50 {:?} | p99 {:?} |",
            latencies.len() as f64 / duration.as_secs_f64(),
            percentile(0.50),
            percentile(0.99)
        );
    }
}

async fn idle_tunnels(proxy: SocketAddr, count: usize) {
    let origin = idle_origin().await;
    // Warm up allocator pools and the tunnel with a few streams first.
    let warm: Vec<TcpStream> =
        futures::future::join_all((0..16).map(|_| connect_via(proxy, origin))).await;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // One at a time first: the latency of opening a tunnel.
    let started = Instant::now();
    for _ in 0..100 {
        drop(connect_via(proxy, origin).await);
    }
    println!(
        "| open one CONNECT tunnel (sequential, mean of 100) | {:?} | | |",
        started.elapsed() / 100
    );
    // Baseline: the same number of direct connections (clients and origin only).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib();
    let direct: Vec<TcpStream> =
        futures::future::join_all((0..count).map(|_| TcpStream::connect(origin)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let direct_cost = rss_kib().saturating_sub(before);
    drop(direct);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Opened 20 at a time: the steady-state cost, without a burst's transient buffers
    // (hyper's per-connection buffers before the upgrade) that malloc keeps afterwards.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib();
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count / 20 {
        streams
            .extend(futures::future::join_all((0..20).map(|_| connect_via(proxy, origin))).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cost = rss_kib().saturating_sub(before);
    println!(
        "| {count} idle CONNECT tunnels, opened 20 at a time (first) | | RSS +{cost} KiB | {:.1} KiB per tunnel for agent + server |",
        cost.saturating_sub(direct_cost) as f64 / count as f64
    );
    drop(streams);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib();
    let started = Instant::now();
    let opened: Vec<(TcpStream, Duration)> =
        futures::future::join_all((0..count).map(|_| async move {
            let stream = connect_via(proxy, origin).await;
            (stream, started.elapsed())
        }))
        .await;
    let took = started.elapsed();
    let mut latencies: Vec<Duration> = opened.iter().map(|(_, d)| *d).collect();
    latencies.sort();
    println!(
        "| 1000 concurrent opens: completion times | p50 {:?} | p90 {:?} | max {:?} |",
        latencies[count / 2],
        latencies[count * 9 / 10],
        latencies[count - 1]
    );
    let streams: Vec<TcpStream> = opened.into_iter().map(|(s, _)| s).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib();
    let tunnel_cost = after.saturating_sub(before);
    println!(
        "| {count} idle CONNECT tunnels, all at once (after) | opened in {took:?} | RSS +{tunnel_cost} KiB (direct connections: +{direct_cost} KiB) | {:.1} KiB per tunnel for agent + server ({:.1} KiB with clients and origin) |",
        tunnel_cost.saturating_sub(direct_cost) as f64 / count as f64,
        tunnel_cost as f64 / count as f64
    );
    drop(streams);
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // `cargo bench` passes `--bench`; `cargo test --benches` would run this too, so stay short
    // unless benchmarking.
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let proxy = tunnel(dir.path()).await;
        println!("| measurement | result | baseline | note |\n|---|---|---|---|");
        let (size, duration) = if quick || !benchmarking {
            (256u64 << 20, Duration::from_secs(2))
        } else {
            (2u64 << 30, Duration::from_secs(5))
        };
        // Optional filters: `-- throughput`, `-- requests`, `-- idle`.
        let wanted = |name: &str| {
            let filters: Vec<String> = std::env::args()
                .skip(1)
                .filter(|a| !a.starts_with("--"))
                .collect();
            filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
        };
        if wanted("throughput") {
            throughput(proxy, size).await;
        }
        if wanted("requests") {
            requests(proxy, duration, 16).await;
        }
        if wanted("idle") {
            idle_tunnels(proxy, 1000).await;
        }
    });
}

//! The session driver over `tokio::io::duplex`: one stream, and 64 concurrent streams.
//!
//! `cargo bench -p fluidity-benches --bench session`

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic

use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fluidity_core::Connection;
use fluidity_core::codec::CodecKind;
use fluidity_core::{Reply, Session, SessionConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOTAL: usize = 64 << 20;

fn setup(rt: &tokio::runtime::Runtime, codec: CodecKind) -> Connection {
    rt.block_on(async {
        let (a, b) = tokio::io::duplex(1 << 20);
        let client = Session::client(codec, SessionConfig::default(), Instant::now());
        let server = Session::server(codec, SessionConfig::default(), Instant::now());
        let client = Connection::spawn(a, client);
        let server = Connection::spawn(b, server);
        // The server side drains every stream and reports its byte count back.
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                tokio::spawn(async move {
                    let mut s = incoming.accept(Reply::Connect).unwrap();
                    // A length header, then that many bytes, then the count back: no half-close,
                    // which JSON (Go semantics) does not have.
                    let mut header = [0u8; 8];
                    s.read_exact(&mut header).await.unwrap();
                    let want = u64::from_be_bytes(header);
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut n = 0u64;
                    while n < want {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => n += k as u64,
                        }
                    }
                    let _ = s.write_all(&n.to_be_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        client
    })
}

async fn push(client: Connection, bytes: usize) {
    let mut s = client.connect("sink:1").await.unwrap();
    s.write_all(&(bytes as u64).to_be_bytes()).await.unwrap();
    let chunk = vec![0x5au8; 256 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).await.unwrap();
        left -= n;
    }
    let mut count = [0u8; 8];
    s.read_exact(&mut count).await.unwrap();
    assert_eq!(u64::from_be_bytes(count) as usize, bytes);
}

fn session(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("session_duplex");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(TOTAL as u64));
    for codec in [CodecKind::Binary, CodecKind::Json] {
        let client = setup(&rt, codec);
        for streams in [1usize, 64] {
            group.bench_function(
                BenchmarkId::new(format!("{codec:?}"), format!("{streams}_streams")),
                |b| {
                    b.iter(|| {
                        rt.block_on(async {
                            let tasks: Vec<_> = (0..streams)
                                .map(|_| tokio::spawn(push(client.clone(), TOTAL / streams)))
                                .collect();
                            for t in tasks {
                                t.await.unwrap();
                            }
                        })
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, session);
criterion_main!(benches);

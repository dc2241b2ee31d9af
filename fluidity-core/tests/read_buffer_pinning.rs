//! A received data chunk must not keep much more memory alive than its own size.
//!
//! Received binary frames are handed out as slices of the read buffer (no copy). A hostile
//! peer could send a tiny data frame for a stream nobody reads, then a huge frame the session
//! skips, and repeat: each tiny chunk, charged a few bytes against the window, would keep a
//! megabyte-sized read buffer alive. This test sends exactly that through the real driver over
//! TCP and measures the process's memory. (Its own test binary, so the RSS is this test's.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use fluidity_core::Connection;
use fluidity_core::codec::{BinaryCodec, Codec, CodecKind, Decoded};
use fluidity_core::envelope::*;
use fluidity_core::{Session, SessionConfig, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A frame of an unknown type, which the session skips: `len` bytes on the wire.
fn skipped_frame(len: usize, out: &mut BytesMut) {
    out.put_u32((len - 4) as u32);
    out.put_u8(0x7f);
    out.resize(out.len() + len - 5, 0xab);
}

/// Runs the attack with `streams` streams and `rounds` rounds of one data chunk of `chunk`
/// bytes plus one skipped frame of almost 1 MiB; returns the RSS growth in KiB once the
/// client has processed everything (it answered the ping sent last).
async fn attack(streams: usize, rounds: usize, chunk: usize) -> u64 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let client_session =
        Session::client(CodecKind::Binary, SessionConfig::default(), Instant::now());
    let client = Connection::spawn(TcpStream::connect(address).await.unwrap(), client_session);
    let (server, _) = listener.accept().await.unwrap();
    let (mut from_client, mut to_client) = server.into_split();
    // The client's streams, opened and never read (the handles stay alive).
    let handles: Vec<_> = (0..streams)
        .map(|i| {
            client
                .open(Target::Connect {
                    address: format!("host{i}:443"),
                })
                .unwrap()
        })
        .collect();

    // Read what the client sends: its stream ids, and later the pong.
    let (ids_tx, ids_rx) = tokio::sync::oneshot::channel();
    let (pong_tx, pong_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut codec = BinaryCodec::new(1 << 24);
        let mut buf = BytesMut::new();
        let (mut ids, mut ids_tx, mut pong_tx) = (Vec::new(), Some(ids_tx), Some(pong_tx));
        loop {
            while let Some(decoded) = codec.decode(&mut buf).unwrap() {
                match decoded {
                    Decoded::Envelope(Envelope::ConnectOpen(open)) => {
                        ids.push(open.id);
                        if ids.len() == streams {
                            let _ = ids_tx.take().unwrap().send(ids.clone());
                        }
                    }
                    Decoded::Envelope(Envelope::Pong(Heartbeat { nonce: 42 })) => {
                        let _ = pong_tx.take().unwrap().send(());
                    }
                    _ => {}
                }
            }
            if from_client.read_buf(&mut buf).await.unwrap() == 0 {
                return;
            }
        }
    });
    let ids: Vec<StreamId> = ids_rx.await.unwrap();

    let mut codec = BinaryCodec::new(1 << 24);
    let mut out = BytesMut::new();
    let hello = Hello {
        version: PROTOCOL_VERSION,
        capabilities: vec![
            capability::FLOW_CONTROL.into(),
            capability::HEARTBEAT.into(),
        ],
        initial_window: 1 << 18,
        connection_window: 1 << 24,
        max_frame_size: 1 << 20,
    };
    codec.encode(&Envelope::Hello(hello), &mut out).unwrap();
    for id in &ids {
        let ack = Ack::accepted(*id);
        codec.encode(&Envelope::ConnectAck(ack), &mut out).unwrap();
    }
    to_client.write_all(&out).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let before = rss_kib();
    let data = vec![0x5au8; chunk];
    for round in 0..rounds {
        let mut out = BytesMut::new();
        let id = ids[round % ids.len()];
        codec
            .encode(
                &Envelope::ConnectData(Data {
                    id,
                    data: data.clone().into(),
                }),
                &mut out,
            )
            .unwrap();
        skipped_frame((1 << 20) - 64, &mut out);
        to_client.write_all(&out).await.unwrap();
    }
    let mut out = BytesMut::new();
    codec
        .encode(&Envelope::Ping(Heartbeat { nonce: 42 }), &mut out)
        .unwrap();
    to_client.write_all(&out).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), pong_rx)
        .await
        .expect("the client answers the ping after processing everything")
        .unwrap();
    let grown = rss_kib().saturating_sub(before);
    eprintln!("grown {grown} KiB");
    assert!(client.closed_reason().is_none(), "the tunnel stays up");
    drop(handles);
    grown
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_chunks_between_skipped_frames_pin_no_read_buffers() {
    // 256 chunks of 1 byte, each followed by ~1 MiB the session skips. Kept alive by slices,
    // the read buffers would be ~256 MiB; copied out, the chunks hold 256 bytes.
    let grown = attack(8, 256, 1).await;
    assert!(grown < 32 * 1024, "RSS grew by {grown} KiB");

    // 128 chunks of 32 KiB (the largest a peer sends, sliced without a copy): 4 MiB of unread
    // data. Each may keep at most its read buffer (≤ 128 KiB) alive, never a skipped
    // frame's megabyte: the bound is 4× the data, 16 MiB here, where slices of the skipped
    // frames' buffers would hold ~128 MiB.
    let grown = attack(16, 128, 32 * 1024).await;
    assert!(grown < 4 * 4 * 1024 + 16 * 1024, "RSS grew by {grown} KiB");
}

//! Codec throughput: encode + decode of data frames, both codecs.
//!
//! `cargo bench -p fluidity-benches --bench codec`

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fluidity_core::codec::{CodecKind, DataFrame, Decoded};
use fluidity_core::envelope::StreamId;

fn codecs(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec_round_trip");
    for kind in [CodecKind::Binary, CodecKind::Json] {
        for size in [64usize, 1024, 16 * 1024, 32 * 1024] {
            let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
            let mut codec = kind.new_codec(1 << 20);
            let mut buf = BytesMut::with_capacity(2 * size + 128);
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("{kind:?}"), size),
                &payload,
                |b, payload| {
                    b.iter(|| {
                        codec
                            .encode_data(DataFrame::Connect(StreamId(42), payload), &mut buf)
                            .unwrap();
                        match codec.decode(&mut buf).unwrap() {
                            Some(Decoded::Envelope(e)) => std::hint::black_box(e),
                            other => panic!("{other:?}"),
                        };
                        // Keep the buffer's allocation: the decoded frame was split off it.
                        buf.reserve(2 * payload.len() + 128);
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, codecs);
criterion_main!(benches);

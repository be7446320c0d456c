//! Micro-benchmarks of the backup hot path: chunking, hashing, and each codec, on bf16-like
//! weights (the realistic case), random bytes and zeros. Inputs are seeded and deterministic.
//!
//! Also: filling a pack, and index lookups with 1 M chunks in the index.
//!
//! Run: `cargo bench -p tvault-core --bench hot_path`. Compare against a saved baseline with
//! `cargo bench -p tvault-core --bench hot_path -- --save-baseline before`, change the code, then
//! `cargo bench -p tvault-core --bench hot_path -- --baseline before`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tvault_core::chunker::{ChunkerParams, Cutter, StreamChunker, DEFAULT_BLOCK};
use tvault_core::codec;
use tvault_core::codec::huffman;
use tvault_core::id::Id;
use tvault_core::index::Index;
use tvault_core::pack::{BlobKind, PackEntry, PackWriter};
use tvault_workload::{fill_weights, Dtype, Rng};

const LEN: usize = 32 * 1024 * 1024;

fn inputs() -> Vec<(&'static str, Vec<u8>)> {
    let mut weights = vec![0u8; LEN];
    fill_weights(&mut Rng::new(1), Dtype::BF16, &mut weights);
    let mut random = vec![0u8; LEN];
    Rng::new(2).fill_bytes(&mut random);
    vec![
        ("bf16", weights),
        ("random", random),
        ("zeros", vec![0u8; LEN]),
    ]
}

fn chunking(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunker");
    g.throughput(Throughput::Bytes(LEN as u64)).sample_size(10);
    for (name, data) in inputs() {
        g.bench_with_input(BenchmarkId::from_parameter(name), &data, |b, data| {
            b.iter(|| {
                let mut chunker =
                    StreamChunker::new(&data[..], ChunkerParams::default(), DEFAULT_BLOCK);
                let mut n = 0;
                while let Some((_, ranges)) = chunker.next_batch().unwrap() {
                    n += ranges.len();
                }
                black_box(n)
            })
        });
        // The cutter alone on a block in memory (scan on every core), without the stream's copy.
        let cutter = Cutter::new(&ChunkerParams::default());
        g.bench_with_input(BenchmarkId::new("cutter", name), &data, |b, data| {
            b.iter(|| black_box(cutter.cut(data, true).0.len()))
        });
        // The fastcdc crate's own chunker on one core: the reference the cutter reproduces.
        g.bench_with_input(BenchmarkId::new("fastcdc", name), &data, |b, data| {
            b.iter(|| black_box(ChunkerParams::default().cut_all(data).len()))
        });
    }
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let (_, data) = inputs().swap_remove(0);
    let mut g = c.benchmark_group("blake3");
    g.throughput(Throughput::Bytes(LEN as u64)).sample_size(10);
    g.bench_function("per 1 MiB chunk", |b| {
        b.iter(|| {
            data.chunks(1 << 20)
                .map(|c| blake3::hash(c).as_bytes()[0])
                .fold(0u8, |a, x| a ^ x)
        })
    });
    g.finish();
}

fn codecs(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.sample_size(10);
    for (name, data) in inputs() {
        let chunk = &data[..4 << 20];
        g.throughput(Throughput::Bytes(chunk.len() as u64));
        g.bench_with_input(BenchmarkId::new("encode", name), chunk, |b, chunk| {
            b.iter(|| codec::encode(chunk, 3).1.len())
        });
        // The hot path's form: this thread's zstd context and output buffer, reused.
        let mut out = Vec::new();
        g.bench_with_input(BenchmarkId::new("encode_into", name), chunk, |b, chunk| {
            b.iter(|| (codec::encode_into(chunk, 3, &mut out), out.len()))
        });
        let (enc, stored) = codec::encode(chunk, 3);
        g.bench_with_input(BenchmarkId::new("decode", name), &stored, |b, stored| {
            b.iter(|| codec::decode(enc, stored, chunk.len()).unwrap().len())
        });
    }
    g.finish();
}

/// The exponent plane of bf16 weights (the high byte of each element), what the byte-plane
/// encoding Huffman-codes: one 512 KiB tensor block's plane (256 KiB, the hot path's size) and a
/// 16 MiB one. Also the whole byte-plane encoding of bf16 chunks, both ways.
fn huffman_planes(c: &mut Criterion) {
    let mut weights = vec![0u8; LEN];
    fill_weights(&mut Rng::new(1), Dtype::BF16, &mut weights);
    let plane: Vec<u8> = weights.chunks_exact(2).map(|e| e[1]).collect();
    let mut g = c.benchmark_group("huffman");
    g.sample_size(20);
    for (name, p) in [("256KiB", &plane[..256 << 10]), ("16MiB", &plane[..])] {
        g.throughput(Throughput::Bytes(p.len() as u64));
        g.bench_with_input(BenchmarkId::new("histogram", name), p, |b, p| {
            b.iter(|| huffman::histogram(p)[0x3c])
        });
        let freq = huffman::histogram(p);
        g.bench_with_input(BenchmarkId::new("code_lengths", name), &freq, |b, f| {
            b.iter(|| huffman::code_lengths(f)[0x3c])
        });
        let lens = huffman::code_lengths(&freq);
        let mut out = Vec::new();
        g.bench_with_input(BenchmarkId::new("encode", name), p, |b, p| {
            b.iter(|| {
                out.clear();
                huffman::encode(p, &lens, &mut out);
                out.len()
            })
        });
        let mut back = vec![0u8; p.len()];
        g.bench_with_input(BenchmarkId::new("decode", name), &out, |b, stored| {
            b.iter(|| {
                huffman::decode(stored, &mut back).unwrap();
                back[0]
            })
        });
        assert_eq!(&back[..], p);
    }
    // The byte-plane encoding of 512 KiB bf16 chunks (a tensor block), over 4 MiB of them.
    let chunks = &weights[..4 << 20];
    g.throughput(Throughput::Bytes(chunks.len() as u64));
    let mut out = Vec::new();
    g.bench_function("planes encode_typed bf16", |b| {
        b.iter(|| {
            chunks
                .chunks(512 << 10)
                .map(|c| (codec::encode_typed(c, 2, 1, &mut out), out.len()).1)
                .sum::<usize>()
        })
    });
    let stored: Vec<(codec::Encoding, Vec<u8>)> = chunks
        .chunks(512 << 10)
        .map(|c| (codec::encode_typed(c, 2, 1, &mut out), out.clone()))
        .collect();
    assert!(stored.iter().all(|(e, _)| *e == codec::Encoding::Planes));
    g.bench_function("planes decode bf16", |b| {
        b.iter(|| {
            stored
                .iter()
                .map(|(e, s)| codec::decode(*e, s, 512 << 10).unwrap().len())
                .sum::<usize>()
        })
    });
    g.finish();
}

/// Filling and finishing a 32 MiB pack (copying the blobs in, the trailer, the pack's BLAKE3).
fn pack_writing(c: &mut Criterion) {
    let (_, data) = inputs().swap_remove(0);
    let blobs: Vec<(Id, &[u8])> = data.chunks(512 * 1024).map(|b| (Id::of(b), b)).collect();
    let mut g = c.benchmark_group("pack");
    g.throughput(Throughput::Bytes(LEN as u64)).sample_size(10);
    g.bench_function("write 32 MiB", |b| {
        b.iter(|| {
            let mut w = PackWriter::new();
            for (id, blob) in &blobs {
                w.add(*id, BlobKind::Data, codec::Encoding::Raw, blob, blob.len());
            }
            black_box(w.finish().0)
        })
    });
    g.finish();
}

/// Index lookups with 1 M chunks in the index (what a ~500 GB repository holds), for IDs that
/// are present (dedup hits) and absent (new chunks).
fn index_lookups(c: &mut Criterion) {
    const CHUNKS: u32 = 1_000_000;
    const PER_PACK: u32 = 64;
    let id = |n: u32| Id::of(&n.to_le_bytes());
    let mut index = Index::default();
    for pack in 0..CHUNKS / PER_PACK {
        let entries: Vec<PackEntry> = (0..PER_PACK)
            .map(|i| PackEntry {
                id: id(pack * PER_PACK + i),
                kind: BlobKind::Data,
                encoding: codec::Encoding::Zstd,
                offset: 8 + i * 1000,
                stored_len: 1000,
                plain_len: 2000,
            })
            .collect();
        index.add_pack(Id::of(&pack.to_be_bytes()), &entries);
    }
    assert_eq!(index.len(), CHUNKS as usize);
    let present: Vec<Id> = (0..10_000).map(|n| id(n * 97 % CHUNKS)).collect();
    let absent: Vec<Id> = (0..10_000).map(|n| id(CHUNKS + n)).collect();
    let mut g = c.benchmark_group("index 1M chunks");
    g.throughput(Throughput::Elements(10_000));
    for (name, ids) in [("present", &present), ("absent", &absent)] {
        g.bench_function(name, |b| {
            b.iter(|| ids.iter().filter(|id| index.get(id).is_some()).count())
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    chunking,
    hashing,
    codecs,
    huffman_planes,
    pack_writing,
    index_lookups
);
criterion_main!(benches);

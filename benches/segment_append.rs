//! Micro-benchmarks of the segment log's hot path: `SegmentWriter::append` (one copy of a
//! buffered body) and `reserve` + fill + commit (the streaming path), for 1, 8 and 64 KiB
//! bodies, on a temporary directory with the real background service preparing segments.
//! `cargo bench --bench segment_append`.
//!
//! Rolled segments are deleted between samples (outside the timed loop), so a long run does not
//! fill the disk: deleting a mapped or sealing file is safe on Linux, the service works through
//! its open handle.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use replay_ingest::log::{LogConfig, RecordKind, RecordMeta, SegmentService};

const SIZES: [usize; 3] = [1024, 8 * 1024, 64 * 1024];

fn meta(i: u64) -> RecordMeta {
    RecordMeta {
        session_id: 7_044_371_216_235_345 + (i & 0xff),
        arrival_unix_ns: 1_795_771_262_711_000_000 + i,
        kind: RecordKind::WebBatch,
    }
}

fn prune_segments(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().ends_with(".seg") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn segment_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = LogConfig::new(dir.path());
    let segments = cfg.segments_dir();
    let service = SegmentService::start(cfg, 1).expect("segment service");
    let mut writer = service.writer(0).expect("writer 0");
    let mut g = c.benchmark_group("segment_append");
    g.measurement_time(Duration::from_secs(3));
    for size in SIZES {
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("append", size), &body, |b, body| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for i in 0..iters {
                    writer
                        .append(meta(i), b"", &[black_box(body)])
                        .expect("append");
                }
                let took = start.elapsed();
                prune_segments(&segments);
                took
            })
        });
        g.bench_with_input(BenchmarkId::new("reserve_fill", size), &body, |b, body| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for i in 0..iters {
                    let mut r = writer.reserve(meta(i), b"", body.len()).expect("reserve");
                    // Two reads' worth, as a body arriving in two socket reads would be.
                    let half = body.len() / 2;
                    r.unfilled()[..half].copy_from_slice(&body[..half]);
                    r.advance(half);
                    let rest = body.len() - half;
                    r.unfilled()[..rest].copy_from_slice(&body[half..]);
                    r.advance(rest);
                    r.commit();
                }
                let took = start.elapsed();
                prune_segments(&segments);
                took
            })
        });
    }
    g.finish();
    writer.close().expect("close");
    service.shutdown();
}

criterion_group!(benches, segment_append);
criterion_main!(benches);

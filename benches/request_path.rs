//! Micro-benchmarks of the per-request work on a worker thread, on real tracker traffic from
//! `tests/fixtures/tracker-19.0.1/`: the request head, the token, the batch walk, gzip
//! inflation, and the start answer's JSON. `cargo bench --bench request_path`.
//!
//! Instruction-level numbers for these are steadier under `valgrind --tool=callgrind` than
//! wall-clock ones on a shared machine; criterion's are what to compare before and after a change
//! on the same machine.

use std::hint::black_box;
use std::io::Read;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use replay_ingest::codec::walk_web_batch;
use replay_ingest::http::parse_head;
use replay_ingest::token::{SessionToken, TokenSigner};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tracker-19.0.1");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).expect("fixture present")
}

/// The head of the gzip player batch exactly as Chromium sent it (headers in capture order),
/// rebuilt from the request log.
fn tracker_batch_head() -> Vec<u8> {
    let log = String::from_utf8(fixture("requests-esm-pv2-crossorigin.jsonl")).expect("utf-8");
    let request: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| {
            r["method"] == "POST"
                && r["path"]
                    .as_str()
                    .is_some_and(|p| p.contains("/v1/web/i?batch=0_4_"))
        })
        .expect("the captured gzip batch request");
    let mut head = format!(
        "POST {} HTTP/1.1\r\n",
        request["path"].as_str().unwrap_or("/")
    );
    for (name, value) in request["headers"].as_object().expect("headers") {
        head.push_str(&format!("{name}: {}\r\n", value.as_str().unwrap_or("")));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

fn head_parse(c: &mut Criterion) {
    let head = tracker_batch_head();
    let mut g = c.benchmark_group("head_parse");
    g.throughput(Throughput::Bytes(head.len() as u64));
    g.bench_function("tracker_batch_head", |b| {
        b.iter(|| {
            parse_head(black_box(&head))
                .expect("valid head")
                .expect("complete")
        })
    });
    g.finish();
}

fn token_verify(c: &mut Criterion) {
    let signer = TokenSigner::new(b"bench-secret");
    let token = signer.compose(&SessionToken {
        session_id: 7_044_371_216_235_345,
        delay: -1500,
        expires_at_ms: 4_102_444_800_000,
    });
    let mut forged = token.clone().into_bytes();
    if let Some(last) = forged.last_mut() {
        *last = if *last == b'2' { b'3' } else { b'2' };
    }
    let mut g = c.benchmark_group("token_verify");
    g.bench_function("valid", |b| {
        b.iter(|| signer.verify(black_box(token.as_bytes())).expect("valid"))
    });
    g.bench_function("bad_signature", |b| {
        b.iter(|| signer.verify(black_box(&forged)).expect_err("forged"))
    });
    g.finish();
}

fn batch_walk(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch_walk");
    for name in [
        "pv2-batch4-player.gunzipped.bin",
        "pv1-batch1-player.gunzipped.bin",
        "pv2-batch1-visual-split855.bin",
        "pv2-batch2-devtools.bin",
    ] {
        let batch = fixture(name);
        g.throughput(Throughput::Bytes(batch.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| walk_web_batch(black_box(&batch)).expect("valid batch"))
        });
    }
    g.finish();
}

/// As the batch route inflates: a multi-member gzip decoder into a buffer of the route's limit.
fn gzip_inflate(c: &mut Criterion) {
    let mut g = c.benchmark_group("gzip_inflate");
    for (wire, plain) in [
        (
            "pv2-batch4-player.wire-gzip.bin",
            "pv2-batch4-player.gunzipped.bin",
        ),
        (
            "pv1-batch1-player.wire-gzip.bin",
            "pv1-batch1-player.gunzipped.bin",
        ),
    ] {
        let body = fixture(wire);
        let expected = fixture(plain).len();
        let mut dst = vec![0u8; 1_000_000];
        g.throughput(Throughput::Bytes(expected as u64));
        g.bench_function(wire, |b| {
            b.iter(|| {
                let mut decoder = flate2::read::MultiGzDecoder::new(black_box(&body[..]));
                let mut filled = 0;
                loop {
                    match decoder.read(&mut dst[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) => panic!("fixture inflates: {e}"),
                    }
                }
                assert_eq!(filled, expected);
                filled
            })
        });
    }
    g.finish();
}

/// The start answer as `routes/web.rs` builds it: a `json!` value, then `serde_json::to_vec`.
fn start_answer_json(c: &mut Criterion) {
    let signer = TokenSigner::new(b"bench-secret");
    let token = SessionToken {
        session_id: 7_044_371_216_235_345,
        delay: 12,
        expires_at_ms: 4_102_444_800_000,
    };
    c.bench_function("start_answer_json", |b| {
        b.iter(|| {
            let answer = serde_json::json!({
                "token": signer.compose(black_box(&token)),
                "sessionID": token.session_id.to_string(),
                "projectID": 1u64.to_string(),
                "userUUID": "00000000-0000-4000-8000-000000000001",
                "timestamp": 1_795_771_262_711i64,
                "startTimestamp": 1_795_771_262_700i64,
                "delay": token.delay,
                "beaconSizeLimit": 1_000_000u64,
                "compressionThreshold": 20_000u64,
                "assistOnly": false,
                "userOS": "Linux",
                "userDevice": "",
                "userBrowser": "Chrome",
                "userCountry": "XX",
                "userState": "",
                "userCity": "",
                "canvasEnabled": false,
                "canvasQuality": "low",
                "canvasFPS": 1,
                "framesSupport": false,
                "protocolVersion": 2,
            });
            serde_json::to_vec(&answer).expect("JSON values always serialise")
        })
    });
}

/// User-agent parsing, done once per web start: the mix's agents (a desktop Chrome, an iPhone
/// Safari, an Android Chrome).
fn useragent_parse(c: &mut Criterion) {
    let parser = replay_ingest::useragent::UserAgentParser::new();
    let mut g = c.benchmark_group("useragent_parse");
    for (name, ua) in [
        ("chrome_linux", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"),
        ("safari_iphone", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"),
        ("chrome_android", "Mozilla/5.0 (Linux; Android 14; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36"),
    ] {
        g.bench_function(name, |b| b.iter(|| parser.parse(black_box(ua))));
    }
    g.finish();
}

criterion_group!(
    benches,
    useragent_parse,
    head_parse,
    token_verify,
    batch_walk,
    gzip_inflate,
    start_answer_json
);
criterion_main!(benches);

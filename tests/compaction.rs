//! The log's consumer side through the real binary: the compactor turns sealed segments into
//! compacted files and lets the segments go back to `spare/`; malformed batches are
//! quarantined with their reason; `cat` puts one page's batches back in order; and SIGKILL at
//! random moments loses no acknowledged batch and duplicates none.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::metric_sample as sample;
use common::*;
use rand::{Rng, SeedableRng};

/// A walkable batch of `len` bytes of `fill`.
fn batch(page: u64, first_index: u64, fill: u8, len: usize) -> Vec<u8> {
    walkable_batch(page, first_index, &vec![fill; len])
}

fn post(node: &Node, token: &str, body: &[u8]) -> u16 {
    let mut conn = node.connect();
    conn.write_all(&batch_request(token, "player", "", body))
        .unwrap();
    read_response(&mut conn).unwrap().status
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Sealed segments still in `segments/` (the open ones are not sealed).
fn sealed_segments(dir: &Path) -> usize {
    files_in(&dir.join("segments"))
        .iter()
        .filter(|n| n.ends_with(".seg"))
        .filter(|n| {
            let bytes = std::fs::read(dir.join("segments").join(n)).unwrap_or_default();
            replay_ingest::log::scan_segment(&bytes).is_ok_and(|s| s.header.is_sealed())
        })
        .count()
}

/// The compactor's lag as `ls` reports it.
fn compactor_lag(dir: &Path) -> Option<u64> {
    consumers(dir)
        .into_iter()
        .find(|c| c["consumer"] == "compactor")
        .map(|c| c["lag_records"].as_u64().unwrap())
}

/// One worker, 4 MiB segments sealed at least every second: several rolls from a few batches.
fn rolling_node(dir: &Path) -> Node {
    Node::builder()
        .dir(dir)
        .small_segments()
        .arg("--segment-max-age")
        .arg("1s")
        .workers(1)
        .start()
}

/// With default retention, every sealed segment is compacted and goes back to `spare/`, where
/// the next segments reuse it; `cat` reads the session whole from the compacted files.
#[test]
fn compaction_retires_segments_and_cat_reads_the_compacted_files() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    let node = rolling_node(dir);
    let s = node.start_web("web-key");
    let (token, sid) = (Node::token(&s), Node::session_id(&s));
    // ~20 MB through 4 MiB segments: several rolls, into files the compactor gave back.
    let batches: Vec<Vec<u8>> = (0..24)
        .map(|i| batch(0, i, b'a' + i as u8, 850_000))
        .collect();
    for b in &batches {
        assert_eq!(post(&node, &token, b), 200);
    }
    let raw = node.cat(sid, None);
    assert!(raw.ends_with(&batches.concat()), "everything readable");
    wait_for("compaction", Duration::from_secs(30), || {
        sealed_segments(dir) == 0 && !files_in(&dir.join("compacted")).is_empty()
    });
    assert_eq!(
        node.cat(sid, None),
        raw,
        "the same bytes, now from compacted files"
    );
    wait_for("the compactor to catch up", Duration::from_secs(30), || {
        compactor_lag(dir) == Some(0) || sealed_segments(dir) > 0
    });
    assert!(node.stop().success());
    assert_eq!(cat(dir, sid, None), raw, "and after a clean stop");
    let log = std::fs::read_to_string(stderr_path(dir)).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("segment files:"))
        .expect("the service's summary line");
    let count = |word: &str| -> u64 {
        let before = line.split(&format!(" {word}")).next().unwrap();
        before.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(count("retired") >= 4, "{line}");
    assert!(count("reused") >= 1, "{line}");
    assert_eq!(count("forced"), 0, "{line}");
    // The pool is bounded: with room in the budget (a temporary directory has plenty), its
    // larger size for one worker, plus one a prepare took out and gave back at the stop.
    let spare = files_in(&dir.join("segments").join("spare")).len();
    assert!(
        spare <= replay_ingest::log::SPARES_KEPT_WITH_ROOM + 1,
        "spare files kept: {spare}"
    );
}

/// The scheduling policy of the node's compactor thread, as the kernel reports it (field 41 of
/// its `stat`: 0 `SCHED_OTHER`, 5 `SCHED_IDLE`).
fn compactor_policy(node: &Node) -> u32 {
    let tasks = format!("/proc/{}/task", node.child.id());
    for task in std::fs::read_dir(tasks).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() == "compactor" {
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
            let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
            return fields[41 - 3].parse().unwrap();
        }
    }
    panic!("the node has no compactor thread");
}

fn runs_as_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

/// A compactor with nothing to do runs at `SCHED_IDLE` and says so in the metrics; one that may
/// not come back from it (no CAP_SYS_NICE, RLIMIT_NICE under 20) stays at normal priority and
/// says why. Root may always come back. Either way, what it is given is compacted.
#[test]
fn a_compactor_close_behind_yields_the_cpu() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    let node = rolling_node(dir);
    let yielding = |node: &Node| {
        sample(
            &node.admin_get("/metrics").1,
            "replay_ingest_compactor_yielding",
        )
    };
    let refused = || {
        std::fs::read_to_string(stderr_path(dir))
            .unwrap()
            .contains("runs at normal priority, without yielding")
    };
    wait_for("the compactor's priority", Duration::from_secs(10), || {
        yielding(&node) == 1.0 || refused()
    });
    if yielding(&node) == 1.0 {
        assert_eq!(compactor_policy(&node), 5, "SCHED_IDLE");
    } else {
        assert!(
            !runs_as_root(),
            "root may bring the compactor back from SCHED_IDLE"
        );
        assert_eq!(compactor_policy(&node), 0, "SCHED_OTHER");
    }
    let s = node.start_web("web-key");
    let token = Node::token(&s);
    for i in 0..8 {
        assert_eq!(post(&node, &token, &batch(0, i, b'y', 850_000)), 200);
    }
    wait_for("compaction", Duration::from_secs(30), || {
        sealed_segments(dir) == 0 && !files_in(&dir.join("compacted")).is_empty()
    });
    assert!(node.stop().success());
}

/// A batch whose framing does not walk is set aside in `quarantine/` with its reason and never
/// shows up in what consumers read; the good batches around it do.
#[test]
fn malformed_batches_are_quarantined_with_their_reason() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    let node = Node::builder()
        .dir(dir)
        .arg("--segment-max-age")
        .arg("1s")
        .start();
    let s = node.start_web("web-key");
    let (token, sid) = (Node::token(&s), Node::session_id(&s));
    let good = batch(0, 0, b'g', 100);
    let mut truncated = batch(0, 1, b't', 100);
    truncated.truncate(60);
    let not_a_batch = b"hello, not a batch".to_vec();
    for b in [&good, &truncated, &not_a_batch] {
        assert_eq!(
            post(&node, &token, b),
            200,
            "acknowledged: it is in the log"
        );
    }
    wait_for("quarantine", Duration::from_secs(30), || {
        files_in(&dir.join("quarantine"))
            .iter()
            .any(|n| n.ends_with(".jsonl"))
    });
    assert!(node.stop().success());
    let mut lines = Vec::new();
    for name in files_in(&dir.join("quarantine")) {
        let text = std::fs::read_to_string(dir.join("quarantine").join(name)).unwrap();
        lines.extend(
            text.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()),
        );
    }
    assert_eq!(lines.len(), 2, "{lines:?}");
    let reasons: Vec<&str> = lines
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("truncated")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("does not start with a batch meta")),
        "{reasons:?}"
    );
    assert!(lines
        .iter()
        .all(|l| l["session"].as_str() == Some(sid.to_string().as_str())));
    let out = cat(dir, sid, None);
    assert!(out.ends_with(&good), "the good batch stays");
    assert!(
        !out.windows(20).any(|w| w == [b't'; 20]),
        "the bad one is not handed on"
    );
    let log = std::fs::read_to_string(stderr_path(dir)).unwrap();
    assert!(log.contains("2 quarantined"), "counted: {log}");
    // One warning a quarantine file, not one a record: a client sending only malformed
    // batches must not flood the log.
    let warned: Vec<usize> = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("compactor: quarantined "))
        .map(|l| {
            let n = l.split("compactor: quarantined ").nth(1).unwrap();
            n.split(' ').next().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(
        (warned.len(), warned.iter().sum::<usize>()),
        (files_in(&dir.join("quarantine")).len(), 2),
        "{log}"
    );
}

/// Batches of one page that arrive out of order come back from `cat` by firstIndex, whether
/// they are still in the segments or already compacted.
#[test]
fn out_of_order_batches_of_one_page_come_back_in_order() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    let node = Node::builder()
        .dir(dir)
        .arg("--segment-max-age")
        .arg("1s")
        .start();
    let s = node.start_web("web-key");
    let (token, sid) = (Node::token(&s), Node::session_id(&s));
    let b0 = batch(0, 0, b'0', 50);
    let b1 = batch(0, 7, b'1', 50);
    let b2 = batch(0, 19, b'2', 50);
    for b in [&b2, &b0, &b1] {
        assert_eq!(post(&node, &token, b), 200);
    }
    let in_order = [b0.clone(), b1.clone(), b2.clone()].concat();
    assert!(node.cat(sid, None).ends_with(&in_order), "live segments");
    wait_for("compaction", Duration::from_secs(30), || {
        !files_in(&dir.join("compacted")).is_empty() && sealed_segments(dir) == 0
    });
    assert!(node.cat(sid, None).ends_with(&in_order), "compacted files");
}

/// Several clients post batches while the node is SIGKILLed at random moments (during
/// compaction and cursor saves too: segments seal every 300 ms and are compacted as they
/// seal), ten times over. Every batch answered 200 is then stored exactly once, byte for byte.
#[test]
fn sigkill_at_random_moments_loses_and_duplicates_no_acknowledged_batch() {
    sigkill_cycles("os", 0x51_9c11);
}

/// The same with "fsync" durability (group commit on the request path).
#[test]
fn sigkill_cycles_in_fsync_mode_lose_and_duplicate_nothing() {
    sigkill_cycles("fsync", 0xf5_9c11);
}

fn sigkill_cycles(durability: &str, seed: u64) {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let acked: Arc<Mutex<HashMap<u64, Vec<Vec<u8>>>>> = Arc::default();
    let mut serial = 0u32;
    for cycle in 0..10 {
        let node = Node::builder()
            .dir(dir)
            .small_segments()
            .arg("--segment-max-age")
            .arg("300ms")
            .arg("--durability")
            .arg(durability)
            .start();
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for client in 0..3 {
            let s = node.start_web("web-key");
            let (token, sid) = (Node::token(&s), Node::session_id(&s));
            let mut conn = node.connect();
            let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
            let base = serial + client * 100_000;
            let len = rng.random_range(100..60_000);
            clients.push(std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    // Unique bytes: the serial number, then filler.
                    let mut b = batch(0, u64::from(n), b'x', len);
                    let tag = (base + n).to_le_bytes();
                    let at = b.len() - 4;
                    b[at..].copy_from_slice(&tag);
                    n += 1;
                    if conn
                        .write_all(&batch_request(&token, "player", "", &b))
                        .is_err()
                    {
                        break;
                    }
                    match read_response(&mut conn) {
                        Some(r) if r.status == 200 => {
                            acked.lock().unwrap().entry(sid).or_default().push(b);
                        }
                        _ => break,
                    }
                }
            }));
        }
        serial += 1_000_000;
        std::thread::sleep(Duration::from_millis(rng.random_range(200..1500)));
        node.crash();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        eprintln!("cycle {cycle}: killed");
    }
    // A last start recovers and compacts what the last crash left; then a clean stop.
    let node = Node::builder().dir(dir).start();
    assert!(node.stop().success());

    let stored = replay_ingest::compact::store::read_everything(dir).unwrap();
    let mut found: HashMap<u64, HashMap<Vec<u8>, usize>> = HashMap::new();
    for r in &stored {
        if r.meta.kind == replay_ingest::log::RecordKind::WebBatch {
            *found
                .entry(r.meta.session_id)
                .or_default()
                .entry(r.body.to_vec())
                .or_default() += 1;
        }
    }
    let acked = acked.lock().unwrap();
    let total: usize = acked.values().map(Vec::len).sum();
    assert!(total > 30, "the clients got batches in: {total}");
    for (sid, batches) in acked.iter() {
        for b in batches {
            let times = found.get(sid).and_then(|f| f.get(b)).copied().unwrap_or(0);
            assert_eq!(
                times, 1,
                "session {sid}: an acknowledged batch stored {times} times"
            );
        }
    }
}

//! What a node keeps: across a clean restart, a crash with a torn tail or a damaged record,
//! segment rolls, and a graceful shutdown with a request in flight. The real binary.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use replay_ingest::log::scan_segment;

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

fn post_batches(node: &Node, token: &str, batches: &[Vec<u8>]) {
    let mut conn = node.connect();
    for b in batches {
        conn.write_all(&batch_request(token, "player", "", b))
            .unwrap();
        let r = read_response(&mut conn).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

/// Distinct batches that are easy to tell apart in a file, framed as a tracker frames them
/// (BatchMetadata, then one sized message), so that the compactor keeps them; their
/// firstIndex is their number, so their true order is the order given.
fn numbered_batches(n: usize, len: usize) -> Vec<Vec<u8>> {
    numbered_batches_from(0, n, len)
}

/// The same, numbered from `first`.
fn numbered_batches_from(first: usize, n: usize, len: usize) -> Vec<Vec<u8>> {
    (first..first + n)
        .map(|i| walkable_batch(0, i as u64, &vec![b'a' + i as u8; len]))
        .collect()
}

#[test]
fn restart_keeps_everything() {
    let kept = tempfile::tempdir().unwrap();
    let dir = kept.path().to_path_buf();
    let node = Node::builder().dir(&dir).start();
    let s = node.start_web("web-key");
    let token = Node::token(&s);
    let sid = Node::session_id(&s);
    let batches = numbered_batches(3, 500);
    post_batches(&node, &token, &batches);
    let gz = fixture("pv2-batch4-player.wire-gzip.bin");
    let r = node.post(
        "/v1/web/i",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Encoding", "gzip"),
        ],
        &gz,
    );
    assert_eq!(r.status, 200);
    let before = node.cat(sid, None);

    let status = node.stop();
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    // A clean stop is quiet: every part is stopped in its turn, none reports an error (the
    // segment service used to be still shared with the admin listener and log one).
    let log = std::fs::read_to_string(stderr_path(&dir)).unwrap();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(
        errors.is_empty(),
        "errors logged by a clean stop: {errors:#?}"
    );
    for f in segment_files(&dir) {
        let bytes = std::fs::read(&f).unwrap();
        let scan = scan_segment(&bytes).unwrap();
        assert!(
            scan.header.is_sealed(),
            "{} sealed at shutdown",
            f.display()
        );
        assert!(!scan.torn);
    }

    let node = Node::builder().dir(&dir).start();
    assert_eq!(node.cat(sid, None), before);
    // The old token still works after the restart: the secret is the same. (Numbered after
    // the fixture batch, whose firstIndex is 58.)
    let more = numbered_batches_from(100, 1, 77);
    post_batches(&node, &token, &more);
    let mut expected = before.clone();
    expected.extend_from_slice(&more[0]);
    assert_eq!(node.cat(sid, None), expected);
}

#[test]
fn crash_recovery_truncates_a_torn_tail_and_skips_a_damaged_record() {
    let kept = tempfile::tempdir().unwrap();
    let node = Node::builder().dir(kept.path()).start();
    let s = node.start_web("web-key");
    let token = Node::token(&s);
    let sid = Node::session_id(&s);
    let batches = numbered_batches(5, 300);
    post_batches(&node, &token, &batches);
    node.crash();

    // Find the segment that holds the batches (one connection: one worker).
    let (path, scan) = segment_files(kept.path())
        .into_iter()
        .find_map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            let scan = scan_segment(&bytes).unwrap();
            let hits = scan
                .records
                .iter()
                .filter(|r| {
                    r.meta().is_some_and(|m| {
                        m.session_id == sid && m.kind == replay_ingest::log::RecordKind::WebBatch
                    })
                })
                .count();
            (hits == 5).then_some((p, scan))
        })
        .expect("a segment with the five batches");
    assert!(!scan.header.is_sealed(), "a crash leaves the segment open");
    let batch_records: Vec<_> = scan
        .records
        .iter()
        .filter(|r| {
            r.meta().is_some_and(|m| {
                m.session_id == sid && m.kind == replay_ingest::log::RecordKind::WebBatch
            })
        })
        .copied()
        .collect();
    // Flip a byte inside the body of the second batch.
    let mut bytes = std::fs::read(&path).unwrap();
    let flip = batch_records[1].body_range().start + 100;
    bytes[flip] ^= 0x40;
    // Tear the last batch: the file ends in the middle of its body.
    let last = batch_records[4];
    let cut = last.body_range().start + 50;
    bytes.truncate(cut);
    std::fs::write(&path, &bytes).unwrap();

    // What recovery makes of the file, seen on a copy (the node's compactor may take the
    // original as soon as it is recovered): sealed at its last good record.
    let copy = tempfile::tempdir().unwrap();
    std::fs::create_dir(copy.path().join("segments")).unwrap();
    let copied = copy.path().join("segments").join(path.file_name().unwrap());
    std::fs::copy(&path, &copied).unwrap();
    let recovered = replay_ingest::log::recover(copy.path()).unwrap();
    assert_eq!((recovered.corrupt, recovered.torn_tails), (1, 1));
    let scan = scan_segment(&std::fs::read(&copied).unwrap()).unwrap();
    assert!(scan.header.is_sealed());
    assert!(!scan.torn);
    assert_eq!(scan.end, last.offset);

    let node = Node::builder().dir(kept.path()).start();
    let log = node.stderr();
    let summary = log
        .lines()
        .rev()
        .find(|l| l.contains("recovered"))
        .expect("a recovery summary")
        .to_string();
    assert!(summary.contains("1 corrupt"), "{summary}");
    assert!(summary.contains("1 torn tails"), "{summary}");
    let mut expected = node.cat(sid, None);
    // The SessionStart, then batches 0, 2, 3: the damaged one skipped, the torn one gone.
    let start_len = expected.len() - (batches[0].len() + batches[2].len() + batches[3].len());
    expected.truncate(start_len);
    for i in [0, 2, 3] {
        expected.extend_from_slice(&batches[i]);
    }
    assert_eq!(node.cat(sid, None), expected);
    // New batches still land behind what was recovered.
    let more = numbered_batches_from(5, 1, 10);
    post_batches(&node, &token, &more);
    expected.extend_from_slice(&more[0]);
    assert_eq!(node.cat(sid, None), expected);
}

#[test]
fn segments_roll_by_size_and_by_age() {
    let node = Node::builder()
        .small_segments()
        .arg("--segment-max-age")
        .arg("1s")
        .workers(1)
        .start();
    let s = node.start_web("web-key");
    let token = Node::token(&s);
    let sid = Node::session_id(&s);
    // 12 batches of ~900 KB: at least two rolls by size in a 4 MiB segment.
    let batches = numbered_batches(12, 900_000);
    post_batches(&node, &token, &batches);
    std::thread::sleep(Duration::from_millis(2500));
    // Sealed segments are cut to their used length; the compactor takes them as they seal, so
    // count those it compacted as well as those still waiting.
    let mut sealed = 0;
    for f in segment_files(&node.dir) {
        let Ok(bytes) = std::fs::read(&f) else {
            continue; // compacted and retired meanwhile
        };
        let scan = scan_segment(&bytes).unwrap();
        if scan.header.is_sealed() {
            assert_eq!(bytes.len() as u64, scan.end, "{}", f.display());
            sealed += 1;
        }
    }
    let compacted_dir = node.dir.join("compacted");
    for name in replay_ingest::compact::list_compacted(&compacted_dir).unwrap() {
        let header =
            replay_ingest::compact::read_header(&compacted_dir.join(name.file_name())).unwrap();
        sealed += header.inputs.len();
    }
    assert!(sealed >= 3, "{sealed} sealed");
    let mut expected = Vec::new();
    for b in &batches {
        expected.extend_from_slice(b);
    }
    assert!(node.cat(sid, None).ends_with(&expected));
}

#[test]
fn graceful_shutdown_finishes_a_request_in_flight() {
    let node = Node::start();
    let s = node.start_web("web-key");
    let token = Node::token(&s);
    let sid = Node::session_id(&s);
    let body = numbered_batches(1, 5000).remove(0);
    let raw = batch_request(&token, "player", "", &body);
    let mut conn = node.connect();
    conn.write_all(&raw[..raw.len() - 1000]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    signal(&node.child, libc_sigterm());
    std::thread::sleep(Duration::from_millis(300));
    // New connections are refused once the listeners are closed.
    assert!(
        std::net::TcpStream::connect(node.addr).is_err() || {
            let mut c = node.connect();
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").ok();
            read_response(&mut c).is_none()
        }
    );
    conn.write_all(&raw[raw.len() - 1000..]).unwrap();
    let r = read_response(&mut conn).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    let dir = node.dir.clone();
    let mut node = node;
    let status = wait_timeout(&mut node.child, Duration::from_secs(15)).expect("exits");
    assert!(status.success(), "{status:?}");
    assert!(cat(&dir, sid, None).ends_with(&body));
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut node = Node::builder().arg("--shutdown-timeout").arg("60s").start();
    // A request still arriving keeps a graceful stop waiting.
    let mut conn = node.connect();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    signal(&node.child, libc_sigterm());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        node.child.try_wait().unwrap().is_none(),
        "still finishing in-flight work"
    );
    signal(&node.child, libc_sigterm());
    let status = wait_timeout(&mut node.child, Duration::from_secs(3)).expect("exits at once");
    assert_eq!(status.code(), Some(130));
}

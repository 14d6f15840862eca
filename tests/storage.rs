//! Storage limits through the real binary: the health endpoints; a full disk (a small tmpfs the
//! test mounts) answered with 503 and `Retry-After`, storing nothing partial and resuming by
//! itself; compacted data expiring by age and by the disk budget.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use rand::{Rng, SeedableRng};

fn batch(first_index: u8, body: &[u8]) -> Vec<u8> {
    walkable_batch(0, first_index.into(), body)
}

fn post(node: &Node, token: &str, body: &[u8]) -> Response {
    let mut conn = node.connect();
    conn.write_all(&batch_request(token, "player", "", body))
        .unwrap();
    read_response(&mut conn).unwrap()
}

fn get(node: &Node, path: &str) -> Response {
    node.request(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
}

fn names_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn health_endpoints_answer_with_json_reasons() {
    let node = Node::start();
    for path in ["/health/live", "/ingest/health/live"] {
        let r = get(&node, path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json()["status"], "ok");
        assert_eq!(r.json()["loops"], 3, "two workers and the compactor");
    }
    let r = get(&node, "/health/ready");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "ready");
    assert_eq!(v["reasons"], serde_json::json!([]));
    assert_eq!(v["consumers"][0]["name"], "compactor");
    assert!(v["storage"]["budget_bytes"].as_u64().unwrap() > 0);
    // `GET /` stays as it was: 200, empty.
    let r = get(&node, "/");
    assert_eq!((r.status, r.body.len()), (200, 0));
}

/// A tmpfs mounted on a temporary directory for the test's life, unmounted at the end (also
/// when the test fails).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        assert!(
            running_as_root(),
            "this test mounts a small tmpfs to fill it: run the test suite as root (./test.sh does \
             in CI)"
        );
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount(8) from util-linux");
        assert!(status.success(), "mount -t tmpfs failed: {status:?}");
        SmallDisk { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn running_as_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id(1)");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// Fills the file system of `dir` with one file until it is full; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0x5au8; 64 << 10];
    loop {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    // Byte by byte into the last page, so that not even a small file fits.
    while f.write_all(&[0x5a; 512]).is_ok() {}
    while f.write_all(&[0x5a]).is_ok() {}
    let _ = f.flush();
    path
}

/// A full disk: batches get 503 with `Retry-After` and a JSON error, and nothing of them is
/// stored; routes that need no storage keep answering; readiness says why; once space returns,
/// the node takes batches again by itself, and every batch answered 200 is stored exactly once.
#[test]
fn a_full_disk_is_answered_503_with_retry_after_and_the_node_resumes() {
    let disk = SmallDisk::mount("48m");
    let data = disk.path().join("data");
    let node = Node::builder()
        .dir(&data)
        .small_segments()
        .arg("--segment-max-age")
        .arg("1s")
        .workers(1)
        .start();
    let s = node.start_web("web-key");
    let (token, sid) = (Node::token(&s), Node::session_id(&s));
    let filler = fill(&disk.path());

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut acked: Vec<Vec<u8>> = Vec::new();
    let mut refused = None;
    for i in 0..40u8 {
        // Random bytes: they do not compress, so compacted files need room too.
        let body: Vec<u8> = (0..700_000).map(|_| rng.random()).collect();
        let b = batch(i, &body);
        let r = post(&node, &token, &b);
        match r.status {
            200 => acked.push(b),
            503 => {
                assert_eq!(r.header("retry-after"), Some("1"), "{:?}", r.headers);
                assert_eq!(r.json()["error"], "storage full");
                refused = Some(b);
                break;
            }
            other => panic!("batch {i}: {other} {}", r.text()),
        }
    }
    let refused = refused.expect("the disk fills up");
    // Every request is refused while the disk is full: the log says so once per interval with
    // a count, not once per request.
    let mut refusals = 1;
    for _ in 0..50 {
        if post(&node, &token, &refused).status == 503 {
            refusals += 1;
        }
    }
    assert!(refusals > 40, "{refusals} refused");
    let lines = node
        .stderr()
        .lines()
        .filter(|l| l.contains("cannot store a record"))
        .count();
    assert!(
        (1..=3).contains(&lines),
        "{lines} log lines for {refusals} refusals:\n{}",
        node.stderr()
    );
    // What needs no storage still works.
    assert_eq!(get(&node, "/").status, 200);
    let tags = node.request(
        format!("GET /v1/web/tags HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(tags.status, 200, "{}", tags.text());
    wait_for("readiness to fail", Duration::from_secs(10), || {
        get(&node, "/health/ready").status == 503
    });
    let ready = get(&node, "/health/ready").json();
    assert!(!ready["reasons"].as_array().unwrap().is_empty(), "{ready}");

    // Space returns: the node takes batches again without a restart.
    std::fs::remove_file(&filler).unwrap();
    let again = batch(100, b"after the disk had room again");
    wait_for("a batch accepted again", Duration::from_secs(30), || {
        post(&node, &token, &again).status == 200
    });
    acked.push(again);
    wait_for("readiness back", Duration::from_secs(10), || {
        get(&node, "/health/ready").status == 200
    });
    assert!(node.stop().success());

    let stored = replay_ingest::compact::store::read_everything(&data).unwrap();
    let batches: Vec<&[u8]> = stored
        .iter()
        .filter(|r| {
            r.meta.session_id == sid && r.meta.kind == replay_ingest::log::RecordKind::WebBatch
        })
        .map(|r| &r.body[..])
        .collect();
    for (i, b) in acked[..acked.len() - 1].iter().enumerate() {
        let times = batches.iter().filter(|s| **s == &b[..]).count();
        assert_eq!(
            times,
            1,
            "acknowledged batch {i} of {} stored {times} times; node log:\n{}",
            acked.len(),
            std::fs::read_to_string(stderr_path(&data)).unwrap_or_default()
        );
    }
    let last = acked.last().unwrap();
    assert!(!batches.is_empty() && batches.iter().any(|s| *s == &last[..]));
    assert!(
        !batches.iter().any(|s| *s == &refused[..]),
        "the refused batch is not stored"
    );
}

/// Compacted data goes after `--retention` once the segments it came from are retired.
#[test]
fn compacted_data_expires_after_the_retention_period() {
    let node = Node::builder()
        .arg("--segment-max-age")
        .arg("300ms")
        .arg("--retention")
        .arg("2s")
        .start();
    let s = node.start_web("web-key");
    let token = Node::token(&s);
    assert_eq!(post(&node, &token, &batch(0, b"short-lived")).status, 200);
    let compacted = node.dir.join("compacted");
    wait_for("a compacted file", Duration::from_secs(20), || {
        !names_in(&compacted).is_empty()
    });
    wait_for("its expiry", Duration::from_secs(30), || {
        names_in(&compacted).is_empty()
    });
    assert!(node.stderr().contains("expired (older than 2s)"));
}

/// Over the disk budget the oldest compacted files go first, before their retention period,
/// each logged; the newest data stays readable.
#[test]
fn the_disk_budget_deletes_the_oldest_compacted_data_first() {
    let node = Node::builder()
        .small_segments()
        .arg("--segment-max-age")
        .arg("500ms")
        .arg("--disk-budget")
        .arg("40MiB")
        .workers(1)
        .start();
    let s = node.start_web("web-key");
    let (token, sid) = (Node::token(&s), Node::session_id(&s));
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut sent = Vec::new();
    // 40 MB of incompressible batches: more than the budget once compacted.
    for i in 0..60u8 {
        let body: Vec<u8> = (0..700_000).map(|_| rng.random()).collect();
        let b = batch(i, &body);
        let r = post(&node, &token, &b);
        assert_eq!(r.status, 200, "batch {i}: {}\n{}", r.text(), node.stderr());
        sent.push(b);
        if i % 8 == 7 {
            // Let the compactor catch up: the budget is tight, and a compactor left behind
            // (a busy machine) would have unconsumed segments forced out, which is not what
            // this test is about.
            wait_for("the compactor to catch up", Duration::from_secs(30), || {
                let ready = get(&node, "/health/ready").json();
                ready["consumers"][0]["lag_segments"] == 0
            });
        }
    }
    wait_for("budget deletions", Duration::from_secs(30), || {
        node.stderr()
            .contains("deleted before its retention period ended")
    });
    let out = node.cat(sid, None);
    assert!(
        out.ends_with(sent.last().unwrap()),
        "the newest batch is kept"
    );
    assert!(
        !out.windows(64).any(|w| w == &sent[0][100..164]),
        "the oldest batch went"
    );
    let r = get(&node, "/health/ready");
    assert_eq!(r.status, 200, "{}", r.text());
}

//! End-to-end tests of the log: a real service and writers on a temporary directory, read back
//! through `read_records`, damaged on disk, recovered.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use super::format::{SegmentHeader, SegmentName, SEGMENTS_DIR};
use super::*;

const SEG: u64 = 64 << 10;

fn config(dir: &Path) -> LogConfig {
    LogConfig {
        dir: dir.to_path_buf(),
        segment_size: SEG,
        segment_max_age: Duration::from_secs(10),
        prefault_window: 16 << 10,
        disk_budget: None,
        durability: Durability::Os,
        flush_interval: LogConfig::DEFAULT_FLUSH_INTERVAL,
    }
}

fn meta(session_id: u64, arrival_unix_ns: u64, kind: RecordKind) -> RecordMeta {
    RecordMeta {
        session_id,
        arrival_unix_ns,
        kind,
    }
}

/// (meta, name, body) of each valid record, in read order.
fn contents(dir: &Path) -> Vec<(RecordMeta, Vec<u8>, Vec<u8>)> {
    read_records(dir)
        .unwrap()
        .into_iter()
        .map(|r| (r.meta, r.name, r.body.to_vec()))
        .collect()
}

fn segment_files(dir: &Path) -> Vec<(SegmentName, PathBuf)> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join(SEGMENTS_DIR))
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let name = SegmentName::parse(e.file_name().to_str()?)?;
            Some((name, e.path()))
        })
        .collect();
    files.sort();
    files
}

fn other_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join(SEGMENTS_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| SegmentName::parse(n).is_none())
        .collect();
    names.sort();
    names
}

fn header_of(path: &Path) -> SegmentHeader {
    SegmentHeader::decode(&std::fs::read(path).unwrap()).unwrap()
}

/// Every segment file is sealed, exactly as long as its sealed length.
fn assert_all_sealed(dir: &Path) {
    for (_, path) in segment_files(dir) {
        let h = header_of(&path);
        assert!(h.is_sealed(), "{} not sealed", path.display());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), h.sealed_len);
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn body(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random()).collect()
}

/// A worker's segments are sealed in order: while something still maps its first rolled segment
/// (here the test, as the background flusher or a pre-fault would), the segments it rolls after
/// that stay unsealed too, so that retention and the consumers never meet a later segment of a
/// worker before an earlier one.
#[test]
fn a_segment_waiting_to_be_sealed_holds_back_the_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let service = SegmentService::start(config(dir.path()), 1).unwrap();
    let mut w = service.writer(0).unwrap();
    w.append(meta(1, 1, RecordKind::WebBatch), b"", &[b"first"])
        .unwrap();
    let held = service.shared.workers[0].active.lock().clone().unwrap();
    let filler = body(2, 20_000);
    for i in 0..8u64 {
        w.append(meta(10 + i, 10 + i, RecordKind::WebBatch), b"", &[&filler])
            .unwrap();
    }
    let rolled = segment_files(dir.path());
    assert!(rolled.len() >= 3, "two rolls at least: {rolled:?}");
    // Several retry rounds of the service go by: nothing of this worker is sealed meanwhile.
    std::thread::sleep(Duration::from_millis(300));
    for (name, path) in &rolled {
        assert!(!header_of(path).is_sealed(), "{name:?} sealed out of order");
    }
    drop(held);
    let last = rolled.len() - 1;
    wait_until("the rolled segments sealed", || {
        rolled[..last]
            .iter()
            .all(|(_, path)| header_of(path).is_sealed())
    });
    w.close().unwrap();
    service.shutdown();
    assert_all_sealed(dir.path());
}

#[test]
fn three_ways_in_round_trip_including_reservations_across_a_roll() {
    let dir = tempfile::tempdir().unwrap();
    let service = SegmentService::start(config(dir.path()), 1).unwrap();
    let mut w = service.writer(0).unwrap();
    let mut want = Vec::new();

    let start = body(1, 300);
    w.append(
        meta(1, 1, RecordKind::SessionStart),
        b"",
        &[&start[..100], &start[100..]],
    )
    .unwrap();
    want.push((meta(1, 1, RecordKind::SessionStart), vec![], start));

    let inflated = body(2, 5000);
    w.append_with(meta(2, 2, RecordKind::WebBatch), b"", 20_000, |out| {
        out[..inflated.len()].copy_from_slice(&inflated);
        Ok::<_, ()>(inflated.len())
    })
    .unwrap()
    .unwrap();
    want.push((meta(2, 2, RecordKind::WebBatch), vec![], inflated));

    // Two reservations outstanding while appends fill the segment past a roll.
    let (a_body, b_body) = (body(3, 7000), body(4, 3001));
    let mut a = w
        .reserve(meta(3, 3, RecordKind::MobileBatch), b"", a_body.len())
        .unwrap();
    let mut b = w
        .reserve(meta(4, 4, RecordKind::Image), b"shot.png", b_body.len())
        .unwrap();
    a.unfilled()[..1000].copy_from_slice(&a_body[..1000]);
    a.advance(1000);
    let filler = body(5, 20_000);
    for i in 0..4u64 {
        w.append(meta(10 + i, 10 + i, RecordKind::WebBatch), b"", &[&filler])
            .unwrap();
        want.push((
            meta(10 + i, 10 + i, RecordKind::WebBatch),
            vec![],
            filler.clone(),
        ));
    }
    assert!(
        segment_files(dir.path()).len() >= 2,
        "the appends rolled the segment"
    );
    for chunk in a_body[1000..].chunks(999) {
        a.unfilled()[..chunk.len()].copy_from_slice(chunk);
        a.advance(chunk.len());
    }
    b.unfilled().copy_from_slice(&b_body);
    b.advance(b_body.len());
    assert!(a.is_complete() && b.is_complete());
    assert_eq!((a.len(), a.filled()), (7000, 7000));
    // Until their reservations commit, the rolled segment stays open.
    let first = segment_files(dir.path())[0].1.clone();
    assert!(!header_of(&first).is_sealed());
    b.commit();
    a.commit();
    want.push((meta(3, 3, RecordKind::MobileBatch), vec![], a_body));
    want.push((meta(4, 4, RecordKind::Image), b"shot.png".to_vec(), b_body));
    wait_until("the rolled segment to be sealed", || {
        header_of(&first).is_sealed()
    });

    w.close().unwrap();
    service.shutdown();
    want.sort_by_key(|(m, _, _)| m.arrival_unix_ns);
    assert_eq!(contents(dir.path()), want);
    assert_all_sealed(dir.path());
    assert_eq!(
        other_files(dir.path()),
        [".lock", "spare"],
        "no .prep- leftovers after shutdown"
    );
    // The segment prepared for a next roll that never came is kept for reuse.
    let spares: Vec<_> = std::fs::read_dir(dir.path().join(SEGMENTS_DIR).join("spare"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        spares.len() == 1 && spares[0].starts_with("prep-w000-"),
        "{spares:?}"
    );
}

#[test]
fn failed_fill_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let service = SegmentService::start(config(dir.path()), 1).unwrap();
    let mut w = service.writer(0).unwrap();
    w.append(meta(1, 1, RecordKind::WebBatch), b"", &[b"before"])
        .unwrap();
    let failed = w.append_with(meta(2, 2, RecordKind::WebBatch), b"", 30_000, |out| {
        // A forged committed record inside the scribble must never surface.
        out.fill(0x31);
        Err("bad gzip")
    });
    assert_eq!(failed.unwrap(), Err("bad gzip"));
    // Everything past the cursor reads as zero again, live.
    let (_, path) = segment_files(dir.path()).pop().unwrap();
    let live = std::fs::read(&path).unwrap();
    let scan = scan_segment(&live).unwrap();
    assert_eq!((scan.records.len(), scan.torn), (1, false));
    assert!(live[scan.end as usize..].iter().all(|&b| b == 0));

    w.append(meta(3, 3, RecordKind::WebBatch), b"", &[b"after"])
        .unwrap();
    w.close().unwrap();
    service.shutdown();
    let got = contents(dir.path());
    let bodies: Vec<&[u8]> = got.iter().map(|(_, _, b)| &b[..]).collect();
    assert_eq!(bodies, [&b"before"[..], b"after"]);
}

#[test]
fn dropped_reservation_is_a_hole() {
    let dir = tempfile::tempdir().unwrap();
    let service = SegmentService::start(config(dir.path()), 1).unwrap();
    let mut w = service.writer(0).unwrap();
    let mut gone = w
        .reserve(meta(1, 1, RecordKind::WebBatch), b"", 500)
        .unwrap();
    gone.unfilled()[..200].fill(7);
    gone.advance(200);
    w.append(meta(2, 2, RecordKind::WebBatch), b"", &[b"kept"])
        .unwrap();
    drop(gone);
    let empty = w
        .reserve(meta(3, 3, RecordKind::NotStarted), b"", 0)
        .unwrap();
    assert!(empty.is_complete() && empty.is_empty());
    empty.commit();
    w.close().unwrap();
    service.shutdown();
    let got = contents(dir.path());
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].0.session_id, &got[0].2[..]), (2, &b"kept"[..]));
    assert_eq!((got[1].0.kind, got[1].2.len()), (RecordKind::NotStarted, 0));
    let (_, path) = segment_files(dir.path()).pop().unwrap();
    let scan = scan_segment(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(scan.count(RecordClass::Abandoned), 1);
}

#[test]
fn rolls_by_size_and_by_age_and_seals_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let service = SegmentService::start(config(dir.path()), 2).unwrap();
    let mut w = service.writer(1).unwrap();
    let t0 = Instant::now();
    assert!(
        w.tick(t0) >= t0 + Duration::from_secs(10),
        "an empty segment never ages"
    );
    w.append(meta(1, 1, RecordKind::WebBatch), b"", &[&[1u8; 3000]])
        .unwrap();
    let due = w.tick(Instant::now());
    assert!(due > Instant::now() && due <= Instant::now() + Duration::from_secs(10));
    assert_eq!(segment_files(dir.path()).len(), 1);
    // Age: one tick past the deadline rolls; the 3 KB segment is truncated from 64 KiB.
    w.tick(due + Duration::from_millis(1));
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 2);
    let first = &files[0].1;
    wait_until("the aged segment to be sealed", || {
        header_of(first).is_sealed()
    });
    let h = header_of(first);
    assert_eq!(h.sealed_len, 64 + 40 + 3000);
    assert_eq!(std::fs::metadata(first).unwrap().len(), h.sealed_len);
    assert_eq!((h.worker, h.capacity), (1, SEG));
    // Size: 20 records of 10 KB need four 64 KiB segments.
    for i in 0..20 {
        w.append(meta(2, 2 + i, RecordKind::WebBatch), b"", &[&[2u8; 10_000]])
            .unwrap();
    }
    assert_eq!(segment_files(dir.path()).len(), 2 + 3);
    assert_eq!(
        w.append(
            meta(3, 99, RecordKind::WebBatch),
            b"",
            &[&vec![0u8; SEG as usize - 64 - 39]]
        )
        .unwrap_err()
        .to_string(),
        LogError::TooLarge.to_string()
    );
    let long_name = vec![b'n'; 70_000];
    assert!(matches!(
        w.append(meta(3, 99, RecordKind::Image), &long_name, &[]),
        Err(LogError::NameTooLong)
    ));
    // The largest record that fits a segment is stored.
    let biggest = vec![9u8; SEG as usize - 64 - 40];
    w.append(meta(3, 100, RecordKind::WebBatch), b"", &[&biggest])
        .unwrap();
    w.close().unwrap();
    service.shutdown();
    assert_all_sealed(dir.path());
    let seqs: Vec<u64> = segment_files(dir.path())
        .iter()
        .map(|(n, _)| n.seq)
        .collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(read_records(dir.path()).unwrap().len(), 22);
}

#[test]
fn empty_segments_are_removed_not_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let service = SegmentService::start(config(dir.path()), 1).unwrap();
    let w = service.writer(0).unwrap();
    assert_eq!(segment_files(dir.path()).len(), 1);
    w.close().unwrap();
    service.shutdown();
    assert!(segment_files(dir.path()).is_empty());
}

#[test]
fn writers_are_one_per_worker_and_the_directory_one_per_node() {
    let dir = tempfile::tempdir().unwrap();
    let service = SegmentService::start(config(dir.path()), 2).unwrap();
    assert!(matches!(service.writer(2), Err(LogError::Worker(2))));
    let w = service.writer(0).unwrap();
    assert!(matches!(service.writer(0), Err(LogError::Worker(0))));
    assert!(matches!(recover(dir.path()), Err(LogError::Locked)));
    assert!(matches!(
        SegmentService::start(config(dir.path()), 1),
        Err(LogError::Locked)
    ));
    w.close().unwrap();
    // A closed worker's writer can be taken again.
    let mut again = service.writer(0).unwrap();
    again
        .append(meta(1, 1, RecordKind::WebBatch), b"", &[b"x"])
        .unwrap();
    drop(again);
    service.shutdown();
    assert_eq!(recover(dir.path()).unwrap().segments, 1);
    let mut bad = config(dir.path());
    bad.segment_size = 10_000;
    assert!(matches!(
        SegmentService::start(bad, 1),
        Err(LogError::Config(_))
    ));
}

#[test]
fn a_reader_sees_live_records_while_the_writer_runs() {
    let dir = tempfile::tempdir().unwrap();
    let service = SegmentService::start(config(dir.path()), 1).unwrap();
    let mut w = service.writer(0).unwrap();
    w.append(meta(1, 1, RecordKind::WebBatch), b"", &[b"one"])
        .unwrap();
    let mut pending = w
        .reserve(meta(2, 2, RecordKind::WebBatch), b"", 10)
        .unwrap();
    w.append(meta(3, 3, RecordKind::WebBatch), b"", &[b"three"])
        .unwrap();
    let live: Vec<u64> = contents(dir.path())
        .iter()
        .map(|r| r.0.session_id)
        .collect();
    assert_eq!(live, [1, 3]);
    pending.unfilled().copy_from_slice(b"0123456789");
    pending.advance(10);
    pending.commit();
    let live: Vec<u64> = contents(dir.path())
        .iter()
        .map(|r| r.0.session_id)
        .collect();
    assert_eq!(live, [1, 2, 3]);
    drop(w);
    service.shutdown();
}

/// Writes three records into one unsealed segment and "crashes" (forgets the writer and service
/// without sealing). Returns the segment path and each record's offset.
fn crashed_segment(dir: &Path) -> (PathBuf, Vec<u64>) {
    let service = SegmentService::start(config(dir), 1).unwrap();
    let mut w = service.writer(0).unwrap();
    for i in 1..=3u64 {
        w.append(
            meta(i, i, RecordKind::WebBatch),
            b"",
            &[&vec![i as u8; 1000]],
        )
        .unwrap();
    }
    std::mem::forget(w);
    service.shutdown();
    let (_, path) = segment_files(dir).pop().unwrap();
    let scan = scan_segment(&std::fs::read(&path).unwrap()).unwrap();
    assert!(!scan.header.is_sealed());
    (path, scan.records.iter().map(|r| r.offset).collect())
}

fn sessions(dir: &Path) -> Vec<u64> {
    contents(dir).iter().map(|r| r.0.session_id).collect()
}

/// Damage done to the second argument's record (by index) of a crashed segment.
#[derive(Clone, Copy)]
enum Damage {
    Nothing,
    /// Cut the file this many bytes into the record.
    CutInto(usize, u64),
    /// Flip a bit of the byte this far into the record.
    Flip(usize, u64),
    /// Overwrite the record's state word.
    State(usize, &'static [u8; 4]),
}

impl Damage {
    fn apply(self, path: &Path, offsets: &[u64]) {
        let mut b = std::fs::read(path).unwrap();
        match self {
            Damage::Nothing => {}
            Damage::CutInto(i, n) => b.truncate((offsets[i] + n) as usize),
            Damage::Flip(i, n) => b[(offsets[i] + n) as usize] ^= 0x40,
            Damage::State(i, word) => b[offsets[i] as usize..][..4].copy_from_slice(word),
        }
        std::fs::write(path, b).unwrap();
    }
}

struct DamageCase {
    what: &'static str,
    damage: Damage,
    sessions: &'static [u64],
    corrupt: u64,
    incomplete: u64,
    torn_tails: u32,
    len_after: u64,
}

#[test]
fn recovery_of_damaged_segments() {
    const ALL: u64 = 64 + 3 * 1040;
    let case = |what, damage, sessions, corrupt, incomplete, torn_tails, len_after| DamageCase {
        what,
        damage,
        sessions,
        corrupt,
        incomplete,
        torn_tails,
        len_after,
    };
    let cases = [
        case("none", Damage::Nothing, &[1, 2, 3], 0, 0, 0, ALL),
        case(
            "cut in the last record",
            Damage::CutInto(2, 500),
            &[1, 2],
            0,
            0,
            1,
            64 + 2 * 1040,
        ),
        case(
            "flipped payload byte",
            Damage::Flip(1, 300),
            &[1, 3],
            1,
            0,
            0,
            ALL,
        ),
        case(
            "flipped length byte",
            Damage::Flip(1, 5),
            &[1],
            0,
            0,
            1,
            64 + 1040,
        ),
        case(
            "pending last record",
            Damage::State(2, b"PEND"),
            &[1, 2],
            0,
            1,
            0,
            ALL,
        ),
        case(
            "unknown state word",
            Damage::State(1, b"XXXX"),
            &[1],
            0,
            0,
            1,
            64 + 1040,
        ),
    ];
    for c in cases {
        let what = c.what;
        let dir = tempfile::tempdir().unwrap();
        let (path, offsets) = crashed_segment(dir.path());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SEG, "{what}");
        c.damage.apply(&path, &offsets);
        let damaged_len = std::fs::metadata(&path).unwrap().len();
        let records = c.sessions.len() as u64;
        let expected = RecoverySummary {
            segments: 1,
            unsealed: 1,
            records,
            bytes: records * 1000,
            corrupt: c.corrupt,
            incomplete: c.incomplete,
            torn_tails: c.torn_tails,
            truncated_bytes: damaged_len - c.len_after,
            quarantined: 0,
        };
        assert_eq!(recover(dir.path()).unwrap(), expected, "{what}");
        assert_eq!(sessions(dir.path()), c.sessions, "{what}");
        assert_eq!(header_of(&path).sealed_len, c.len_after, "{what}");
        assert_all_sealed(dir.path());
        // Recovering again finds only sealed segments and changes nothing.
        let again = recover(dir.path()).unwrap();
        assert_eq!(
            (again.segments, again.unsealed, again.truncated_bytes),
            (1, 0, 0),
            "{what}"
        );
        assert_eq!(sessions(dir.path()), c.sessions, "{what}");
    }
}

#[test]
fn recovery_sets_aside_garbage_removes_empty_and_finishes_seals() {
    let dir = tempfile::tempdir().unwrap();
    let (crashed, _) = crashed_segment(dir.path());
    let segs = dir.path().join(SEGMENTS_DIR);
    std::fs::write(segs.join("w000-0000000000000007.seg"), body(9, 5000)).unwrap();
    std::fs::write(segs.join("w001-0000000000000000.seg"), b"").unwrap();
    std::fs::write(segs.join(".prep-w000-0000000000000003"), vec![0u8; 4096]).unwrap();
    std::fs::write(segs.join("notes.txt"), b"left alone").unwrap();
    let s = recover(dir.path()).unwrap();
    assert_eq!(
        (s.segments, s.unsealed, s.quarantined, s.records),
        (3, 1, 1, 3)
    );
    assert_eq!(
        other_files(dir.path()),
        [
            ".lock",
            "notes.txt",
            "spare",
            "w000-0000000000000007.seg.bad"
        ]
    );
    // A seal interrupted before its truncation is finished.
    let sealed_len = header_of(&crashed).sealed_len;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&crashed)
        .unwrap();
    f.set_len(sealed_len + 4096).unwrap();
    let s = recover(dir.path()).unwrap();
    assert_eq!((s.segments, s.unsealed, s.truncated_bytes), (1, 0, 4096));
    assert_eq!(sessions(dir.path()), [1, 2, 3]);
    // A restart continues worker 0's sequence after the set-aside seq 7.
    let service = SegmentService::start(config(dir.path()), 1).unwrap();
    let mut w = service.writer(0).unwrap();
    w.append(meta(9, 9, RecordKind::WebBatch), b"", &[b"new"])
        .unwrap();
    w.close().unwrap();
    service.shutdown();
    let seqs: Vec<(u16, u64)> = segment_files(dir.path())
        .iter()
        .map(|(n, _)| (n.worker, n.seq))
        .collect();
    assert_eq!(seqs, [(0, 0), (0, 8)]);
}

#[test]
fn restart_recovers_and_continues_the_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _) = crashed_segment(dir.path());
    let service = SegmentService::start(config(dir.path()), 1).unwrap();
    assert_eq!(service.recovery().records, 3);
    let mut w = service.writer(0).unwrap();
    w.append(meta(4, 4, RecordKind::WebBatch), b"", &[b"after restart"])
        .unwrap();
    w.close().unwrap();
    service.shutdown();
    let seqs: Vec<u64> = segment_files(dir.path())
        .iter()
        .map(|(n, _)| n.seq)
        .collect();
    assert_eq!(seqs, [0, 1]);
    assert_eq!(sessions(dir.path()), [1, 2, 3, 4]);
    assert_all_sealed(dir.path());
}

/// Random operations against a writer and a plain model of what must be readable.
#[test]
fn model_random_operations() {
    for seed in [1u64, 2, 3] {
        run_model(seed, 400);
    }
}

struct Open {
    reservation: Reservation,
    want: (RecordMeta, Vec<u8>, Vec<u8>),
}

fn run_model(seed: u64, steps: usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.prefault_window = rng.random_range(0..3) * 8192;
    let service = SegmentService::start(cfg, 1).unwrap();
    let mut w = service.writer(0).unwrap();
    let mut model: Vec<(RecordMeta, Vec<u8>, Vec<u8>)> = Vec::new();
    let mut open: Vec<Open> = Vec::new();
    let mut arrival = 0u64;
    let mut clock = Instant::now();
    let kinds = RecordKind::ALL;

    for step in 0..steps {
        arrival += 1;
        let m = meta(
            rng.random(),
            arrival,
            kinds[rng.random_range(0..kinds.len())],
        );
        let name = if m.kind == RecordKind::Image {
            format!("img-{step}.png").into_bytes()
        } else {
            Vec::new()
        };
        let len = match rng.random_range(0..10) {
            0 => 0,
            1 => rng.random_range(20_000..40_000),
            _ => rng.random_range(1..3000),
        };
        let data = body(rng.random(), len);
        match rng.random_range(0..100) {
            0..30 => {
                let cut = rng.random_range(0..=len);
                w.append(m, &name, &[&data[..cut], &data[cut..]]).unwrap();
                model.push((m, name, data));
            }
            30..40 => {
                let max = len + rng.random_range(0..5000);
                let fails = rng.random_bool(0.3);
                let r = w
                    .append_with(m, &name, max, |out| {
                        out[..len].copy_from_slice(&data);
                        if fails {
                            out[len..].fill(0xAB);
                            Err(())
                        } else {
                            Ok(len)
                        }
                    })
                    .unwrap();
                assert_eq!(r.is_err(), fails);
                if !fails {
                    model.push((m, name, data));
                }
            }
            40..55 if open.len() < 6 => {
                let reservation = w.reserve(m, &name, len).unwrap();
                open.push(Open {
                    reservation,
                    want: (m, name, data),
                });
            }
            55..85 if !open.is_empty() => {
                let i = rng.random_range(0..open.len());
                let o = &mut open[i];
                let from = o.reservation.filled();
                let n = rng.random_range(0..=o.reservation.len() - from).min(4000);
                o.reservation.unfilled()[..n].copy_from_slice(&o.want.2[from..from + n]);
                o.reservation.advance(n);
                if o.reservation.is_complete() {
                    let o = open.swap_remove(i);
                    o.reservation.commit();
                    model.push(o.want);
                }
            }
            85..90 if !open.is_empty() => {
                let i = rng.random_range(0..open.len());
                drop(open.swap_remove(i));
            }
            90..95 => {
                clock += Duration::from_secs(rng.random_range(0..12));
                w.tick(clock);
            }
            95..97 => w.roll().unwrap(),
            97..100 => {
                // A concurrent reader sees exactly what was committed so far.
                model.sort_by_key(|r| r.0.arrival_unix_ns);
                assert_eq!(contents(dir.path()), model, "seed {seed} step {step}");
            }
            _ => {}
        }
    }
    for o in open.drain(..) {
        if rng.random_bool(0.5) {
            drop(o);
        } else {
            let Open {
                mut reservation,
                want,
            } = o;
            let from = reservation.filled();
            reservation.unfilled().copy_from_slice(&want.2[from..]);
            reservation.advance(want.2.len() - from);
            reservation.commit();
            model.push(want);
        }
    }
    w.close().unwrap();
    service.shutdown();
    model.sort_by_key(|r| r.0.arrival_unix_ns);
    assert_eq!(contents(dir.path()), model, "seed {seed}");
    assert_all_sealed(dir.path());
    let s = recover(dir.path()).unwrap();
    assert_eq!(
        (s.unsealed, s.corrupt, s.torn_tails, s.quarantined),
        (0, 0, 0, 0)
    );
}

#[test]
fn record_kinds() {
    for k in RecordKind::ALL {
        assert_eq!(RecordKind::from_u8(k as u8), Some(k));
    }
    assert_eq!(RecordKind::from_u8(0), None);
    assert_eq!(RecordKind::from_u8(10), None);
    let topics = [
        (RecordKind::WebBatch, Some(Topic::Raw), "web-batch"),
        (RecordKind::SessionStart, Some(Topic::Raw), "session-start"),
        (
            RecordKind::WebAssetsBatch,
            Some(Topic::RawAssets),
            "web-assets-batch",
        ),
        (RecordKind::MobileBatch, Some(Topic::RawIos), "mobile-batch"),
        (
            RecordKind::MobileSessionStart,
            Some(Topic::RawIos),
            "mobile-session-start",
        ),
        (RecordKind::Image, None, "image"),
        (RecordKind::NotStarted, None, "not-started"),
        (RecordKind::ImageUpload, None, "image-upload"),
        (RecordKind::SessionRow, None, "session-row"),
    ];
    for (k, topic, name) in topics {
        assert_eq!((k.topic(), k.as_str()), (topic, name));
    }
}

#[test]
fn rolls_take_prepared_segments_and_stall_only_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let service = SegmentService::start(config(dir.path()), 1).unwrap();
    let mut w = service.writer(0).unwrap();
    for i in 0..3 {
        w.append(meta(i, i, RecordKind::WebBatch), b"", &[b"x"])
            .unwrap();
        wait_until("the next segment to be prepared", || {
            service.shared.workers[0].prepared.len() == 1
        });
        w.roll().unwrap();
    }
    assert_eq!(w.stalls(), 0);
    // With the service gone the writer keeps working, creating its own files.
    service.shutdown();
    w.roll().unwrap();
    w.append(meta(9, 9, RecordKind::WebBatch), b"", &[b"late"])
        .unwrap();
    assert_eq!(w.stalls(), 1);
    drop(w);
    // Its last two segments could not be sealed; the next start-up recovers the one with a
    // record and removes the empty one.
    let s = recover(dir.path()).unwrap();
    assert_eq!((s.unsealed, s.records), (2, 1));
    assert_eq!(sessions(dir.path()), [0, 1, 2, 9]);
    let seqs: Vec<u64> = segment_files(dir.path())
        .iter()
        .map(|(n, _)| n.seq)
        .collect();
    assert_eq!(seqs, [0, 1, 2, 4]);
}

/// A first life for the reuse tests: `n` records of 6,000 bytes (sessions 1000 on) in sealed
/// segments of one worker.
fn write_first_life(dir: &Path, n: u64) {
    let service = SegmentService::start(config(dir), 1).unwrap();
    let mut w = service.writer(0).unwrap();
    for i in 0..n {
        let m = meta(1000 + i, i, RecordKind::WebBatch);
        w.append(m, b"", &[&body(i, 6000)]).unwrap();
    }
    w.close().unwrap();
    service.shutdown();
}

/// Retired segments moved into `spare/` are reused as new segments: their stale records never
/// come back, not through a reader, not after a crash, and the spare pool stays bounded.
#[test]
fn spare_files_are_reused_and_their_stale_records_never_return() {
    let dir = tempfile::tempdir().unwrap();
    let spare_dir = dir.path().join(SEGMENTS_DIR).join("spare");
    // A first life: full segments of records with sessions 1000.., then retired.
    write_first_life(dir.path(), 40);
    let retired = segment_files(dir.path());
    assert!(retired.len() >= 3, "{retired:?}");
    for (name, path) in &retired {
        std::fs::rename(path, spare_dir.join(name.file_name())).unwrap();
    }
    // An oversized foreign file of junk is reused too (cut to the segment size).
    std::fs::write(spare_dir.join("junk"), vec![0xab; 3 * SEG as usize]).unwrap();
    let spares_before = std::fs::read_dir(&spare_dir).unwrap().count();

    // A second life, smaller records at other offsets, a reservation among them.
    let service = SegmentService::start(config(dir.path()), 1).unwrap();
    let mut w = service.writer(0).unwrap();
    let mut want = Vec::new();
    for i in 0..30u64 {
        let m = meta(i, 100 + i, RecordKind::WebBatch);
        let b = body(500 + i, 3000 + 97 * i as usize);
        if i % 7 == 3 {
            let mut r = w.reserve(m, b"", b.len()).unwrap();
            r.unfilled().copy_from_slice(&b);
            r.advance(b.len());
            r.commit();
        } else {
            w.append(m, b"", &[&b]).unwrap();
        }
        want.push((m, vec![], b));
    }
    // Three segments in use so far (two rolls) and a fourth prepared, each from the pool while
    // it lasts (the directory has room: the pool keeps up to its larger size).
    assert_eq!(segment_files(dir.path()).len(), 3);
    let shared = std::sync::Arc::clone(&service.shared);
    let (reused, created) = (&shared.reused, &shared.created);
    let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    wait_until("four segments prepared", || {
        load(reused) + load(created) == 4
    });
    let pool = spares_before.min(4) as u64;
    assert_eq!(
        (load(reused), load(created)),
        (pool, 4 - pool),
        "{} stall(s)",
        w.stalls()
    );
    // Crash in the middle of a reused segment: nothing sealed it. (Which spare it is depends on
    // file times; the next test pins the end mark down with a single one.)
    std::mem::forget(w);
    service.shutdown();

    let summary = recover(dir.path()).unwrap();
    // The crashed segment ends cleanly at its end mark, stale bytes after it.
    assert_eq!(
        (summary.unsealed, summary.corrupt, summary.torn_tails),
        (1, 0, 0),
        "{summary:?}"
    );
    assert_eq!(contents(dir.path()), want);
    assert_all_sealed(dir.path());
}

/// Over the disk budget, with a consumer that never moves: the oldest sealed segments are
/// forced out (counted) and the newest records kept; with nothing left to retire, records are
/// refused (nothing written) until space returns, and then taken again.
#[test]
fn the_disk_budget_forces_out_unconsumed_segments_and_refuses_records_when_nothing_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.disk_budget = Some(BudgetSetting::Bytes(12 * SEG));
    let service = SegmentService::start(cfg, 1).unwrap();
    let _stalled = service.consumers().register("stalled").unwrap();
    service.consumers().registration_complete();
    let budget = std::sync::Arc::clone(service.consumers().budget());
    let mut w = service.writer(0).unwrap();

    // Something else fills the directory: nothing of ours to retire, so records are refused.
    let filler = dir.path().join(SEGMENTS_DIR).join("filler");
    std::fs::write(&filler, vec![1u8; 14 * SEG as usize]).unwrap();
    wait_until("the budget full", || budget.is_full());
    let refused = w.append(meta(1, 1, RecordKind::WebBatch), b"", &[b"no room"]);
    assert!(matches!(refused, Err(LogError::Full)), "{refused:?}");
    std::fs::remove_file(&filler).unwrap();
    wait_until("room again", || !budget.is_full());

    let mut want = Vec::new();
    for i in 0..200u64 {
        let m = meta(i, i, RecordKind::WebBatch);
        let b = body(i, 6000);
        w.append(m, b"", &[&b]).unwrap();
        want.push((m, vec![], b));
        // Room is made before a file is created, not at the next check: never over.
        let segments = dir.path().join(SEGMENTS_DIR);
        let used = budget::dir_bytes(&segments).unwrap()
            + budget::dir_bytes(&segments.join("spare")).unwrap();
        assert!(used <= budget.limit(), "record {i}: {used} bytes on disk");
        if i % 20 == 0 {
            // Give the budget checks (four a second) a chance to run while we write.
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    wait_until("back under the budget", || budget.used() <= budget.limit());
    let forced = service.segment_counts().forced_out;
    assert!(forced >= 5, "forced out {forced}");
    let (noted, bytes, last) = consumer::forced_out(dir.path()).unwrap();
    assert!(
        noted >= 5 && bytes > 0 && last.is_some(),
        "for ls: {noted} {bytes}"
    );
    assert!(!contents(dir.path()).is_empty());
    let got = contents(dir.path());
    assert_eq!(
        got[..],
        want[want.len() - got.len()..],
        "the newest records are kept"
    );
    w.close().unwrap();
    service.shutdown();
}

/// A spare that is still open elsewhere (a copy in progress, a shipper reading it) is not
/// taken: writing segments into it would mix the two. Once closed, it is.
#[test]
fn spares_open_elsewhere_are_left_alone() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let service = SegmentService::start(config(dir.path()), 1).unwrap();
    let shared = std::sync::Arc::clone(&service.shared);
    wait_until("the first segment prepared", || {
        shared.created.load(Relaxed) == 1
    });
    let spare = dir.path().join(SEGMENTS_DIR).join("spare").join("copying");
    let held = std::fs::File::create(&spare).unwrap();
    let busy = shared.prepare(0, false).unwrap();
    assert_eq!(
        (shared.reused.load(Relaxed), shared.created.load(Relaxed)),
        (0, 2)
    );
    assert!(spare.exists(), "left in spare/");
    drop(held);
    let reused = shared.prepare(0, false).unwrap();
    assert_eq!(shared.reused.load(Relaxed), 1);
    assert!(!spare.exists());
    for p in [busy, reused] {
        std::fs::remove_file(&p.prep_path).unwrap();
    }
    service.shutdown();
}

/// The end mark, deterministically: a node crashes while writing into a reused file whose
/// earlier records lie right behind its own; recovery finds a clean end and only the new records.
#[test]
fn a_crash_inside_a_reused_file_ends_cleanly_at_the_end_mark() {
    let dir = tempfile::tempdir().unwrap();
    let spare_dir = dir.path().join(SEGMENTS_DIR).join("spare");
    write_first_life(dir.path(), 8);
    // Exactly one spare: the segment just written (the unused prepared file is dropped).
    for e in std::fs::read_dir(&spare_dir).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let (name, path) = segment_files(dir.path()).remove(0);
    std::fs::rename(&path, spare_dir.join(name.file_name())).unwrap();

    let service = SegmentService::start(config(dir.path()), 1).unwrap();
    let mut w = service.writer(0).unwrap();
    let mut want = Vec::new();
    for i in 0..3u64 {
        // 1000-byte bodies end inside the first old record's body.
        let (m, b) = (meta(i, 100 + i, RecordKind::WebBatch), body(50 + i, 1000));
        w.append(m, b"", &[&b]).unwrap();
        want.push((m, vec![], b));
    }
    assert_eq!(
        service
            .shared
            .reused
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    std::mem::forget(w);
    service.shutdown();
    let summary = recover(dir.path()).unwrap();
    assert_eq!(
        (
            summary.unsealed,
            summary.records,
            summary.corrupt,
            summary.torn_tails
        ),
        (1, 3, 0, 0),
        "{summary:?}"
    );
    assert_eq!(contents(dir.path()), want);
}

type Contents = Vec<(RecordMeta, Vec<u8>, Vec<u8>)>;

/// Reads from `consumer` until it has `n` records (or 10 s pass), then once more briefly, so
/// that records beyond the `n` expected show up too.
fn drain(consumer: &mut Consumer, n: usize) -> (Contents, Cursor) {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < n && Instant::now() < deadline {
        consumer
            .read(&mut out, 16, 1 << 20, Duration::from_millis(100))
            .unwrap();
    }
    let cursor = consumer
        .read(&mut out, 1 << 20, 1 << 30, Duration::from_millis(50))
        .unwrap();
    let records = out
        .into_iter()
        .map(|r| (r.meta, r.name, r.body.to_vec()))
        .collect();
    (records, cursor)
}

/// A consumer reads the open segments as they are written and the sealed ones, merged in
/// arrival order across workers; after a restart it resumes from its saved cursor.
#[test]
fn a_consumer_reads_live_records_in_order_and_resumes_from_its_saved_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let service = SegmentService::start(config(dir.path()), 2).unwrap();
    let mut consumer = service.consumers().register("test").unwrap();
    assert!(
        service.consumers().register("test").is_err(),
        "one per name"
    );
    let mut writers = [service.writer(0).unwrap(), service.writer(1).unwrap()];
    let mut want = Vec::new();
    for i in 0..60u64 {
        let m = meta(i, 1000 + i, RecordKind::WebBatch);
        let b = body(i, 3000);
        writers[(i % 3 % 2) as usize].append(m, b"", &[&b]).unwrap();
        want.push((m, vec![], b));
        if i == 30 {
            writers[0].roll().unwrap();
        }
    }
    let (got, cursor) = drain(&mut consumer, want.len());
    assert_eq!(got, want, "live and sealed, in arrival order");
    consumer.commit(&cursor);
    consumer.save().unwrap();

    // Read but not committed: these come again after the restart. Arrival times from the
    // clock now, as the routes stamp them: the reader has seen both streams empty since, and
    // a record that arrived before that look would have been in it.
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    for i in 60..70u64 {
        let m = meta(i, now_ns + i, RecordKind::WebAssetsBatch);
        let b = body(i, 100);
        writers[(i % 2) as usize].append(m, b"", &[&b]).unwrap();
        want.push((m, vec![], b));
    }
    let (again, _) = drain(&mut consumer, 10);
    assert_eq!(again, want[60..]);
    for w in writers {
        w.close().unwrap();
    }
    drop(consumer);
    service.shutdown();

    let service = SegmentService::start(config(dir.path()), 2).unwrap();
    let mut consumer = service.consumers().register("test").unwrap();
    let (resumed, _) = drain(&mut consumer, 10);
    assert_eq!(resumed, want[60..], "resumes at the saved cursor");
    service.shutdown();
}

/// A reader waiting for records is woken by the writer's end of turn, not by polling.
#[test]
fn a_waiting_consumer_wakes_when_a_record_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let service = SegmentService::start(config(dir.path()), 1).unwrap();
    let mut consumer = service.consumers().register("waiter").unwrap();
    let mut w = service.writer(0).unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let started = Instant::now();
        consumer
            .read(&mut out, 10, 1 << 20, Duration::from_secs(30))
            .unwrap();
        (out.len(), started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(100));
    w.append(meta(1, 1, RecordKind::WebBatch), b"", &[b"x"])
        .unwrap();
    w.end_turn().unwrap();
    let (n, waited) = reader.join().unwrap();
    assert_eq!(n, 1);
    assert!(waited < Duration::from_secs(30), "woken, not timed out");
    w.close().unwrap();
    service.shutdown();
}

/// A record still being received holds back its own worker's stream (order), never another's.
#[test]
fn a_pending_record_holds_back_only_its_stream() {
    let dir = tempfile::tempdir().unwrap();
    let service = SegmentService::start(config(dir.path()), 2).unwrap();
    let mut consumer = service.consumers().register("c").unwrap();
    let mut w0 = service.writer(0).unwrap();
    let mut w1 = service.writer(1).unwrap();
    let mut pending = w0
        .reserve(meta(1, 1, RecordKind::WebBatch), b"", 4)
        .unwrap();
    w0.append(meta(2, 2, RecordKind::WebBatch), b"", &[b"after"])
        .unwrap();
    w1.append(meta(3, 3, RecordKind::WebBatch), b"", &[b"other"])
        .unwrap();
    let (got, _) = drain(&mut consumer, 1);
    assert_eq!(got.iter().map(|r| r.0.session_id).collect::<Vec<_>>(), [3]);
    pending.unfilled().copy_from_slice(b"body");
    pending.advance(4);
    pending.commit();
    let (got, _) = drain(&mut consumer, 2);
    assert_eq!(
        got.iter().map(|r| r.0.session_id).collect::<Vec<_>>(),
        [1, 2]
    );
    w0.close().unwrap();
    w1.close().unwrap();
    service.shutdown();
}

/// Sealed segments are retired into `spare/` only once every consumer saved a cursor past them.
#[test]
fn retention_waits_for_every_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let service = SegmentService::start(config(dir.path()), 1).unwrap();
    let mut fast = service.consumers().register("fast").unwrap();
    let mut slow = service.consumers().register("slow").unwrap();
    service.consumers().registration_complete();
    let mut w = service.writer(0).unwrap();
    for i in 0..30u64 {
        w.append(meta(i, i, RecordKind::WebBatch), b"", &[&body(i, 6000)])
            .unwrap();
    }
    w.roll().unwrap();
    // A file listed may be retired before its header is read: it is not there any more.
    let sealed = |dir: &Path| {
        segment_files(dir)
            .into_iter()
            .filter(|(_, p)| {
                std::fs::read(p)
                    .ok()
                    .and_then(|bytes| SegmentHeader::decode(&bytes).ok())
                    .is_some_and(|h| h.is_sealed())
            })
            .count()
    };
    wait_until("seals", || sealed(dir.path()) >= 3);
    let (_, cursor) = drain(&mut fast, 30);
    fast.commit(&cursor);
    fast.save().unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(sealed(dir.path()) >= 3, "the slow consumer holds them back");
    let (_, cursor) = drain(&mut slow, 30);
    slow.commit(&cursor);
    slow.save().unwrap();
    // The count moves just after the file does.
    wait_until("retirement", || {
        sealed(dir.path()) == 0 && service.segment_counts().retired >= 3
    });
    assert_eq!(service.segment_counts().forced_out, 0);
    w.close().unwrap();
    service.shutdown();
}

/// The spare pool keeps what a consumer catching up retires at once while the data directory
/// has room (at most half its budget), for the next burst; past half the budget it keeps only
/// its floor, the oldest deleted at the next check, and nothing unconsumed is touched.
#[test]
fn the_spare_pool_keeps_a_burst_while_there_is_room_and_its_floor_beyond() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.disk_budget = Some(BudgetSetting::Bytes(200 * SEG));
    let service = SegmentService::start(cfg, 1).unwrap();
    let mut c = service.consumers().register("c").unwrap();
    service.consumers().registration_complete();
    let mut w = service.writer(0).unwrap();
    // About ten 6000-byte records a segment: some nine segments sealed behind the consumer.
    for i in 0..100u64 {
        w.append(meta(i, i, RecordKind::WebBatch), b"", &[&body(i, 6000)])
            .unwrap();
    }
    w.roll().unwrap();
    let spare_dir = dir.path().join(SEGMENTS_DIR).join("spare");
    let spares = || std::fs::read_dir(&spare_dir).unwrap().count();
    let (records, cursor) = drain(&mut c, 100);
    assert_eq!(records.len(), 100);
    c.commit(&cursor);
    c.save().unwrap();
    wait_until("retirement", || service.segment_counts().retired >= 8);
    // The service may have taken one for the next segment meanwhile; the rest stay.
    let floor = super::service::SPARES_KEPT;
    let kept = spares();
    assert!(
        kept >= 7 && kept > floor + 1,
        "{kept} spares kept of {} retired",
        service.segment_counts().retired
    );

    // Something else takes the directory past half the budget (not over it): the pool goes
    // back to its floor.
    let filler = dir.path().join(SEGMENTS_DIR).join("filler");
    std::fs::write(&filler, vec![1u8; 100 * SEG as usize]).unwrap();
    wait_until("the pool trimmed to its floor", || spares() <= floor);
    let budget = std::sync::Arc::clone(service.consumers().budget());
    assert!(budget.used() <= budget.limit());
    assert_eq!(service.segment_counts().forced_out, 0);
    w.close().unwrap();
    service.shutdown();
}

/// A segment-level consumer gets each sealed segment whole, oldest first, never an open one.
#[test]
fn next_sealed_hands_out_whole_sealed_segments_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let service = SegmentService::start(config(dir.path()), 1).unwrap();
    let mut c = service.consumers().register("compactor").unwrap();
    let mut w = service.writer(0).unwrap();
    for i in 0..5u64 {
        w.append(meta(i, i, RecordKind::WebBatch), b"", &[&body(i, 100)])
            .unwrap();
        w.roll().unwrap();
    }
    w.append(meta(9, 9, RecordKind::WebBatch), b"", &[b"open"])
        .unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 5 && Instant::now() < deadline {
        match c.next_sealed().unwrap() {
            Some(seg) => {
                assert_eq!(seg.records.len(), 1);
                if seen.is_empty() {
                    // Not committed: after a rewind the same segment comes again.
                    c.rewind();
                    let again = c.next_sealed().unwrap().expect("the same segment");
                    assert_eq!(again.name, seg.name);
                }
                seen.push(seg.records[0].meta.session_id);
                c.commit(&seg.cursor);
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    assert_eq!(seen, [0, 1, 2, 3, 4]);
    assert!(c.next_sealed().unwrap().is_none(), "the open segment waits");
    w.close().unwrap();
    service.shutdown();
}

/// `next_sealed` reads a segment through a mapping of its file: while any of its records is
/// alive, the file (retired into `spare/` meanwhile, as if every consumer were past it) must not
/// be reused, or the records' bytes would change under them. Once they are dropped, it is.
#[test]
fn a_sealed_segment_being_read_is_not_reused_until_its_records_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let spare_dir = dir.path().join(SEGMENTS_DIR).join("spare");
    let service = SegmentService::start(config(dir.path()), 1).unwrap();
    let mut c = service.consumers().register("compactor").unwrap();
    let mut w = service.writer(0).unwrap();
    let shared = std::sync::Arc::clone(&service.shared);
    let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    let prepared = || load(&shared.reused) + load(&shared.created);
    let mut seed = 0u64;
    let mut append_and_roll = |w: &mut crate::log::SegmentWriter| {
        w.append(
            meta(seed, seed, RecordKind::WebBatch),
            b"",
            &[&body(seed, 4000)],
        )
        .unwrap();
        w.roll().unwrap();
        seed += 1;
    };
    append_and_roll(&mut w);
    let held = loop {
        if let Some(seg) = c.next_sealed().unwrap() {
            break seg;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(held.records[0].body, body(0, 4000));
    let spare = spare_dir.join(held.name.file_name());
    std::fs::rename(
        dir.path().join(SEGMENTS_DIR).join(held.name.file_name()),
        &spare,
    )
    .unwrap();

    let reused_before = load(&shared.reused);
    for _ in 0..3 {
        let before = prepared();
        append_and_roll(&mut w);
        wait_until("the next segment prepared", || prepared() > before);
    }
    assert_eq!(
        load(&shared.reused),
        reused_before,
        "a spare still mapped by a reader was reused"
    );
    assert!(spare.exists());
    assert_eq!(held.records[0].body, body(0, 4000), "a held record changed");

    drop(held);
    // Eventually, not necessarily at the next preparation: once in about 17,000 runs under
    // load, three preparations after the drop went without it (cause not found; the message
    // below says what the directory held, should it happen within ten).
    for _ in 0..10 {
        if load(&shared.reused) > reused_before {
            break;
        }
        let before = prepared();
        append_and_roll(&mut w);
        wait_until("the next segment prepared", || prepared() > before);
    }
    assert!(
        load(&shared.reused) > reused_before,
        "the spare was not reused once its records were dropped: reused {}, created {}, spare \
         still there: {}, {} stall(s), files: {:?} spare: {:?}",
        load(&shared.reused),
        load(&shared.created),
        spare.exists(),
        w.stalls(),
        std::fs::read_dir(dir.path().join(SEGMENTS_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>(),
        std::fs::read_dir(&spare_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>(),
    );
    w.close().unwrap();
    service.shutdown();
}

/// Once every segment of a worker is retired, a restart must not start its sequence over: the
/// consumers' cursors are past those numbers, and would skip every new record.
#[test]
fn sequences_continue_past_retired_segments_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let service = SegmentService::start(config(dir.path()), 1).unwrap();
    let mut c = service.consumers().register("c").unwrap();
    service.consumers().registration_complete();
    let mut w = service.writer(0).unwrap();
    for i in 0..3u64 {
        w.append(meta(i, i, RecordKind::WebBatch), b"", &[b"before"])
            .unwrap();
        w.roll().unwrap();
    }
    w.close().unwrap();
    let (got, cursor) = drain(&mut c, 3);
    assert_eq!(got.len(), 3);
    c.commit(&cursor);
    c.save().unwrap();
    wait_until("everything retired", || {
        segment_files(dir.path()).is_empty()
    });
    drop(c);
    service.shutdown();

    let service = SegmentService::start(config(dir.path()), 1).unwrap();
    let mut c = service.consumers().register("c").unwrap();
    let mut w = service.writer(0).unwrap();
    w.append(meta(9, 9, RecordKind::WebBatch), b"", &[b"after"])
        .unwrap();
    let (got, _) = drain(&mut c, 1);
    assert_eq!(
        got,
        [(meta(9, 9, RecordKind::WebBatch), vec![], b"after".to_vec())]
    );
    w.close().unwrap();
    service.shutdown();
}

/// Another opener breaking the write lease that the reuse check takes for an instant makes the
/// kernel signal SIGIO; with the service started, that must not end the process.
#[test]
fn a_spare_opened_during_the_lease_check_does_not_kill_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let service = SegmentService::start(config(dir.path()), 1).unwrap();
    let path = dir
        .path()
        .join(SEGMENTS_DIR)
        .join("spare")
        .join("contended");
    let file = std::fs::File::create(&path).unwrap();
    let until = Instant::now() + Duration::from_millis(1500);
    let opener = {
        let path = path.clone();
        std::thread::spawn(move || {
            while Instant::now() < until {
                drop(std::fs::File::open(&path));
            }
        })
    };
    let mut checks = 0u64;
    while Instant::now() < until {
        let _ = super::mmap::is_sole_opener(&file);
        checks += 1;
    }
    opener.join().unwrap();
    assert!(checks > 0);
    service.shutdown();
}

/// A session's batches hop between workers (each request on a new connection), one at a time:
/// each is committed before the next arrives. A consumer reading while they are written must
/// deliver them in that order.
#[test]
fn records_committed_before_another_arrived_are_read_first() {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    let dir = tempfile::tempdir().unwrap();
    let service = SegmentService::start(config(dir.path()), 2).unwrap();
    let mut consumer = service.consumers().register("order").unwrap();
    service.consumers().registration_complete();
    const N: u64 = 5_000;
    let turn = AtomicU64::new(0);
    let got = std::thread::scope(|scope| {
        for worker in 0..2u16 {
            let (service, turn) = (&service, &turn);
            scope.spawn(move || {
                let mut w = service.writer(worker).unwrap();
                loop {
                    let n = turn.load(SeqCst);
                    if n >= N {
                        break;
                    }
                    // Worker n % 2 takes batch n; the other waits for its turn.
                    if n % 2 != u64::from(worker) {
                        std::thread::yield_now();
                        continue;
                    }
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_nanos() as u64;
                    let m = meta(7, now, RecordKind::WebBatch);
                    if n % 3 == 0 {
                        // As a body streamed in: reserved (pending), filled, committed.
                        let mut r = w.reserve(m, b"", 8).unwrap();
                        r.unfilled()[..8].copy_from_slice(&n.to_le_bytes());
                        r.advance(8);
                        std::thread::yield_now();
                        r.commit();
                    } else {
                        w.append(m, b"", &[&n.to_le_bytes()]).unwrap();
                    }
                    w.end_turn().unwrap();
                    turn.store(n + 1, SeqCst);
                }
                w.close().unwrap();
            });
        }
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut out = Vec::new();
        while (got.len() as u64) < N && Instant::now() < deadline {
            out.clear();
            let cursor = consumer
                .read(&mut out, 64, 1 << 20, Duration::from_millis(1))
                .unwrap();
            consumer.commit(&cursor);
            got.extend(
                out.iter()
                    .map(|r| u64::from_le_bytes(r.body[..8].try_into().unwrap())),
            );
        }
        got
    });
    let first_bad = got.windows(2).position(|w| w[0] + 1 != w[1]);
    let have: std::collections::HashSet<u64> = got.iter().copied().collect();
    let missing: Vec<u64> = (0..N).filter(|n| !have.contains(n)).take(10).collect();
    assert!(missing.is_empty(), "missing {missing:?} of {}", got.len());
    assert_eq!(got.len() as u64, N);
    assert_eq!(
        first_bad,
        None,
        "out of order at {first_bad:?}: {:?}",
        first_bad.map(|i| &got[i.saturating_sub(3)..(i + 4).min(got.len())])
    );
    service.shutdown();
}

/// A consumer reading behind another (a forwarder behind the database writer) gets a record
/// only once the leader committed past it, in log order, and wakes up when the leader commits.
#[test]
fn a_consumer_behind_another_reads_only_what_the_leader_committed() {
    let dir = tempfile::tempdir().unwrap();
    let service = SegmentService::start(config(dir.path()), 1).unwrap();
    let mut leader = service.consumers().register("leader").unwrap();
    let mut follower = service.consumers().register("follower").unwrap();
    follower.read_behind(leader.state());
    service.consumers().registration_complete();
    let mut w = service.writer(0).unwrap();
    for n in 0..4u64 {
        w.append(
            meta(1, 10 + n, RecordKind::WebBatch),
            b"",
            &[&n.to_le_bytes()],
        )
        .unwrap();
    }
    w.end_turn().unwrap();
    let body = |r: &LogRecord| u64::from_le_bytes(r.body[..8].try_into().unwrap());
    let mut out = Vec::new();
    follower
        .read(&mut out, 16, 1 << 20, Duration::from_millis(50))
        .unwrap();
    assert!(out.is_empty(), "read past a leader that committed nothing");

    // The leader reads all four and commits past the first two only: its position is then
    // the third record's.
    let mut led = Vec::new();
    let cursor = leader.read(&mut led, 16, 1 << 20, Duration::ZERO).unwrap();
    assert_eq!(led.len(), 4);
    let partial = Cursor {
        positions: [(
            0u16,
            Position {
                seq: led[2].segment_seq,
                offset: led[2].offset,
            },
        )]
        .into(),
    };
    leader.commit(&partial);
    follower
        .read(&mut out, 16, 1 << 20, Duration::from_millis(50))
        .unwrap();
    assert_eq!(out.iter().map(body).collect::<Vec<_>>(), [0, 1]);

    // A follower waiting on an empty read wakes when the leader commits the rest.
    let got = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut rest = Vec::new();
            follower
                .read(&mut rest, 16, 1 << 20, Duration::from_secs(20))
                .unwrap();
            rest
        });
        std::thread::sleep(Duration::from_millis(100));
        leader.commit(&cursor);
        reader.join().unwrap()
    });
    assert_eq!(got.iter().map(body).collect::<Vec<_>>(), [2, 3]);
    w.close().unwrap();
}

use std::io::Cursor;

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::codec::{put_int, put_str, put_uint, MSG_BATCH_METADATA};

/// 2026-01-01T00:00:00Z in ms: a realistic arrival clock.
const T0_MS: u64 = 1_767_225_600_000;

fn session_id(start_ms: u64, seq: u64) -> u64 {
    ((start_ms - flake::FLAKE_EPOCH_MS) << 16) | (3 << 8) | seq
}

fn web_batch(version: u64, first_index: u64, filler: &[u8]) -> Bytes {
    let mut b = Vec::new();
    put_uint(&mut b, MSG_BATCH_METADATA);
    put_uint(&mut b, version);
    put_uint(&mut b, 0);
    put_uint(&mut b, first_index);
    put_int(&mut b, 1);
    put_str(&mut b, "https://example.test/");
    b.extend_from_slice(filler);
    Bytes::from(b)
}

fn record(session_id: u64, kind: RecordKind, arrival_ns: u64, body: Bytes) -> CompactRecord {
    CompactRecord {
        meta: RecordMeta {
            session_id,
            arrival_unix_ns: arrival_ns,
            kind,
        },
        name: if kind == RecordKind::Image {
            b"frame_17.jpeg".to_vec()
        } else {
            Vec::new()
        },
        body,
        origin: Origin {
            worker: (arrival_ns % 4) as u16,
            segment_seq: arrival_ns % 7,
            offset: 64 + arrival_ns % 4096,
        },
    }
}

fn inputs() -> Vec<SegmentName> {
    vec![
        SegmentName { worker: 1, seq: 9 },
        SegmentName { worker: 0, seq: 2 },
        SegmentName { worker: 1, seq: 10 },
    ]
}

/// Records of `sessions` sessions, of every kind, in a shuffled push order.
/// The kinds `many_records` draws from (a fixed list: the block counts below follow the seed).
const KINDS: [RecordKind; 7] = [
    RecordKind::WebBatch,
    RecordKind::WebAssetsBatch,
    RecordKind::MobileBatch,
    RecordKind::SessionStart,
    RecordKind::MobileSessionStart,
    RecordKind::Image,
    RecordKind::NotStarted,
];

fn many_records(sessions: u64, seed: u64) -> Vec<CompactRecord> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for s in 0..sessions {
        let start_ms = T0_MS + s * 997;
        let id = session_id(start_ms, s % 256);
        let base_ns = start_ms * 1_000_000;
        out.push(record(
            id,
            RecordKind::SessionStart,
            base_ns,
            Bytes::from_static(&[1, 2, 3]),
        ));
        for i in 0..rng.random_range(0..12u64) {
            let kind = KINDS[rng.random_range(0..KINDS.len())];
            let filler: Vec<u8> = (0..rng.random_range(0..300))
                .map(|_| rng.random())
                .collect();
            let body = match kind {
                RecordKind::WebBatch | RecordKind::WebAssetsBatch => {
                    web_batch(rng.random_range(1..6), rng.random_range(0..50), &filler)
                }
                _ => Bytes::from(filler),
            };
            let arrival = base_ns + rng.random_range(0..5_000_000_000) + i;
            out.push(record(id, kind, arrival, body));
        }
    }
    // Shuffle: the writer must not depend on the order records are pushed in.
    for i in (1..out.len()).rev() {
        out.swap(i, rng.random_range(0..=i));
    }
    out
}

/// What reading back must give: sessions ascending, each in its true order given push order.
fn expected(pushed: &[CompactRecord]) -> Vec<CompactRecord> {
    let mut by_session: std::collections::BTreeMap<u64, Vec<CompactRecord>> = Default::default();
    for r in pushed {
        by_session
            .entry(r.meta.session_id)
            .or_default()
            .push(r.clone());
    }
    by_session
        .into_values()
        .flat_map(|mut records| {
            order_session(&mut records);
            records
        })
        .collect()
}

fn write(dir: &Path, records: &[CompactRecord], block_cap: usize) -> CompactedInfo {
    let mut writer = CompactedWriter::new(dir, &inputs(), DEFAULT_LEVEL)
        .expect("writer")
        .with_block_cap(block_cap);
    for r in records {
        writer.push(r.clone()).expect("push");
    }
    writer.finish().expect("finish")
}

fn in_memory(bytes: Vec<u8>) -> io::Result<CompactedReader<Cursor<Vec<u8>>>> {
    let len = bytes.len() as u64;
    CompactedReader::from_file(Cursor::new(bytes), len, Path::new("mem.rcz"))
}

fn damage(result: io::Result<impl Sized>) -> Option<Damage> {
    result.err().as_ref().and_then(DamagedFile::of)
}

#[test]
fn round_trip_of_many_sessions_and_kinds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pushed = many_records(60, 1);
    let info = write(dir.path(), &pushed, BLOCK_RAW_CAP);
    let want = expected(&pushed);

    let mut sorted_inputs = inputs();
    sorted_inputs.sort();
    assert_eq!(info.inputs, sorted_inputs);
    assert_eq!((info.sessions, info.records), (60, pushed.len() as u64));
    let raw: usize = pushed.iter().map(|r| r.name.len() + r.body.len()).sum();
    assert_eq!(info.raw_bytes, raw as u64);
    assert_eq!(
        info.file_bytes,
        fs::metadata(&info.path).expect("stat").len()
    );
    let first = pushed.iter().map(|r| r.meta.arrival_unix_ns).min();
    let last = pushed.iter().map(|r| r.meta.arrival_unix_ns).max();
    assert_eq!(
        (Some(info.first_arrival_ns), Some(info.last_arrival_ns)),
        (first, last)
    );

    let header = read_header(&info.path).expect("header");
    assert_eq!(header.inputs, sorted_inputs);
    assert_eq!(
        (header.sessions, header.records, header.raw_bytes),
        (info.sessions, info.records, info.raw_bytes)
    );
    assert_eq!(
        (header.first_arrival_ns, header.last_arrival_ns),
        (info.first_arrival_ns, info.last_arrival_ns)
    );

    assert_eq!(read_all(&info.path).expect("read_all"), want);
    let mut reader = CompactedReader::open(&info.path).expect("open");
    let ids: Vec<u64> = reader.sessions().collect();
    assert_eq!(ids.len(), 60);
    for id in ids {
        let got = reader.read_session(id).expect("session");
        let want: Vec<_> = want
            .iter()
            .filter(|r| r.meta.session_id == id)
            .cloned()
            .collect();
        assert_eq!(got, want, "session {id}");
        assert_eq!(read_session(&info.path, id).expect("session"), want);
    }
    assert_eq!(read_session(&info.path, 12345).expect("absent"), vec![]);

    let names = list_compacted(dir.path()).expect("list");
    assert_eq!(names.len(), 1);
    assert_eq!(dir.path().join(names[0].file_name()), info.path);
    assert_eq!(names[0].first_arrival_ms, info.first_arrival_ns / 1_000_000);
    assert_eq!(names[0].last_arrival_ms, info.last_arrival_ns / 1_000_000);
}

#[test]
fn sessions_are_written_in_true_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = session_id(T0_MS, 1);
    let at = |ms: u64| (T0_MS + ms) * 1_000_000;
    let pushed = vec![
        record(id, RecordKind::WebBatch, at(10), web_batch(2, 58, b"")),
        record(id, RecordKind::WebBatch, at(11), web_batch(5, 2, b"")),
        record(id, RecordKind::WebBatch, at(12), web_batch(2, 0, b"")),
        record(
            id,
            RecordKind::SessionStart,
            at(13),
            Bytes::from_static(&[1]),
        ),
    ];
    let info = write(dir.path(), &pushed, BLOCK_RAW_CAP);
    let got = read_session(&info.path, id).expect("session");
    let arrivals: Vec<u64> = got.iter().map(|r| r.meta.arrival_unix_ns).collect();
    assert_eq!(arrivals, [at(13), at(12), at(11), at(10)]);
}

#[test]
fn large_sessions_span_several_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pushed = many_records(8, 2);
    let big = pushed[0].meta;
    pushed.push(record(
        big.session_id,
        RecordKind::Image,
        big.arrival_unix_ns + 1,
        Bytes::from(vec![7u8; 5000]),
    ));
    let info = write(dir.path(), &pushed, 600);
    let reader = CompactedReader::open(&info.path).expect("open");
    assert!(reader.index.len() > 8 + 8, "{} blocks", reader.index.len());
    // A record larger than the cap still gets a block (of its own).
    assert!(reader
        .index
        .iter()
        .any(|e| e.records == 1 && e.raw_len > 600));
    assert!(reader
        .index
        .iter()
        .all(|e| e.raw_len <= 600 || e.records == 1));
    assert_eq!(read_all(&info.path).expect("read_all"), expected(&pushed));
}

/// Counts the bytes read through it.
struct Counting<F> {
    inner: F,
    read: u64,
}

impl<F: Read> Read for Counting<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

impl<F: Seek> Seek for Counting<F> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

#[test]
fn read_session_reads_only_its_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pushed = many_records(40, 3);
    let info = write(dir.path(), &pushed, 2000);
    let bytes = fs::read(&info.path).expect("read");
    let file = Counting {
        inner: File::open(&info.path).expect("open"),
        read: 0,
    };
    let mut reader =
        CompactedReader::from_file(file, bytes.len() as u64, &info.path).expect("open");
    let ids: Vec<u64> = reader.sessions().collect();
    let target = ids[17];
    let metadata_bytes =
        header_len(3) + FOOTER_LEN + INDEX_HEADER_LEN + INDEX_ENTRY_LEN * reader.index.len();
    assert_eq!(reader.file.read, metadata_bytes as u64);
    let own: u64 = reader
        .index
        .iter()
        .filter(|e| e.session_id == target)
        .map(|e| (BLOCK_HEADER_LEN as u64) + u64::from(e.compressed_len))
        .sum();
    let got = reader.read_session(target).expect("session");
    assert!(!got.is_empty());
    assert_eq!(reader.file.read, metadata_bytes as u64 + own);
    assert!(reader.file.read < bytes.len() as u64 / 4);

    // Damage every other session's blocks: this one still reads, the file as a whole does not.
    let mut damaged_bytes = bytes.clone();
    for e in reader.index.iter().filter(|e| e.session_id != target) {
        damaged_bytes[e.offset as usize + BLOCK_HEADER_LEN] ^= 0x40;
    }
    let mut reader = in_memory(damaged_bytes).expect("metadata intact");
    assert_eq!(reader.read_session(target).expect("session"), got);
    assert!(matches!(
        damage(reader.read_session(ids[0])),
        Some(Damage::BlockChecksum { .. })
    ));
    assert!(damage(reader.read_all()).is_some());
}

/// A small file with several sessions and blocks, as bytes.
fn small_file() -> (Vec<u8>, Vec<CompactRecord>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pushed = many_records(4, 4);
    let info = write(dir.path(), &pushed, 400);
    (fs::read(&info.path).expect("read"), expected(&pushed))
}

#[test]
fn every_flipped_byte_is_detected() {
    let (bytes, want) = small_file();
    assert_eq!(
        in_memory(bytes.clone())
            .and_then(|mut r| r.read_all())
            .expect("good"),
        want
    );
    let header_end = header_len(3);
    let mut seen = std::collections::HashSet::new();
    for at in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut b = bytes.clone();
            b[at] ^= bit;
            let got = in_memory(b.clone()).and_then(|mut r| r.read_all());
            let Some(d) = damage(got) else {
                panic!("flip {bit:#x} at {at} of {} not detected", bytes.len());
            };
            seen.insert(std::mem::discriminant(&d));
            let header = CompactedHeader::decode(&b);
            assert_eq!(
                header.is_ok(),
                at >= header_end,
                "header decode, flip at {at}"
            );
        }
    }
    // Header, block, index and footer checks all had their turn.
    assert!(seen.len() >= 6, "{seen:?}");
}

#[test]
fn named_damage_in_each_part() {
    let (bytes, _) = small_file();
    let reader = in_memory(bytes.clone()).expect("good");
    let footer_at = bytes.len() - FOOTER_LEN;
    let index_at = footer_at - (INDEX_HEADER_LEN + INDEX_ENTRY_LEN * reader.index.len());
    let block = reader.index[1];
    let cases: [(&str, usize, Damage); 8] = [
        ("magic", 0, Damage::Magic),
        ("version", 8, Damage::Version(FORMAT_VERSION ^ 1)),
        ("input list", HEADER_FIXED_LEN + 9, Damage::HeaderChecksum),
        (
            "block header",
            block.offset as usize + 5,
            Damage::BlockHeader {
                offset: block.offset,
            },
        ),
        (
            "block checksum",
            block.offset as usize + 25,
            Damage::BlockChecksum {
                offset: block.offset,
            },
        ),
        (
            "block payload",
            block.offset as usize + 40,
            Damage::BlockChecksum {
                offset: block.offset,
            },
        ),
        ("index", index_at + 20, Damage::IndexChecksum),
        ("footer", footer_at + 3, Damage::Footer),
    ];
    for (name, at, want) in cases {
        let mut b = bytes.clone();
        b[at] ^= 1;
        let got = in_memory(b).and_then(|mut r| r.read_all());
        let err = got.expect_err(name);
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{name}");
        assert_eq!(DamagedFile::of(&err), Some(want), "{name}");
        assert!(
            err.to_string()
                .starts_with("mem.rcz: damaged compacted file: "),
            "{err}"
        );
    }
}

#[test]
fn every_truncation_is_an_error() {
    let (bytes, _) = small_file();
    for cut in 0..bytes.len() {
        let b = bytes[..cut].to_vec();
        assert!(
            in_memory(b.clone()).and_then(|mut r| r.read_all()).is_err(),
            "cut at {cut}"
        );
        let header = read_header_from(&mut Cursor::new(&b), cut as u64, Path::new("mem"));
        assert_eq!(header.is_ok(), cut >= header_len(3), "header, cut at {cut}");
    }
}

#[test]
fn files_on_disk_report_damage_by_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pushed = many_records(5, 5);
    let info = write(dir.path(), &pushed, BLOCK_RAW_CAP);
    let mut bytes = fs::read(&info.path).expect("read");
    let len = bytes.len();
    bytes[len - 1] ^= 0xff;
    fs::write(&info.path, &bytes).expect("write");
    let err = read_all(&info.path).expect_err("damaged footer");
    assert_eq!(DamagedFile::of(&err), Some(Damage::Footer));
    assert!(err.to_string().contains(&info.path.display().to_string()));
    // The header alone is still readable: the compactor's crash check does not need the rest.
    assert_eq!(
        read_header(&info.path).expect("header").records,
        pushed.len() as u64
    );
    fs::write(&info.path, &bytes[..100]).expect("truncate");
    assert!(read_header(&info.path).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Many flips and garbage splices at once: an error or the exact records, never a panic.
    #[test]
    fn hostile_edits_never_panic(edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8),
                                 cut in any::<usize>()) {
        let (bytes, want) = small_file_cached();
        let mut b = bytes.to_vec();
        for (at, v) in edits {
            let at = at % b.len();
            b[at] = v;
        }
        let cut = cut % (b.len() + 64);
        b.truncate(cut);
        let unchanged = b == *bytes;
        match in_memory(b).and_then(|mut r| r.read_all()) {
            Ok(got) => {
                prop_assert!(unchanged, "damaged file read without error");
                prop_assert_eq!(&got, want);
            }
            Err(e) => prop_assert!(!unchanged, "{}", e),
        }
    }
}

fn small_file_cached() -> &'static (Vec<u8>, Vec<CompactRecord>) {
    static FILE: std::sync::OnceLock<(Vec<u8>, Vec<CompactRecord>)> = std::sync::OnceLock::new();
    FILE.get_or_init(small_file)
}

#[test]
fn a_file_without_records_still_names_its_inputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let info = CompactedWriter::new(dir.path(), &inputs(), 1)
        .expect("writer")
        .finish()
        .expect("finish");
    assert_eq!(
        (info.records, info.sessions, info.first_arrival_ns),
        (0, 0, 0)
    );
    assert_eq!(read_header(&info.path).expect("header").inputs.len(), 3);
    assert_eq!(read_all(&info.path).expect("all"), vec![]);
    let name = info
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name");
    assert!(name.starts_with("c-0000000000000-0000000000000-"), "{name}");
}

#[test]
fn writer_refusals() {
    let dir = tempfile::tempdir().expect("tempdir");
    for level in [-1_000_000, 23] {
        let err = CompactedWriter::new(dir.path(), &[], level)
            .err()
            .expect("level refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
    let mut writer = CompactedWriter::new(dir.path(), &[], DEFAULT_LEVEL).expect("writer");
    let mut long_name = record(1, RecordKind::Image, 1, Bytes::new());
    long_name.name = vec![b'x'; 65536];
    assert_eq!(
        writer.push(long_name).err().map(|e| e.kind()),
        Some(io::ErrorKind::InvalidInput)
    );
    // A directory that is not there: an error, and nothing left behind.
    let gone = dir.path().join("gone");
    let mut writer = CompactedWriter::new(&gone, &[], DEFAULT_LEVEL).expect("writer");
    writer
        .push(record(1, RecordKind::Image, 1, Bytes::new()))
        .expect("push");
    assert!(writer.finish().is_err());
    assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 0);
}

#[test]
fn leftovers_are_removed_and_never_listed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let info = write(dir.path(), &many_records(2, 6), BLOCK_RAW_CAP);
    let final_name = info
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_string();
    fs::write(
        dir.path().join(format!("{TMP_PREFIX}{final_name}")),
        b"half a file",
    )
    .expect("tmp");
    fs::write(dir.path().join(".tmp-anything"), b"").expect("tmp");
    fs::write(dir.path().join("notes.txt"), b"keep").expect("other");
    fs::create_dir(dir.path().join(".tmp-dir")).expect("dir");
    let listed = list_compacted(dir.path()).expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].file_name(), final_name);
    assert_eq!(remove_leftovers(dir.path()).expect("remove"), 2);
    let mut left: Vec<String> = fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [".tmp-dir".to_string(), final_name, "notes.txt".into()]
    );
    assert_eq!(
        remove_leftovers(&dir.path().join("none")).expect("missing dir"),
        0
    );
    assert_eq!(
        list_compacted(&dir.path().join("none")).expect("missing dir"),
        vec![]
    );
}

#[test]
fn file_names() {
    let n = CompactedFileName {
        first_arrival_ms: 1_767_225_600_000,
        last_arrival_ms: 1_767_225_612_345,
        unique: 0xab,
    };
    assert_eq!(n.file_name(), "c-1767225600000-1767225612345-000000ab.rcz");
    assert_eq!(CompactedFileName::parse(&n.file_name()), Some(n));
    let far = CompactedFileName {
        first_arrival_ms: u64::MAX / 1_000_000,
        last_arrival_ms: u64::MAX / 1_000_000,
        unique: u32::MAX,
    };
    assert_eq!(CompactedFileName::parse(&far.file_name()), Some(far));
    for bad in [
        "c-1767225600000-1767225612345-000000AB.rcz",
        "c-1767225600000-1767225612345-00000ab.rcz",
        "c-767225600000-1767225612345-000000ab.rcz",
        "c-1767225600000-1767225612345-000000ab.rcz.bad",
        "c-1767225600000-1767225612345-000000ab",
        "c-1767225600000-1767225612345-000000ab-1.rcz",
        "c-+767225600000-1767225612345-000000ab.rcz",
        ".tmp-c-1767225600000-1767225612345-000000ab.rcz",
        "w007-00000000000000ab.seg",
        "",
    ] {
        assert_eq!(CompactedFileName::parse(bad), None, "{bad}");
    }
    // Names sort like the values.
    let older = CompactedFileName {
        last_arrival_ms: n.last_arrival_ms + 1,
        ..n
    };
    assert!(n < older && n.file_name() < older.file_name());
    let id = session_id(1_767_225_612_345, 0);
    assert!(n.may_hold_session(id));
    assert!(!n.may_hold_session(session_id(1_767_225_612_346, 0)));
}

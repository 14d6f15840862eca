//! A model-based property test of the log with its consumers.
//!
//! In: random operations drawn by proptest: appends on two workers, rolls, reads and commits of a
//! record-level consumer (the `forwarder`, shaped like a queue forwarder), saves, whole sealed
//! segments taken by a segment-level consumer (the `compactor`, shaped like `compact::compactor`
//! without its files), waits for retention, clean restarts, and crashes with damage (a cut
//! segment, a flipped body byte). Out: a pass, or the first property broken and why. Runs on the
//! test's thread against a real `SegmentService` (its own thread, retention included) on a
//! temporary directory.
//!
//! The model knows, from the operations alone, every acknowledged record (`append` returned
//! `Ok`), its segment and offset (it replays the writer's roll rule), and which records the
//! damage it injected destroyed. Segment sequence numbers are what it reads back: after each roll
//! or writer start it looks up the new segment's name, and checks the number never goes back
//! behind a segment that still matters or a consumer's saved cursor. (The forwarder's cursor at
//! the start of a life, used only to count the corrupt records it must meet, and the saved
//! cursors when waiting for retention are read from the consumers too.)
//!
//! # Properties
//!
//! 1. **No loss.** After a final drain every acknowledged record no damage destroyed was
//!    delivered to the forwarder at least once, and was in a segment the compactor took.
//! 2. **Duplicates only inside the window.** In each life (start to restart or crash) a consumer
//!    resumes exactly at the first record after its last *saved* cursor and then receives each
//!    record of a worker's stream exactly once, in order: a record is seen twice only if it was
//!    read, or committed, after the last save of an earlier life. The compactor likewise takes a
//!    segment at most once per life, again only if its last save was behind it.
//! 3. **Order and integrity.** Per worker the forwarder receives records in append order with
//!    their exact meta, body, segment and offset; never a record that was not acknowledged or that
//!    damage destroyed. A segment the compactor takes holds exactly the surviving records the
//!    model put there, and no sealed segment with surviving records is skipped.
//! 4. **Retention safety.** A segment with surviving records disappears from `segments/` only
//!    once both consumers' saved cursors are past it (checked after every operation); and
//!    retention does retire what both are past (checked when waiting for it, and at the end, when
//!    every segment must go).
//!
//! A crash is emulated at the file level: the data directory is copied while the writers are
//! open (open segments unsealed, page-cache bytes only, as a killed process leaves it), then the
//! node is dropped and a new one starts on the copy. The copy re-reads a segment whose header
//! fails its checksum: a `read(2)` racing the service's 64-byte sealed-header `pwrite` can see
//! half of each, which no real crash leaves (the kernel finishes the write before the process
//! dies). Spare files are left out of the copy (see `copy_tree`).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError};

use super::format::{HeaderError, SegmentHeader, SegmentName, RECORD_HEADER_LEN, SEGMENTS_DIR};
use super::*;

/// Small segments roll every few records, so one case crosses dozens of segments.
const SEG: u64 = 64 << 10;
const WORKERS: u16 = 2;
const MAX_BODY: usize = 20_000;
const FORWARDER: &str = "forwarder";
const COMPACTOR: &str = "compactor";
/// Every case crosses rolls, restarts and crashes; 32 of them take about 13 s of a debug build,
/// mostly waiting (fsyncs of cursor files, the 250 ms retention turn). `PROPTEST_CASES` overrides.
const DEFAULT_CASES: u32 = 32;
/// Waits for the service (seals, retention every 250 ms) poll until this; only a bug reaches it.
const DEADLINE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(5);

#[derive(Clone, Debug)]
enum Op {
    Append {
        worker: u16,
        session: u64,
        kind: RecordKind,
        len: usize,
    },
    Roll {
        worker: u16,
    },
    /// The forwarder reads up to `max` records, without waiting.
    Read {
        max: usize,
    },
    /// The forwarder commits what it read so far.
    Commit,
    Save {
        forwarder: bool,
    },
    /// The compactor takes the next sealed segment (if any) and commits it.
    Take {
        save: bool,
    },
    AwaitRetention,
    Restart,
    Crash {
        damage: Vec<Damage>,
    },
}

/// Damage done to the crash copy; the indexes pick among segments that must still be there.
#[derive(Clone, Debug)]
enum Damage {
    Truncate {
        segment: Index,
        at: Index,
    },
    Flip {
        segment: Index,
        record: Index,
        byte: Index,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let len = prop_oneof![1 => Just(0usize), 6 => 1..3000usize, 3 => 3000..MAX_BODY];
    let kind = prop::sample::select(RecordKind::ALL.to_vec());
    let damage = prop_oneof![
        (any::<Index>(), any::<Index>()).prop_map(|(segment, at)| Damage::Truncate { segment, at }),
        (any::<Index>(), any::<Index>(), any::<Index>()).prop_map(|(segment, record, byte)| {
            Damage::Flip {
                segment,
                record,
                byte,
            }
        }),
    ];
    prop_oneof![
        40 => (0..WORKERS, 0..8u64, kind, len).prop_map(|(worker, session, kind, len)| {
            Op::Append { worker, session, kind, len }
        }),
        3 => (0..WORKERS).prop_map(|worker| Op::Roll { worker }),
        14 => (1..24usize).prop_map(|max| Op::Read { max }),
        8 => Just(Op::Commit),
        6 => any::<bool>().prop_map(|forwarder| Op::Save { forwarder }),
        8 => any::<bool>().prop_map(|save| Op::Take { save }),
        1 => Just(Op::AwaitRetention),
        2 => Just(Op::Restart),
        2 => prop::collection::vec(damage, 0..=2).prop_map(|damage| Op::Crash { damage }),
    ]
}

/// A record's body, from its id: nothing needs to be kept to compare it.
fn body(id: u64, len: usize) -> Vec<u8> {
    let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Bytes a record of `len` body bytes takes in a segment (header, body, padding to 8).
fn record_len(len: usize) -> u64 {
    (RECORD_HEADER_LEN + len).next_multiple_of(8) as u64
}

const FIRST_RECORD: u64 = format::SEGMENT_HEADER_LEN as u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Harm {
    None,
    /// A body byte flipped: the record is corrupt, its neighbours are fine.
    Flipped,
    /// Cut off by a truncation (or its segment's header was).
    Cut,
}

struct ModelRecord {
    worker: u16,
    /// Position in its worker's stream.
    index: usize,
    meta: RecordMeta,
    len: usize,
    segment: usize,
    offset: u64,
    harm: Harm,
    /// Lives in which the forwarder received it.
    delivered_in: Vec<u32>,
    compacted: u32,
}

impl ModelRecord {
    fn survives(&self) -> bool {
        self.harm == Harm::None
    }
}

struct ModelSegment {
    name: SegmentName,
    records: Vec<usize>,
    /// Where the next record goes.
    end: u64,
    /// Seen missing from `segments/`.
    gone: bool,
    /// Lives in which the compactor took it.
    taken_in: Vec<u32>,
}

/// The forwarder's progress in the model: counts of each worker's stream passed.
#[derive(Default)]
struct ForwarderModel {
    /// The next record of each worker's stream this life must deliver (before skipping damage).
    next: Vec<usize>,
    committed: Vec<usize>,
    saved: Vec<usize>,
    /// The cursor the last read returned, and `next` at that moment.
    last_read: Option<(Cursor, Vec<usize>)>,
    /// `saved` at the end of each life.
    saved_at_end: Vec<Vec<usize>>,
}

/// The compactor's progress in the model: per worker the last segment sequence passed.
#[derive(Default)]
struct CompactorModel {
    taken: Vec<Option<u64>>,
    committed: Vec<Option<u64>>,
    saved: Vec<Option<u64>>,
    saved_at_end: Vec<Vec<Option<u64>>>,
}

#[derive(Default)]
struct Model {
    records: Vec<ModelRecord>,
    by_worker: Vec<Vec<usize>>,
    segments: Vec<ModelSegment>,
    segment_at: BTreeMap<SegmentName, usize>,
    active: Vec<usize>,
    fwd: ForwarderModel,
    cmp: CompactorModel,
    life: u32,
    /// The forwarder's cursor when this life began: flipped records it had not passed are read
    /// (and counted) in this life. Taken from the consumer, not the model: a read moves the
    /// cursor over destroyed records behind the last one it delivers, which the model does not
    /// follow (`read_to` checks it never passes a surviving one).
    life_start: Cursor,
}

type Checked = Result<(), TestCaseError>;

macro_rules! check {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(TestCaseError::fail(format!($($arg)+)));
        }
    };
}

impl Model {
    fn new() -> Model {
        let w = usize::from(WORKERS);
        Model {
            by_worker: vec![Vec::new(); w],
            active: vec![usize::MAX; w],
            fwd: ForwarderModel {
                next: vec![0; w],
                committed: vec![0; w],
                saved: vec![0; w],
                ..ForwarderModel::default()
            },
            cmp: CompactorModel {
                taken: vec![None; w],
                committed: vec![None; w],
                saved: vec![None; w],
                ..CompactorModel::default()
            },
            ..Model::default()
        }
    }

    fn surviving(&self, segment: usize) -> impl Iterator<Item = usize> + '_ {
        self.segments[segment]
            .records
            .iter()
            .copied()
            .filter(|&id| self.records[id].survives())
    }

    /// Whether some consumer still needs `segment`: retention must keep it.
    fn needed(&self, segment: usize) -> bool {
        let s = &self.segments[segment];
        let w = usize::from(s.name.worker);
        let Some(last) = self.surviving(segment).last() else {
            return false;
        };
        self.fwd.saved[w] <= self.records[last].index || self.cmp.saved[w] < Some(s.name.seq)
    }

    /// The worker's writer just started a segment: learns its name, which must not go back
    /// behind a segment that still holds records or a consumer's saved cursor.
    fn started(&mut self, worker: u16, name: SegmentName) -> Checked {
        let w = usize::from(worker);
        for (i, s) in self.segments.iter().enumerate() {
            if s.name.worker == worker && (!s.gone || self.surviving(i).next().is_some()) {
                check!(
                    name.seq > s.name.seq,
                    "worker {worker} started segment {} at or behind segment {}",
                    name.seq,
                    s.name.seq
                );
            }
        }
        check!(
            self.cmp.saved[w] < Some(name.seq),
            "worker {worker} started segment {} behind the compactor's saved cursor {:?}",
            name.seq,
            self.cmp.saved[w]
        );
        if let Some(&id) = self.fwd.saved[w]
            .checked_sub(1)
            .and_then(|i| self.by_worker[w].get(i))
        {
            let behind = self.segments[self.records[id].segment].name.seq;
            check!(
                name.seq > behind,
                "worker {worker} started segment {} behind the forwarder's saved cursor \
                 (segment {behind})",
                name.seq
            );
        }
        self.segment_at.insert(name, self.segments.len());
        self.active[w] = self.segments.len();
        self.segments.push(ModelSegment {
            name,
            records: Vec::new(),
            end: FIRST_RECORD,
            gone: false,
            taken_in: Vec::new(),
        });
        Ok(())
    }

    /// An acknowledged record; returns whether the writer rolled to fit it (the model's rule is
    /// the writer's: a record that does not fit the rest of the segment goes to a new one).
    fn appended(&mut self, worker: u16, meta: RecordMeta, len: usize) -> bool {
        let w = usize::from(worker);
        let rolls = record_len(len) > SEG - self.segments[self.active[w]].end;
        let id = self.records.len();
        self.records.push(ModelRecord {
            worker,
            index: self.by_worker[w].len(),
            meta,
            len,
            segment: usize::MAX,
            offset: 0,
            harm: Harm::None,
            delivered_in: Vec::new(),
            compacted: 0,
        });
        self.by_worker[w].push(id);
        rolls
    }

    /// Places record `id` at the end of its worker's active segment.
    fn place(&mut self, id: usize) {
        let r = &mut self.records[id];
        let s = &mut self.segments[self.active[usize::from(r.worker)]];
        r.segment = self.active[usize::from(r.worker)];
        r.offset = s.end;
        s.end += record_len(r.len);
        s.records.push(id);
    }

    fn next_id(&self) -> u64 {
        self.records.len() as u64
    }

    /// Checks a record's identity and contents against what was appended.
    fn check_contents(&self, r: &LogRecord) -> Result<usize, TestCaseError> {
        let id = r.meta.arrival_unix_ns as usize;
        let Some(m) = self.records.get(id) else {
            return Err(TestCaseError::fail(format!(
                "a record that was never acknowledged: {:?}",
                r.meta
            )));
        };
        let s = &self.segments[m.segment];
        check!(
            r.meta == m.meta && r.worker == m.worker && r.name.is_empty(),
            "record {id}: meta {:?} of worker {}, appended {:?} on worker {}",
            r.meta,
            r.worker,
            m.meta,
            m.worker
        );
        check!(
            (r.segment_seq, r.offset) == (s.name.seq, m.offset),
            "record {id} read at segment {} offset {}, written at segment {} offset {}",
            r.segment_seq,
            r.offset,
            s.name.seq,
            m.offset
        );
        check!(
            r.body[..] == body(id as u64, m.len)[..],
            "record {id}: body differs ({} bytes read, {} written)",
            r.body.len(),
            m.len
        );
        check!(
            m.harm == Harm::None,
            "record {id} was destroyed ({:?}) but delivered",
            m.harm
        );
        Ok(id)
    }

    /// Index of the record of worker `w`'s stream the forwarder must deliver next (one past the
    /// end when it is done).
    fn due(&self, w: usize) -> usize {
        let stream = &self.by_worker[w];
        let mut due = self.fwd.next[w];
        while due < stream.len() && !self.records[stream[due]].survives() {
            due += 1;
        }
        due
    }

    /// A read returned `cursor`: it must not be past a record the forwarder has yet to get.
    fn read_to(&self, cursor: &Cursor) -> Checked {
        for w in 0..self.by_worker.len() {
            let Some(&id) = self.by_worker[w].get(self.due(w)) else {
                continue;
            };
            let r = &self.records[id];
            let segment = self.segments[r.segment].name;
            check!(
                !cursor.has_passed(segment, r.offset),
                "worker {w}: the forwarder's cursor {:?} passed record #{} (id {id}, segment {} \
                 offset {}), which it was never given",
                cursor.position(segment.worker),
                r.index,
                segment.seq,
                r.offset
            );
        }
        Ok(())
    }

    /// The forwarder received `r`: it must be the next surviving record of its worker's stream.
    fn delivered(&mut self, r: &LogRecord) -> Checked {
        let id = self.check_contents(r)?;
        let (w, index) = (usize::from(self.records[id].worker), self.records[id].index);
        let want = self.due(w);
        check!(
            index == want,
            "worker {w}: the forwarder got its record #{index} (id {id}) where #{want} was due \
             ({}; life {}, saved at #{})",
            if index < want {
                "a duplicate within one life"
            } else {
                "records skipped"
            },
            self.life,
            self.fwd.saved[w]
        );
        let m = &self.records[id];
        for &earlier in &m.delivered_in {
            check!(
                earlier < self.life,
                "record {id} delivered twice in life {}",
                self.life
            );
            let saved = self.fwd.saved_at_end[earlier as usize][w];
            check!(
                index >= saved,
                "record {id} delivered again though life {earlier} saved past it"
            );
        }
        self.records[id].delivered_in.push(self.life);
        self.fwd.next[w] = index + 1;
        Ok(())
    }

    /// The compactor took a whole sealed segment.
    fn took(&mut self, seg: &SealedSegment) -> Checked {
        let Some(&si) = self.segment_at.get(&seg.name) else {
            return Err(TestCaseError::fail(format!(
                "the compactor took an unknown segment {:?}",
                seg.name
            )));
        };
        let (worker, seq) = (seg.name.worker, seg.name.seq);
        let w = usize::from(worker);
        let after = self.cmp.taken[w];
        check!(
            after < Some(seq),
            "worker {worker}: segment {seq} taken after segment {after:?} in life {}",
            self.life
        );
        for (i, s) in self.segments.iter().enumerate() {
            let between = s.name.worker == worker && Some(s.name.seq) > after && s.name.seq < seq;
            check!(
                !between || self.surviving(i).next().is_none(),
                "worker {worker}: segment {} skipped by the compactor (took {seq})",
                s.name.seq
            );
        }
        let mut got = Vec::with_capacity(seg.records.len());
        for r in &seg.records {
            got.push(self.check_contents(r)?);
        }
        let want: Vec<usize> = self.surviving(si).collect();
        check!(
            got == want,
            "segment {:?}: the compactor got records {got:?}, the model holds {want:?}",
            seg.name
        );
        for &earlier in &self.segments[si].taken_in {
            let saved = self.cmp.saved_at_end[earlier as usize][w];
            check!(
                earlier < self.life && saved < Some(seq),
                "segment {:?} taken again in life {} (taken in life {earlier}, saved {saved:?})",
                seg.name,
                self.life
            );
        }
        self.segments[si].taken_in.push(self.life);
        for id in got {
            self.records[id].compacted += 1;
        }
        self.cmp.taken[w] = Some(seq);
        self.cmp.committed[w] = Some(seq);
        Ok(())
    }

    /// Compares the segment files present with the model: one that disappeared must have been
    /// passed (saved) by both consumers.
    fn observe(&mut self, dir: &Path) -> Checked {
        let present: BTreeSet<SegmentName> = consumer::list_segments(&dir.join(SEGMENTS_DIR))
            .expect("listing segments")
            .into_iter()
            .collect();
        for i in 0..self.segments.len() {
            let s = &self.segments[i];
            if s.gone || present.contains(&s.name) {
                continue;
            }
            check!(
                !self.needed(i),
                "segment {:?} disappeared before both consumers saved past it (forwarder saved \
                 {:?}, compactor saved {:?}; its records {:?})",
                s.name,
                self.fwd.saved,
                self.cmp.saved,
                s.records
            );
            self.segments[i].gone = true;
        }
        Ok(())
    }

    /// A restart or crash: each consumer resumes from what it saved.
    fn end_life(&mut self) {
        self.fwd.saved_at_end.push(self.fwd.saved.clone());
        self.cmp.saved_at_end.push(self.cmp.saved.clone());
        self.life += 1;
        self.fwd.next = self.fwd.saved.clone();
        self.fwd.committed = self.fwd.saved.clone();
        self.fwd.last_read = None;
        self.cmp.taken = self.cmp.saved.clone();
        self.cmp.committed = self.cmp.saved.clone();
    }

    /// Applies `damage` to the crash copy in `dir` and marks the records it destroys.
    fn damage(&mut self, dir: &Path, damage: &Damage) {
        let candidates: Vec<usize> = (0..self.segments.len())
            .filter(|&i| self.needed(i))
            .collect();
        let (segment, cut, flip) = match damage {
            Damage::Truncate { segment, at } if !candidates.is_empty() => {
                let s = candidates[segment.index(candidates.len())];
                let end = self.segments[s].end;
                (s, Some(at.index(end as usize + 1) as u64), None)
            }
            Damage::Flip {
                segment,
                record,
                byte,
            } if !candidates.is_empty() => {
                let s = candidates[segment.index(candidates.len())];
                let flippable: Vec<usize> = self
                    .surviving(s)
                    .filter(|&id| self.records[id].len > 0)
                    .collect();
                if flippable.is_empty() {
                    return;
                }
                let id = flippable[record.index(flippable.len())];
                (s, None, Some((id, byte.index(self.records[id].len))))
            }
            _ => return,
        };
        let path = dir
            .join(SEGMENTS_DIR)
            .join(self.segments[segment].name.file_name());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("a segment the consumers need is in the copy");
        if let Some(cut) = cut {
            if cut < file.metadata().unwrap().len() {
                file.set_len(cut).unwrap();
            }
            for &id in &self.segments[segment].records {
                let r = &mut self.records[id];
                // A cut header takes the whole segment (recovery sets it aside); a record
                // survives a cut in its padding.
                let whole = r.offset + (RECORD_HEADER_LEN + r.len) as u64;
                if cut < FIRST_RECORD || whole > cut {
                    r.harm = Harm::Cut;
                }
            }
        }
        if let Some((id, byte)) = flip {
            let at = self.records[id].offset + RECORD_HEADER_LEN as u64 + byte as u64;
            let mut b = [0u8; 1];
            file.read_exact_at(&mut b, at).unwrap();
            file.write_all_at(&[b[0] ^ 0x5a], at).unwrap();
            self.records[id].harm = Harm::Flipped;
        }
    }

    /// Flipped records the forwarder reads in this life (each counted corrupt once).
    fn flipped_ahead(&self) -> u64 {
        self.records
            .iter()
            .filter(|r| {
                r.harm == Harm::Flipped
                    && !self
                        .life_start
                        .has_passed(self.segments[r.segment].name, r.offset)
            })
            .count() as u64
    }
}

/// A running node: its service, a writer per worker, both consumers.
struct Node {
    dir: tempfile::TempDir,
    // Fields drop in order: writers and consumers before the service.
    writers: Vec<SegmentWriter>,
    forwarder: Consumer,
    compactor: Consumer,
    service: SegmentService,
}

fn config(dir: &Path) -> LogConfig {
    LogConfig {
        dir: dir.to_path_buf(),
        segment_size: SEG,
        // Rolls come from the operations (and sizes) only, never from the clock.
        segment_max_age: Duration::from_secs(3600),
        prefault_window: 16 << 10,
        disk_budget: None,
        durability: Durability::Os,
        flush_interval: LogConfig::DEFAULT_FLUSH_INTERVAL,
    }
}

/// The newest segment of `worker`: the one its writer just took.
fn newest(dir: &Path, worker: u16) -> SegmentName {
    consumer::list_segments(&dir.join(SEGMENTS_DIR))
        .unwrap()
        .into_iter()
        .filter(|n| n.worker == worker)
        .max()
        .expect("the writer's segment")
}

impl Node {
    fn start(dir: tempfile::TempDir, model: &mut Model) -> Result<Node, TestCaseError> {
        let service = SegmentService::start(config(dir.path()), WORKERS).unwrap();
        let forwarder = service.consumers().register(FORWARDER).unwrap();
        let compactor = service.consumers().register(COMPACTOR).unwrap();
        service.consumers().registration_complete();
        model.life_start = forwarder.committed().clone();
        // Recovery may have removed segments (emptied by damage) or set them aside.
        model.observe(dir.path())?;
        let mut writers = Vec::new();
        for worker in 0..WORKERS {
            writers.push(service.writer(worker).unwrap());
            model.started(worker, newest(dir.path(), worker))?;
        }
        Ok(Node {
            dir,
            writers,
            forwarder,
            compactor,
            service,
        })
    }

    /// A clean stop: writers closed, segments sealed.
    fn stop(self) -> tempfile::TempDir {
        let Node {
            dir,
            writers,
            forwarder,
            compactor,
            service,
        } = self;
        drop(writers);
        drop((forwarder, compactor));
        service.shutdown();
        dir
    }

    /// What a crash leaves: a copy of the directory taken while the writers are open.
    fn crash(self) -> tempfile::TempDir {
        let copy = tempfile::tempdir().unwrap();
        copy_tree(self.dir.path(), copy.path());
        drop(self.stop());
        copy
    }

    fn read(&mut self, model: &mut Model, max: usize) -> Checked {
        let mut out = Vec::new();
        let cursor = self
            .forwarder
            .read(&mut out, max, usize::MAX, Duration::ZERO)
            .unwrap();
        check!(
            out.len() <= max,
            "read {} records, asked for {max}",
            out.len()
        );
        for r in &out {
            model.delivered(r)?;
        }
        model.read_to(&cursor)?;
        model.fwd.last_read = Some((cursor, model.fwd.next.clone()));
        Ok(())
    }

    fn commit(&mut self, model: &mut Model) {
        if let Some((cursor, next)) = &model.fwd.last_read {
            self.forwarder.commit(cursor);
            for (c, &n) in model.fwd.committed.iter_mut().zip(next) {
                *c = (*c).max(n);
            }
        }
    }

    fn save(&mut self, model: &mut Model, forwarder: bool) {
        if forwarder {
            self.forwarder.save().unwrap();
            model.fwd.saved = model.fwd.committed.clone();
        } else {
            self.compactor.save().unwrap();
            model.cmp.saved = model.cmp.committed.clone();
        }
    }

    /// Takes one sealed segment; false when none is there.
    fn take(&mut self, model: &mut Model) -> Result<bool, TestCaseError> {
        let Some(seg) = self.compactor.next_sealed().unwrap() else {
            return Ok(false);
        };
        model.took(&seg)?;
        self.compactor.commit(&seg.cursor);
        Ok(true)
    }

    fn roll(&mut self, model: &mut Model, worker: u16) -> Checked {
        self.writers[usize::from(worker)].roll().unwrap();
        model.started(worker, newest(self.dir.path(), worker))
    }

    fn append(
        &mut self,
        model: &mut Model,
        worker: u16,
        session: u64,
        kind: RecordKind,
        len: usize,
    ) -> Checked {
        let id = model.next_id();
        let meta = RecordMeta {
            session_id: session,
            arrival_unix_ns: id,
            kind,
        };
        let w = &mut self.writers[usize::from(worker)];
        w.append(meta, b"", &[&body(id, len)]).unwrap();
        w.end_turn().unwrap();
        if model.appended(worker, meta, len) {
            model.started(worker, newest(self.dir.path(), worker))?;
        }
        model.place(id as usize);
        Ok(())
    }

    /// Sealed segments both consumers' saved cursors are past, still in `segments/`.
    fn retirable(&self) -> Vec<SegmentName> {
        let fwd = self.forwarder.state().saved().0;
        let cmp = self.compactor.state().saved().0;
        let dir = self.dir.path().join(SEGMENTS_DIR);
        consumer::list_segments(&dir)
            .unwrap()
            .into_iter()
            .filter(|&n| fwd.is_past(n) && cmp.is_past(n))
            .filter(|n| {
                std::fs::read(dir.join(n.file_name()))
                    .ok()
                    .and_then(|b| SegmentHeader::decode(&b).ok())
                    .is_some_and(|h| h.is_sealed())
            })
            .collect()
    }

    fn await_retention(&mut self, model: &mut Model) -> Checked {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = self.retirable();
            if left.is_empty() {
                break;
            }
            check!(
                Instant::now() < deadline,
                "retention kept {left:?}, which both consumers saved past"
            );
            std::thread::sleep(POLL);
        }
        model.observe(self.dir.path())
    }

    /// Closes the writers and consumes everything: every surviving record must reach both
    /// consumers, and retention must then retire every segment.
    fn drain(mut self, model: &mut Model) -> Checked {
        self.writers.clear();
        self.forwarder.set_save_interval(Duration::ZERO);
        self.compactor.set_save_interval(Duration::ZERO);
        let deadline = Instant::now() + DEADLINE;
        loop {
            model.observe(self.dir.path())?;
            self.read(model, usize::MAX)?;
            self.commit(model);
            if self.forwarder.save_if_due().unwrap() {
                model.fwd.saved = model.fwd.committed.clone();
            }
            while self.take(model)? {}
            if self.compactor.save_if_due().unwrap() {
                model.cmp.saved = model.cmp.committed.clone();
            }
            model.observe(self.dir.path())?;
            let left = consumer::list_segments(&self.dir.path().join(SEGMENTS_DIR)).unwrap();
            let undelivered: Vec<usize> = (0..model.records.len())
                .filter(|&id| {
                    let r = &model.records[id];
                    r.survives() && (r.delivered_in.is_empty() || r.compacted == 0)
                })
                .collect();
            if left.is_empty() && undelivered.is_empty() {
                break;
            }
            check!(
                Instant::now() < deadline,
                "after the final drain: records {undelivered:?} not delivered to both \
                 consumers; segments {left:?} not retired"
            );
            std::thread::sleep(POLL);
        }
        let corrupt = self
            .forwarder
            .state()
            .skipped
            .corrupt
            .load(std::sync::atomic::Ordering::Relaxed);
        check!(
            corrupt == model.flipped_ahead(),
            "the forwarder counted {corrupt} corrupt records, {} flipped ones lay ahead of it",
            model.flipped_ahead()
        );
        drop(self.stop());
        Ok(())
    }
}

/// Copies a data directory file by file, as a crash would leave it (without the lock).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        // Copying `spare/` opens spares while the service may hold its instant write lease on
        // one (`is_sole_opener`): the lease break signals SIGIO, which the service handles.
        if name == format::LOCK_FILE {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            copy_tree(&path, &to.join(&name));
            continue;
        }
        let is_segment = name.to_str().and_then(SegmentName::parse).is_some();
        // Gone meanwhile (retired, or taken from spare/): as if the crash came just after.
        let Some(bytes) = read_settled(&path, is_segment) else {
            continue;
        };
        std::fs::write(to.join(&name), bytes).unwrap();
    }
}

/// A file's bytes; for a segment, re-read while its header is half rewritten (see module doc).
fn read_settled(path: &Path, is_segment: bool) -> Option<Vec<u8>> {
    for _ in 0..100 {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => panic!("copying {}: {e}", path.display()),
        };
        if !is_segment || SegmentHeader::decode(&bytes) != Err(HeaderError::Checksum) {
            return Some(bytes);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("{}: header never settled", path.display());
}

fn run(ops: &[Op]) -> Checked {
    let mut model = Model::new();
    let mut node = Node::start(tempfile::tempdir().unwrap(), &mut model)?;
    for op in ops {
        match op {
            &Op::Append {
                worker,
                session,
                kind,
                len,
            } => node.append(&mut model, worker, session, kind, len)?,
            &Op::Roll { worker } => node.roll(&mut model, worker)?,
            &Op::Read { max } => node.read(&mut model, max)?,
            Op::Commit => node.commit(&mut model),
            &Op::Save { forwarder } => node.save(&mut model, forwarder),
            &Op::Take { save } => {
                node.take(&mut model)?;
                if save {
                    node.save(&mut model, false);
                }
            }
            Op::AwaitRetention => node.await_retention(&mut model)?,
            Op::Restart => {
                model.observe(node.dir.path())?;
                let dir = node.stop();
                model.end_life();
                node = Node::start(dir, &mut model)?;
            }
            Op::Crash { damage } => {
                model.observe(node.dir.path())?;
                let copy = node.crash();
                model.observe(copy.path())?;
                for d in damage {
                    model.damage(copy.path(), d);
                }
                model.end_life();
                node = Node::start(copy, &mut model)?;
            }
        }
        model.observe(node.dir.path())?;
    }
    node.drain(&mut model)
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

proptest! {
    #![proptest_config(Config {
        cases: cases(),
        // Each case starts services and syncs cursor files: shrink, but not for ever.
        max_shrink_iters: 400,
        ..Config::default()
    })]

    #[test]
    fn the_log_and_its_consumers_match_the_model(ops in prop::collection::vec(op(), 1..400)) {
        run(&ops)?;
    }
}

//! Consumers of the log: named, durable cursors over every worker's stream of records.
//!
//! In: the segment files of the running node (sealed ones and the open ones being written right
//! now), read with `pread(2)`; whole sealed segments ([`Consumer::next_sealed`]) through a
//! read-only mapping instead (`mmap::map_sealed`). Out, per consumer: committed records in
//! order, and a cursor that says how far it got. Threads: a [`Consumer`] is `Send` and runs on
//! its owner's thread (the compactor, a forwarder, the database writer); the
//! [`ConsumerRegistry`] it belongs to is shared with the segment service (retention reads every
//! consumer's *saved* cursor) and with the writers (who wake waiting consumers once per
//! event-loop turn).
//!
//! # Cursors
//!
//! A cursor holds, per worker, the [`Position`] of the next record that consumer has not yet
//! finished with: a segment sequence and a byte offset in that segment. Positions are totally
//! ordered per worker; a consumer is *past* segment `s` of worker `w` once its position for `w`
//! has a sequence above `s`. A consumer that never saw a worker is at its very beginning.
//!
//! The owner reads records, does its work (compacts them, or has a queue acknowledge them), and
//! then [`Consumer::commit`]s the [`Cursor`] that came back with the read. The committed cursor
//! is saved to `<data_dir>/consumers/<name>.cursor` atomically (temporary file, fsync, rename,
//! fsync of the directory) by [`Consumer::save_if_due`] at most every `save_interval`, and by
//! [`Consumer::save`] at shutdown. Retention retires a sealed segment only once every registered
//! consumer's *saved* cursor is past it, so a crash can never make a consumer resume inside a
//! segment that is gone.
//!
//! **At least once, and the duplicate window.** After a crash a consumer resumes from its last
//! saved cursor: it sees again every record it had committed since that save, and nothing it
//! had not committed is lost. The window is therefore at most one `save_interval` of committed
//! records (default [`DEFAULT_SAVE_INTERVAL`]), plus whatever the owner had read but not yet
//! committed (work in flight, never acknowledged downstream).
//!
//! # Reading
//!
//! Two ways to read, moving the same cursor:
//!
//! * [`Consumer::read`]: records one by one, the open segments included, as soon as they are
//!   committed. Each worker's stream is read in log order; the streams are merged by arrival
//!   time, and a record goes out only once every other stream was read (freshly, not from
//!   read-ahead) and found without a record after it arrived, so a record acknowledged before
//!   another was even sent (a session's start before its first batch, one batch before the
//!   next on another worker) is always delivered first, while a stream waiting on a record
//!   still being received (PENDING) holds back only itself.
//! * [`Consumer::next_sealed`]: one whole sealed segment at a time (the compactor).
//!
//! A consumer may read behind another ([`Consumer::read_behind`]): it then gets a record only
//! once that leader committed past it, and the leader's commits wake it. The forwarders read
//! behind the database writer, so a session's messages reach the queue only after its row.
//!
//! A reader of an open segment stops at the first record that is not committed yet (PENDING) and
//! at the end mark, and moves to the worker's next segment only once the one it is in is sealed
//! and read to its sealed length. A committed record whose checksum fails is read once more
//! (a `pread` racing the writer's last stores can see the state word before the body) and, if
//! it fails again, counted and skipped, as recovery would. A segment that disappeared before the
//! consumer read it (the disk budget forced it out) is counted and skipped.
//!
//! # Wake-ups
//!
//! Writers call [`ConsumerRegistry::wake`] once per event-loop turn in which they committed
//! something, and the segment service after each seal. A consumer with nothing to read waits
//! on a condition variable (no polling), with a generation counter so no wake-up is lost.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::Sender;
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use crate::log::budget::DiskBudget;
use crate::log::format::{
    RecordHeader, SegmentHeader, SegmentName, RECORD_CRC_START, RECORD_HEADER_LEN,
    SEGMENT_HEADER_LEN, STATE_ABANDONED, STATE_COMMITTED, STATE_END, STATE_PENDING,
};
use crate::log::reader::{read_sealed_file, StoredRecord};
use crate::log::scan::trusted_len;
use crate::log::{LogError, RecordKind};

/// Directory of the cursor files, beside `segments/`.
pub const CONSUMERS_DIR: &str = "consumers";
const CURSOR_SUFFIX: &str = ".cursor";
/// 1 s: the duplicate window after a crash is about this much committed work, and a save costs
/// two fsyncs, which a busy consumer should not pay per batch.
pub const DEFAULT_SAVE_INTERVAL: Duration = Duration::from_secs(1);
/// Bytes read from an open segment at once: a few dozen batches, small enough to stay in cache.
const READ_CHUNK: usize = 256 << 10;
/// A consumer with nothing to read re-checks the directory at least this often, in case a
/// wake-up came from a process it does not share memory with (none today; cheap insurance).
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// Where a consumer is in one worker's stream: the next record it has not finished with.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    pub seq: u64,
    pub offset: u64,
}

impl Position {
    /// The position just past segment `seq`.
    pub fn after(seq: u64) -> Position {
        Position {
            seq: seq.saturating_add(1),
            offset: 0,
        }
    }

    /// Whether every record of segment `seq` is behind this position.
    pub fn is_past(&self, seq: u64) -> bool {
        self.seq > seq
    }
}

/// A consumer's position in every worker's stream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Worker id -> position; a worker missing here is at its beginning.
    pub positions: BTreeMap<u16, Position>,
}

impl Cursor {
    pub fn position(&self, worker: u16) -> Position {
        self.positions.get(&worker).copied().unwrap_or_default()
    }

    /// Whether every record of `segment` is behind this cursor.
    pub fn is_past(&self, segment: SegmentName) -> bool {
        self.position(segment.worker).is_past(segment.seq)
    }

    /// Whether the record at `offset` of `segment` is behind this cursor.
    pub fn has_passed(&self, segment: SegmentName, offset: u64) -> bool {
        let at = Position {
            seq: segment.seq,
            offset,
        };
        self.position(segment.worker) > at
    }

    /// Moves each worker's position forward to `other`'s where that is further.
    pub fn advance_to(&mut self, other: &Cursor) {
        for (&worker, &pos) in &other.positions {
            let mine = self.positions.entry(worker).or_default();
            *mine = (*mine).max(pos);
        }
    }
}

/// The file a consumer's cursor is saved in.
#[derive(Serialize, Deserialize)]
struct CursorFile {
    version: u32,
    consumer: String,
    saved_unix_ns: u64,
    cursor: Cursor,
    /// What the consumer handed on up to this cursor, over its whole life (0 for one that does
    /// not count, such as the compactor; absent in files written before it was kept).
    #[serde(default)]
    delivered: Delivered,
}

/// Records and body bytes a consumer handed on (a forwarder: acknowledged by its queue).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    pub records: u64,
    pub bytes: u64,
}

const CURSOR_FILE_VERSION: u32 = 1;

/// Reads the saved cursor of `name` under `data_dir`; `None` if it was never saved.
pub fn load_cursor(data_dir: &Path, name: &str) -> Result<Option<(Cursor, SystemTime)>, LogError> {
    Ok(load_saved(data_dir, name)?.map(|(cursor, at, _)| (cursor, at)))
}

/// What the consumer `name` handed on up to its saved cursor (zero if it never saved one).
pub fn load_delivered(data_dir: &Path, name: &str) -> Result<Delivered, LogError> {
    Ok(load_saved(data_dir, name)?.map_or_else(Delivered::default, |(_, _, d)| d))
}

fn load_saved(
    data_dir: &Path,
    name: &str,
) -> Result<Option<(Cursor, SystemTime, Delivered)>, LogError> {
    let path = cursor_path(data_dir, name);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let file: CursorFile = serde_json::from_slice(&text).map_err(|e| {
        LogError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        ))
    })?;
    if file.version != CURSOR_FILE_VERSION {
        return Err(LogError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: unknown cursor version {}",
                path.display(),
                file.version
            ),
        )));
    }
    Ok(Some((
        file.cursor,
        UNIX_EPOCH + Duration::from_nanos(file.saved_unix_ns),
        file.delivered,
    )))
}

/// Where segments forced out unconsumed are recorded, one JSON object a line, for `ls`.
pub const FORCED_OUT_FILE: &str = "forced-out.jsonl";

/// Segments the disk budget forced out before every consumer read them: how many, their
/// bytes, and the last time (`None` if never).
pub fn forced_out(data_dir: &Path) -> io::Result<(u64, u64, Option<u64>)> {
    let text = match std::fs::read_to_string(data_dir.join(CONSUMERS_DIR).join(FORCED_OUT_FILE)) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, 0, None)),
        Err(e) => return Err(e),
    };
    let (mut n, mut bytes, mut last) = (0, 0, None);
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue; // a line cut by a crash
        };
        n += 1;
        bytes += v["bytes"].as_u64().unwrap_or(0);
        last = v["unix_ms"].as_u64().or(last);
    }
    Ok((n, bytes, last))
}

/// Names of every consumer that saved a cursor under `data_dir`, sorted.
pub fn saved_consumers(data_dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    let dir = data_dir.join(CONSUMERS_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name();
        if let Some(name) = name.to_str().and_then(|n| n.strip_suffix(CURSOR_SUFFIX)) {
            if valid_name(name) {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

fn cursor_path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir
        .join(CONSUMERS_DIR)
        .join(format!("{name}{CURSOR_SUFFIX}"))
}

/// Consumer names become file names: keep them to a safe alphabet.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".tmp-{}",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// A record and where it sits in the log (the consumer's unit of delivery).
pub type LogRecord = StoredRecord;

/// What happened to segments on their way to a segment-level consumer (the compactor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentEvent {
    /// The segment service sealed this segment: it will not change again.
    Sealed(SegmentName),
    /// The node is stopping.
    Shutdown,
}

/// Counters a consumer keeps of what it had to skip.
#[derive(Debug, Default)]
pub struct SkipCounters {
    /// Committed records whose checksum failed twice.
    pub corrupt: AtomicU64,
    /// Segments that were gone before this consumer read them (forced out by the disk budget).
    pub missing_segments: AtomicU64,
}

/// What the registry knows of one registered consumer.
pub struct ConsumerState {
    pub name: String,
    /// The cursor last saved to disk: what retention honours.
    saved: Mutex<(Cursor, SystemTime)>,
    /// The cursor last committed in memory.
    committed: Mutex<Cursor>,
    pub skipped: SkipCounters,
    /// Sealed segments its saved cursor is not past, as the segment service last counted.
    lag: Mutex<SegmentLag>,
    /// Another consumer reads behind this one: its commits wake waiting consumers.
    followed: AtomicBool,
}

/// What a consumer has not passed yet, in sealed segments (open segments are not counted: a
/// consumer is never expected to be past those).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentLag {
    pub segments: u64,
    pub bytes: u64,
    /// How long ago the oldest of them was sealed.
    pub oldest_sealed_for: Duration,
}

impl ConsumerState {
    pub fn saved(&self) -> (Cursor, SystemTime) {
        self.saved.lock().clone()
    }

    pub fn committed(&self) -> Cursor {
        self.committed.lock().clone()
    }

    /// Whether this consumer committed past the record at `offset` of `segment`.
    pub fn has_committed(&self, segment: SegmentName, offset: u64) -> bool {
        self.committed.lock().has_passed(segment, offset)
    }

    pub fn lag(&self) -> SegmentLag {
        *self.lag.lock()
    }

    pub(crate) fn set_lag(&self, lag: SegmentLag) {
        *self.lag.lock() = lag;
    }
}

/// The consumers of one node's log, their saved cursors, and the wake-up they wait on.
pub struct ConsumerRegistry {
    budget: Arc<DiskBudget>,
    data_dir: PathBuf,
    segments_dir: PathBuf,
    /// The node's workers, each a stream a reader merges, whether or not it has a segment file
    /// yet (see [`Consumer::read`]).
    workers: u16,
    consumers: Mutex<Vec<Arc<ConsumerState>>>,
    seal_listeners: Mutex<Vec<Sender<SegmentEvent>>>,
    /// Set once every consumer of the node is registered; retention waits for it, or it could
    /// retire a segment that a consumer about to register has not read.
    complete: AtomicBool,
    generation: AtomicU64,
    waiters: AtomicUsize,
    lock: Mutex<()>,
    cond: Condvar,
}

impl ConsumerRegistry {
    /// The data directory the registry keeps its files under.
    pub(crate) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub(crate) fn new(
        data_dir: &Path,
        segments_dir: &Path,
        workers: u16,
        budget: DiskBudget,
    ) -> io::Result<Arc<Self>> {
        std::fs::create_dir_all(data_dir.join(CONSUMERS_DIR))?;
        Ok(Arc::new(ConsumerRegistry {
            budget: Arc::new(budget),
            data_dir: data_dir.to_path_buf(),
            segments_dir: segments_dir.to_path_buf(),
            workers,
            consumers: Mutex::new(Vec::new()),
            seal_listeners: Mutex::new(Vec::new()),
            complete: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            cond: Condvar::new(),
        }))
    }

    /// Registers consumer `name` and loads its saved cursor (none: from the beginning). From
    /// now on retention keeps every segment this consumer is not past.
    pub fn register(self: &Arc<Self>, name: &str) -> Result<Consumer, LogError> {
        if !valid_name(name) {
            return Err(LogError::Config("consumer names are 1-64 of [A-Za-z0-9_-]"));
        }
        let (cursor, saved_at, delivered) = load_saved(&self.data_dir, name)?.unwrap_or((
            Cursor::default(),
            UNIX_EPOCH,
            Delivered::default(),
        ));
        let state = Arc::new(ConsumerState {
            name: name.to_string(),
            saved: Mutex::new((cursor.clone(), saved_at)),
            committed: Mutex::new(cursor.clone()),
            skipped: SkipCounters::default(),
            lag: Mutex::new(SegmentLag::default()),
            followed: AtomicBool::new(false),
        });
        {
            let mut consumers = self.consumers.lock();
            if consumers.iter().any(|c| c.name == name) {
                return Err(LogError::Config("a consumer of that name is registered"));
            }
            consumers.push(Arc::clone(&state));
        }
        Ok(Consumer {
            registry: Arc::clone(self),
            state,
            path: cursor_path(&self.data_dir, name),
            streams: BTreeMap::new(),
            read_to: cursor.clone(),
            committed: cursor.clone(),
            saved: cursor,
            last_save: Instant::now(),
            save_interval: DEFAULT_SAVE_INTERVAL,
            delivered,
            leader: None,
        })
    }

    /// The node's disk budget: the compactor publishes what its files take and frees them
    /// first; the segment service does the rest (see `budget`).
    pub fn budget(&self) -> &Arc<DiskBudget> {
        &self.budget
    }

    /// Every registered consumer.
    pub fn consumers(&self) -> Vec<Arc<ConsumerState>> {
        self.consumers.lock().clone()
    }

    /// Says that every consumer is registered: from now on retention may retire segments that
    /// all of them are past. Registering more later is allowed but they may find gaps.
    pub fn registration_complete(&self) {
        self.complete.store(true, Ordering::SeqCst);
    }

    /// Whether retention may retire `segment`: registration is complete, at least one consumer
    /// is registered, and every one of them has saved a cursor past it.
    pub fn all_past(&self, segment: SegmentName) -> bool {
        if !self.complete.load(Ordering::SeqCst) {
            return false;
        }
        let consumers = self.consumers.lock();
        !consumers.is_empty() && consumers.iter().all(|c| c.saved.lock().0.is_past(segment))
    }

    /// Sends `Sealed` events to `listener` from now on (a full listener misses events; it
    /// must treat them as wake-ups and look at the log itself).
    pub fn listen_for_seals(&self, listener: Sender<SegmentEvent>) {
        self.seal_listeners.lock().push(listener);
    }

    /// Notes a segment the disk budget forced out unconsumed, for `ls` (the log line and the
    /// counter are the service's).
    pub(crate) fn record_forced_out(&self, segment: SegmentName, bytes: u64) {
        let line = serde_json::json!({
            "segment": segment.file_name(),
            "bytes": bytes,
            "unix_ms": SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        });
        let path = self.data_dir.join(CONSUMERS_DIR).join(FORCED_OUT_FILE);
        let written = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = written {
            log::error!("{}: {e}", path.display());
        }
    }

    pub(crate) fn sealed(&self, segment: SegmentName) {
        for listener in self.seal_listeners.lock().iter() {
            let _ = listener.try_send(SegmentEvent::Sealed(segment));
        }
        self.wake();
    }

    /// New records are committed (or a segment sealed): wakes every waiting consumer. Costs
    /// two atomic operations when nobody waits.
    pub fn wake(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _guard = self.lock.lock();
            self.cond.notify_all();
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Waits until the generation moves past `seen` or `timeout` passes.
    fn wait_past(&self, seen: u64, timeout: Duration) {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        let mut guard = self.lock.lock();
        while self.generation() == seen {
            if self.cond.wait_until(&mut guard, deadline).timed_out() {
                break;
            }
        }
        drop(guard);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One whole sealed segment, for a segment-level consumer.
pub struct SealedSegment {
    pub name: SegmentName,
    pub header: SegmentHeader,
    pub records: Vec<LogRecord>,
    /// Cursor past this segment (and everything read before it): commit it once done.
    pub cursor: Cursor,
}

/// A registered consumer: reads the log in order and keeps its cursor. Move it to the thread
/// that consumes.
pub struct Consumer {
    registry: Arc<ConsumerRegistry>,
    state: Arc<ConsumerState>,
    path: PathBuf,
    streams: BTreeMap<u16, Stream>,
    /// Just past what was handed out by reads.
    read_to: Cursor,
    committed: Cursor,
    saved: Cursor,
    last_save: Instant,
    save_interval: Duration,
    /// What was handed on up to `committed`, saved with it.
    delivered: Delivered,
    /// The consumer this one reads behind ([`Consumer::read_behind`]).
    leader: Option<Arc<ConsumerState>>,
}

impl Consumer {
    pub fn name(&self) -> &str {
        &self.state.name
    }

    pub fn state(&self) -> &Arc<ConsumerState> {
        &self.state
    }

    pub fn set_save_interval(&mut self, interval: Duration) {
        self.save_interval = interval;
    }

    /// From now on [`Consumer::read`] hands out only records that `leader` has committed (a
    /// forwarder behind the database writer: a session's messages go to the queue only once
    /// its row is in the database). The leader's commits wake this consumer.
    pub fn read_behind(&mut self, leader: &Arc<ConsumerState>) {
        leader.followed.store(true, Ordering::SeqCst);
        self.leader = Some(Arc::clone(leader));
    }

    /// The node's disk budget (see `budget`).
    pub fn budget(&self) -> &Arc<DiskBudget> {
        self.registry.budget()
    }

    /// Whether `segment` is still in the log (not retired, not forced out).
    pub fn segment_present(&self, segment: SegmentName) -> bool {
        self.registry
            .segments_dir
            .join(segment.file_name())
            .exists()
    }

    /// The cursor committed so far.
    pub fn committed(&self) -> &Cursor {
        &self.committed
    }

    /// Moves the cursor forward to `cursor` (what a read returned, or a position the owner
    /// knows is done, such as segments a compacted file already holds). Never moves back.
    pub fn commit(&mut self, cursor: &Cursor) {
        self.committed.advance_to(cursor);
        self.read_to.advance_to(cursor);
        *self.state.committed.lock() = self.committed.clone();
        if self.state.followed.load(Ordering::Relaxed) {
            self.registry.wake();
        }
    }

    /// [`Consumer::commit`] for a consumer that hands records on: also counts what it handed
    /// on (kept in the cursor file with the cursor, for `ls`).
    pub fn commit_delivered(&mut self, cursor: &Cursor, records: u64, bytes: u64) {
        self.delivered.records += records;
        self.delivered.bytes += bytes;
        self.commit(cursor);
    }

    /// Forgets what was read since the last commit: the next read starts at the committed
    /// cursor again. For an owner whose work on what it read failed (a full disk, a queue
    /// down) and that will try again.
    pub fn rewind(&mut self) {
        self.read_to = self.committed.clone();
        self.streams.clear();
    }

    /// Saves the committed cursor if it moved and the save interval has passed.
    pub fn save_if_due(&mut self) -> io::Result<bool> {
        if self.committed == self.saved || self.last_save.elapsed() < self.save_interval {
            return Ok(false);
        }
        self.save().map(|()| true)
    }

    /// Saves the committed cursor now (atomically), and lets retention see it.
    pub fn save(&mut self) -> io::Result<()> {
        let now = SystemTime::now();
        let file = CursorFile {
            version: CURSOR_FILE_VERSION,
            consumer: self.state.name.clone(),
            saved_unix_ns: now
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            cursor: self.committed.clone(),
            delivered: self.delivered,
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(io::Error::other)?;
        write_atomically(&self.path, &bytes)?;
        self.saved = self.committed.clone();
        self.last_save = Instant::now();
        *self.state.saved.lock() = (self.saved.clone(), now);
        Ok(())
    }

    /// Reads committed records in order into `out` (appending), at most `max_records` and about
    /// `max_bytes` of bodies. Waits up to `wait` when nothing is there yet. Returns the cursor
    /// just past what was read: commit it once those records are done with.
    pub fn read(
        &mut self,
        out: &mut Vec<LogRecord>,
        max_records: usize,
        max_bytes: usize,
        wait: Duration,
    ) -> Result<Cursor, LogError> {
        let start = out.len();
        let deadline = Instant::now() + wait;
        loop {
            let seen = self.registry.generation();
            self.read_available(out, start, max_records, max_bytes)?;
            let now = Instant::now();
            if out.len() > start || now >= deadline {
                return Ok(self.read_to.clone());
            }
            self.registry
                .wait_past(seen, (deadline - now).min(IDLE_RECHECK));
        }
    }

    fn read_available(
        &mut self,
        out: &mut Vec<LogRecord>,
        start: usize,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<(), LogError> {
        self.discover_workers()?;
        let mut bytes = 0usize;
        while out.len() - start < max_records && bytes < max_bytes {
            // The stream whose next record arrived first. A record goes out only once every
            // stream without one was seen empty after it arrived: a record committed before
            // then (its request answered before this one's arrived, as a session's batches
            // are) would have been seen, so it goes first. Per session, log order is arrival
            // order across workers.
            let mut best: Option<(u64, u16)> = None;
            for (&worker, stream) in self.streams.iter() {
                if let Some(head) = &stream.head {
                    let arrival = head.meta.arrival_unix_ns;
                    if best.is_none_or(|(a, _)| arrival < a) {
                        best = Some((arrival, worker));
                    }
                }
            }
            let mut unknown = false;
            // Until every stream without a record was seen empty after the best one arrived:
            // a stream looked at before a later one yielded the best may have committed since.
            loop {
                for (&worker, stream) in self.streams.iter_mut() {
                    let bound = best.map_or(u64::MAX, |(a, _)| a);
                    if stream.head.is_some() || stream.clear_at_ns >= bound {
                        continue;
                    }
                    let looked_at = wall_clock_ns();
                    match stream.peek(&self.registry, &self.state.skipped)? {
                        Peeked::Record(arrival) => {
                            if best.is_none_or(|(a, _)| arrival < a) {
                                best = Some((arrival, worker));
                            }
                        }
                        Peeked::Empty => stream.clear_at_ns = looked_at,
                        Peeked::Unknown => unknown = true,
                    }
                }
                let Some((bound, _)) = best else { break };
                let settled = self
                    .streams
                    .values()
                    .all(|s| s.head.is_some() || s.clear_at_ns >= bound);
                if settled || unknown {
                    break;
                }
            }
            // A stream we could not read this instant may hold an earlier record.
            let Some((_, worker)) = best.filter(|_| !unknown) else {
                break;
            };
            let stream = self.streams.get_mut(&worker).expect("picked from the map");
            if let (Some(leader), Some(head)) = (&self.leader, &stream.head) {
                let segment = SegmentName {
                    worker,
                    seq: head.segment_seq,
                };
                if !leader.has_committed(segment, head.offset) {
                    // In log order, this is the next record: nothing after it goes first.
                    break;
                }
            }
            let record = stream.take().expect("peeked");
            bytes += record.body.len();
            out.push(record);
            self.read_to.positions.insert(worker, stream.pos);
        }
        // Streams that moved past sealed segments without records still moved the cursor.
        for (&worker, stream) in &self.streams {
            if stream.head.is_none() {
                let at = self.read_to.positions.entry(worker).or_default();
                *at = (*at).max(stream.pos);
            }
        }
        Ok(())
    }

    /// Opens a stream for every worker that has segments.
    /// Every worker of the node is a stream from the start, its first segment file there or
    /// not: a worker found only once its file appeared could be found in the middle of a read,
    /// after a later record of another worker went out. Files of workers the node no longer
    /// runs (it ran with more before a restart) are streams too.
    fn discover_workers(&mut self) -> Result<(), LogError> {
        let present = list_segments(&self.registry.segments_dir)?
            .into_iter()
            .map(|name| name.worker);
        for worker in (0..self.registry.workers).chain(present) {
            if !self.streams.contains_key(&worker) {
                let pos = self.read_to.position(worker);
                self.streams.insert(worker, Stream::new(worker, pos));
            }
        }
        Ok(())
    }

    /// The next sealed segment this consumer is not past (oldest first across workers), whole;
    /// `None` when every sealed segment is behind it. Segment-level consumers only: do not mix
    /// with [`Consumer::read`]. The records are read through a read-only mapping of the segment
    /// (`mmap::map_sealed`), which stays until the last of them is dropped.
    pub fn next_sealed(&mut self) -> Result<Option<SealedSegment>, LogError> {
        let mut candidates: BTreeMap<u16, SegmentName> = BTreeMap::new();
        for name in list_segments(&self.registry.segments_dir)? {
            if self.read_to.is_past(name) {
                continue;
            }
            let slot = candidates.entry(name.worker).or_insert(name);
            if name.seq < slot.seq {
                *slot = name;
            }
        }
        let mut best: Option<(u64, SegmentName, SegmentHeader)> = None;
        for name in candidates.into_values() {
            let path = self.registry.segments_dir.join(name.file_name());
            let Some(header) = read_header(&path)? else {
                continue;
            };
            if !header.is_sealed() {
                continue;
            }
            if best.is_none_or(|(created, _, _)| header.created_unix_ns < created) {
                best = Some((header.created_unix_ns, name, header));
            }
        }
        let Some((_, name, header)) = best else {
            return Ok(None);
        };
        let path = self.registry.segments_dir.join(name.file_name());
        let mut records = Vec::new();
        read_sealed_file(&path, name, header.sealed_len, &mut records)?;
        self.read_to
            .positions
            .insert(name.worker, Position::after(name.seq));
        Ok(Some(SealedSegment {
            name,
            header,
            records,
            cursor: self.read_to.clone(),
        }))
    }
}

/// Segment files present, by name.
pub(crate) fn list_segments(segments_dir: &Path) -> io::Result<Vec<SegmentName>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(segments_dir)? {
        if let Some(name) = entry?.file_name().to_str().and_then(SegmentName::parse) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// A segment's header, or `None` if the file is gone or its header is being rewritten.
fn read_header(path: &Path) -> io::Result<Option<SegmentHeader>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut head = [0u8; SEGMENT_HEADER_LEN];
    if file.read_exact_at(&mut head, 0).is_err() {
        return Ok(None);
    }
    Ok(SegmentHeader::decode(&head).ok())
}

/// Whether the worker of `segment` has a newer segment (so `segment` was rolled).
fn has_successor(segments_dir: &Path, segment: SegmentName) -> io::Result<bool> {
    Ok(list_segments(segments_dir)?
        .iter()
        .any(|n| n.worker == segment.worker && n.seq > segment.seq))
}

/// One worker's records, read forward from a position.
struct Stream {
    worker: u16,
    /// Just past the last record taken (or the head's position while one is peeked).
    pos: Position,
    open: Option<OpenSegment>,
    head: Option<LogRecord>,
    /// Position just past `head`.
    head_end: Position,
    /// Wall-clock time (ns, the clock of `arrival_unix_ns`) just before the last look that found
    /// no committed record: any record committed before then would have been seen.
    clear_at_ns: u64,
}

/// What a stream's look ahead found.
enum Peeked {
    /// The next committed record arrived then.
    Record(u64),
    /// No committed record past the cursor (the writer's end, or a record still pending).
    Empty,
    /// Could not tell (a segment header being rewritten by a seal, a file renamed meanwhile):
    /// look again before trusting it to be empty.
    Unknown,
}

/// The segment a stream is reading, and what it read ahead.
struct OpenSegment {
    file: File,
    name: SegmentName,
    header: SegmentHeader,
    /// Bytes of the file from `buf_at` on.
    buf: Bytes,
    buf_at: u64,
    /// A newer segment of this worker was seen: the next clean end is final.
    rolled: bool,
}

/// What the next bytes of a segment hold.
enum Next {
    Record(LogRecord, u64),
    /// At the end of what an open segment holds so far: more may come, unless the segment was
    /// rolled (a newer one exists), for after a roll nothing is added behind the end mark.
    End,
    /// Nothing more yet: a record is still being received (open segment).
    Wait,
    /// The segment is sealed and read to its end.
    Done,
}

fn wall_clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Stream {
    fn new(worker: u16, pos: Position) -> Stream {
        Stream {
            worker,
            pos,
            open: None,
            head: None,
            head_end: pos,
            clear_at_ns: 0,
        }
    }

    /// The arrival time of the next committed record, reading ahead if needed.
    fn peek(
        &mut self,
        registry: &ConsumerRegistry,
        skipped: &SkipCounters,
    ) -> Result<Peeked, LogError> {
        loop {
            if let Some(head) = &self.head {
                return Ok(Peeked::Record(head.meta.arrival_unix_ns));
            }
            if self.open.is_none() {
                match self.open_next(&registry.segments_dir, skipped)? {
                    Opened::Yes => {}
                    Opened::NoSegment => return Ok(Peeked::Empty),
                    Opened::NotNow => return Ok(Peeked::Unknown),
                }
            }
            let open = self.open.as_mut().expect("opened above");
            match open.next(self.pos.offset, skipped)? {
                Next::Record(record, end) => {
                    self.head_end = Position {
                        seq: open.name.seq,
                        offset: end,
                    };
                    self.head = Some(record);
                }
                Next::Wait => return Ok(Peeked::Empty),
                // A rolled segment is complete at its end mark even before it is sealed (a
                // seal may wait for a slow upload's reservation that is already behind us).
                // The roll renamed the newer file after the last record was committed, so
                // once the newer file is seen, one more fresh read finds the final end.
                Next::End if !open.rolled && has_successor(&registry.segments_dir, open.name)? => {
                    open.rolled = true;
                }
                Next::End => return Ok(Peeked::Empty),
                Next::Done => {
                    self.pos = Position::after(open.name.seq);
                    self.open = None;
                }
            }
        }
    }

    fn take(&mut self) -> Option<LogRecord> {
        let head = self.head.take()?;
        self.pos = self.head_end;
        // Past what the last empty look saw: what follows is unknown until looked at.
        self.clear_at_ns = 0;
        Some(head)
    }

    /// Opens the segment at or after `pos`.
    fn open_next(
        &mut self,
        segments_dir: &Path,
        skipped: &SkipCounters,
    ) -> Result<Opened, LogError> {
        let next = list_segments(segments_dir)?
            .into_iter()
            .filter(|n| n.worker == self.worker && n.seq >= self.pos.seq)
            .min();
        let Some(name) = next else {
            return Ok(Opened::NoSegment);
        };
        let path = segments_dir.join(name.file_name());
        let file = match File::open(&path) {
            Ok(file) => file,
            // Retired or forced out between the listing and the open.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Opened::NotNow),
            Err(e) => return Err(e.into()),
        };
        let mut head = [0u8; SEGMENT_HEADER_LEN];
        if file.read_exact_at(&mut head, 0).is_err() {
            return Ok(Opened::NotNow);
        }
        let Ok(header) = SegmentHeader::decode(&head) else {
            // Being sealed right now (header rewrite); look again next time.
            return Ok(Opened::NotNow);
        };
        if name.seq > self.pos.seq && self.pos.offset > 0 {
            // The segment we were inside is gone: the disk budget forced it out.
            skipped.missing_segments.fetch_add(1, Ordering::Relaxed);
            log::error!(
                "consumer stream of worker {}: segment {} vanished before it was read",
                self.worker,
                self.pos.seq
            );
        }
        if name.seq != self.pos.seq || self.pos.offset < SEGMENT_HEADER_LEN as u64 {
            self.pos = Position {
                seq: name.seq,
                offset: SEGMENT_HEADER_LEN as u64,
            };
        }
        self.open = Some(OpenSegment {
            file,
            name,
            header,
            buf: Bytes::new(),
            buf_at: 0,
            rolled: false,
        });
        Ok(Opened::Yes)
    }
}

enum Opened {
    Yes,
    /// No segment of this worker at or after the cursor.
    NoSegment,
    /// One is there but cannot be read this instant.
    NotNow,
}

impl OpenSegment {
    /// The next committed record at or after `offset`.
    fn next(&mut self, mut offset: u64, skipped: &SkipCounters) -> Result<Next, LogError> {
        let mut reread = false;
        // An end (or a pending record) seen in read-ahead bytes may be stale: the writer may
        // have committed there since. Only a fresh read may say "nothing more" (readers order
        // streams by it, see `read_available`).
        let mut fresh = self.buf.is_empty();
        loop {
            if self.header.is_sealed() && offset >= self.header.sealed_len {
                return Ok(Next::Done);
            }
            let Some(head) = self.bytes_at(offset, RECORD_HEADER_LEN)? else {
                match self.at_end(offset) {
                    Some(next) => return Ok(next),
                    None => continue,
                }
            };
            let mut head_bytes = [0u8; RECORD_HEADER_LEN];
            head_bytes.copy_from_slice(&head);
            let rec = RecordHeader::decode(&head_bytes);
            if (rec.state == STATE_END || rec.state == STATE_PENDING) && !fresh {
                self.buf = Bytes::new();
                fresh = true;
                continue;
            }
            if rec.state == STATE_END {
                match self.at_end(offset) {
                    Some(next) => return Ok(next),
                    None => continue,
                }
            }
            let Some(len) = trusted_len(&rec, self.header.tag()) else {
                // Torn bytes: in an open segment only a write in progress could look like this
                // (it cannot: the state word is stored last); in a sealed one, damage.
                return if self.header.is_sealed() {
                    log::warn!(
                        "{}: untrusted record header at {offset}; rest skipped",
                        self.name.file_name()
                    );
                    Ok(Next::Done)
                } else {
                    // Sealed meanwhile: the header above was re-read; look again.
                    match self.at_end(offset) {
                        Some(next) => Ok(next),
                        None => continue,
                    }
                };
            };
            let end = offset + len as u64;
            match rec.state {
                STATE_PENDING if !self.header.is_sealed() => {
                    // Still being received: look at fresh bytes next time.
                    self.buf = Bytes::new();
                    return Ok(Next::Wait);
                }
                STATE_PENDING | STATE_ABANDONED => {
                    offset = end;
                    continue;
                }
                STATE_COMMITTED => {}
                _ => unreachable!("trusted_len accepts only known states"),
            }
            let payload = RECORD_HEADER_LEN + rec.payload_len as usize;
            let Some(record) = self.bytes_at(offset, payload)? else {
                // A trusted header promises the bytes; a file shorter than that is damage.
                self.buf = Bytes::new();
                return Ok(if self.header.is_sealed() {
                    Next::Done
                } else {
                    Next::Wait
                });
            };
            let intact = self
                .header
                .record_checksum(&record[RECORD_CRC_START..payload])
                == rec.crc
                && RecordKind::from_u8(rec.kind).is_some()
                && rec.flags == 0;
            if !intact {
                if !reread && !self.header.is_sealed() {
                    // Our read may have raced the writer's last stores; read it again.
                    reread = true;
                    self.buf = Bytes::new();
                    continue;
                }
                skipped.corrupt.fetch_add(1, Ordering::Relaxed);
                offset = end;
                reread = false;
                continue;
            }
            let meta = rec.meta().expect("kind checked");
            let name_end = RECORD_HEADER_LEN + usize::from(rec.name_len);
            return Ok(Next::Record(
                StoredRecord {
                    meta,
                    worker: self.name.worker,
                    segment_seq: self.name.seq,
                    offset,
                    name: record[RECORD_HEADER_LEN..name_end].to_vec(),
                    body: record.slice(name_end..payload),
                },
                end,
            ));
        }
    }

    /// At a clean end of what is written: done if sealed there, else wait. Re-reads the header,
    /// which the service rewrites when it seals; `None` when it was sealed meanwhile with more
    /// records than this read saw (read on).
    fn at_end(&mut self, offset: u64) -> Option<Next> {
        self.buf = Bytes::new();
        if self.header.is_sealed() {
            return Some(Next::Done);
        }
        let mut head = [0u8; SEGMENT_HEADER_LEN];
        if self.file.read_exact_at(&mut head, 0).is_ok() {
            if let Ok(header) = SegmentHeader::decode(&head) {
                self.header = header;
            }
        }
        if !self.header.is_sealed() {
            Some(if self.rolled { Next::Done } else { Next::End })
        } else if offset < self.header.sealed_len {
            None
        } else {
            Some(Next::Done)
        }
    }

    /// `len` bytes at `offset`, from the read-ahead buffer or a fresh read; `None` if the file
    /// holds fewer (an end, or the writer's cursor).
    fn bytes_at(&mut self, offset: u64, len: usize) -> io::Result<Option<Bytes>> {
        let in_buf =
            offset >= self.buf_at && offset + len as u64 <= self.buf_at + self.buf.len() as u64;
        if !in_buf {
            let limit = if self.header.is_sealed() {
                self.header.sealed_len
            } else {
                self.header.capacity
            };
            let want = len
                .max(READ_CHUNK)
                .min(limit.saturating_sub(offset) as usize);
            if want < len {
                return Ok(None);
            }
            let mut buf = BytesMut::zeroed(want);
            let mut got = 0;
            while got < want {
                match self.file.read_at(&mut buf[got..], offset + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(got);
            self.buf = buf.freeze();
            self.buf_at = offset;
            if got < len {
                return Ok(None);
            }
        }
        let at = (offset - self.buf_at) as usize;
        Ok(Some(self.buf.slice(at..at + len)))
    }
}

/// How far behind a consumer is: what the log holds that its cursor has not passed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lag {
    pub records: u64,
    pub bytes: u64,
    /// Arrival of the oldest record not yet passed.
    pub oldest_unix_ns: Option<u64>,
}

impl Lag {
    /// The lag of `cursor` over stored records, each given as where it was written in the log
    /// (segment, offset), its body length and its arrival time, in any order, wherever the
    /// record is kept now (a segment, or a compacted file that remembers its origin).
    pub fn of(
        cursor: &Cursor,
        records: impl IntoIterator<Item = (SegmentName, u64, usize, u64)>,
    ) -> Lag {
        let mut lag = Lag::default();
        for (segment, offset, len, arrival) in records {
            if !cursor.has_passed(segment, offset) {
                lag.records += 1;
                lag.bytes += len as u64;
                lag.oldest_unix_ns = Some(lag.oldest_unix_ns.map_or(arrival, |o| o.min(arrival)));
            }
        }
        lag
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_and_pass() {
        let mut c = Cursor::default();
        let seg = SegmentName { worker: 1, seq: 4 };
        assert!(!c.is_past(seg));
        c.positions.insert(
            1,
            Position {
                seq: 4,
                offset: 500,
            },
        );
        assert!(!c.is_past(seg));
        assert!(c.has_passed(seg, 64));
        assert!(!c.has_passed(seg, 500));
        c.advance_to(&Cursor {
            positions: [
                (1, Position::after(4)),
                (2, Position { seq: 1, offset: 64 }),
            ]
            .into(),
        });
        assert!(c.is_past(seg));
        assert_eq!(c.position(2), Position { seq: 1, offset: 64 });
        // Never backwards.
        c.advance_to(&Cursor {
            positions: [(1, Position { seq: 0, offset: 0 })].into(),
        });
        assert!(c.is_past(seg));
    }

    #[test]
    fn names_are_checked() {
        for good in ["compactor", "redis-raw", "db_writer1"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "../x", "a b", "a.cursor", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}

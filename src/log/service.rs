//! The segment service: one background thread that keeps costly syscalls off the workers.
//!
//! In (a bounded crossbeam channel of [`Command`]s from the writers): requests to prepare a
//! worker's next segment, and segments to seal; and on a second channel, requests to pre-fault a
//! window ahead of a writer's cursor. Out: prepared segments (created, fallocated, mapped, first
//! window pre-faulted) on one bounded(1) channel per worker, sealed files on disk, and pages
//! faulted in ahead of the writers. Runs on two threads, started once by
//! [`SegmentService::start`] after start-up recovery: `segment-service` for the commands, and
//! `segment-prefault` for the pre-faults alone.
//!
//! Pre-faulting has its own thread because the service's other work blocks: sealing a segment
//! waits for its `fdatasync` (40-80 ms for 64 MiB here) and the background flush for its
//! `msync` (up to 150 ms), and measured at 64 KiB bodies the service spent two thirds of its
//! time blocked there. Pre-faults queued behind those let the writers outrun their runway, and
//! every page a worker then faults in itself (read into the page cache, then `page_mkwrite`)
//! was a third of its CPU time (`bench/RESULTS.md`, run 11).
//!
//! # Reusing retired files
//!
//! A segment file's pages cost most when they are new to the file: the kernel allocates and
//! zeroes each page and the file system allocates its blocks, about 30 µs per 64 KiB here (see
//! `bench/RESULTS.md`), more than receiving the bytes. So a segment that is done with (shipped,
//! forwarded, or otherwise retired) should be moved into `segments/spare/` rather than deleted:
//! the next prepared segment reuses the newest file found there (its pages likely still cached),
//! renamed and resized, instead of creating one. Its stale bytes are harmless: see
//! `format` on salts and end marks. A rolled segment that holds no record goes there too.
//!
//! How many are kept: [`SPARES_KEPT`] per worker always, and up to [`SPARES_KEPT_WITH_ROOM`]
//! per worker while the data directory (spares included) uses at most half its disk budget;
//! beyond that the oldest are deleted, at the next retirement check. The larger pool is for
//! bursts: while the compactor is behind no file comes back, so a burst writes new files, and
//! when it has caught up, a small pool would delete most of what it retired. The next burst
//! then takes new pages again, which is dearer still on a virtual machine that hands freed
//! memory back to its host (free page reporting): 0.5 GB/s to fault in and zero there, against
//! 6-8 GB/s for pages freed a moment before (`bench/RESULTS.md`, run 15). Kept under half the
//! budget, the pool never costs compacted data: the compactor deletes that only near the budget.
//!
//! A file is taken only when nothing else has it open (a write lease; see `mmap`): a segment
//! moved there too early (its writer or the service still holding it) or one still being copied
//! in waits until it is let go.
//!
//! # Retention
//!
//! A sealed segment is retired (into `spare/` while the pool has room, deleted beyond) once
//! every registered consumer's saved cursor is past it (`consumer`). Over the disk budget
//! (`budget`), when the compactor has nothing left to delete, spare files are deleted and then
//! the oldest sealed segments are forced out unconsumed, each logged at error level and counted.
//!
//! Each worker has at most one prepared segment in flight (its writer asks for the next one when
//! it takes one), so the service never blocks sending to a worker. A seal needs the last handle
//! to the segment's mapping before it unmaps it and truncates the file: queued pre-faults hold it
//! weakly, and a seal waits for a running one (`Shared::prefaulting`). Another handle (a
//! reservation, the flusher) puts the seal off; it is retried (`DEFERRED_SEAL_RETRY`). A worker's segments are sealed in order: a later one waits behind an
//! earlier one, so that retention and the consumers meet them in order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

use crate::log::budget::{dir_bytes, DiskBudget};
use crate::log::consumer::{self, ConsumerRegistry, SegmentLag};
use crate::log::format::{self, SegmentHeader, SegmentName, SEGMENT_HEADER_LEN};
use crate::log::mmap::{self, Region, SegmentMap};
use crate::log::recovery::{self, RecoverySummary};
use crate::log::writer::SegmentWriter;
use crate::log::{Durability, LogConfig, LogError};

/// Commands queued at once; seals wait for room.
const COMMAND_QUEUE: usize = 1024;
/// Pre-fault requests queued at once: beyond this they are dropped (they are only a speed-up),
/// and the writer asks again after its next record.
const PREFAULT_QUEUE: usize = 1024;
/// How often a seal that still waits for its last mapping handle is retried.
const DEFERRED_SEAL_RETRY: Duration = Duration::from_millis(20);
/// Spare files kept per worker (see the module doc); older ones are deleted.
pub const SPARES_KEPT: usize = 2;
/// Spare files kept per worker while the data directory uses at most half its budget.
pub const SPARES_KEPT_WITH_ROOM: usize = 16;
/// How often sealed segments are checked against the consumers' saved cursors: cursors are
/// saved about once a second, so a quarter of that retires a consumed segment promptly.
const RETIRE_CHECK: Duration = Duration::from_millis(250);

pub(crate) enum Command {
    Prepare { worker: u16 },
    Seal(SealJob),
    Shutdown,
}

/// Pages of a writer's open segment to fault in ahead of its cursor. The mapping is held weakly:
/// a queued request never keeps a rolled segment from being sealed.
pub(crate) struct Prefault {
    pub map: Weak<SegmentMap>,
    pub offset: usize,
    pub len: usize,
}

/// A rolled segment that no writer or reservation uses any more.
pub(crate) struct SealJob {
    pub map: Arc<SegmentMap>,
    pub file: File,
    pub path: PathBuf,
    pub header: SegmentHeader,
    /// End of the last record; `SEGMENT_HEADER_LEN` when the segment holds none.
    pub sealed_len: u64,
}

/// A segment file ready to be taken into use: full length, mapped, head pre-faulted. Blank, or
/// a reused file holding stale bytes.
pub(crate) struct PreparedSegment {
    pub file: File,
    pub prep_path: PathBuf,
    pub region: Region,
    /// Bytes from the start already pre-faulted.
    pub prefaulted: usize,
}

/// What the service and its writers share.
pub(crate) struct Shared {
    pub segments_dir: PathBuf,
    pub capacity: usize,
    pub max_age: Duration,
    pub prefault_window: usize,
    pub durability: Durability,
    flush_interval: Duration,
    pub commands: Sender<Command>,
    /// To the pre-fault thread; `None` stops it.
    pub prefaults: Sender<Option<Prefault>>,
    /// Held by the pre-fault thread while it holds a mapping, and by a seal while it unmaps: a
    /// seal never finds the pre-fault thread in its way (it would be put off, and the rolled
    /// file stay full size and out of retention's reach meanwhile), at the cost of waiting for
    /// one window's pre-fault at most.
    prefaulting: parking_lot::Mutex<()>,
    /// False once the kernel refused MADV_POPULATE_WRITE (before Linux 5.14): writers then
    /// fault their pages in themselves.
    prefault_supported: AtomicBool,
    pub workers: Vec<WorkerSlot>,
    /// Makes `.prep-` names unique.
    prep_counter: AtomicU64,
    /// Held while a segment file is taken from `spare/`, or checked against the budget, created
    /// and allocated; and while the budget's use is measured and published. A writer that
    /// stalled and the service may both prepare at once, and each must see what the other did:
    /// else both pass the budget check, or a measurement taken before a new file was allocated
    /// overwrites its count, or each finds the spare the other is opening open elsewhere
    /// (`mmap::is_sole_opener`) and creates a file instead.
    creating: parking_lot::Mutex<()>,
    /// Segment files reused from `spare/`, and new ones created.
    pub reused: AtomicU64,
    pub created: AtomicU64,
    /// Sealed segments retired once every consumer was past them.
    pub retired: AtomicU64,
    /// Sealed segments some consumer had not read, forced out by the retention limit.
    pub forced_out: AtomicU64,
    pub consumers: Arc<ConsumerRegistry>,
}

pub(crate) struct WorkerSlot {
    pub prepared: Receiver<io::Result<PreparedSegment>>,
    prepared_tx: Sender<io::Result<PreparedSegment>>,
    pub next_seq: AtomicU64,
    pub taken: AtomicBool,
    /// The writer's active segment and its cursor, for the background flush.
    pub active: parking_lot::Mutex<Option<Arc<SegmentMap>>>,
    pub cursor: AtomicUsize,
}

impl Shared {
    /// Takes a spare file (or creates one), sizes and fallocates it, and maps it, under a
    /// `.prep-` name. Used by the service, and by a writer that found nothing prepared (a stall).
    pub fn prepare(&self, worker: u16, prefault: bool) -> io::Result<PreparedSegment> {
        let n = self.prep_counter.fetch_add(1, Ordering::Relaxed);
        let prep_path = self.segments_dir.join(format::prep_file_name(worker, n));
        let made = (|| {
            // One at a time: a writer that stalled and the service may prepare at once, and
            // each must see what the other took or created (see `creating`).
            let creating = self.creating.lock();
            let file = match self.take_spare(&prep_path)? {
                Some(file) => {
                    self.reused.fetch_add(1, Ordering::Relaxed);
                    if file.metadata()?.len() > self.capacity as u64 {
                        file.set_len(self.capacity as u64)?;
                    }
                    file
                }
                None => {
                    // A new file adds its capacity to the data directory: refused when that
                    // goes over the budget and only forcing out (done by the service before it
                    // prepares, `make_room_for_segment`) could make room. While the compactor
                    // can still delete, its headroom covers the file.
                    let budget = self.consumers.budget();
                    if budget.excess_with(self.capacity as u64) > 0 && !budget.others_can_free() {
                        return Err(io::Error::new(io::ErrorKind::StorageFull, BudgetRefusal));
                    }
                    self.created.fetch_add(1, Ordering::Relaxed);
                    let file = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .mode(0o644)
                        .open(&prep_path)?;
                    budget.add_segment_bytes(self.capacity as u64);
                    file
                }
            };
            // Allocates only what is missing: all of a new file, the cut tail of a sealed one.
            mmap::allocate(&file, self.capacity as u64)?;
            drop(creating);
            let region = mmap::map_segment(&file, self.capacity)?;
            if self.durability == Durability::Fsync {
                region.map().keep_folios_small()?;
            }
            let mut prefaulted = 0;
            if prefault {
                let window = self.prefault_window.min(self.capacity);
                if region.map().populate_write(0, window)? {
                    prefaulted = window;
                }
            }
            Ok(PreparedSegment {
                file,
                prep_path: prep_path.clone(),
                region,
                prefaulted,
            })
        })();
        if made.is_err() {
            let _ = std::fs::remove_file(&prep_path);
        }
        // The budget's refusal is not a storage failure: readiness reports it as `full`.
        let failed = match &made {
            Ok(_) => false,
            Err(e) => !BudgetRefusal::is(e),
        };
        self.consumers.budget().set_storage_error(failed);
        made
    }

    /// How many spare files the pool keeps now (see the module doc).
    fn spares_to_keep(&self) -> usize {
        let budget = self.consumers.budget();
        let room = budget.used().saturating_add(self.capacity as u64) <= budget.limit() / 2;
        let per_worker = if room {
            SPARES_KEPT_WITH_ROOM
        } else {
            SPARES_KEPT
        };
        per_worker * self.workers.len().max(1)
    }

    fn has_spare(&self) -> bool {
        list_spares(&self.spare_dir()).is_ok_and(|spares| !spares.is_empty())
    }

    fn spare_dir(&self) -> PathBuf {
        self.segments_dir.join(format::SPARE_DIR)
    }

    /// Renames the newest file in `spare/` that nobody else has open to `prep_path` and opens
    /// it; deletes spares beyond what is kept. `None` when there is none (another thread may
    /// have raced us to each). A file still open elsewhere (being copied in, or read by a
    /// shipper) is left where it is: writing it as a segment would mix the two.
    fn take_spare(&self, prep_path: &Path) -> io::Result<Option<File>> {
        let mut spares = match list_spares(&self.spare_dir()) {
            Ok(spares) => spares,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // One is taken now; `keep` more stay for the next rolls.
        let keep = self.spares_to_keep();
        if spares.len() > keep + 1 {
            delete_spares(spares.drain(keep + 1..));
        }
        for spare in spares {
            let file = match OpenOptions::new().read(true).write(true).open(&spare) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if !mmap::is_sole_opener(&file)? {
                log::debug!("{}: open elsewhere, not reused yet", spare.display());
                continue;
            }
            match std::fs::rename(&spare, prep_path) {
                Ok(()) => return Ok(Some(file)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

/// Why [`Shared::prepare`] created no file: one more would go over the disk budget.
#[derive(Debug)]
pub(crate) struct BudgetRefusal;

impl BudgetRefusal {
    pub(crate) fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<BudgetRefusal>())
    }
}

impl std::fmt::Display for BudgetRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("disk budget: no room for another segment file")
    }
}

impl std::error::Error for BudgetRefusal {}

/// Regular files in `dir`, newest (last modified) first.
fn list_spares(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut spares = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() {
            spares.push((meta.modified()?, entry.path()));
        }
    }
    spares.sort_by(|a, b| b.cmp(a));
    Ok(spares.into_iter().map(|(_, path)| path).collect())
}

/// The background threads: one prepares (creates, fallocates, pre-faults) the next segment file
/// for each worker and seals rolled segments (sealed header, unmap, truncate to the used
/// length), the other pre-faults windows ahead of writers. Started once; workers talk to them
/// over channels.
pub struct SegmentService {
    pub(crate) shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    prefault_thread: Option<JoinHandle<()>>,
    recovery: RecoverySummary,
    /// Held (flock) for the service's life: recovery or a second node on the same directory
    /// would seal or delete files under the running writers.
    _lock: File,
}

impl SegmentService {
    /// Recovers `cfg.dir/segments` (see [`recovery::recover`]), then starts the service thread
    /// and has it prepare a first segment for each of `workers` workers.
    pub fn start(cfg: LogConfig, workers: u16) -> Result<Self, LogError> {
        let capacity = cfg.validate()?;
        survive_lease_breaks()?;
        let segments_dir = cfg.segments_dir();
        std::fs::create_dir_all(segments_dir.join(format::SPARE_DIR))?;
        let lock = recovery::lock_dir(&segments_dir)?;
        let summary = recovery::recover_locked(&segments_dir)?;
        let next_seqs = next_seqs(&segments_dir, &cfg.dir)?;
        let retained = Retained::scan(&segments_dir)?;
        let limit = match cfg.disk_budget {
            Some(setting) => setting.resolve(&cfg.dir)?,
            None => u64::MAX,
        };
        let consumers =
            ConsumerRegistry::new(&cfg.dir, &segments_dir, workers, DiskBudget::new(limit))?;
        // Room for each worker's next segment and the one after it.
        consumers
            .budget()
            .set_headroom(capacity as u64 * u64::from(workers) * 2);

        let (commands, command_rx) = bounded(COMMAND_QUEUE);
        let (prefaults, prefault_rx) = bounded(PREFAULT_QUEUE);
        let workers = (0..workers)
            .map(|w| {
                let (prepared_tx, prepared) = bounded(1);
                WorkerSlot {
                    prepared,
                    prepared_tx,
                    next_seq: AtomicU64::new(next_seqs.get(&w).copied().unwrap_or(0)),
                    taken: AtomicBool::new(false),
                    active: parking_lot::Mutex::new(None),
                    cursor: AtomicUsize::new(0),
                }
            })
            .collect();
        let shared = Arc::new(Shared {
            segments_dir,
            capacity,
            max_age: cfg.segment_max_age,
            prefault_window: cfg.prefault_window,
            durability: cfg.durability,
            flush_interval: cfg.flush_interval,
            commands,
            prefaults,
            prefaulting: parking_lot::Mutex::new(()),
            prefault_supported: AtomicBool::new(true),
            workers,
            prep_counter: AtomicU64::new(0),
            creating: parking_lot::Mutex::new(()),
            reused: AtomicU64::new(0),
            created: AtomicU64::new(0),
            retired: AtomicU64::new(0),
            forced_out: AtomicU64::new(0),
            consumers,
        });
        let thread_shared = Arc::clone(&shared);
        let prefault_thread = std::thread::Builder::new()
            .name("segment-prefault".into())
            .spawn(move || prefault(&thread_shared, &prefault_rx))?;
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("segment-service".into())
            .spawn(move || run(&thread_shared, &command_rx, retained))?;
        for worker in 0..shared.workers.len() as u16 {
            shared
                .commands
                .send(Command::Prepare { worker })
                .map_err(|_| io::Error::other("segment service stopped at start"))?;
        }
        Ok(SegmentService {
            shared,
            thread: Some(thread),
            prefault_thread: Some(prefault_thread),
            recovery: summary,
            _lock: lock,
        })
    }

    /// What start-up recovery found.
    pub fn recovery(&self) -> &RecoverySummary {
        &self.recovery
    }

    /// The log's consumers: register each before traffic flows, so retention waits for it.
    pub fn consumers(&self) -> &Arc<ConsumerRegistry> {
        &self.shared.consumers
    }

    /// Segment files created new, reused from `spare/`, retired after every consumer passed
    /// them, and forced out unconsumed by the retention limit.
    pub fn segment_counts(&self) -> SegmentCounts {
        self.counters().get()
    }

    /// A handle on [`SegmentService::segment_counts`] that does not hold the service: the
    /// admin listener keeps one to the end, while the node shuts the service down before it.
    pub fn counters(&self) -> SegmentCounters {
        SegmentCounters(Arc::clone(&self.shared))
    }

    /// Called on the worker's own thread (the writer is `!Send`). One writer per worker at a time.
    pub fn writer(&self, worker_id: u16) -> Result<SegmentWriter, LogError> {
        let slot = self
            .shared
            .workers
            .get(usize::from(worker_id))
            .ok_or(LogError::Worker(worker_id))?;
        if slot.taken.swap(true, Ordering::AcqRel) {
            return Err(LogError::Worker(worker_id));
        }
        SegmentWriter::open(Arc::clone(&self.shared), worker_id).inspect_err(|_| {
            slot.taken.store(false, Ordering::Release);
        })
    }

    /// Waits until every segment handed over for sealing is sealed, then stops the thread.
    /// Writers should be closed first: a segment rolled after this stays unsealed until the
    /// next start-up recovers it.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        // First the pre-faults: what they still hold of the segments' mappings would keep the
        // last seals from truncating their files.
        if let Some(thread) = self.prefault_thread.take() {
            let _ = self.shared.prefaults.send(None);
            if thread.join().is_err() {
                log::error!("segment pre-fault thread panicked");
            }
        }
        if let Some(thread) = self.thread.take() {
            // If the thread is gone the queue is disconnected; joining is all that is left.
            let _ = self.shared.commands.send(Command::Shutdown);
            if thread.join().is_err() {
                log::error!("segment service thread panicked");
            }
        }
    }
}

impl Drop for SegmentService {
    fn drop(&mut self) {
        self.stop();
    }
}

/// See [`SegmentService::counters`].
#[derive(Clone)]
pub struct SegmentCounters(Arc<Shared>);

impl SegmentCounters {
    pub fn get(&self) -> SegmentCounts {
        let s = &self.0;
        SegmentCounts {
            created: s.created.load(Ordering::Relaxed),
            reused: s.reused.load(Ordering::Relaxed),
            retired: s.retired.load(Ordering::Relaxed),
            forced_out: s.forced_out.load(Ordering::Relaxed),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentCounts {
    pub created: u64,
    pub reused: u64,
    pub retired: u64,
    pub forced_out: u64,
}

/// The write lease that `mmap::is_sole_opener` takes for an instant is broken when another
/// process (a shipper, `cp`) opens the spare file in that instant, and the kernel then signals
/// the lease holder with SIGIO, whose default action ends the process. A handler that only sets
/// a flag keeps the node alive; the lease is released right away regardless. Installed once.
fn survive_lease_breaks() -> io::Result<()> {
    static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            signal_hook::flag::register(
                signal_hook::consts::SIGIO,
                Arc::new(AtomicBool::new(false)),
            )
            .map(drop)
            .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(io::Error::other)
}

/// Next sequence per worker: one past the highest segment name present (set-aside `.bad` ones
/// included, so a sequence is never reused beside its damaged namesake), and never behind any
/// consumer's saved cursor: once every segment of a worker is retired, only the cursors
/// remember how far its sequence got, and a sequence that started over would put new records
/// behind every consumer, which would skip them.
fn next_seqs(segments_dir: &Path, data_dir: &Path) -> Result<HashMap<u16, u64>, LogError> {
    let mut next: HashMap<u16, u64> = HashMap::new();
    for name in consumer::saved_consumers(data_dir)? {
        if let Some((cursor, _)) = consumer::load_cursor(data_dir, &name)? {
            for (&worker, pos) in &cursor.positions {
                let seq = if pos.offset == 0 {
                    pos.seq
                } else {
                    pos.seq.saturating_add(1)
                };
                let slot = next.entry(worker).or_default();
                *slot = (*slot).max(seq);
            }
        }
    }
    for entry in std::fs::read_dir(segments_dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = SegmentName::parse(name).or_else(|| SegmentName::parse_bad(name)) {
            let after = n.seq.saturating_add(1);
            let slot = next.entry(n.worker).or_default();
            *slot = (*slot).max(after);
        }
    }
    Ok(next)
}

/// The pre-fault thread: faults in each requested window, in order, until told to stop; then
/// drops what is still queued (the writers are closed by then).
fn prefault(shared: &Shared, requests: &Receiver<Option<Prefault>>) {
    while let Ok(Some(Prefault { map, offset, len })) = requests.recv() {
        let _prefaulting = shared.prefaulting.lock();
        let Some(map) = map.upgrade() else { continue };
        if !shared.prefault_supported.load(Ordering::Relaxed) {
            continue;
        }
        match map.populate_write(offset, len) {
            Ok(true) => {}
            Ok(false) => {
                log::info!("MADV_POPULATE_WRITE unsupported: writers fault pages in");
                shared.prefault_supported.store(false, Ordering::Relaxed);
            }
            Err(e) => log::debug!("pre-faulting a segment window: {e}"),
        }
    }
    while requests.try_recv().is_ok() {}
}

fn run(shared: &Shared, commands: &Receiver<Command>, mut retained: Retained) {
    retained.enforce(shared);
    // Seals waiting: their mapping still has a handle somewhere, or an earlier segment of the
    // same worker waits. By worker and sequence: each worker's segments are sealed in order, so
    // that retention and the consumers see them in order.
    let mut deferred: BTreeMap<(u16, u64), SealJob> = BTreeMap::new();
    let mut next_flush = std::time::Instant::now() + shared.flush_interval;
    loop {
        let now = std::time::Instant::now();
        // "fsync" durability: every record is written back by its worker before its answer.
        if now >= next_flush && shared.durability == Durability::Os {
            flush_active(shared);
            next_flush = now + shared.flush_interval;
        }
        // Retention and the budget are checked four times a second even when idle: the
        // consumers' saves and the other files' growth come from other threads.
        let timeout = if deferred.is_empty() {
            RETIRE_CHECK
        } else {
            DEFERRED_SEAL_RETRY
        };
        let command = match commands.recv_timeout(timeout) {
            Ok(command) => Some(command),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(Command::Shutdown),
        };
        match command {
            None => {}
            Some(Command::Prepare { worker }) => {
                let Some(slot) = shared.workers.get(usize::from(worker)) else {
                    continue;
                };
                retained.make_room_for_segment(shared);
                let prefault = shared.prefault_supported.load(Ordering::Relaxed);
                let prepared = shared.prepare(worker, prefault);
                if let Err(e) = &prepared {
                    log::error!("preparing a segment for worker {worker}: {e}");
                }
                // Room is guaranteed (one in flight per worker); if not, the file is dropped
                // and its `.prep-` name cleaned up below.
                if let Err(e) = slot.prepared_tx.try_send(prepared) {
                    discard_prepared(shared, e.into_inner());
                }
            }
            Some(Command::Seal(job)) => {
                deferred.insert((job.header.worker, job.header.seq), job);
            }
            Some(Command::Shutdown) => break,
        }
        seal_in_order(shared, &mut deferred, &mut retained);
        retained.enforce(shared);
    }
    seal_in_order(shared, &mut deferred, &mut retained);
    for (_, job) in deferred {
        // Someone still maps it: seal the header, leave the length (readers honour sealed_len).
        let SealJob {
            file,
            path,
            header,
            sealed_len,
            ..
        } = job;
        log::warn!(
            "{}: sealed without truncation, still mapped",
            path.display()
        );
        if let Err(e) = write_sealed_header(&file, header, sealed_len) {
            log::error!("sealing {}: {e}", path.display());
        }
    }
    for slot in &shared.workers {
        while let Ok(prepared) = slot.prepared.try_recv() {
            discard_prepared(shared, prepared);
        }
    }
    log::info!(
        "segment files: {} created, {} reused from {}/, {} retired, {} forced out unconsumed",
        shared.created.load(Ordering::Relaxed),
        shared.reused.load(Ordering::Relaxed),
        format::SPARE_DIR,
        shared.retired.load(Ordering::Relaxed),
        shared.forced_out.load(Ordering::Relaxed),
    );
}

/// Sealed segments on disk, oldest first: retired once every consumer is past them, or forced
/// out by the retention limit.
#[derive(Default)]
struct Retained {
    /// Name, path, sealed length, and when it was sealed (for start-up: when it was found).
    segments: VecDeque<(SegmentName, PathBuf, u64, std::time::Instant)>,
    bytes: u64,
    /// When retention and the disk budget were last checked.
    budget_checked: Option<std::time::Instant>,
}

impl Retained {
    /// The sealed segments in `segments_dir` (all of them, after recovery), by creation time.
    fn scan(segments_dir: &Path) -> io::Result<Self> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(segments_dir)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().and_then(SegmentName::parse) else {
                continue;
            };
            let mut head = [0u8; SEGMENT_HEADER_LEN];
            let file = File::open(entry.path())?;
            if file.read_exact_at(&mut head, 0).is_err() {
                continue;
            }
            if let Ok(header) = SegmentHeader::decode(&head) {
                if header.is_sealed() {
                    let key = (header.created_unix_ns, name);
                    found.push((key, entry.path(), file.metadata()?.len()));
                }
            }
        }
        found.sort_by_key(|(key, _, _)| *key);
        let bytes = found.iter().map(|(_, _, len)| len).sum();
        let segments = found
            .into_iter()
            .map(|((_, name), p, len)| (name, p, len, std::time::Instant::now()))
            .collect();
        Ok(Retained {
            segments,
            bytes,
            budget_checked: None,
        })
    }

    fn push(&mut self, shared: &Shared, name: SegmentName, path: PathBuf, len: u64) {
        self.segments
            .push_back((name, path, len, std::time::Instant::now()));
        self.bytes += len;
        self.enforce(shared);
    }

    /// Retires every segment all consumers have passed (saved cursors), then enforces the disk
    /// budget; at most every [`RETIRE_CHECK`] (the service runs this after every command, and
    /// pre-fault requests come hundreds of times a second).
    fn enforce(&mut self, shared: &Shared) {
        let now = std::time::Instant::now();
        if self
            .budget_checked
            .is_some_and(|at| now.duration_since(at) < RETIRE_CHECK)
        {
            return;
        }
        self.budget_checked = Some(now);
        let before = self.segments.len();
        let mut kept = VecDeque::with_capacity(before);
        for (name, path, len, sealed_at) in std::mem::take(&mut self.segments) {
            if shared.consumers.all_past(name) {
                self.bytes -= len;
                retire(shared, &path);
                shared.retired.fetch_add(1, Ordering::Relaxed);
            } else {
                kept.push_back((name, path, len, sealed_at));
            }
        }
        self.segments = kept;
        trim_spares(shared);
        self.publish_lags(shared, now);
        if let Err(e) = self.enforce_budget(shared, 0) {
            log::error!("disk budget: {e}");
        }
    }

    /// Before a segment is prepared: unless a spare can be reused, makes room for a new file
    /// now rather than at the next check, so that the data directory never goes over the
    /// budget between checks (at 1 GB/s that is four 64 MiB segments).
    fn make_room_for_segment(&mut self, shared: &Shared) {
        if shared.has_spare() {
            return;
        }
        if let Err(e) = self.enforce_budget(shared, shared.capacity as u64) {
            log::error!("disk budget: {e}");
        }
    }

    /// Counts, for each consumer, the sealed segments its saved cursor is not past.
    fn publish_lags(&self, shared: &Shared, now: std::time::Instant) {
        for consumer in shared.consumers.consumers() {
            let (cursor, _) = consumer.saved();
            let mut lag = SegmentLag::default();
            for (name, _, len, sealed_at) in &self.segments {
                if !cursor.is_past(*name) {
                    lag.segments += 1;
                    lag.bytes += len;
                    lag.oldest_sealed_for = lag
                        .oldest_sealed_for
                        .max(now.saturating_duration_since(*sealed_at));
                }
            }
            consumer.set_lag(lag);
        }
    }

    /// Publishes what the segment files take; over the budget (with `need` bytes more to
    /// come), and once the compactor has nothing left to delete, deletes spare files and then
    /// forces out the oldest sealed segments; sets the budget's `full` flag when it is over
    /// and nothing is left to retire.
    fn enforce_budget(&mut self, shared: &Shared, need: u64) -> io::Result<()> {
        let budget = shared.consumers.budget();
        let spare_dir = shared.spare_dir();
        // The consumers' cursors and the forced-out record are the node's too.
        let consumers_dir = shared.consumers.data_dir().join(consumer::CONSUMERS_DIR);
        let measure = || -> io::Result<()> {
            let _creating = shared.creating.lock();
            let bytes = dir_bytes(&shared.segments_dir)?
                + dir_bytes(&spare_dir)?
                + dir_bytes(&consumers_dir)?;
            budget.publish_segments(bytes);
            Ok(())
        };
        measure()?;
        if budget.excess_with(need) > 0 && !budget.others_can_free() {
            for spare in list_spares(&spare_dir)? {
                if budget.excess_with(need) == 0 {
                    break;
                }
                if std::fs::remove_file(&spare).is_ok() {
                    measure()?;
                }
            }
            while budget.excess_with(need) > 0 {
                let Some((name, path, len, _)) = self.segments.pop_front() else {
                    break;
                };
                self.bytes -= len;
                log::error!(
                    "disk budget: {} forced out before every consumer read it ({} bytes of \
                     records lost to them)",
                    name.file_name(),
                    len
                );
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                shared.forced_out.fetch_add(1, Ordering::Relaxed);
                shared.consumers.record_forced_out(name, len);
                measure()?;
            }
        }
        budget.set_full(budget.excess() > 0 && self.segments.is_empty());
        Ok(())
    }
}

/// Moves a sealed segment into `spare/`; `trim_spares`, right after the retirements, deletes
/// the oldest beyond what the pool keeps.
fn retire(shared: &Shared, path: &Path) {
    let spare = shared
        .spare_dir()
        .join(path.file_name().unwrap_or_default());
    match std::fs::rename(path, spare) {
        Ok(()) => {}
        // Gone already: someone else retired it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::error!("retiring {}: {e}", path.display()),
    }
}

/// Deletes the oldest spare files beyond what the pool keeps now: what the retirements just
/// added, or all but the floor once the data directory grew past half its budget.
fn trim_spares(shared: &Shared) {
    let Ok(mut spares) = list_spares(&shared.spare_dir()) else {
        return;
    };
    let keep = shared.spares_to_keep();
    if spares.len() > keep {
        delete_spares(spares.drain(keep..));
    }
}

fn delete_spares(spares: impl Iterator<Item = PathBuf>) {
    for old in spares {
        if let Err(e) = std::fs::remove_file(&old) {
            log::debug!("removing spare {}: {e}", old.display());
        }
    }
}

/// A prepared segment nobody will take: kept as a spare for the next start.
fn discard_prepared(shared: &Shared, prepared: io::Result<PreparedSegment>) {
    if let Ok(p) = prepared {
        let path = p.prep_path.clone();
        drop(p);
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let spare = shared.spare_dir().join(name.trim_start_matches('.'));
        if let Err(e) = std::fs::rename(&path, spare).or_else(|_| std::fs::remove_file(&path)) {
            log::warn!("removing unused {}: {e}", path.display());
        }
    }
}

/// Seals what waits, each worker's segments in order: a worker's first segment that cannot be
/// sealed yet holds back its later ones.
fn seal_in_order(
    shared: &Shared,
    waiting: &mut BTreeMap<(u16, u64), SealJob>,
    retained: &mut Retained,
) {
    let mut held_back = std::collections::HashSet::new();
    for ((worker, seq), job) in std::mem::take(waiting) {
        if held_back.contains(&worker) {
            waiting.insert((worker, seq), job);
        } else if let Some(job) = seal(shared, job, retained) {
            held_back.insert(worker);
            waiting.insert((worker, seq), job);
        }
    }
}

/// Seals a rolled segment: unmaps it, writes the sealed header, truncates the file to its used
/// length. A segment without records becomes a spare instead: there is nothing to compact. Gives
/// the job back if the mapping still has another handle.
fn seal(shared: &Shared, job: SealJob, retained: &mut Retained) -> Option<SealJob> {
    let SealJob {
        map,
        file,
        path,
        header,
        sealed_len,
    } = job;
    let unmapped = {
        let _prefaulting = shared.prefaulting.lock();
        mmap::unmap_if_last(map)
    };
    if let Err(map) = unmapped {
        return Some(SealJob {
            map,
            file,
            path,
            header,
            sealed_len,
        });
    }
    let result = if sealed_len <= SEGMENT_HEADER_LEN as u64 {
        let spare = shared
            .spare_dir()
            .join(path.file_name().unwrap_or_default());
        std::fs::rename(&path, spare).or_else(|_| std::fs::remove_file(&path))
    } else {
        // Header first: a crash between the two leaves a sealed header over a longer file,
        // which recovery finishes by truncating. Then to the disk: a sealed segment is never
        // at the mercy of a power loss, whatever the durability mode.
        write_sealed_header(&file, header, sealed_len)
            .and_then(|()| file.set_len(sealed_len))
            .and_then(|()| file.sync_data())
    };
    match result {
        Ok(()) if sealed_len > SEGMENT_HEADER_LEN as u64 => {
            let name = SegmentName {
                worker: header.worker,
                seq: header.seq,
            };
            retained.push(shared, name, path, sealed_len);
            shared.consumers.sealed(name);
        }
        Ok(()) => {}
        Err(e) => log::error!("sealing {}: {e}", path.display()),
    }
    None
}

/// Writes back what each writer has put in its open segment ("os" durability: what a power
/// loss may cost is bounded by the flush interval). Only dirty pages reach the disk.
fn flush_active(shared: &Shared) {
    for (worker, slot) in shared.workers.iter().enumerate() {
        let map = slot.active.lock().clone();
        let Some(map) = map else { continue };
        let cursor = slot.cursor.load(Ordering::Relaxed).min(map.len());
        if let Err(e) = map.sync_range(0, cursor) {
            log::error!("writing back worker {worker}'s segment: {e}");
        }
    }
}

pub(crate) fn write_sealed_header(file: &File, header: SegmentHeader, len: u64) -> io::Result<()> {
    file.write_all_at(&header.sealed_at(len).encode(), 0)
}

//! The compactor thread: the log's first consumer.
//!
//! In: [`SegmentEvent`]s over a bounded crossbeam channel (a segment was sealed; the node is
//! stopping), and the sealed segments themselves, read whole through the log's consumer API
//! ([`Consumer::next_sealed`]). Out: compacted files in `<data_dir>/compacted/` (see
//! [`format`](super::format)), quarantined records in `<data_dir>/quarantine/`, and the
//! compactor's cursor, which lets retention retire the segments it compacted. Thread: its own,
//! `compactor`, started by [`Compactor::start`].
//!
//! # One run
//!
//! The compactor takes every sealed segment it has not passed (up to [`RUN_BYTES`]), checks each
//! record ([`check_record`]), writes the good ones into one compacted file (grouped by session,
//! each session in its true order) and the bad ones into a quarantine file with their reason,
//! makes both durable, and only then commits and saves its cursor past those segments. A crash
//! at any step leaves the inputs (no compacted file yet: the run is redone) or the complete
//! output (its header lists the input segments; at start-up the cursor is moved past them), so
//! after a restart every acknowledged record is in exactly one place: a compacted file, or a
//! segment no compacted file lists. Readers apply the same rule (`compact::store`). A crash
//! between the quarantine file and the compacted file may quarantine a bad record twice.
//!
//! While it is behind (more than [`CATCH_UP_LAG`] of sealed segments unread) it compresses at a
//! faster zstd level, trading ratio for keeping up: a segment it holds back cannot be reused.
//! While it is close behind, it runs at `SCHED_IDLE`, on cores the request path leaves free
//! (see [`priority`](super::priority)).
//!
//! # Retention
//!
//! At least every [`RETENTION_CHECK`]: compacted files whose newest record is older than the
//! retention period are deleted, then, while the data directory is over its disk budget, the
//! oldest files whatever their age (each logged and counted); a file whose input segments are
//! still in the log is kept either way. The compactor publishes what its files take, so that
//! the segment service knows when only unconsumed segments are left to free (`log::budget`).

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::format::{self, CompactRecord, CompactedFileName, CompactedWriter, COMPACTED_DIR};
use super::priority::{self, Busy, Keeper};
use super::quarantine::{self, Quarantined};
use super::validate::check_record;
use crate::admin::Heartbeat;
use crate::log::budget::dir_bytes;
use crate::log::DiskBudget;
use crate::log::{Consumer, Cursor, LogError, Position, SealedSegment, SegmentEvent, SegmentName};

/// The compactor's name as a consumer of the log (its cursor file is `consumers/compactor.cursor`).
pub const CONSUMER_NAME: &str = "compactor";
/// Where quarantined records go, beside `segments/` and `compacted/`.
pub const QUARANTINE_DIR: &str = "quarantine";
/// Bytes of input segments one run takes at most: the writer holds a run's records in memory
/// (the node's RSS grows by about this much while it runs), and one default segment groups a
/// busy worker's sessions of several seconds together.
pub const RUN_BYTES: u64 = 64 << 20;
/// Behind by more than this (sealed segments unread, as the segment service last counted), the
/// compactor compresses at [`CATCH_UP_LEVEL`]: a compactor that falls behind at level 3 holds
/// segments back from reuse, which makes storing every new batch dearer (new files), and so
/// falls further behind. Measured here (bench/RESULTS.md run 6) level 3 compacts the tracker
/// mix at about 170 MB per CPU-second, while ingest at saturation stores about 390 MB/s.
pub const CATCH_UP_LAG: u64 = 2 * RUN_BYTES;
/// zstd's fastest standard level: about twice level 3's speed on these bodies, for a little
/// less ratio. Behind by more than four times [`CATCH_UP_LAG`], [`FAST_LEVEL`].
pub const CATCH_UP_LEVEL: i32 = 1;
/// A negative ("fast") level: several times faster again, ratio of a plain LZ compressor.
pub const FAST_LEVEL: i32 = -5;
/// How often retention (age, disk budget) is checked: the budget must follow the disk closely,
/// and a check reads only the directory entries of new files.
pub const RETENTION_CHECK: Duration = Duration::from_secs(1);
/// Events queued for the compactor; a seal that finds the queue full is picked up by the next
/// run anyway (the events are wake-ups, the consumer API says what is sealed).
pub const EVENT_QUEUE: usize = 64;

#[derive(Clone, Debug)]
pub struct CompactorConfig {
    pub data_dir: PathBuf,
    /// zstd level of the compacted files.
    pub level: i32,
    /// Compacted data older than this (by its newest record) is deleted.
    pub retention: Duration,
}

impl CompactorConfig {
    /// 72 hours: three days of sessions to replay or re-export, as long as OpenReplay's own
    /// default retention of raw recordings.
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(72 * 3600);

    pub fn new(data_dir: &Path) -> Self {
        CompactorConfig {
            data_dir: data_dir.to_path_buf(),
            level: format::DEFAULT_LEVEL,
            retention: Self::DEFAULT_RETENTION,
        }
    }
}

/// What the compactor did, for logs, `ls`, metrics and benchmarks.
#[derive(Debug, Default)]
pub struct CompactorStats {
    pub runs: AtomicU64,
    pub segments: AtomicU64,
    pub records: AtomicU64,
    /// Record bytes (names and bodies) that went in.
    pub raw_bytes: AtomicU64,
    /// Bytes of compacted files written.
    pub file_bytes: AtomicU64,
    /// Records set aside because they do not walk.
    pub quarantined: AtomicU64,
    /// Compacted files deleted because they were older than the retention period.
    pub expired_files: AtomicU64,
    /// Nanoseconds spent in runs (reading, checking, compressing, syncing).
    pub busy_ns: AtomicU64,
    /// 1 while the compactor yields the CPU to the request path (`SCHED_IDLE`, see
    /// [`priority`](super::priority)), 0 at normal priority.
    pub yielding: AtomicU64,
}

/// The running compactor thread.
pub struct Compactor {
    /// Its priority's keeper (`None`: the compactor runs at normal priority all along). Before
    /// `thread`: dropped first, so that it never sets the policy of a thread no longer joinable.
    keeper: Option<Keeper>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<CompactorStats>,
}

impl Compactor {
    /// Starts the thread. `events` should be listening for seals already
    /// (`ConsumerRegistry::listen_for_seals`); send it [`SegmentEvent::Shutdown`] to stop.
    pub fn start(
        consumer: Consumer,
        events: Receiver<SegmentEvent>,
        config: CompactorConfig,
        heartbeat: Arc<Heartbeat>,
    ) -> io::Result<Compactor> {
        let stats = Arc::new(CompactorStats::default());
        let mut state = State::open(consumer, config, Arc::clone(&stats), heartbeat)?;
        let inputs = priority::Inputs {
            busy: Arc::clone(&state.busy),
            lag: Arc::clone(state.consumer.state()),
            budget: Arc::clone(state.consumer.budget()),
            stats: Arc::clone(&stats),
        };
        let thread = std::thread::Builder::new()
            .name("compactor".into())
            .spawn(move || state.run(&events))?;
        let keeper = Keeper::start(&thread, inputs);
        Ok(Compactor {
            keeper,
            thread: Some(thread),
            stats,
        })
    }

    pub fn stats(&self) -> &Arc<CompactorStats> {
        &self.stats
    }

    /// Waits for the thread to finish (after it was sent `Shutdown`), at normal priority: its
    /// last run must not wait for idle cores.
    pub fn join(mut self) {
        drop(self.keeper.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("compactor thread panicked");
            }
        }
    }
}

struct State {
    consumer: Consumer,
    /// Since when it has had work without a pause, for its priority keeper.
    busy: Arc<Busy>,
    /// The zstd level of the last run (see `level_for_lag`).
    last_level: i32,
    heartbeat: Arc<Heartbeat>,
    /// Every compacted file, oldest first.
    files: Vec<KnownFile>,
    config: CompactorConfig,
    compacted_dir: PathBuf,
    quarantine_dir: PathBuf,
    stats: Arc<CompactorStats>,
}

impl State {
    /// Cleans up after a crash: `.tmp-` files go, and the cursor moves past every segment a
    /// complete compacted file already holds.
    fn open(
        mut consumer: Consumer,
        config: CompactorConfig,
        stats: Arc<CompactorStats>,
        heartbeat: Arc<Heartbeat>,
    ) -> io::Result<State> {
        let compacted_dir = config.data_dir.join(COMPACTED_DIR);
        let quarantine_dir = config.data_dir.join(QUARANTINE_DIR);
        std::fs::create_dir_all(&compacted_dir)?;
        std::fs::create_dir_all(&quarantine_dir)?;
        let removed = format::remove_leftovers(&compacted_dir)?;
        if removed > 0 {
            log::info!("compactor: removed {removed} unfinished compacted files");
        }
        let covered = covered_cursor(&compacted_dir)?;
        if !consumer.committed().positions.is_empty() || !covered.positions.is_empty() {
            let before = consumer.committed().clone();
            consumer.commit(&covered);
            if consumer.committed() != &before {
                log::info!("compactor: cursor moved past segments already compacted");
                consumer.save()?;
            }
        }
        let mut files = Vec::new();
        for name in format::list_compacted(&compacted_dir)? {
            files.push(KnownFile::read(&compacted_dir, name)?);
        }
        Ok(State {
            busy: Arc::new(Busy::default()),
            last_level: config.level,
            consumer,
            heartbeat,
            files,
            config,
            compacted_dir,
            quarantine_dir,
            stats,
        })
    }

    fn run(&mut self, events: &Receiver<SegmentEvent>) {
        let mut next_retention = Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            self.heartbeat.beat();
            // One run at a time, so that retention (and the disk budget's count of compacted
            // files) and a stop request are looked at between runs even while behind.
            // Counted as busy from the start of a run (one starved at SCHED_IDLE as well), until
            // a run finds nothing to do.
            self.busy.working(Instant::now());
            let compacted = match self.compact_run() {
                Ok(segments) => {
                    backoff = Duration::from_millis(100);
                    if segments == 0 {
                        self.busy.caught_up();
                    }
                    segments
                }
                Err(e) => {
                    // The segments of the failed run are read again on the next try.
                    self.consumer.rewind();
                    log::error!("compactor: {e}; retrying in {backoff:?}");
                    if matches!(events.recv_timeout(backoff), Ok(SegmentEvent::Shutdown)) {
                        break;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            if Instant::now() >= next_retention {
                if let Err(e) = self.retain() {
                    log::error!("compactor: retention: {e}");
                }
                next_retention = Instant::now() + RETENTION_CHECK;
            }
            let wait = if compacted > 0 {
                Duration::ZERO // more may be waiting: look at the events, then go on
            } else {
                next_retention.saturating_duration_since(Instant::now())
            };
            match events.recv_timeout(wait) {
                Ok(SegmentEvent::Sealed(_)) | Err(RecvTimeoutError::Timeout) => {}
                Ok(SegmentEvent::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // Everything sealed before the stop is compacted: the writers closed first.
        if let Err(e) = self.compact_available() {
            log::error!("compactor: last run: {e}");
        }
        if let Err(e) = self.consumer.save() {
            log::error!("compactor: saving its cursor: {e}");
        }
        let s = &self.stats;
        log::info!(
            "compactor: {} segments, {} records, {} bytes into {} bytes in {:.1} s busy, {} \
             quarantined, {} files expired",
            s.segments.load(Ordering::Relaxed),
            s.records.load(Ordering::Relaxed),
            s.raw_bytes.load(Ordering::Relaxed),
            s.file_bytes.load(Ordering::Relaxed),
            s.busy_ns.load(Ordering::Relaxed) as f64 / 1e9,
            s.quarantined.load(Ordering::Relaxed),
            s.expired_files.load(Ordering::Relaxed),
        );
    }

    /// Runs until no sealed segment is left; returns how many were compacted.
    fn compact_available(&mut self) -> Result<u64, LogError> {
        let mut total = 0;
        loop {
            match self.compact_run()? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    }

    /// One run: the next sealed segments, up to [`RUN_BYTES`]; returns how many (0: none).
    fn compact_run(&mut self) -> Result<u64, LogError> {
        let mut run = Vec::new();
        let mut bytes = 0u64;
        while bytes < RUN_BYTES {
            let Some(segment) = self.consumer.next_sealed()? else {
                break;
            };
            bytes += segment.header.sealed_len;
            run.push(segment);
        }
        let segments = run.len() as u64;
        if segments > 0 {
            self.compact(run)?;
        }
        Ok(segments)
    }

    fn compact(&mut self, run: Vec<SealedSegment>) -> Result<(), LogError> {
        let started = Instant::now();
        let inputs: Vec<SegmentName> = run.iter().map(|s| s.name).collect();
        let cursor = run.last().map(|s| s.cursor.clone()).unwrap_or_default();
        let level = self.level_for_lag();
        let mut writer = CompactedWriter::new(&self.compacted_dir, &inputs, level)?;
        let mut quarantine = Vec::new();
        let (mut records, mut raw) = (0u64, 0u64);
        for segment in run {
            for record in segment.records {
                records += 1;
                raw += (record.name.len() + record.body.len()) as u64;
                match check_record(record.meta.kind, &record.body) {
                    Ok(()) => writer.push(CompactRecord::from(record))?,
                    Err(reason) => quarantine.push((CompactRecord::from(record), reason)),
                }
            }
        }
        if !quarantine.is_empty() {
            self.write_quarantine(&inputs, &quarantine)?;
        }
        // Written even when every record was quarantined: its header is what tells readers
        // (and a restarted compactor) that these segments are done with.
        let info = writer.finish()?;
        let file_bytes = info.file_bytes;
        let name = info
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(CompactedFileName::parse);
        if let Some(name) = name {
            let known = KnownFile::read(&self.compacted_dir, name)?;
            let at = self.files.partition_point(|f| f.name < name);
            self.files.insert(at, known);
        }
        // Only now, with the output durable, may the inputs go.
        self.consumer.commit(&cursor);
        self.consumer.save()?;
        let s = &self.stats;
        s.runs.fetch_add(1, Ordering::Relaxed);
        s.segments.fetch_add(inputs.len() as u64, Ordering::Relaxed);
        s.records.fetch_add(records, Ordering::Relaxed);
        s.raw_bytes.fetch_add(raw, Ordering::Relaxed);
        s.file_bytes.fetch_add(file_bytes, Ordering::Relaxed);
        s.quarantined
            .fetch_add(quarantine.len() as u64, Ordering::Relaxed);
        s.busy_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        log::debug!(
            "compactor: {} segments, {records} records, {raw} bytes into {file_bytes} in {:?}",
            inputs.len(),
            started.elapsed()
        );
        Ok(())
    }

    /// The zstd level for the next run: the configured one, or a faster one while behind.
    fn level_for_lag(&mut self) -> i32 {
        let lag = self.consumer.state().lag().bytes;
        let level = if lag > 4 * CATCH_UP_LAG {
            FAST_LEVEL
        } else if lag > CATCH_UP_LAG {
            CATCH_UP_LEVEL
        } else {
            self.config.level
        };
        // Never slower than configured.
        let level = level.min(self.config.level);
        if level != self.last_level {
            log::info!(
                "compactor: {} MiB behind, compressing at zstd level {level}",
                lag >> 20
            );
            self.last_level = level;
        }
        level
    }

    /// Writes the quarantined records of one run to a file of their own (`quarantine`),
    /// synced before return.
    fn write_quarantine(
        &self,
        inputs: &[SegmentName],
        records: &[(CompactRecord, super::validate::Quarantine)],
    ) -> io::Result<()> {
        let first = inputs.first().map(|n| n.file_name()).unwrap_or_default();
        let entries: Vec<Quarantined<'_>> = records
            .iter()
            .map(|(record, reason)| {
                let segment = SegmentName {
                    worker: record.origin.worker,
                    seq: record.origin.segment_seq,
                };
                Quarantined {
                    meta: record.meta,
                    segment,
                    offset: record.origin.offset,
                    name: &record.name,
                    body: &record.body,
                    reason: reason.to_string(),
                }
            })
            .collect();
        quarantine::write(
            &self.quarantine_dir,
            "compactor",
            first.trim_end_matches(crate::log::format::SEGMENT_SUFFIX),
            &entries,
        )
    }

    /// Retention of compacted data: files whose newest record is older than the retention
    /// period go, and then, while the data directory is over its disk budget, the oldest files
    /// go whatever their age. A file whose input segments are still in the log stays either
    /// way: it is what tells readers those records were compacted. Publishes what the compacted
    /// and quarantine files take, and how much of it could still go, for the segment service.
    fn retain(&mut self) -> io::Result<()> {
        for file in self.files.iter_mut().filter(|f| !f.inputs_gone) {
            // Sequences are never reused, so once gone the inputs stay gone.
            file.inputs_gone = !file
                .inputs
                .iter()
                .any(|&segment| self.consumer.segment_present(segment));
        }
        let horizon =
            unix_ms(SystemTime::now()).saturating_sub(self.config.retention.as_millis() as u64);
        let retention = self.config.retention;
        let mut i = 0;
        while i < self.files.len() {
            let file = &self.files[i];
            if file.inputs_gone && file.name.last_arrival_ms < horizon {
                let file = self.files.remove(i);
                if self.delete(&file)? {
                    log::info!(
                        "retention: {} expired (older than {})",
                        file.name.file_name(),
                        humantime::format_duration(retention)
                    );
                    self.stats.expired_files.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                i += 1;
            }
        }
        let budget = Arc::clone(self.consumer.budget());
        self.publish_usage(&budget)?;
        while budget.compactor_excess() > 0 {
            let Some(i) = self.files.iter().position(|f| f.inputs_gone) else {
                break;
            };
            let file = self.files.remove(i);
            if self.delete(&file)? {
                log::warn!(
                    "disk budget: {} deleted before its retention period ended ({} of {} bytes \
                     used)",
                    file.name.file_name(),
                    budget.used(),
                    budget.limit()
                );
                budget.compacted_deleted.fetch_add(1, Ordering::Relaxed);
            }
            self.publish_usage(&budget)?;
        }
        Ok(())
    }

    fn publish_usage(&self, budget: &DiskBudget) -> io::Result<()> {
        let compacted: u64 = self.files.iter().map(|f| f.bytes).sum();
        let deletable: u64 = self
            .files
            .iter()
            .filter(|f| f.inputs_gone)
            .map(|f| f.bytes)
            .sum();
        let quarantine = dir_bytes(&self.quarantine_dir)?;
        budget.publish_other(compacted + quarantine, deletable);
        Ok(())
    }

    /// Deletes a compacted file; false if it was gone already.
    fn delete(&self, file: &KnownFile) -> io::Result<bool> {
        match std::fs::remove_file(self.compacted_dir.join(file.name.file_name())) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A compacted file the compactor keeps track of for retention.
struct KnownFile {
    name: CompactedFileName,
    /// Bytes on disk.
    bytes: u64,
    inputs: Vec<SegmentName>,
    /// None of its input segments is in the log any more.
    inputs_gone: bool,
}

impl KnownFile {
    fn read(dir: &Path, name: CompactedFileName) -> io::Result<KnownFile> {
        use std::os::unix::fs::MetadataExt;
        let path = dir.join(name.file_name());
        let header = format::read_header(&path)?;
        Ok(KnownFile {
            name,
            bytes: std::fs::metadata(&path)?.blocks() * 512,
            inputs: header.inputs,
            inputs_gone: false,
        })
    }
}

/// The cursor just past every segment that a compacted file in `dir` lists as an input.
pub fn covered_cursor(dir: &Path) -> io::Result<Cursor> {
    let mut cursor = Cursor::default();
    for segment in covered_segments(dir)? {
        let pos = cursor.positions.entry(segment.worker).or_default();
        *pos = (*pos).max(Position::after(segment.seq));
    }
    Ok(cursor)
}

/// Every segment some compacted file in `dir` lists as an input.
pub fn covered_segments(dir: &Path) -> io::Result<BTreeSet<SegmentName>> {
    let mut covered = BTreeSet::new();
    for name in format::list_compacted(dir)? {
        match format::read_header(&dir.join(name.file_name())) {
            Ok(header) => covered.extend(header.inputs),
            // Expired (deleted) between the listing and the read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(covered)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

//! The hot path: one [`SegmentWriter`] per HTTP worker thread appends records to that worker's
//! active segment through its mapping.
//!
//! In: records from the worker's routes (slices, a fill closure, or a [`Reservation`] the worker
//! reads the socket into across event-loop turns). Out: framed, checksummed records in the
//! mapping; rolled segments handed to the segment service for sealing once nothing uses them.
//! Runs on the worker thread only (`!Send`: segments are shared with reservations through `Rc`).
//!
//! Per record: no heap allocation, no syscall. A roll costs a rename and a header write (the file
//! itself was prepared by the service); finding nothing prepared costs a synchronous create,
//! counted in [`SegmentWriter::stalls`].

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};

use crate::log::format::{
    record_checksum, record_len, RecordHeader, SegmentHeader, SegmentName, END_MARK_LEN,
    FORMAT_VERSION, RECORD_CRC_START, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN, STATE_ABANDONED,
    STATE_COMMITTED, STATE_PENDING,
};
use crate::log::mmap::{Region, SegmentMap};
use crate::log::service::{BudgetRefusal, Command, Prefault, PreparedSegment, SealJob, Shared};
use crate::log::{DiskBudget, Durability, LogError, RecordMeta};

/// How long a new writer waits for the segment the service prepares at start-up (a create and
/// a fallocate: milliseconds) before making its own.
const FIRST_SEGMENT_WAIT: Duration = Duration::from_secs(5);
/// Retry delay for `tick` when a roll by age failed (disk trouble): soon, but not every turn.
const ROLL_RETRY: Duration = Duration::from_secs(1);

pub struct SegmentWriter {
    shared: Arc<Shared>,
    worker: u16,
    active: ActiveSegment,
    /// A prepared segment was asked of the service and has not been received yet.
    prepare_requested: bool,
    stalls: u64,
    flushes: u64,
    flushed_records: u64,
    /// What records committed this turn (here or by a reservation) leave for `end_turn`.
    turn: Rc<TurnState>,
    budget: Arc<DiskBudget>,
}

/// The segment the writer appends to.
struct ActiveSegment {
    /// Everything at and past the cursor. Declared before `lease`: fields drop in order, and the
    /// lease's drop hands the mapping to the service, which wants to hold its last handle.
    tail: Region,
    lease: Rc<SegmentLease>,
    tag: u32,
    /// Seeds the record checksums (see `format`).
    salt: u64,
    first_record_at: Option<Instant>,
    /// Offset up to which pages were pre-faulted or requested.
    prefault_to: usize,
}

impl Drop for ActiveSegment {
    fn drop(&mut self) {
        self.lease.sealed_len.set(self.tail.offset() as u64);
    }
}

/// Shared by a segment's writer and its reservations; the last one to let go sends the segment
/// to the service for sealing.
struct SegmentLease {
    job: Option<SealJob>,
    sealed_len: Cell<u64>,
    commands: crossbeam_channel::Sender<Command>,
}

impl Drop for SegmentLease {
    fn drop(&mut self) {
        if let Some(mut job) = self.job.take() {
            job.sealed_len = self.sealed_len.get();
            let path = job.path.clone();
            if self.commands.send(Command::Seal(job)).is_err() {
                log::warn!(
                    "{}: segment service stopped; left unsealed for recovery",
                    path.display()
                );
            }
        }
    }
}

impl SegmentWriter {
    /// Takes the first segment for `worker` (waiting for the service to prepare it).
    pub(crate) fn open(shared: Arc<Shared>, worker: u16) -> Result<Self, LogError> {
        let slot = &shared.workers[usize::from(worker)];
        // At start-up the service prepares one segment per worker; wait for it rather than
        // creating a second file. A previous writer of this worker may have taken it already.
        // If it failed (or never comes), create one here; a late one is taken at the next roll.
        let prepared = match slot.prepared.recv_timeout(FIRST_SEGMENT_WAIT) {
            Ok(Ok(p)) => p,
            Ok(Err(_)) | Err(_) => shared.prepare(worker, false)?,
        };
        let active = take_into_use(&shared, worker, prepared)?;
        let durability = shared.durability;
        let shared_budget = shared.consumers.budget();
        let budget = Arc::clone(shared_budget);
        let mut writer = SegmentWriter {
            shared,
            worker,
            active,
            prepare_requested: false,
            stalls: 0,
            flushes: 0,
            flushed_records: 0,
            turn: Rc::new(TurnState::new(durability)),
            budget,
        };
        writer.segment_taken();
        writer.request_prepare();
        Ok(writer)
    }

    /// Rolls that found no prepared segment and created one on this thread.
    pub fn stalls(&self) -> u64 {
        self.stalls
    }

    /// The worker calls this once per event-loop turn, before it writes the turn's held
    /// answers. With "fsync" durability it writes back every range committed this turn (one
    /// msync each, and the directory after a roll) and counts a flush; then, if records were
    /// committed, it wakes consumers waiting for them (once for the whole turn).
    ///
    /// An error means the turn's records may not be on the device: their held answers must not
    /// say 200 (the worker answers 500 instead). The records stay in the log, and the flush is
    /// not retried: after a failed write-back Linux marks the pages clean, so a second try
    /// would succeed without writing them.
    pub fn end_turn(&mut self) -> Result<(), LogError> {
        let turn = &self.turn;
        let mut failed = None;
        if turn.durability == Durability::Fsync {
            let mut dirty = turn.dirty.borrow_mut();
            let records = turn.epoch.get() - turn.synced_epoch.get();
            if records > 0 || !dirty.is_empty() {
                for (map, start, end) in dirty.drain(..) {
                    let synced = if turn.fail_flushes.get() {
                        Err(std::io::Error::other("write-back failure injected"))
                    } else {
                        map.sync_range(start, end - start)
                    };
                    if let Err(e) = synced {
                        log::error!("worker {}: writing back records: {e}", self.worker);
                        failed.get_or_insert(e);
                    }
                }
                if turn.dir_dirty.replace(false) {
                    let synced =
                        File::open(&self.shared.segments_dir).and_then(|dir| dir.sync_all());
                    if let Err(e) = synced {
                        log::error!("worker {}: syncing the segment directory: {e}", self.worker);
                        failed.get_or_insert(e);
                    }
                }
                turn.synced_epoch.set(turn.epoch.get());
                self.flushes += 1;
                self.flushed_records += records;
            }
        }
        if turn.committed.replace(false) {
            self.shared.consumers.wake();
        }
        failed.map_or(Ok(()), |e| Err(LogError::Io(e)))
    }

    /// The storage seam for tests: while on, every "fsync" write-back fails as a device error
    /// would (nothing else changes). Not for production use.
    #[doc(hidden)]
    pub fn inject_flush_failures(&self, on: bool) {
        self.turn.fail_flushes.set(on);
    }

    /// Records committed so far; with "fsync" durability, an answer written after this moved
    /// waits for the turn's flush.
    pub fn commit_epoch(&self) -> u64 {
        self.turn.epoch.get()
    }

    pub fn durability(&self) -> Durability {
        self.turn.durability
    }

    /// Records and bytes committed by this writer since it opened.
    pub fn written(&self) -> (u64, u64) {
        (self.turn.epoch.get(), self.turn.bytes.get())
    }

    /// Group commits done ("fsync" durability), and the records they covered.
    pub fn flushes(&self) -> (u64, u64) {
        (self.flushes, self.flushed_records)
    }

    /// A new segment is in use: its header and its name must reach the disk with the first
    /// flush ("fsync" durability); the background flusher learns its mapping.
    fn segment_taken(&mut self) {
        let map = Arc::clone(self.active.tail.map());
        let slot = &self.shared.workers[usize::from(self.worker)];
        slot.cursor
            .store(self.active.tail.offset(), Ordering::Relaxed);
        *slot.active.lock() = Some(Arc::clone(&map));
        if self.turn.durability == Durability::Fsync {
            self.turn
                .dirty
                .borrow_mut()
                .push((map, 0, SEGMENT_HEADER_LEN));
            self.turn.dir_dirty.set(true);
        }
    }

    /// Appends a complete record whose body is the concatenation of `parts`. Rolls first if it
    /// does not fit.
    pub fn append(
        &mut self,
        meta: RecordMeta,
        name: &[u8],
        parts: &[&[u8]],
    ) -> Result<(), LogError> {
        let body_len = parts
            .iter()
            .try_fold(0usize, |sum, p| sum.checked_add(p.len()))
            .ok_or(LogError::TooLarge)?;
        let shape = self.make_room(name, body_len)?;
        let buf = self.active.tail.bytes_mut();
        let mut at = RECORD_HEADER_LEN + name.len();
        buf[RECORD_HEADER_LEN..at].copy_from_slice(name);
        for part in parts {
            buf[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        self.commit_front(meta, shape);
        Ok(())
    }

    /// Appends a record whose body `fill` writes into the mapping: it gets up to `max_len` bytes
    /// and returns how many it wrote; those form the body. `fill` must not write past the count
    /// it returns (those bytes would have to be zeroed, at a cost proportional to `max_len`).
    /// If `fill` fails nothing is stored: what it wrote is zeroed again and its error returned.
    /// Panics if `fill` claims more than `max_len` bytes. If `fill` itself panics, its bytes stay
    /// past the cursor behind a zero state word (release builds abort, and recovery truncates
    /// at that word); the writer must not be used again after such an unwind.
    pub fn append_with<E>(
        &mut self,
        meta: RecordMeta,
        name: &[u8],
        max_len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<Result<(), E>, LogError> {
        self.make_room(name, max_len)?;
        let body_at = RECORD_HEADER_LEN + name.len();
        let body = &mut self.active.tail.bytes_mut()[body_at..body_at + max_len];
        // The state word stays zero while `fill` runs, so readers see the end of records here.
        match fill(body) {
            Ok(written) => {
                assert!(
                    written <= max_len,
                    "fill claimed more bytes than it was given"
                );
                self.active.tail.bytes_mut()[RECORD_HEADER_LEN..body_at].copy_from_slice(name);
                // Cannot fail: no larger than the shape `make_room` accepted for `max_len`.
                let shape = RecordShape::new(name.len(), written)?;
                self.commit_front(meta, shape);
                Ok(Ok(()))
            }
            Err(e) => {
                // Past the cursor everything must read as zero (the end-of-records rule), or
                // inflated client bytes could later pass for a record.
                body.fill(0);
                Ok(Err(e))
            }
        }
    }

    /// Reserves a record of exactly `len` body bytes, to be filled in place across event-loop
    /// turns. Several reservations may be outstanding; other appends go on meanwhile.
    pub fn reserve(
        &mut self,
        meta: RecordMeta,
        name: &[u8],
        len: usize,
    ) -> Result<Reservation, LogError> {
        let shape = self.make_room(name, len)?;
        let mut region = self.active.tail.split_to(shape.record_len);
        let header = RecordHeader::new(meta, self.active.tag, shape.name_len, shape.payload_len);
        let bytes = region.bytes_mut();
        bytes[..RECORD_HEADER_LEN].copy_from_slice(&header.encode());
        bytes[RECORD_HEADER_LEN..RECORD_HEADER_LEN + name.len()].copy_from_slice(name);
        zero_end_mark(self.active.tail.bytes_mut());
        // Lengths and the end mark past the record first, then PENDING: a scanner that sees
        // PENDING can step over the record and finds a clean end behind it.
        region.publish_u32(0, STATE_PENDING);
        self.claimed();
        Ok(Reservation {
            region,
            _lease: Rc::clone(&self.active.lease),
            body_at: RECORD_HEADER_LEN + name.len(),
            len,
            filled: 0,
            salt: self.active.salt,
            done: false,
            turn: Rc::clone(&self.turn),
        })
    }

    /// Rolls the active segment if its first record is older than the max age; returns when to
    /// call again. The worker calls it once per poll turn.
    pub fn tick(&mut self, now: Instant) -> Instant {
        // LogConfig caps the max age, so these sums stay far from Instant's limits.
        let max_age = self.shared.max_age;
        match self.active.first_record_at {
            Some(first) if now.saturating_duration_since(first) >= max_age => match self.roll() {
                Ok(()) => now + max_age,
                Err(e) => {
                    log::error!("worker {}: rolling by age: {e}", self.worker);
                    now + ROLL_RETRY
                }
            },
            Some(first) => first + max_age,
            None => now + max_age,
        }
    }

    /// Stops writing and hands the active segment over for sealing. Reservations still
    /// outstanding (the caller should have none) keep it open until they are dropped.
    pub fn close(self) -> Result<(), LogError> {
        debug_assert_eq!(
            Rc::strong_count(&self.active.lease),
            1,
            "writer closed with reservations outstanding"
        );
        drop(self);
        Ok(())
    }

    /// Rolls now: the active segment goes to sealing (once its reservations are done).
    pub fn roll(&mut self) -> Result<(), LogError> {
        let prepared = match self.shared.workers[usize::from(self.worker)]
            .prepared
            .try_recv()
        {
            Ok(Ok(prepared)) => {
                self.prepare_requested = false;
                prepared
            }
            received => {
                if received.is_ok() {
                    // The service failed to prepare one; we create it here and ask again.
                    self.prepare_requested = false;
                }
                self.stalls += 1;
                match self.shared.prepare(self.worker, false) {
                    Err(e) if BudgetRefusal::is(&e) => self.prepared_by_service()?,
                    made => made?,
                }
            }
        };
        let next = take_into_use(&self.shared, self.worker, prepared)?;
        // Dropping the old segment records its length; it is sealed when its last user lets go.
        self.active = next;
        self.segment_taken();
        self.request_prepare();
        Ok(())
    }

    /// A new file here would go over the disk budget: only the service can make room (it
    /// forces out the oldest segments before it prepares), so wait for what it prepares.
    fn prepared_by_service(&mut self) -> io::Result<PreparedSegment> {
        self.request_prepare();
        let slot = &self.shared.workers[usize::from(self.worker)];
        let received = slot.prepared.recv_timeout(FIRST_SEGMENT_WAIT);
        self.prepare_requested = false;
        match received {
            Ok(prepared) => prepared,
            Err(_) => Err(io::Error::new(io::ErrorKind::StorageFull, BudgetRefusal)),
        }
    }

    fn request_prepare(&mut self) {
        if !self.prepare_requested {
            let worker = self.worker;
            // A full queue blocks briefly; a stopped service means we create files ourselves.
            self.prepare_requested = self
                .shared
                .commands
                .send(Command::Prepare { worker })
                .is_ok();
        }
    }

    /// Makes sure a record of `name` and `body_len` fits at the cursor, rolling if needed.
    /// Refuses every record while the disk budget is used up (nothing is written).
    fn make_room(&mut self, name: &[u8], body_len: usize) -> Result<RecordShape, LogError> {
        if self.budget.is_full() {
            return Err(LogError::Full);
        }
        let shape = RecordShape::new(name.len(), body_len)?;
        if shape.record_len > self.shared.capacity - SEGMENT_HEADER_LEN {
            return Err(LogError::TooLarge);
        }
        if shape.record_len > self.active.tail.len() {
            self.roll()?;
        }
        Ok(shape)
    }

    /// Commits the record whose name and body are already at the front of the tail: header,
    /// checksum over the bytes in place (still hot in cache), the end mark past the record, then
    /// the state word, then the cursor.
    fn commit_front(&mut self, meta: RecordMeta, shape: RecordShape) {
        let active = &mut self.active;
        let mut header = RecordHeader::new(meta, active.tag, shape.name_len, shape.payload_len);
        let buf = active.tail.bytes_mut();
        buf[..RECORD_HEADER_LEN].copy_from_slice(&header.encode());
        header.crc = record_checksum(
            active.salt,
            &buf[RECORD_CRC_START..RECORD_HEADER_LEN + shape.payload_len as usize],
        );
        buf[8..12].copy_from_slice(&header.crc.to_le_bytes());
        zero_end_mark(&mut buf[shape.record_len..]);
        active.tail.publish_u32(0, STATE_COMMITTED);
        let start = active.tail.offset();
        self.turn
            .record(active.tail.map(), start, start + shape.record_len);
        active.tail.advance(shape.record_len);
        self.claimed();
    }

    /// Bookkeeping after the cursor moved: age clock, pre-fault window.
    fn claimed(&mut self) {
        let active = &mut self.active;
        if active.first_record_at.is_none() {
            active.first_record_at = Some(Instant::now());
        }
        // What the background flusher writes back up to ("os" durability).
        self.shared.workers[usize::from(self.worker)]
            .cursor
            .store(active.tail.offset(), Ordering::Relaxed);
        let window = self.shared.prefault_window;
        let capacity = self.shared.capacity;
        let cursor = active.tail.offset();
        // Ask for the next window once half of the current runway is used up.
        if window == 0
            || active.prefault_to >= capacity
            || cursor.saturating_add(window / 2) < active.prefault_to
        {
            return;
        }
        let from = active.prefault_to.max(cursor);
        let to = cursor.saturating_add(window).min(capacity);
        let request = Prefault {
            map: Arc::downgrade(active.tail.map()),
            offset: from,
            len: to - from,
        };
        // Only a speed-up: when the queue is full, try again after the next record.
        if self.shared.prefaults.try_send(Some(request)).is_ok() {
            active.prefault_to = to;
        }
    }
}

impl Drop for SegmentWriter {
    fn drop(&mut self) {
        // `active` drops after this and hands the segment to sealing, which wants the last
        // handle to its mapping: the background flusher lets go of it first.
        let slot = &self.shared.workers[usize::from(self.worker)];
        *slot.active.lock() = None;
        slot.taken.store(false, Ordering::Release);
    }
}

/// What the records committed in one event-loop turn leave to do at its end; shared by the
/// writer and its reservations (worker thread only).
struct TurnState {
    durability: Durability,
    /// A record was committed since consumers were last woken.
    committed: Cell<bool>,
    /// Records committed, ever; and up to which of them a flush wrote back.
    epoch: Cell<u64>,
    /// Bytes of those records (headers, names, bodies, padding).
    bytes: Cell<u64>,
    synced_epoch: Cell<u64>,
    /// "fsync" durability: byte ranges committed and not yet written back, contiguous ones
    /// merged. The vector keeps its capacity: no allocation once warm.
    dirty: RefCell<Vec<(Arc<SegmentMap>, usize, usize)>>,
    /// A segment was renamed into place since the last flush.
    dir_dirty: Cell<bool>,
    /// `inject_flush_failures`.
    fail_flushes: Cell<bool>,
}

impl TurnState {
    fn new(durability: Durability) -> Self {
        TurnState {
            durability,
            committed: Cell::new(false),
            epoch: Cell::new(0),
            bytes: Cell::new(0),
            synced_epoch: Cell::new(0),
            dirty: RefCell::new(Vec::with_capacity(16)),
            dir_dirty: Cell::new(false),
            fail_flushes: Cell::new(false),
        }
    }

    fn record(&self, map: &Arc<SegmentMap>, start: usize, end: usize) {
        self.committed.set(true);
        self.epoch.set(self.epoch.get() + 1);
        self.bytes.set(self.bytes.get() + (end - start) as u64);
        if self.durability != Durability::Fsync {
            return;
        }
        let mut dirty = self.dirty.borrow_mut();
        match dirty.last_mut() {
            Some(last) if Arc::ptr_eq(&last.0, map) && last.2 == start => last.2 = end,
            _ => dirty.push((Arc::clone(map), start, end)),
        }
    }
}

/// Sizes of one record, checked against the format's field widths.
#[derive(Clone, Copy)]
struct RecordShape {
    name_len: u16,
    payload_len: u32,
    record_len: usize,
}

impl RecordShape {
    fn new(name_len: usize, body_len: usize) -> Result<Self, LogError> {
        let name_len = u16::try_from(name_len).map_err(|_| LogError::NameTooLong)?;
        let payload = usize::from(name_len)
            .checked_add(body_len)
            .ok_or(LogError::TooLarge)?;
        Ok(RecordShape {
            name_len,
            payload_len: u32::try_from(payload).map_err(|_| LogError::TooLarge)?,
            record_len: record_len(payload).ok_or(LogError::TooLarge)?,
        })
    }
}

/// Writes the segment header into a prepared file and gives it its segment name.
fn take_into_use(
    shared: &Shared,
    worker: u16,
    prepared: PreparedSegment,
) -> Result<ActiveSegment, LogError> {
    let PreparedSegment {
        file,
        prep_path,
        mut region,
        prefaulted,
    } = prepared;
    let mut salt = [0u8; 8];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| std::io::Error::other("no randomness for a segment salt"))?;
    let seq = shared.workers[usize::from(worker)]
        .next_seq
        .fetch_add(1, Ordering::Relaxed);
    let header = SegmentHeader {
        version: FORMAT_VERSION,
        worker,
        seq,
        created_unix_ns: unix_ns(),
        capacity: shared.capacity as u64,
        sealed_len: 0,
        flags: 0,
        salt: u64::from_le_bytes(salt),
    };
    let mut head = region.split_to(SEGMENT_HEADER_LEN);
    head.bytes_mut().copy_from_slice(&header.encode());
    drop(head);
    // A reused file holds stale bytes here; the first record goes where readers see an end.
    zero_end_mark(region.bytes_mut());
    // The header is in the page cache before the name appears: a segment file never lacks it.
    let path = shared
        .segments_dir
        .join(SegmentName { worker, seq }.file_name());
    if let Err(e) = std::fs::rename(&prep_path, &path) {
        let _ = std::fs::remove_file(&prep_path);
        return Err(e.into());
    }
    let map: Arc<SegmentMap> = Arc::clone(region.map());
    Ok(ActiveSegment {
        tail: region,
        lease: Rc::new(SegmentLease {
            job: Some(SealJob {
                map,
                file,
                path,
                header,
                sealed_len: SEGMENT_HEADER_LEN as u64,
            }),
            sealed_len: Cell::new(SEGMENT_HEADER_LEN as u64),
            commands: shared.commands.clone(),
        }),
        tag: header.tag(),
        salt: header.salt,
        first_record_at: None,
        prefault_to: prefaulted,
    })
}

/// Zeroes the first bytes of `tail` (what starts at the cursor), which readers take for the next
/// state and length words, so that they see a clean end there even in a reused file.
fn zero_end_mark(tail: &mut [u8]) {
    let n = END_MARK_LEN.min(tail.len());
    tail[..n].fill(0);
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A record being filled in place. Holds its segment open (the segment may roll meanwhile; it is
/// sealed only once its last reservation is committed or dropped).
pub struct Reservation {
    /// Declared before `lease` so the mapping handle is gone before the lease may send the
    /// segment to sealing.
    region: Region,
    _lease: Rc<SegmentLease>,
    body_at: usize,
    len: usize,
    filled: usize,
    /// The segment's salt, for the checksum computed at commit.
    salt: u64,
    done: bool,
    /// The writer's turn state: wakes consumers and, in "fsync" mode, writes back this record.
    turn: Rc<TurnState>,
}

impl Reservation {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn filled(&self) -> usize {
        self.filled
    }

    /// The part not yet filled (read(2) straight into it).
    pub fn unfilled(&mut self) -> &mut [u8] {
        let start = self.body_at + self.filled;
        &mut self.region.bytes_mut()[start..self.body_at + self.len]
    }

    /// Marks `n` more bytes filled. Panics if `n` exceeds what is unfilled (the caller's
    /// accounting bug).
    pub fn advance(&mut self, n: usize) {
        assert!(n <= self.len - self.filled, "advanced past the reservation");
        self.filled += n;
    }

    pub fn is_complete(&self) -> bool {
        self.filled == self.len
    }

    /// Commits a complete reservation. After this returns the record is in the page cache and
    /// may be acknowledged. Committing an incomplete one is a bug: it panics in debug builds and
    /// abandons the record otherwise (never stores a body the client did not send).
    pub fn commit(mut self) {
        debug_assert!(self.is_complete(), "commit of an incomplete reservation");
        if !self.is_complete() {
            log::error!("incomplete reservation committed; abandoned instead");
            return;
        }
        // One pass over the whole record at the end: XXH3 is fastest on long inputs, and a body
        // filled across turns is still in cache (a 64 KiB body fits L2 many times over).
        let bytes = self.region.bytes_mut();
        let checksum =
            record_checksum(self.salt, &bytes[RECORD_CRC_START..self.body_at + self.len]);
        bytes[8..12].copy_from_slice(&checksum.to_le_bytes());
        self.region.publish_u32(0, STATE_COMMITTED);
        self.done = true;
        let start = self.region.offset();
        self.turn
            .record(self.region.map(), start, start + self.region.len());
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.done {
            // Lengths stay intact: readers step over the hole.
            self.region.publish_u32(0, STATE_ABANDONED);
        }
    }
}

//! Read side: every valid record of every segment, for `cat`/`ls`, tests, and later compaction.
//!
//! In: the segment files of a data dir, sealed or being written right now by a running node
//! (possibly in another process). Out: [`StoredRecord`]s copied out of the files. Runs on the
//! caller's thread. Files are read with `read(2)`, never mapped: the node truncates sealed files,
//! which would fault a reader's mapping.
//!
//! A whole segment is read into one buffer its records share ([`Bytes`]). A reader that reads
//! segment after segment (the compactor, through `Consumer::next_sealed`) reads them into
//! [`ReadBuffers`], which take a buffer back once the last record of its segment is dropped.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::log::format::{HeaderError, SegmentName, SEGMENTS_DIR};
use crate::log::scan::scan_segment;
use crate::log::{LogError, RecordMeta};

/// A live segment's header is rewritten when it is sealed; a read racing that sees a mix of
/// both and fails the header CRC. A few re-reads settle it.
const HEADER_RACE_RETRIES: usize = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    pub meta: RecordMeta,
    pub worker: u16,
    pub segment_seq: u64,
    /// Offset of the record header in its segment file.
    pub offset: u64,
    pub name: Vec<u8>,
    /// Shares the buffer the segment file was read into.
    pub body: Bytes,
}

/// All valid (COMMITTED, CRC-good) records of all segments, ordered by
/// (arrival_unix_ns, worker, seq, offset). Files with an unreadable header are skipped (logged);
/// a file that vanishes meanwhile (compaction) is skipped.
pub fn read_records(dir: &Path) -> Result<Vec<StoredRecord>, LogError> {
    let mut records = Vec::new();
    // Every record is kept, so no buffer comes back before the end: a pool of its own.
    let buffers = ReadBuffers::default();
    for entry in std::fs::read_dir(dir.join(SEGMENTS_DIR))? {
        let entry = entry?;
        let file_name = entry.file_name();
        if let Some(name) = file_name.to_str().and_then(SegmentName::parse) {
            read_segment_file(&entry.path(), name, &buffers, &mut records)?;
        }
    }
    records.sort_by_key(|r| (r.meta.arrival_unix_ns, r.worker, r.segment_seq, r.offset));
    Ok(records)
}

/// Buffers that whole segments are read into, each taken back for the next read once every
/// record sharing it is dropped.
///
/// Why: a segment is up to 64 MiB, and an allocation that large is a fresh mapping from the
/// allocator, so every page of every read was a new zero page: at 64 KiB bodies, 44% of the
/// compactor's CPU went to those page faults (bench/RESULTS.md, run 12). A kept buffer's pages
/// are already there. What is kept costs its size in RSS until [`ReadBuffers::release`].
#[derive(Clone, Default)]
pub struct ReadBuffers {
    kept: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// Buffers kept at most: one for the run being compacted, one for the next.
const KEPT_BUFFERS: usize = 2;

impl ReadBuffers {
    /// An empty buffer of at least `len` bytes of capacity, a kept one if there is one.
    fn take(&self, len: usize) -> Vec<u8> {
        let mut buf = self.kept.lock().pop().unwrap_or_default();
        buf.clear();
        buf.reserve(len);
        buf
    }

    /// Frees the buffers kept now (buffers still in use are freed when they come back).
    pub fn release(&self) {
        self.kept.lock().clear();
    }

    /// Bytes kept for reuse.
    pub fn kept_bytes(&self) -> usize {
        self.kept.lock().iter().map(Vec::capacity).sum()
    }

    /// `buf` as shared bytes that come back here when the last of them is dropped.
    fn share(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Kept {
            buf,
            home: Arc::downgrade(&self.kept),
        })
    }
}

/// A buffer out of [`ReadBuffers`], on its way back when dropped.
struct Kept {
    buf: Vec<u8>,
    home: Weak<Mutex<Vec<Vec<u8>>>>,
}

impl AsRef<[u8]> for Kept {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        if let Some(home) = self.home.upgrade() {
            let mut kept = home.lock();
            if kept.len() < KEPT_BUFFERS {
                kept.push(std::mem::take(&mut self.buf));
            }
        }
    }
}

/// Appends the valid records of one segment file to `out` (nothing if it vanished), reading it
/// into one of `buffers`.
pub(crate) fn read_segment_file(
    path: &Path,
    name: SegmentName,
    buffers: &ReadBuffers,
    out: &mut Vec<StoredRecord>,
) -> Result<(), LogError> {
    for attempt in 1..=HEADER_RACE_RETRIES {
        let data = match read_whole(path, buffers) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let scan = match scan_segment(&data) {
            Ok(scan) => scan,
            Err(LogError::BadHeader(HeaderError::Checksum)) if attempt < HEADER_RACE_RETRIES => {
                continue
            }
            Err(e) => {
                log::warn!("{}: skipped: {e}", path.display());
                return Ok(());
            }
        };
        if (scan.header.worker, scan.header.seq) != (name.worker, name.seq) {
            log::warn!("{}: header names another segment; skipped", path.display());
            return Ok(());
        }
        out.extend(scan.records.iter().filter_map(|r| {
            Some(StoredRecord {
                meta: r.meta()?,
                worker: name.worker,
                segment_seq: name.seq,
                offset: r.offset,
                name: data[r.name_range()].to_vec(),
                body: data.slice(r.body_range()),
            })
        }));
        return Ok(());
    }
    Ok(())
}

fn read_whole(path: &Path, buffers: &ReadBuffers) -> std::io::Result<Bytes> {
    let mut file = File::open(path)?;
    let len = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
    let mut buf = buffers.take(len);
    file.read_to_end(&mut buf)?;
    Ok(buffers.share(buf))
}

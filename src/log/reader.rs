//! Read side: every valid record of every segment, for `cat`/`ls`, tests, and later compaction.
//!
//! In: the segment files of a data dir, sealed or being written right now by a running node
//! (possibly in another process). Out: [`StoredRecord`]s copied out of the files. Runs on the
//! caller's thread. Files are read with `read(2)`, never mapped: the node truncates sealed files,
//! which would fault a reader's mapping.

use std::path::Path;

use bytes::Bytes;

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
    for entry in std::fs::read_dir(dir.join(SEGMENTS_DIR))? {
        let entry = entry?;
        let file_name = entry.file_name();
        if let Some(name) = file_name.to_str().and_then(SegmentName::parse) {
            read_segment_file(&entry.path(), name, &mut records)?;
        }
    }
    records.sort_by_key(|r| (r.meta.arrival_unix_ns, r.worker, r.segment_seq, r.offset));
    Ok(records)
}

/// Appends the valid records of one segment file to `out` (nothing if it vanished).
pub(crate) fn read_segment_file(
    path: &Path,
    name: SegmentName,
    out: &mut Vec<StoredRecord>,
) -> Result<(), LogError> {
    for attempt in 1..=HEADER_RACE_RETRIES {
        let data = match std::fs::read(path) {
            Ok(data) => Bytes::from(data),
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

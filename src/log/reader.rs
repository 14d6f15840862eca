//! Read side: every valid record of every segment, for `cat`/`ls`, tests, and the compactor.
//!
//! In: the segment files of a data dir, sealed or being written right now by a running node
//! (possibly in another process). Out: [`StoredRecord`]s, copied out of the files. Runs on the
//! caller's thread. Files are read with `read(2)`: the node truncates sealed files, which would
//! fault a reader's mapping past the length it truncates to. The one exception is a consumer in
//! the node's own process that reads a segment it knows is sealed (the compactor, through
//! `Consumer::next_sealed`): [`read_sealed_file`] maps the segment up to its sealed length, which
//! nothing shortens and nothing writes while it is mapped (`mmap::map_sealed`).
//!
//! A whole segment is read into one buffer, or mapped, and its records share that ([`Bytes`]).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use bytes::Bytes;

use crate::log::format::{HeaderError, SegmentName, SEGMENTS_DIR};
use crate::log::mmap;
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
    /// Shares the buffer the segment file was read into, or its mapping.
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

/// Appends the valid records of one segment file to `out` (nothing if it vanished), reading it
/// whole into one buffer its records share.
fn read_segment_file(
    path: &Path,
    name: SegmentName,
    out: &mut Vec<StoredRecord>,
) -> Result<(), LogError> {
    for attempt in 1..=HEADER_RACE_RETRIES {
        let data = match read_whole(path) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        match push_records(&data, name, out) {
            Err(LogError::BadHeader(HeaderError::Checksum)) if attempt < HEADER_RACE_RETRIES => {
                continue
            }
            Err(e) => log::warn!("{}: skipped: {e}", path.display()),
            Ok(()) => {}
        }
        return Ok(());
    }
    Ok(())
}

/// Appends the valid records of one sealed segment file to `out` (nothing if it vanished),
/// reading them through a mapping of its first `sealed_len` bytes, or fewer if the file is
/// shorter ([`mmap::map_sealed`]: the caller read the file's header and found it sealed at that
/// length). The records share the mapping, which is unmapped once the last of them is dropped.
/// Where the kernel cannot pre-fault a mapping, the file is read whole instead.
pub(crate) fn read_sealed_file(
    path: &Path,
    name: SegmentName,
    sealed_len: u64,
    out: &mut Vec<StoredRecord>,
) -> Result<(), LogError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let data = match mmap::map_sealed(&file, sealed_len) {
        Ok(map) => Bytes::from_owner(map),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            log::warn!("{}: skipped: {e}", path.display());
            return Ok(());
        }
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
            return read_segment_file(path, name, out)
        }
        Err(e) => return Err(e.into()),
    };
    if let Err(e) = push_records(&data, name, out) {
        log::warn!("{}: skipped: {e}", path.display());
    }
    Ok(())
}

/// Appends the valid records of `data`, the bytes of segment `name`, to `out`.
fn push_records(
    data: &Bytes,
    name: SegmentName,
    out: &mut Vec<StoredRecord>,
) -> Result<(), LogError> {
    let scan = scan_segment(data)?;
    if (scan.header.worker, scan.header.seq) != (name.worker, name.seq) {
        return Err(LogError::BadHeader(HeaderError::OtherSegment));
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
    Ok(())
}

fn read_whole(path: &Path) -> std::io::Result<Bytes> {
    let mut file = File::open(path)?;
    let len = usize::try_from(file.metadata()?.len()).unwrap_or(0);
    let mut buf = Vec::with_capacity(len);
    file.read_to_end(&mut buf)?;
    Ok(Bytes::from(buf))
}

//! Start-up recovery of `<data_dir>/segments`: makes every segment sealed before writers start.
//!
//! In: the segment files a previous run left (cleanly closed, or cut short by a crash). Out:
//! every segment sealed and truncated to its last trustworthy record, `.prep-` leftovers deleted,
//! unreadable files set aside as `.bad`, and a [`RecoverySummary`]. Runs on the thread that starts
//! the node (from `SegmentService::start`, or the CLI), under the directory lock, before any
//! writer exists.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::log::format::{
    SegmentHeader, SegmentName, BAD_SUFFIX, LOCK_FILE, PREP_PREFIX, SEGMENTS_DIR,
    SEGMENT_HEADER_LEN,
};
use crate::log::mmap;
use crate::log::scan::{scan_segment, RecordClass};
use crate::log::service::write_sealed_header;
use crate::log::LogError;

/// What recovery found and did.
///
/// `segments` counts every segment file found. `unsealed` counts those a previous run left open;
/// `records`, `bytes` (payload bytes), `corrupt` and `incomplete` are counted over those only:
/// sealed segments are checked by their header, not re-read. `torn_tails` counts segments whose
/// records ended in bytes that could not be trusted (including sealed files shorter than their
/// sealed length); `truncated_bytes` what recovery cut off files. `quarantined` counts files whose
/// header was unreadable, renamed to `<name>.bad`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoverySummary {
    pub segments: u32,
    pub unsealed: u32,
    pub records: u64,
    pub bytes: u64,
    pub corrupt: u64,
    pub incomplete: u64,
    pub torn_tails: u32,
    pub truncated_bytes: u64,
    pub quarantined: u32,
}

/// Recovers `dir/segments` (a missing directory holds nothing to recover): every segment that is
/// not sealed is scanned; complete records are kept; a torn tail is truncated away; a COMMITTED
/// record whose CRC fails is counted and left in place (readers skip it); PENDING records are
/// counted as incomplete; then the segment is sealed. A segment with no record at all is removed.
/// Sealed segments are checked (header CRC) and counted. Refuses (`LogError::Locked`) to run on a
/// directory a running node holds.
pub fn recover(dir: &Path) -> Result<RecoverySummary, LogError> {
    let segments = dir.join(SEGMENTS_DIR);
    if !segments.is_dir() {
        return Ok(RecoverySummary::default());
    }
    let _lock = lock_dir(&segments)?;
    recover_locked(&segments)
}

/// Takes the directory lock that a running node holds for its life.
pub(crate) fn lock_dir(segments: &Path) -> Result<File, LogError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(segments.join(LOCK_FILE))?;
    if mmap::try_lock_exclusive(&file)? {
        Ok(file)
    } else {
        Err(LogError::Locked)
    }
}

pub(crate) fn recover_locked(segments: &Path) -> Result<RecoverySummary, LogError> {
    let mut summary = RecoverySummary::default();
    for entry in std::fs::read_dir(segments)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        let path = entry.path();
        if name.starts_with(PREP_PREFIX) {
            // Prepared files are renamed before their first record: nothing in them was acked.
            std::fs::remove_file(&path)?;
        } else if let Some(segment) = SegmentName::parse(name) {
            summary.segments += 1;
            recover_segment(&path, segment, &mut summary)?;
        }
    }
    if summary != RecoverySummary::default() {
        log::info!("segment recovery: {summary:?}");
    }
    Ok(summary)
}

fn recover_segment(
    path: &Path,
    name: SegmentName,
    summary: &mut RecoverySummary,
) -> Result<(), LogError> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    let mut head = [0u8; SEGMENT_HEADER_LEN];
    let header = match read_head(&file, &mut head) {
        Ok(()) => SegmentHeader::decode(&head).ok(),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => None,
        Err(e) => return Err(e.into()),
    };
    let Some(header) = header.filter(|h| h.worker == name.worker && h.seq == name.seq) else {
        if len == 0 {
            // Never held a byte: nothing to keep.
            std::fs::remove_file(path)?;
        } else {
            log::warn!("{}: unreadable segment header, set aside", path.display());
            let mut bad = path.as_os_str().to_owned();
            bad.push(BAD_SUFFIX);
            std::fs::rename(path, bad)?;
            summary.quarantined += 1;
        }
        return Ok(());
    };

    if header.is_sealed() {
        if len > header.sealed_len {
            // A seal interrupted between its header and its truncation.
            file.set_len(header.sealed_len)?;
            summary.truncated_bytes += len - header.sealed_len;
        } else if len < header.sealed_len {
            log::warn!("{}: shorter than its sealed length", path.display());
            summary.torn_tails += 1;
        }
        return Ok(());
    }

    summary.unsealed += 1;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let scan = scan_segment(&bytes)?;
    for r in &scan.records {
        match r.class {
            RecordClass::Valid => {
                summary.records += 1;
                summary.bytes += u64::from(r.header.payload_len);
            }
            RecordClass::Corrupt => summary.corrupt += 1,
            RecordClass::Incomplete => summary.incomplete += 1,
            RecordClass::Abandoned => {}
        }
    }
    summary.torn_tails += u32::from(scan.torn);
    if scan.records.is_empty() {
        std::fs::remove_file(path)?;
        return Ok(());
    }
    write_sealed_header(&file, header, scan.end)?;
    // A file cut inside its last record's padding grows back to the record's padded end.
    file.set_len(scan.end)?;
    summary.truncated_bytes += len.saturating_sub(scan.end);
    Ok(())
}

fn read_head(file: &File, head: &mut [u8; SEGMENT_HEADER_LEN]) -> io::Result<()> {
    file.read_exact_at(head, 0)
}

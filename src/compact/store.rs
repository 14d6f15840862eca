//! The whole store of a node, whichever stage its records are in: segments not compacted yet
//! and compacted files, read as one, so a session is whole wherever its records are.
//!
//! In: a data directory (of a running node or a stopped one). Out: records, each exactly once:
//! a record is taken from its segment unless a compacted file lists that segment as an input,
//! and then from the compacted file. Segments are read first, compacted files second, so a
//! segment compacted and retired between the two reads is found in its compacted file.
//! Runs on the CLI's thread (`cat`, `ls`, `export`) and in tests.

use std::io;
use std::path::Path;

use std::collections::BTreeSet;

use super::format::{self, CompactRecord, CompactedReader, COMPACTED_DIR};
use super::order::order_session;
use crate::log::{self, LogError, SegmentName};

/// Every stored record, ordered by arrival (then origin).
pub fn read_everything(data_dir: &Path) -> Result<Vec<CompactRecord>, LogError> {
    let mut records = read(data_dir, None)?;
    records.sort_by_key(|r| (r.meta.arrival_unix_ns, r.origin));
    Ok(records)
}

/// One session's records in their true order. Compacted files are consulted through their
/// index, and only those whose records do not all predate the session.
pub fn read_session(data_dir: &Path, session_id: u64) -> Result<Vec<CompactRecord>, LogError> {
    let mut records = read(data_dir, Some(session_id))?;
    records.sort_by_key(|r| (r.meta.arrival_unix_ns, r.origin));
    order_session(&mut records);
    Ok(records)
}

/// The records of every session, or of one: segments first, then the compacted files, then
/// the segment records that a compacted file read here covers are dropped.
fn read(data_dir: &Path, session: Option<u64>) -> Result<Vec<CompactRecord>, LogError> {
    let live = if data_dir.join(log::format::SEGMENTS_DIR).is_dir() {
        log::read_records(data_dir)?
    } else {
        Vec::new()
    };
    let compacted = data_dir.join(COMPACTED_DIR);
    let mut covered = BTreeSet::new();
    let mut records = Vec::new();
    for name in format::list_compacted(&compacted)? {
        let path = compacted.join(name.file_name());
        let read = (|| {
            let mut file = CompactedReader::open(&path)?;
            covered.extend(file.header().inputs.iter().copied());
            match session {
                None => records.extend(file.read_all()?),
                Some(id) if name.may_hold_session(id) => records.extend(file.read_session(id)?),
                Some(_) => {}
            }
            Ok::<_, io::Error>(())
        })();
        match read {
            Ok(()) => {}
            // Expired between the listing and the read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    records.extend(
        live.into_iter()
            .filter(|r| {
                let segment = SegmentName {
                    worker: r.worker,
                    seq: r.segment_seq,
                };
                !covered.contains(&segment) && session.is_none_or(|id| r.meta.session_id == id)
            })
            .map(CompactRecord::from),
    );
    Ok(records)
}

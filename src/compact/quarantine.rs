//! Quarantine files: records set aside, each with why, for an operator to look at.
//!
//! In: records refused by the compactor (their framing does not walk), by a forwarder (a value
//! over its queue's size limit) or by the database writer (a row the database refuses), with the
//! reason. Out: one file
//! `<data_dir>/quarantine/q-<unix ms>-<tag>.jsonl` per call, one JSON object a line (reason,
//! session, kind, arrival, the segment and offset it came from, name, body in base64), synced
//! with its directory before return. Thread: the caller's (compactor, forwarder).

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;

use crate::log::{LogRecord, RecordMeta, SegmentName};

/// One record set aside.
pub struct Quarantined<'a> {
    pub meta: RecordMeta,
    /// Where it was read from.
    pub segment: SegmentName,
    pub offset: u64,
    pub name: &'a [u8],
    pub body: &'a [u8],
    pub reason: String,
}

impl<'a> Quarantined<'a> {
    /// `record`, as a consumer of the log read it, set aside for `reason`.
    pub fn of(record: &'a LogRecord, reason: String) -> Quarantined<'a> {
        Quarantined {
            meta: record.meta,
            segment: SegmentName {
                worker: record.worker,
                seq: record.segment_seq,
            },
            offset: record.offset,
            name: &record.name,
            body: &record.body,
            reason,
        }
    }
}

/// Writes `records` to a new quarantine file in `dir` named with `tag`; durable on return.
/// Logs one warning for the file (`who` set aside how many, the first one's session and
/// reason), each record at debug level: a client that sends nothing but malformed batches
/// must not turn every one of them into a log line. The file holds every reason.
pub fn write(dir: &Path, who: &str, tag: &str, records: &[Quarantined<'_>]) -> io::Result<()> {
    let Some(first) = records.first() else {
        return Ok(());
    };
    std::fs::create_dir_all(dir)?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let path = dir.join(format!("q-{now_ms:013}-{tag}.jsonl"));
    let mut out = Vec::new();
    for r in records {
        let line = serde_json::json!({
            "reason": r.reason,
            "session": r.meta.session_id.to_string(),
            "kind": r.meta.kind.as_str(),
            "arrival_unix_ns": r.meta.arrival_unix_ns,
            "segment": r.segment.file_name(),
            "offset": r.offset,
            "name": String::from_utf8_lossy(r.name),
            "body_base64": base64::engine::general_purpose::STANDARD.encode(r.body),
        });
        serde_json::to_writer(&mut out, &line).map_err(io::Error::other)?;
        out.push(b'\n');
    }
    let mut file = File::options().create(true).append(true).open(&path)?;
    file.write_all(&out)?;
    file.sync_all()?;
    File::open(dir)?.sync_all()?;
    log::warn!(
        "{who}: quarantined {} record(s) into {}; the first, of session {}: {}",
        records.len(),
        path.display(),
        first.meta.session_id,
        first.reason
    );
    for r in records {
        log::debug!(
            "{who}: quarantined a record of session {}: {}",
            r.meta.session_id,
            r.reason
        );
    }
    Ok(())
}

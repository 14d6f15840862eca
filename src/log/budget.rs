//! The disk budget: how many bytes the node's data directory may hold, what it holds now, and
//! whether the writers must refuse new records.
//!
//! In: the bytes of the segment files (published by the segment service, every retention
//! check), of the compacted and quarantine files (published by the compactor, which also says
//! how much of that it could still delete). Out: a `full` flag the writers read before every
//! record (one relaxed atomic load), and the counts `ls`, readiness and metrics show. Shared by
//! the segment service thread, the compactor thread and the worker threads; all lock-free.
//!
//! # Who frees what, in order
//!
//! 1. The compactor deletes compacted files, oldest first (never one whose input segments are
//!    still in the log: it tells readers those records were compacted).
//! 2. When the compactor has nothing left it may delete and the data directory is still over
//!    the budget, the segment service deletes spare files, then forces out the oldest sealed
//!    segments whatever the consumers say: unconsumed records are lost, so each one is logged
//!    at error level and counted.
//! 3. When nothing is left to retire and the directory is still over the budget, `full` is
//!    set: writers refuse records (the routes answer 503 with `Retry-After`) until a later
//!    check finds room, which clears it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A disk budget as configured: bytes, or a share of the data directory's file system.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BudgetSetting {
    Bytes(u64),
    /// Percent (0-100] of the file system's size.
    Percent(f64),
}

impl BudgetSetting {
    /// 80% of the file system: room for the rest of the machine, and for a burst while the
    /// budget is enforced (checks run four times a second).
    pub const DEFAULT: BudgetSetting = BudgetSetting::Percent(80.0);

    /// `10GiB`, `500MB`, `123456` (bytes), or `75%`.
    pub fn parse(text: &str) -> Result<BudgetSetting, String> {
        let text = text.trim();
        if let Some(pct) = text.strip_suffix('%') {
            let pct: f64 = pct
                .trim()
                .parse()
                .map_err(|_| format!("bad percentage {text:?}"))?;
            if !(pct > 0.0 && pct <= 100.0) {
                return Err(format!(
                    "a disk budget percentage must be in (0, 100]: {text:?}"
                ));
            }
            return Ok(BudgetSetting::Percent(pct));
        }
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("bad disk budget {text:?}"))?;
        let scale: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" => 1000,
            "MB" => 1000 * 1000,
            "GB" => 1000 * 1000 * 1000,
            "TB" => 1000 * 1000 * 1000 * 1000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            other => return Err(format!("unknown size unit {other:?} in {text:?}")),
        };
        n.checked_mul(scale)
            .map(BudgetSetting::Bytes)
            .ok_or_else(|| format!("disk budget {text:?} is too large"))
    }

    /// The budget in bytes for a data directory at `dir` (which must exist).
    pub fn resolve(self, dir: &Path) -> std::io::Result<u64> {
        match self {
            BudgetSetting::Bytes(n) => Ok(n),
            BudgetSetting::Percent(pct) => {
                let fs = rustix::fs::statvfs(dir)?;
                let size = fs.f_blocks.saturating_mul(fs.f_frsize);
                Ok((size as f64 * pct / 100.0) as u64)
            }
        }
    }
}

/// The budget and the usage, shared (see the module doc).
#[derive(Debug)]
pub struct DiskBudget {
    limit: u64,
    segment_bytes: AtomicU64,
    other_bytes: AtomicU64,
    other_deletable: AtomicU64,
    full: AtomicBool,
    /// Room the compactor keeps free for the segment files about to be created (see
    /// [`DiskBudget::compactor_excess`]).
    headroom: AtomicU64,
    /// The last attempt to prepare a segment file failed (a full disk, say).
    storage_error: AtomicBool,
    /// Compacted files deleted because of the budget.
    pub compacted_deleted: AtomicU64,
}

impl DiskBudget {
    pub fn new(limit: u64) -> Self {
        DiskBudget {
            limit,
            segment_bytes: AtomicU64::new(0),
            other_bytes: AtomicU64::new(0),
            other_deletable: AtomicU64::new(0),
            full: AtomicBool::new(false),
            headroom: AtomicU64::new(0),
            storage_error: AtomicBool::new(false),
            compacted_deleted: AtomicU64::new(0),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes the data directory holds, as last published.
    pub fn used(&self) -> u64 {
        self.segment_bytes.load(Ordering::Relaxed) + self.other_bytes.load(Ordering::Relaxed)
    }

    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes.load(Ordering::Relaxed)
    }

    /// Whether writers must refuse new records.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// Whether the last attempt to prepare a segment file failed.
    pub fn storage_error(&self) -> bool {
        self.storage_error.load(Ordering::Relaxed)
    }

    pub(crate) fn set_storage_error(&self, failed: bool) {
        self.storage_error.store(failed, Ordering::Relaxed);
    }

    /// The compactor's part: bytes of compacted and quarantine files, and how many of those it
    /// could still delete.
    pub fn publish_other(&self, bytes: u64, deletable: u64) {
        self.other_bytes.store(bytes, Ordering::Relaxed);
        self.other_deletable.store(deletable, Ordering::Relaxed);
    }

    /// Bytes over the budget, 0 if none.
    pub fn excess(&self) -> u64 {
        self.excess_with(0)
    }

    /// Bytes over the budget once `more` bytes are added, 0 if they fit.
    pub fn excess_with(&self, more: u64) -> u64 {
        self.used().saturating_add(more).saturating_sub(self.limit)
    }

    /// Bytes of compacted files the compactor should delete: it keeps the headroom free, so
    /// that the segment service can create the next segment files without going over the
    /// budget and without forcing out unconsumed segments while older compacted data exists.
    pub fn compactor_excess(&self) -> u64 {
        self.excess_with(self.headroom.load(Ordering::Relaxed))
    }

    /// Set by the segment service: room for the segment files it is about to create. Capped at
    /// an eighth of the budget, so that a small budget still holds compacted data.
    pub(crate) fn set_headroom(&self, bytes: u64) {
        self.headroom
            .store(bytes.min(self.limit / 8), Ordering::Relaxed);
    }

    pub(crate) fn publish_segments(&self, bytes: u64) {
        self.segment_bytes.store(bytes, Ordering::Relaxed);
    }

    /// A segment file of `bytes` was just created: counted now, before the next measurement.
    pub(crate) fn add_segment_bytes(&self, bytes: u64) {
        self.segment_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Whether the compactor could still free bytes itself.
    pub(crate) fn others_can_free(&self) -> bool {
        self.other_deletable.load(Ordering::Relaxed) > 0
    }

    pub(crate) fn set_full(&self, full: bool) {
        if self.full.swap(full, Ordering::Relaxed) != full {
            if full {
                log::error!(
                    "disk budget reached ({} of {} bytes) with nothing left to retire: refusing \
                     new records until space returns",
                    self.used(),
                    self.limit
                );
            } else {
                log::warn!(
                    "disk budget: room again ({} of {} bytes)",
                    self.used(),
                    self.limit
                );
            }
        }
    }
}

/// Bytes `dir`'s regular files take on disk (allocated blocks), not descending; 0 if missing.
pub fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut total = 0u64;
    for entry in entries {
        let Ok(meta) = entry?.metadata() else {
            continue; // removed meanwhile
        };
        if meta.is_file() {
            total += meta.blocks() * 512;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse() {
        for (text, want) in [
            ("123", BudgetSetting::Bytes(123)),
            ("10GiB", BudgetSetting::Bytes(10 << 30)),
            ("500MB", BudgetSetting::Bytes(500_000_000)),
            ("64 MiB", BudgetSetting::Bytes(64 << 20)),
            ("75%", BudgetSetting::Percent(75.0)),
            ("100%", BudgetSetting::Percent(100.0)),
        ] {
            assert_eq!(BudgetSetting::parse(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "0%",
            "101%",
            "x",
            "10XB",
            "-5",
            "99999999999999999999TiB",
        ] {
            assert!(BudgetSetting::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_percentage_is_of_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let all = BudgetSetting::Percent(100.0).resolve(dir.path()).unwrap();
        let half = BudgetSetting::Percent(50.0).resolve(dir.path()).unwrap();
        assert!(all > 0 && half.abs_diff(all / 2) <= 1, "{half} of {all}");
    }
}

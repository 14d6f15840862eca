//! The segment log: where request bodies are stored, once, on their way downstream.
//!
//! In: records (a session id, an arrival time, a kind, an optional image name, a body) from the
//! HTTP worker threads. Each worker thread owns a [`SegmentWriter`] and writes bodies straight
//! into a memory-mapped segment file (from the socket, from a gzip inflater, or from slices),
//! framed and CRC32C-checked. A record is acknowledged once it is complete in the mapping (page
//! cache, "os" durability). Out: sealed segment files in `<data_dir>/segments/`, which a later
//! compaction stage consumes, and [`read_records`] for the CLI and tests.
//!
//! Threads: each worker runs its own writer (single-threaded, `!Send`). One [`SegmentService`]
//! thread does the costly syscalls off the workers: it creates and fallocates the next segment
//! file of each worker, pre-faults pages ahead of each writer's cursor, and seals segments that
//! rolled (sealed header, unmap, truncate to the used length). Recovery runs at start-up, before
//! any writer exists. Readers in other processes read files with `read(2)` while the node runs.
//!
//! Layout: [`format`] defines the bytes on disk (read its doc first); `mmap` holds all the
//! `unsafe`; `scan` classifies a segment's records (shared by recovery and readers); `writer`
//! is the hot path; `service` the background thread; `recovery` and `reader` the rest.

pub mod budget;
pub mod consumer;
pub mod format;
#[allow(unsafe_code)]
mod mmap;
mod reader;
mod recovery;
mod scan;
mod service;
mod writer;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

pub use budget::{BudgetSetting, DiskBudget};
pub use consumer::{
    Consumer, ConsumerRegistry, ConsumerState, Cursor, Lag, LogRecord, Position, SealedSegment,
    SegmentEvent, SegmentLag,
};
pub use format::{HeaderError, SegmentHeader, SegmentName};
pub use reader::{read_records, StoredRecord};
pub use recovery::{recover, RecoverySummary};
pub use scan::{scan_segment, RecordClass, ScannedRecord, SegmentScan};
pub use service::{
    SegmentCounters, SegmentCounts, SegmentService, SPARES_KEPT, SPARES_KEPT_WITH_ROOM,
};
pub use writer::{Reservation, SegmentWriter};

/// What a record holds; decides where downstream consumers read it from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    WebBatch = 1,
    WebAssetsBatch = 2,
    MobileBatch = 3,
    SessionStart = 4,
    MobileSessionStart = 5,
    /// One image file, as nodes before [`RecordKind::ImageUpload`] stored uploads (still read).
    Image = 6,
    NotStarted = 7,
    /// Every file of one image upload, with its form type (`crate::upload`).
    ImageUpload = 8,
    /// A new session's `sessions` row (`crate::db::row`), just before its start message.
    SessionRow = 9,
}

/// The queue topics of OpenReplay's pipeline (their names are the caller's configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `raw` (TOPIC_RAW_WEB)
    Raw,
    /// `raw-assets` (TOPIC_RAW_ASSETS)
    RawAssets,
    /// `raw-ios` (TOPIC_RAW_IOS)
    RawIos,
}

impl RecordKind {
    pub const ALL: [RecordKind; 9] = [
        RecordKind::WebBatch,
        RecordKind::WebAssetsBatch,
        RecordKind::MobileBatch,
        RecordKind::SessionStart,
        RecordKind::MobileSessionStart,
        RecordKind::Image,
        RecordKind::NotStarted,
        RecordKind::ImageUpload,
        RecordKind::SessionRow,
    ];

    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u8 == v)
    }

    /// The queue topic OpenReplay's consumers read this kind from; `None` for kinds that are not
    /// forwarded to a queue (images go to storage, not-started is only counted, a session row goes
    /// to the database).
    pub fn topic(self) -> Option<Topic> {
        match self {
            RecordKind::WebBatch | RecordKind::SessionStart => Some(Topic::Raw),
            RecordKind::WebAssetsBatch => Some(Topic::RawAssets),
            RecordKind::MobileBatch | RecordKind::MobileSessionStart => Some(Topic::RawIos),
            RecordKind::Image
            | RecordKind::ImageUpload
            | RecordKind::NotStarted
            | RecordKind::SessionRow => None,
        }
    }

    /// Name shown by `ls`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::WebBatch => "web-batch",
            RecordKind::WebAssetsBatch => "web-assets-batch",
            RecordKind::MobileBatch => "mobile-batch",
            RecordKind::SessionStart => "session-start",
            RecordKind::MobileSessionStart => "mobile-session-start",
            RecordKind::Image => "image",
            RecordKind::NotStarted => "not-started",
            RecordKind::ImageUpload => "image-upload",
            RecordKind::SessionRow => "session-row",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordMeta {
    pub session_id: u64,
    pub arrival_unix_ns: u64,
    pub kind: RecordKind,
}

/// When a record counts as stored (`--durability`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// A 200 means the record is complete in the mapping: it survives a crash of the process.
    /// The segment service writes dirty pages back at least every flush interval, so a power
    /// loss loses at most about that interval.
    #[default]
    Os,
    /// Group commit: a worker writes back the records completed in one event-loop turn (one
    /// msync per touched range) before it sends their answers. A 200 survives a power loss.
    Fsync,
}

impl Durability {
    pub fn parse(text: &str) -> Result<Durability, String> {
        match text.trim() {
            "os" => Ok(Durability::Os),
            "fsync" => Ok(Durability::Fsync),
            other => Err(format!("durability is os or fsync, not {other:?}")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    /// The data dir; segments go to `dir/segments`.
    pub dir: PathBuf,
    /// Capacity of a segment file; a multiple of 4 KiB, at least 8 KiB.
    pub segment_size: u64,
    /// A non-empty segment is rolled once its first record is this old.
    pub segment_max_age: Duration,
    /// How far ahead of a writer's cursor pages are pre-faulted; 0 turns pre-faulting off.
    pub prefault_window: usize,
    /// What the data directory may hold (see `budget`); `None`: no limit but the disk's.
    pub disk_budget: Option<BudgetSetting>,
    pub durability: Durability,
    /// How often open segments are written back in the background ("os" durability).
    pub flush_interval: Duration,
}

impl LogConfig {
    /// 64 MiB: a few seconds of a busy worker's traffic, and few enough files for compaction.
    pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;
    /// 10 s bounds how long a record waits in an open segment before compaction can see it.
    pub const DEFAULT_SEGMENT_MAX_AGE: Duration = Duration::from_secs(10);
    /// 4 MiB: a few dozen batches ahead, small enough to fault in within one service turn.
    pub const DEFAULT_PREFAULT_WINDOW: usize = 4 << 20;
    /// 1 s: what a power loss may cost in "os" durability; writing back a busy second of
    /// segment pages costs the service thread milliseconds.
    pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
    /// Far beyond any useful age, and far from overflowing `Instant` arithmetic.
    const MAX_AGE_LIMIT: Duration = Duration::from_secs(24 * 3600);
    /// Segment sizes are whole pages, so a mapping never ends inside a page.
    const SIZE_GRANULE: u64 = 4096;

    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LogConfig {
            dir: dir.into(),
            segment_size: Self::DEFAULT_SEGMENT_SIZE,
            segment_max_age: Self::DEFAULT_SEGMENT_MAX_AGE,
            prefault_window: Self::DEFAULT_PREFAULT_WINDOW,
            disk_budget: None,
            durability: Durability::Os,
            flush_interval: Self::DEFAULT_FLUSH_INTERVAL,
        }
    }

    pub fn segments_dir(&self) -> PathBuf {
        self.dir.join(format::SEGMENTS_DIR)
    }

    fn validate(&self) -> Result<usize, LogError> {
        if self.segment_size < 2 * Self::SIZE_GRANULE || self.segment_size % Self::SIZE_GRANULE != 0
        {
            return Err(LogError::Config(
                "segment_size must be a multiple of 4 KiB, at least 8 KiB",
            ));
        }
        if self.segment_max_age > Self::MAX_AGE_LIMIT {
            return Err(LogError::Config("segment_max_age must be at most a day"));
        }
        usize::try_from(self.segment_size)
            .map_err(|_| LogError::Config("segment_size does not fit this address space"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("record too large for a segment")]
    TooLarge,
    #[error("record name longer than 65535 bytes")]
    NameTooLong,
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("bad segment header: {0}")]
    BadHeader(HeaderError),
    #[error("invalid log configuration: {0}")]
    Config(&'static str),
    #[error("worker {0} is out of range or already has a writer")]
    Worker(u16),
    #[error("the segment directory is locked by another running node")]
    Locked,
    #[error("the disk budget is used up")]
    Full,
}

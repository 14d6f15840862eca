//! Compaction: sealed segments become compressed, indexed files, one session at a time.
//!
//! In: the records of sealed segments, from the log's consumer API (the compactor thread). Out:
//! compacted files in `<data_dir>/compacted/` (see [`format`] for their bytes), read back by the
//! CLI (`cat`, `ls`, `export`). [`validate`] decides which records are set aside, [`order`]
//! puts a session's records in their true order, [`format`] writes and reads the files. All
//! three are pure of threads: the compactor thread and the CLI's thread call them.

pub mod compactor;
pub mod format;
pub mod order;
pub mod priority;
pub mod quarantine;
pub mod store;
pub mod validate;

pub use compactor::{Compactor, CompactorConfig, CompactorStats};
pub use format::{
    list_compacted, read_all, read_header, read_session, remove_leftovers, CompactRecord,
    CompactedFileName, CompactedHeader, CompactedInfo, CompactedReader, CompactedWriter, Origin,
};
pub use order::{order_session, SessionRecord};
pub use validate::{check_record, Problem, Quarantine};

//! The compacted file format: one session's records together, compressed, found by an index.
//!
//! Enters (writer, on the compactor thread): the records of one or more sealed segments and
//! the names of those segments. Leaves: one compacted file, committed by rename, and a
//! [`CompactedInfo`]. Enters (readers, on the CLI's thread for `cat`/`ls`/`export`, and on the
//! compactor thread after a crash): a compacted file. Leaves: its header ([`read_header`], a
//! few hundred bytes read), one session's records ([`read_session`]: the header, footer, index
//! and that session's blocks, nothing else), or all of them ([`read_all`]). No threads here.
//!
//! # Directory
//!
//! `<data_dir>/compacted/` ([`COMPACTED_DIR`]) holds files named
//! `c-{first_arrival_ms:013}-{last_arrival_ms:013}-{unique:08x}.rcz` ([`CompactedFileName`]):
//! the arrival range of their records in Unix ms (both 0 for a file without records), then the
//! low 32 bits of the XXH3-64 of the file's header, which tells apart files of the same range.
//! Names sort by time, and a reader looking for a session skips the files that end before the
//! session began (its start ms is in its id, see `flake`). A file is written as
//! `.tmp-<final name>` ([`TMP_PREFIX`]), fsynced, renamed to its final name, and the directory
//! fsynced; so after a crash a final name is always a complete file, and `.tmp-` leftovers
//! are deleted by [`remove_leftovers`] before the compactor starts again.
//!
//! # Compacted file
//!
//! All integers little-endian. Header, blocks, index, footer, back to back:
//!
//! ```text
//! header, 72 + 16 n bytes
//!  0  [u8; 8] magic "RICMPCT1"
//!  8  u32     format version (1)
//! 12  u32     n: input segments
//! 16  u64     created_unix_ns
//! 24  u64     first_arrival_ns  smallest arrival time of the file's records (0 if none)
//! 32  u64     last_arrival_ns   largest (0 if none)
//! 40  u64     sessions
//! 48  u64     records
//! 56  u64     raw_bytes         sum of the records' name and body lengths
//! 64  n x 16  input segments, ascending, each: u16 worker, [u8; 6] zero, u64 seq
//! 64 + 16 n   u32 crc32c of the header bytes before it
//! 68 + 16 n   u32 zero
//! ```
//!
//! The input list is what the compactor reads after a crash to know which segments are
//! already compacted: it is in the clear, covered by the header CRC, readable alone.
//!
//! ```text
//! block, 32 + c bytes; one session's records, in their true order (`compact::order`)
//!  0  [u8; 4] magic "RBLK"
//!  4  u32     c: compressed length
//!  8  u32     raw length (decompressed)
//! 12  u32     records
//! 16  u64     session id
//! 24  u64     checksum: XXH3-64 of bytes [0, 24) of this block, then the c bytes
//! 32  c bytes: one zstd frame holding `records` records:
//!
//!   record, 36 + name_len + body_len bytes
//!    0  u8  kind            RecordKind
//!    1  u8  flags (0)
//!    2  u16 name_len        image file name; 0 otherwise
//!    4  u16 origin worker
//!    6  u16 zero
//!    8  u32 body_len
//!   12  u64 arrival_unix_ns
//!   20  u64 origin segment sequence
//!   28  u64 origin offset   of the record header in its segment
//!   36  name, body
//! ```
//!
//! ```text
//! index, 8 + 48 m bytes; m blocks, ascending by session id, a session's blocks in order
//!  0  [u8; 4] magic "RIDX"
//!  4  u32     m
//!  8  m x 48  entries:
//!      0  u64 session id
//!      8  u64 offset of the block
//!     16  u32 compressed length (c of the block)
//!     20  u32 raw length
//!     24  u32 records
//!     28  u32 zero
//!     32  u64 first arrival ns of the block's records (smallest)
//!     40  u64 last arrival ns (largest)
//! ```
//!
//! ```text
//! footer, the last 40 bytes
//!  0  u64     index offset
//!  8  u64     index length
//! 16  u64     XXH3-64 of the index
//! 24  u32     format version (1)
//! 28  u32     crc32c of footer bytes [0, 28)
//! 32  [u8; 8] magic "RICMPEND"
//! ```
//!
//! Blocks are contiguous in index order: the first starts right after the header, each next
//! one where the previous ends, the index where the last ends. A reader checks all of that, the
//! header and footer CRCs, the index checksum, each block's checksum and that its header agrees
//! with its index entry, and that the records fill the decompressed block exactly; any failure
//! is an [`io::Error`] of kind `InvalidData` carrying a [`DamagedFile`], never a panic and
//! never records from damaged bytes. XXH3 for the bulk (blocks, index), as the segment records
//! use; CRC-32C for the small fixed header and footer, as the segment header does.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::hash::Hasher as _;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use twox_hash::XxHash3_64;

use crate::compact::order::{order_session, SessionRecord};
use crate::flake;
use crate::log::format::{le_u16, le_u32, le_u64};
use crate::log::{RecordKind, RecordMeta, SegmentName, StoredRecord};

pub const COMPACTED_DIR: &str = "compacted";
pub const COMPACTED_SUFFIX: &str = ".rcz";
/// Files being written; never listed, deleted by [`remove_leftovers`].
pub const TMP_PREFIX: &str = ".tmp-";
pub const FILE_MAGIC: [u8; 8] = *b"RICMPCT1";
pub const FOOTER_MAGIC: [u8; 8] = *b"RICMPEND";
pub const BLOCK_MAGIC: [u8; 4] = *b"RBLK";
pub const INDEX_MAGIC: [u8; 4] = *b"RIDX";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_FIXED_LEN: usize = 64;
pub const INPUT_ENTRY_LEN: usize = 16;
/// The header's CRC and its zero pad.
const HEADER_TAIL_LEN: usize = 8;
pub const BLOCK_HEADER_LEN: usize = 32;
pub const RECORD_HEADER_LEN: usize = 36;
pub const INDEX_HEADER_LEN: usize = 8;
pub const INDEX_ENTRY_LEN: usize = 48;
pub const FOOTER_LEN: usize = 40;
/// zstd's own default, and a good trade on these bodies (JSON-ish tracker messages): most of
/// the ratio of higher levels at several hundred MB/s on one core.
pub const DEFAULT_LEVEL: i32 = 3;
/// A session's records are cut into blocks of at most 4 MiB uncompressed (a larger single
/// record gets a block of its own). Why a cap: a reader decompresses a block whole, so the cap
/// bounds a reader's memory and the bytes it inflates to look at one record of a long
/// session; a damaged block loses at most that much; and 4 MiB is still large enough that
/// zstd sees a session's repetitive messages together (its window at level 3 is 1-4 MiB).
pub const BLOCK_RAW_CAP: usize = 4 << 20;

/// Where a record was stored before compaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    pub worker: u16,
    pub segment_seq: u64,
    /// Offset of the record header in its segment file.
    pub offset: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactRecord {
    pub meta: RecordMeta,
    /// Image file name; empty for other kinds.
    pub name: Vec<u8>,
    pub body: Bytes,
    pub origin: Origin,
}

impl From<StoredRecord> for CompactRecord {
    fn from(r: StoredRecord) -> Self {
        CompactRecord {
            meta: r.meta,
            name: r.name,
            body: r.body,
            origin: Origin {
                worker: r.worker,
                segment_seq: r.segment_seq,
                offset: r.offset,
            },
        }
    }
}

/// Back to the log's record (a forwarder's input, for `redrive`).
impl From<CompactRecord> for StoredRecord {
    fn from(r: CompactRecord) -> Self {
        StoredRecord {
            meta: r.meta,
            worker: r.origin.worker,
            segment_seq: r.origin.segment_seq,
            offset: r.origin.offset,
            name: r.name,
            body: r.body,
        }
    }
}

impl SessionRecord for CompactRecord {
    fn kind(&self) -> RecordKind {
        self.meta.kind
    }
    fn arrival_unix_ns(&self) -> u64 {
        self.meta.arrival_unix_ns
    }
    fn body(&self) -> &[u8] {
        &self.body
    }
}

/// What a committed file holds; returned by [`CompactedWriter::finish`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactedInfo {
    pub path: PathBuf,
    pub inputs: Vec<SegmentName>,
    pub sessions: u64,
    pub records: u64,
    /// Sum of the records' name and body lengths.
    pub raw_bytes: u64,
    pub file_bytes: u64,
    /// 0 (both) for a file without records.
    pub first_arrival_ns: u64,
    pub last_arrival_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactedHeader {
    pub version: u32,
    pub created_unix_ns: u64,
    pub first_arrival_ns: u64,
    pub last_arrival_ns: u64,
    pub sessions: u64,
    pub records: u64,
    pub raw_bytes: u64,
    /// Ascending, no duplicates.
    pub inputs: Vec<SegmentName>,
}

/// What is wrong with a damaged file. Small and `Copy`; [`DamagedFile`] adds the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    #[error("too short for a compacted file")]
    TooShort,
    #[error("not a compacted file (bad magic)")]
    Magic,
    #[error("unknown format version {0}")]
    Version(u32),
    #[error("header checksum mismatch")]
    HeaderChecksum,
    #[error("header fields are inconsistent")]
    HeaderFields,
    #[error("bad footer (magic or checksum)")]
    Footer,
    #[error("index position or length is inconsistent")]
    IndexGeometry,
    #[error("index checksum mismatch")]
    IndexChecksum,
    #[error("index entries are out of order or do not tile the file")]
    IndexEntries,
    #[error("block at byte {offset}: header disagrees with the index")]
    BlockHeader { offset: u64 },
    #[error("block at byte {offset}: checksum mismatch")]
    BlockChecksum { offset: u64 },
    #[error("block at byte {offset}: does not decompress to its length")]
    Decompress { offset: u64 },
    #[error("block at byte {offset}: records do not fill it exactly")]
    Records { offset: u64 },
}

/// The error inside an `InvalidData` [`io::Error`] for a damaged compacted file.
#[derive(Debug, thiserror::Error)]
#[error("{}: damaged compacted file: {damage}", path.display())]
pub struct DamagedFile {
    pub path: PathBuf,
    pub damage: Damage,
}

impl DamagedFile {
    /// The damage an [`io::Error`] reports, if it is about a damaged compacted file.
    pub fn of(e: &io::Error) -> Option<Damage> {
        Some(e.get_ref()?.downcast_ref::<DamagedFile>()?.damage)
    }
}

fn damaged(path: &Path, damage: Damage) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        DamagedFile {
            path: path.to_path_buf(),
            damage,
        },
    )
}

fn invalid_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

// ---------------------------------------------------------------------------------------------
// File names

/// A compacted file's identity as spelled in its name; sorts like the names do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CompactedFileName {
    pub first_arrival_ms: u64,
    pub last_arrival_ms: u64,
    pub unique: u32,
}

impl CompactedFileName {
    pub fn file_name(&self) -> String {
        format!(
            "c-{:013}-{:013}-{:08x}{COMPACTED_SUFFIX}",
            self.first_arrival_ms, self.last_arrival_ms, self.unique
        )
    }

    /// Parses a canonical name (exactly what `file_name` produces, nothing else).
    pub fn parse(name: &str) -> Option<Self> {
        let stem = name.strip_suffix(COMPACTED_SUFFIX)?.strip_prefix("c-")?;
        let mut parts = stem.split('-');
        let (first, last, unique) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || ![first, last]
                .iter()
                .all(|p| p.bytes().all(|c| c.is_ascii_digit()))
            || unique.len() != 8
            || !unique
                .bytes()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        let parsed = CompactedFileName {
            first_arrival_ms: first.parse().ok()?,
            last_arrival_ms: last.parse().ok()?,
            unique: u32::from_str_radix(unique, 16).ok()?,
        };
        (parsed.file_name() == name).then_some(parsed)
    }

    /// False when the file's records all arrived before the session started, so it cannot
    /// hold any of them. Arrival times and the id's start come from the nodes' clocks: a
    /// session started on a node whose clock runs ahead may have records in files that end
    /// "before" it began, by as much as the skew; callers add slack if they fear that.
    pub fn may_hold_session(&self, session_id: u64) -> bool {
        self.last_arrival_ms >= flake::start_timestamp_ms(session_id)
    }
}

/// The compacted files of `dir`, oldest first; `.tmp-` files and other names are ignored; a
/// missing directory holds none.
pub fn list_compacted(dir: &Path) -> io::Result<Vec<CompactedFileName>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        if let Some(name) = entry?
            .file_name()
            .to_str()
            .and_then(CompactedFileName::parse)
        {
            names.push(name);
        }
    }
    names.sort_unstable();
    Ok(names)
}

/// Deletes the `.tmp-` files a crash left in `dir`; returns how many. Only the compactor calls
/// it, before it writes: it owns every file of the directory.
pub fn remove_leftovers(dir: &Path) -> io::Result<usize> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        if entry
            .file_name()
            .as_encoded_bytes()
            .starts_with(TMP_PREFIX.as_bytes())
            && entry.file_type()?.is_file()
        {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

// ---------------------------------------------------------------------------------------------
// Encoding

fn header_len(inputs: usize) -> usize {
    HEADER_FIXED_LEN + INPUT_ENTRY_LEN * inputs + HEADER_TAIL_LEN
}

impl CompactedHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(header_len(self.inputs.len()));
        b.extend_from_slice(&FILE_MAGIC);
        b.extend_from_slice(&self.version.to_le_bytes());
        // Writers check the count fits (`CompactedWriter::new`).
        b.extend_from_slice(&(self.inputs.len() as u32).to_le_bytes());
        for v in [
            self.created_unix_ns,
            self.first_arrival_ns,
            self.last_arrival_ns,
            self.sessions,
            self.records,
            self.raw_bytes,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for input in &self.inputs {
            b.extend_from_slice(&input.worker.to_le_bytes());
            b.extend_from_slice(&[0; 6]);
            b.extend_from_slice(&input.seq.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        b
    }

    /// Length of the whole header, from its first [`HEADER_FIXED_LEN`] bytes.
    fn len_from_fixed(fixed: &[u8]) -> Result<usize, Damage> {
        let fixed = fixed.get(..HEADER_FIXED_LEN).ok_or(Damage::TooShort)?;
        if fixed[0..8] != FILE_MAGIC {
            return Err(Damage::Magic);
        }
        let version = le_u32(fixed, 8);
        if version != FORMAT_VERSION {
            return Err(Damage::Version(version));
        }
        usize::try_from(le_u32(fixed, 12))
            .ok()
            .and_then(|n| n.checked_mul(INPUT_ENTRY_LEN))
            .and_then(|n| n.checked_add(HEADER_FIXED_LEN + HEADER_TAIL_LEN))
            .ok_or(Damage::HeaderFields)
    }

    pub fn decode(b: &[u8]) -> Result<Self, Damage> {
        let len = Self::len_from_fixed(b)?;
        let b = b.get(..len).ok_or(Damage::TooShort)?;
        let crc_at = len - HEADER_TAIL_LEN;
        if crc32c::crc32c(&b[..crc_at]) != le_u32(b, crc_at) {
            return Err(Damage::HeaderChecksum);
        }
        let inputs: Vec<SegmentName> = b[HEADER_FIXED_LEN..crc_at]
            .chunks_exact(INPUT_ENTRY_LEN)
            .map(|e| SegmentName {
                worker: le_u16(e, 0),
                seq: le_u64(e, 8),
            })
            .collect();
        let header = CompactedHeader {
            version: le_u32(b, 8),
            created_unix_ns: le_u64(b, 16),
            first_arrival_ns: le_u64(b, 24),
            last_arrival_ns: le_u64(b, 32),
            sessions: le_u64(b, 40),
            records: le_u64(b, 48),
            raw_bytes: le_u64(b, 56),
            inputs,
        };
        let pads_zero = le_u32(b, crc_at + 4) == 0
            && b[HEADER_FIXED_LEN..crc_at]
                .chunks_exact(INPUT_ENTRY_LEN)
                .all(|e| e[2..8] == [0; 6]);
        let fields_ok = pads_zero
            && header.inputs.windows(2).all(|w| w[0] < w[1])
            && header.first_arrival_ns <= header.last_arrival_ns
            && header.sessions <= header.records;
        if !fields_ok {
            return Err(Damage::HeaderFields);
        }
        Ok(header)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IndexEntry {
    session_id: u64,
    offset: u64,
    compressed_len: u32,
    raw_len: u32,
    records: u32,
    first_arrival_ns: u64,
    last_arrival_ns: u64,
}

impl IndexEntry {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.session_id.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.compressed_len.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.extend_from_slice(&self.records.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.first_arrival_ns.to_le_bytes());
        out.extend_from_slice(&self.last_arrival_ns.to_le_bytes());
    }

    fn decode(e: &[u8]) -> Option<Self> {
        (le_u32(e, 28) == 0).then(|| IndexEntry {
            session_id: le_u64(e, 0),
            offset: le_u64(e, 8),
            compressed_len: le_u32(e, 16),
            raw_len: le_u32(e, 20),
            records: le_u32(e, 24),
            first_arrival_ns: le_u64(e, 32),
            last_arrival_ns: le_u64(e, 40),
        })
    }

    /// Where the block ends (its header included).
    fn end(&self) -> Option<u64> {
        self.offset
            .checked_add(BLOCK_HEADER_LEN as u64)?
            .checked_add(u64::from(self.compressed_len))
    }

    fn block_header(&self) -> [u8; BLOCK_HEADER_LEN - 8] {
        let mut b = [0u8; BLOCK_HEADER_LEN - 8];
        b[0..4].copy_from_slice(&BLOCK_MAGIC);
        b[4..8].copy_from_slice(&self.compressed_len.to_le_bytes());
        b[8..12].copy_from_slice(&self.raw_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.records.to_le_bytes());
        b[16..24].copy_from_slice(&self.session_id.to_le_bytes());
        b
    }
}

fn block_checksum(head: &[u8], payload: &[u8]) -> u64 {
    let mut h = XxHash3_64::new();
    h.write(head);
    h.write(payload);
    h.finish()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Footer {
    index_offset: u64,
    index_len: u64,
    index_checksum: u64,
}

impl Footer {
    fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut b = [0u8; FOOTER_LEN];
        b[0..8].copy_from_slice(&self.index_offset.to_le_bytes());
        b[8..16].copy_from_slice(&self.index_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.index_checksum.to_le_bytes());
        b[24..28].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let crc = crc32c::crc32c(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b[32..40].copy_from_slice(&FOOTER_MAGIC);
        b
    }

    fn decode(b: &[u8; FOOTER_LEN]) -> Result<Self, Damage> {
        if b[32..40] != FOOTER_MAGIC || crc32c::crc32c(&b[..28]) != le_u32(b, 28) {
            return Err(Damage::Footer);
        }
        let version = le_u32(b, 24);
        if version != FORMAT_VERSION {
            return Err(Damage::Version(version));
        }
        Ok(Footer {
            index_offset: le_u64(b, 0),
            index_len: le_u64(b, 8),
            index_checksum: le_u64(b, 16),
        })
    }
}

/// Appends one record as it is stored inside a block.
fn encode_record(r: &CompactRecord, out: &mut Vec<u8>) {
    // Lengths were checked by `CompactedWriter::push`.
    out.push(r.meta.kind as u8);
    out.push(0);
    out.extend_from_slice(&(r.name.len() as u16).to_le_bytes());
    out.extend_from_slice(&r.origin.worker.to_le_bytes());
    out.extend_from_slice(&[0; 2]);
    out.extend_from_slice(&(r.body.len() as u32).to_le_bytes());
    out.extend_from_slice(&r.meta.arrival_unix_ns.to_le_bytes());
    out.extend_from_slice(&r.origin.segment_seq.to_le_bytes());
    out.extend_from_slice(&r.origin.offset.to_le_bytes());
    out.extend_from_slice(&r.name);
    out.extend_from_slice(&r.body);
}

/// The records of one decompressed block; `None` unless they fill it exactly.
fn decode_records(
    session_id: u64,
    raw: &Bytes,
    count: u32,
    out: &mut Vec<CompactRecord>,
) -> Option<()> {
    let mut at = 0usize;
    for _ in 0..count {
        let h = raw.get(at..at.checked_add(RECORD_HEADER_LEN)?)?;
        let kind = RecordKind::from_u8(h[0])?;
        if h[1] != 0 || le_u16(h, 6) != 0 {
            return None;
        }
        let name_len = usize::from(le_u16(h, 2));
        let body_len = usize::try_from(le_u32(h, 8)).ok()?;
        let name_at = at + RECORD_HEADER_LEN;
        let body_at = name_at.checked_add(name_len)?;
        let end = body_at.checked_add(body_len)?;
        if end > raw.len() {
            return None;
        }
        out.push(CompactRecord {
            meta: RecordMeta {
                session_id,
                arrival_unix_ns: le_u64(h, 12),
                kind,
            },
            name: raw[name_at..body_at].to_vec(),
            body: raw.slice(body_at..end),
            origin: Origin {
                worker: le_u16(h, 4),
                segment_seq: le_u64(h, 20),
                offset: le_u64(h, 28),
            },
        });
        at = end;
    }
    (at == raw.len()).then_some(())
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Gathers the records of its input segments by session, then writes one compacted file.
/// Holds the records in memory (bodies are `Bytes`, so usually views of the segments as read).
pub struct CompactedWriter {
    dir: PathBuf,
    inputs: Vec<SegmentName>,
    level: i32,
    block_cap: usize,
    sessions: HashMap<u64, Vec<CompactRecord>>,
    records: u64,
    raw_bytes: u64,
    first_arrival_ns: u64,
    last_arrival_ns: u64,
}

impl CompactedWriter {
    /// A writer for a file in `dir` covering `inputs` (recorded in its header), compressing at
    /// zstd `level` ([`DEFAULT_LEVEL`] unless there is a reason).
    pub fn new(dir: &Path, inputs: &[SegmentName], level: i32) -> io::Result<Self> {
        if !zstd::compression_level_range().contains(&level) {
            return Err(invalid_input(format!("zstd level {level} is out of range")));
        }
        let mut inputs = inputs.to_vec();
        inputs.sort_unstable();
        inputs.dedup();
        if u32::try_from(inputs.len()).is_err() {
            return Err(invalid_input("too many input segments".into()));
        }
        Ok(CompactedWriter {
            dir: dir.to_path_buf(),
            inputs,
            level,
            block_cap: BLOCK_RAW_CAP,
            sessions: HashMap::new(),
            records: 0,
            raw_bytes: 0,
            first_arrival_ns: u64::MAX,
            last_arrival_ns: 0,
        })
    }

    /// Smaller blocks, so tests can split sessions without megabytes of data.
    #[cfg(test)]
    fn with_block_cap(mut self, cap: usize) -> Self {
        self.block_cap = cap;
        self
    }

    /// Adds a record; the order of pushes does not matter (each session is put in its true
    /// order when written). Refuses a name longer than 65535 bytes or a record that does not
    /// fit a block's u32 lengths.
    pub fn push(&mut self, record: CompactRecord) -> io::Result<()> {
        let name_len = record.name.len();
        if u16::try_from(name_len).is_err() {
            return Err(invalid_input(format!("record name of {name_len} bytes")));
        }
        let encoded = RECORD_HEADER_LEN + name_len + record.body.len();
        if u32::try_from(encoded).is_err() {
            return Err(invalid_input(format!("record of {encoded} bytes")));
        }
        let arrival = record.meta.arrival_unix_ns;
        self.first_arrival_ns = self.first_arrival_ns.min(arrival);
        self.last_arrival_ns = self.last_arrival_ns.max(arrival);
        self.records += 1;
        self.raw_bytes += (name_len + record.body.len()) as u64;
        self.sessions
            .entry(record.meta.session_id)
            .or_default()
            .push(record);
        Ok(())
    }

    /// Writes the file under a `.tmp-` name, syncs it, renames it to its final name and syncs
    /// the directory. On error the temporary file is removed (or left for
    /// [`remove_leftovers`] if even that fails) and no final name appears.
    pub fn finish(self) -> io::Result<CompactedInfo> {
        let (first_arrival_ns, last_arrival_ns) = if self.records == 0 {
            (0, 0)
        } else {
            (self.first_arrival_ns, self.last_arrival_ns)
        };
        let header = CompactedHeader {
            version: FORMAT_VERSION,
            created_unix_ns: now_unix_ns(),
            first_arrival_ns,
            last_arrival_ns,
            sessions: self.sessions.len() as u64,
            records: self.records,
            raw_bytes: self.raw_bytes,
            inputs: self.inputs.clone(),
        };
        let header_bytes = header.encode();
        let name = CompactedFileName {
            first_arrival_ms: first_arrival_ns / 1_000_000,
            last_arrival_ms: last_arrival_ns / 1_000_000,
            unique: XxHash3_64::oneshot(&header_bytes) as u32,
        };
        let final_path = self.dir.join(name.file_name());
        let tmp_path = self.dir.join(format!("{TMP_PREFIX}{}", name.file_name()));
        if final_path.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} already exists", final_path.display()),
            ));
        }
        let dir = self.dir.clone();
        let inputs = self.inputs.clone();
        let sessions = header.sessions;
        let records = header.records;
        let raw_bytes = header.raw_bytes;
        let written = self
            .write_to(&tmp_path, &header_bytes)
            .and_then(|file_bytes| {
                fs::rename(&tmp_path, &final_path)?;
                // The rename is durable only once the directory is.
                File::open(&dir)?.sync_all()?;
                Ok(file_bytes)
            });
        let file_bytes = match written {
            Ok(n) => n,
            Err(e) => {
                let _ = fs::remove_file(&tmp_path);
                return Err(e);
            }
        };
        Ok(CompactedInfo {
            path: final_path,
            inputs,
            sessions,
            records,
            raw_bytes,
            file_bytes,
            first_arrival_ns,
            last_arrival_ns,
        })
    }

    /// Writes and syncs the whole file at `path`; returns its length.
    fn write_to(mut self, path: &Path, header: &[u8]) -> io::Result<u64> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(header)?;
        let mut offset = header.len() as u64;
        let mut compressor = zstd::bulk::Compressor::new(self.level)?;
        let mut session_ids: Vec<u64> = self.sessions.keys().copied().collect();
        session_ids.sort_unstable();
        let mut index = Vec::with_capacity(INDEX_HEADER_LEN + session_ids.len() * INDEX_ENTRY_LEN);
        index.extend_from_slice(&INDEX_MAGIC);
        index.extend_from_slice(&[0; 4]); // entry count, set below
        let mut entries = 0u32;
        let mut raw = Vec::new();
        let mut payload = Vec::new();
        for session_id in session_ids {
            let mut records = self.sessions.remove(&session_id).unwrap_or_default();
            order_session(&mut records);
            let mut rest: &[CompactRecord] = &records;
            while !rest.is_empty() {
                // At least one record per block, then as many as fit the cap.
                let mut take = 0;
                raw.clear();
                for r in rest {
                    let len = RECORD_HEADER_LEN + r.name.len() + r.body.len();
                    if take > 0 && raw.len() + len > self.block_cap {
                        break;
                    }
                    encode_record(r, &mut raw);
                    take += 1;
                }
                let (block, tail) = rest.split_at(take);
                rest = tail;
                // Into one buffer for every block: a fresh one for each would be a fresh
                // mapping for each large block, paid for in page faults.
                payload.clear();
                payload.reserve(zstd::zstd_safe::compress_bound(raw.len()));
                compressor.compress_to_buffer(&raw, &mut payload)?;
                let too_big = || invalid_input("block does not fit u32 lengths".into());
                let entry = IndexEntry {
                    session_id,
                    offset,
                    compressed_len: u32::try_from(payload.len()).map_err(|_| too_big())?,
                    raw_len: u32::try_from(raw.len()).map_err(|_| too_big())?,
                    records: u32::try_from(block.len()).map_err(|_| too_big())?,
                    first_arrival_ns: block
                        .iter()
                        .map(|r| r.meta.arrival_unix_ns)
                        .min()
                        .unwrap_or(0),
                    last_arrival_ns: block
                        .iter()
                        .map(|r| r.meta.arrival_unix_ns)
                        .max()
                        .unwrap_or(0),
                };
                let head = entry.block_header();
                out.write_all(&head)?;
                out.write_all(&block_checksum(&head, &payload).to_le_bytes())?;
                out.write_all(&payload)?;
                offset += (BLOCK_HEADER_LEN + payload.len()) as u64;
                entry.encode(&mut index);
                entries = entries
                    .checked_add(1)
                    .ok_or_else(|| invalid_input("too many blocks".into()))?;
            }
        }
        index[4..8].copy_from_slice(&entries.to_le_bytes());
        out.write_all(&index)?;
        let footer = Footer {
            index_offset: offset,
            index_len: index.len() as u64,
            index_checksum: XxHash3_64::oneshot(&index),
        };
        out.write_all(&footer.encode())?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(offset + index.len() as u64 + FOOTER_LEN as u64)
    }
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

// ---------------------------------------------------------------------------------------------
// Reading

/// An open compacted file whose header, footer and index have been read and checked.
pub struct CompactedReader<F = File> {
    file: F,
    path: PathBuf,
    header: CompactedHeader,
    index: Vec<IndexEntry>,
}

/// Reads a file's header only: its inputs, times and counts, without the rest of the file.
pub fn read_header(path: &Path) -> io::Result<CompactedHeader> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    read_header_from(&mut file, len, path)
}

/// One session's records in their true order (none if the file does not hold it), reading
/// only the header, footer, index and that session's blocks.
pub fn read_session(path: &Path, session_id: u64) -> io::Result<Vec<CompactRecord>> {
    CompactedReader::open(path)?.read_session(session_id)
}

/// Every record of the file, session by session (ascending ids), each in its true order.
pub fn read_all(path: &Path) -> io::Result<Vec<CompactRecord>> {
    CompactedReader::open(path)?.read_all()
}

fn read_header_from<F: Read + Seek>(
    file: &mut F,
    len: u64,
    path: &Path,
) -> io::Result<CompactedHeader> {
    let mut fixed = [0u8; HEADER_FIXED_LEN];
    if len < (HEADER_FIXED_LEN + HEADER_TAIL_LEN) as u64 {
        return Err(damaged(path, Damage::TooShort));
    }
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut fixed)?;
    let header_len = CompactedHeader::len_from_fixed(&fixed).map_err(|d| damaged(path, d))?;
    if header_len as u64 > len {
        return Err(damaged(path, Damage::TooShort));
    }
    let mut bytes = vec![0u8; header_len];
    bytes[..HEADER_FIXED_LEN].copy_from_slice(&fixed);
    file.read_exact(&mut bytes[HEADER_FIXED_LEN..])?;
    CompactedHeader::decode(&bytes).map_err(|d| damaged(path, d))
}

impl CompactedReader<File> {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Self::from_file(file, len, path)
    }
}

impl<F: Read + Seek> CompactedReader<F> {
    fn from_file(mut file: F, len: u64, path: &Path) -> io::Result<Self> {
        let bad = |d| damaged(path, d);
        let header = read_header_from(&mut file, len, path)?;
        let header_len = header_len(header.inputs.len()) as u64;
        let min_len = header_len + (INDEX_HEADER_LEN + FOOTER_LEN) as u64;
        if len < min_len {
            return Err(bad(Damage::TooShort));
        }
        let mut footer = [0u8; FOOTER_LEN];
        file.seek(SeekFrom::Start(len - FOOTER_LEN as u64))?;
        file.read_exact(&mut footer)?;
        let footer = Footer::decode(&footer).map_err(bad)?;
        let index_end = len - FOOTER_LEN as u64;
        let geometry_ok = footer.index_offset >= header_len
            && footer.index_offset.checked_add(footer.index_len) == Some(index_end)
            && footer.index_len >= INDEX_HEADER_LEN as u64
            && (footer.index_len - INDEX_HEADER_LEN as u64) % INDEX_ENTRY_LEN as u64 == 0;
        if !geometry_ok {
            return Err(bad(Damage::IndexGeometry));
        }
        // Bounded by the file's length, checked above.
        let mut index = vec![0u8; footer.index_len as usize];
        file.seek(SeekFrom::Start(footer.index_offset))?;
        file.read_exact(&mut index)?;
        if XxHash3_64::oneshot(&index) != footer.index_checksum {
            return Err(bad(Damage::IndexChecksum));
        }
        let count = le_u32(&index, 4) as usize;
        if index[0..4] != INDEX_MAGIC || (index.len() - INDEX_HEADER_LEN) / INDEX_ENTRY_LEN != count
        {
            return Err(bad(Damage::IndexGeometry));
        }
        let entries: Vec<IndexEntry> = index[INDEX_HEADER_LEN..]
            .chunks_exact(INDEX_ENTRY_LEN)
            .map(IndexEntry::decode)
            .collect::<Option<_>>()
            .ok_or(bad(Damage::IndexEntries))?;
        // Blocks tile [header end, index offset) in index order, and the index is sorted.
        let mut at = header_len;
        for (i, e) in entries.iter().enumerate() {
            let in_order = i == 0 || entries[i - 1].session_id <= e.session_id;
            if !in_order || e.offset != at || e.records == 0 {
                return Err(bad(Damage::IndexEntries));
            }
            at = e.end().ok_or(bad(Damage::IndexEntries))?;
        }
        if at != footer.index_offset {
            return Err(bad(Damage::IndexEntries));
        }
        let records: u64 = entries.iter().map(|e| u64::from(e.records)).sum();
        let sessions = entries
            .windows(2)
            .filter(|w| w[0].session_id != w[1].session_id)
            .count()
            + usize::from(!entries.is_empty());
        if records != header.records || sessions as u64 != header.sessions {
            return Err(bad(Damage::HeaderFields));
        }
        Ok(CompactedReader {
            file,
            path: path.to_path_buf(),
            header,
            index: entries,
        })
    }

    pub fn header(&self) -> &CompactedHeader {
        &self.header
    }

    /// The session ids the file holds, ascending.
    pub fn sessions(&self) -> impl Iterator<Item = u64> + '_ {
        let mut last = None;
        self.index.iter().filter_map(move |e| {
            let new = last != Some(e.session_id);
            last = Some(e.session_id);
            new.then_some(e.session_id)
        })
    }

    /// One session's records in their true order; empty if the file does not hold it.
    pub fn read_session(&mut self, session_id: u64) -> io::Result<Vec<CompactRecord>> {
        let from = self.index.partition_point(|e| e.session_id < session_id);
        let to = from + self.index[from..].partition_point(|e| e.session_id == session_id);
        self.read_blocks(from..to)
    }

    pub fn read_all(&mut self) -> io::Result<Vec<CompactRecord>> {
        self.read_blocks(0..self.index.len())
    }

    fn read_blocks(&mut self, blocks: std::ops::Range<usize>) -> io::Result<Vec<CompactRecord>> {
        let mut out = Vec::new();
        let mut frame = Vec::new();
        for i in blocks {
            let entry = self.index[i];
            self.read_block(entry, &mut frame, &mut out)?;
        }
        Ok(out)
    }

    fn read_block(
        &mut self,
        entry: IndexEntry,
        frame: &mut Vec<u8>,
        out: &mut Vec<CompactRecord>,
    ) -> io::Result<()> {
        let offset = entry.offset;
        let bad = |d| damaged(&self.path, d);
        frame.clear();
        frame.resize(BLOCK_HEADER_LEN + entry.compressed_len as usize, 0);
        self.file.seek(SeekFrom::Start(offset))?;
        self.file.read_exact(frame)?;
        let (head, payload) = frame.split_at(BLOCK_HEADER_LEN);
        if head[..BLOCK_HEADER_LEN - 8] != entry.block_header() {
            return Err(bad(Damage::BlockHeader { offset }));
        }
        if block_checksum(&head[..BLOCK_HEADER_LEN - 8], payload) != le_u64(head, 24) {
            return Err(bad(Damage::BlockChecksum { offset }));
        }
        let raw_len = entry.raw_len as usize;
        // Grow with what the frame really holds, up to the length it claims (plus one byte to
        // see a longer one): a lying length costs no allocation up front.
        let mut raw = Vec::with_capacity(raw_len.min(BLOCK_RAW_CAP));
        let decoded = zstd::stream::read::Decoder::with_buffer(payload).and_then(|d| {
            d.single_frame()
                .take(raw_len as u64 + 1)
                .read_to_end(&mut raw)
        });
        if decoded.is_err() || raw.len() != raw_len {
            return Err(bad(Damage::Decompress { offset }));
        }
        let raw = Bytes::from(raw);
        let before = out.len();
        if decode_records(entry.session_id, &raw, entry.records, out).is_none() {
            out.truncate(before);
            return Err(bad(Damage::Records { offset }));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

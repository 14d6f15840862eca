//! The on-disk format of segment logs: the one place that knows byte offsets and file names.
//!
//! Pure code, no I/O: the writer (worker threads), the segment service (sealing), recovery
//! (start-up) and readers (CLI, other processes) all encode and decode through here.
//!
//! # Directory
//!
//! `<data_dir>/segments/` holds, per worker, segments named `w{worker:03}-{seq:016x}.seg`. `seq`
//! increases per worker and continues after the highest existing one at start-up. Files being
//! prepared ahead of use are named `.prep-w{worker:03}-{n:016x}` and renamed to their segment name
//! when a writer takes them (after it wrote the segment header), so a `.prep-` file never holds a
//! record and leftovers are deleted at start-up. `.lock` is held (flock) by the running node.
//! A segment whose header is unreadable is renamed to `<name>.bad` by recovery, kept for a human.
//!
//! # Segment file
//!
//! All integers little-endian. A segment is created at its full capacity (fallocated, hence all
//! zero, or a retired file taken back from `spare/`, holding stale bytes of its former life),
//! written front to back through a shared mapping, then sealed: header rewritten with the sealed
//! flag and `sealed_len`, file truncated to `sealed_len`.
//!
//! ```text
//! segment header, 64 bytes
//!  0  [u8; 8] magic "RISEGLOG"
//!  8  u32     format version (2; version 1 is still read, see below)
//! 12  u16     worker id
//! 14  u16     reserved (0)
//! 16  u64     sequence
//! 24  u64     created_unix_ns
//! 32  u64     capacity (bytes of the file while open; the mapping's length)
//! 40  u64     sealed_len (0 while open; end offset of the last record once sealed)
//! 48  u32     flags (bit 0: sealed)
//! 52  u32     crc32c of bytes [0, 52) then [56, 64) (version 1: of [0, 52) only)
//! 56  u64     salt: random, drawn when the segment is taken into use (version 1: reserved, 0)
//! 64  records, each starting 8-byte aligned
//! ```
//!
//! ```text
//! record header, 40 bytes
//!  0  u32 state        0 = end of records, COMMITTED "REC1", PENDING "PEND",
//!                      ABANDONED "ABND" (each the u32 of those four ASCII bytes)
//!  4  u32 payload_len  bytes after the header: name, then body
//!  8  u32 checksum     over bytes [12, 40 + payload_len) of the record (see below)
//! 12  u32 segment_tag  the segment's tag: low 32 bits of its salt (version 1: of its sequence)
//! 16  u64 session_id
//! 24  u64 arrival_unix_ns
//! 32  u8  kind         RecordKind
//! 33  u8  flags        (0)
//! 34  u16 name_len     image file name length; 0 otherwise
//! 36  u32 !payload_len bitwise not of payload_len: the length field vouches for itself
//! 40  name (name_len bytes), body (payload_len - name_len bytes), zero padding to a multiple of 8
//! ```
//!
//! The record checksum is the low 32 bits of XXH3-64 seeded with the segment's salt (version 1:
//! CRC-32C, unseeded). XXH3 rather than CRC-32C because it is the one pass over every body on the
//! hot path: on the AMD EPYC hosts of `bench/RESULTS.md` the `crc32c` crate's hardware path runs
//! at ~5 GB/s, 12.5 µs per 64 KiB body, XXH3 (SSE2) at ~15 GB/s. The seed makes a record's
//! checksum depend on the segment it was written in, so bytes left over from a reused file's
//! earlier life never pass for a record of the new one, even if the tags happened to match.
//!
//! # Write protocol and what a reader may conclude
//!
//! The 8 bytes at the writer's cursor are zero: the writer zeroes them when it takes a segment
//! into use and, for each record, zeroes the 8 bytes just past it before publishing its state.
//! A zero state word is therefore a clean end of records, whatever stale bytes lie beyond it.
//!
//! * A complete record (`append`, `append_with`) is written with its state word still zero, then
//!   the state word is stored COMMITTED with release ordering. A reader sees either the end or the
//!   whole record.
//! * A record filled across event-loop turns (`reserve`) first gets its full header with state
//!   PENDING, so scanners can step over it while it fills; then its checksum and finally
//!   COMMITTED. If it is given up its state becomes ABANDONED: a hole readers skip.
//!
//! A scanner walks records from offset 64 by their lengths. It stops cleanly at a zero state word
//! (or at `sealed_len` in a sealed segment). It stops at a *torn tail* when the header cannot be
//! trusted: unknown state word, `payload_len != !payload_len_inv`, `name_len > payload_len`, a
//! segment tag from another segment (a reused file's stale record, seen only after a crash lost
//! the zeroed word), or a record running past the end of the data. A COMMITTED record whose
//! checksum fails, or whose kind or flags are unknown, is *corrupt*: its lengths are intact, so
//! the scan skips it and goes on. A flipped length byte therefore loses the rest of its segment,
//! which the format cannot tell from a torn write.
//!
//! CRC-32C (Castagnoli) is computed by the `crc32c` crate, XXH3 by `xxhash-rust`.

use std::fmt;

use crate::log::{RecordKind, RecordMeta};

pub const SEGMENT_MAGIC: [u8; 8] = *b"RISEGLOG";
/// The version writers produce.
pub const FORMAT_VERSION: u32 = 2;
/// The first version: CRC-32C record checksums, sequence-derived tags, no salt. Still read.
pub const FORMAT_VERSION_1: u32 = 1;
pub const SEGMENT_HEADER_LEN: usize = 64;
pub const RECORD_HEADER_LEN: usize = 40;
/// Records start 8-byte aligned so the state word can be stored atomically in place.
pub const RECORD_ALIGN: usize = 8;
pub const SEGMENT_FLAG_SEALED: u32 = 1;
/// The record checksum starts after the state, length and checksum words: those change after
/// the checksum is known (state) or are covered by their own check (`!payload_len`).
pub const RECORD_CRC_START: usize = 12;
/// Bytes the writer keeps zero at its cursor: the state and length words of the next record.
pub const END_MARK_LEN: usize = 8;
/// Bytes [0, 52) of the segment header are covered by its CRC at [52, 56).
const SEGMENT_CRC_AT: usize = 52;

pub const STATE_END: u32 = 0;
pub const STATE_COMMITTED: u32 = u32::from_le_bytes(*b"REC1");
pub const STATE_PENDING: u32 = u32::from_le_bytes(*b"PEND");
pub const STATE_ABANDONED: u32 = u32::from_le_bytes(*b"ABND");

pub const SEGMENT_SUFFIX: &str = ".seg";
/// Subdirectory of `segments/` for retired segment files waiting to be reused (see
/// `log::service`): a shipper or operator moves a segment there instead of deleting it.
pub const SPARE_DIR: &str = "spare";
pub const PREP_PREFIX: &str = ".prep-";
pub const BAD_SUFFIX: &str = ".bad";
pub const LOCK_FILE: &str = ".lock";
pub const SEGMENTS_DIR: &str = "segments";

/// Why a segment header was refused. Small and `Copy`: readers meet it on every damaged file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    TooShort,
    Magic,
    Version(u32),
    Checksum,
    /// Capacity, sealed length and flags contradict each other.
    Geometry,
    /// A valid header, of another segment than the file's name says.
    OtherSegment,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::TooShort => f.write_str("shorter than a segment header"),
            HeaderError::Magic => f.write_str("not a segment (bad magic)"),
            HeaderError::Version(v) => write!(f, "unknown segment format version {v}"),
            HeaderError::Checksum => f.write_str("segment header checksum mismatch"),
            HeaderError::Geometry => f.write_str("segment header lengths are inconsistent"),
            HeaderError::OtherSegment => f.write_str("header names another segment"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// [`FORMAT_VERSION`] for everything written now; [`FORMAT_VERSION_1`] for old segments.
    pub version: u32,
    pub worker: u16,
    pub seq: u64,
    pub created_unix_ns: u64,
    pub capacity: u64,
    pub sealed_len: u64,
    pub flags: u32,
    /// Seeds the record checksums; its low half is the record tag. 0 in version 1.
    pub salt: u64,
}

impl SegmentHeader {
    pub fn is_sealed(&self) -> bool {
        self.flags & SEGMENT_FLAG_SEALED != 0
    }

    /// The same header, sealed at `len` (the end of its last record).
    pub fn sealed_at(self, len: u64) -> Self {
        SegmentHeader {
            sealed_len: len,
            flags: self.flags | SEGMENT_FLAG_SEALED,
            ..self
        }
    }

    /// Stamped on every record of this segment: the low 32 bits of the salt (version 1: of the
    /// sequence).
    pub fn tag(&self) -> u32 {
        if self.version == FORMAT_VERSION_1 {
            self.seq as u32
        } else {
            self.salt as u32
        }
    }

    /// The checksum a record of this segment stores, given exactly `record[12 .. 40 + payload]`.
    pub fn record_checksum(&self, covered: &[u8]) -> u32 {
        if self.version == FORMAT_VERSION_1 {
            crc32c::crc32c(covered)
        } else {
            record_checksum(self.salt, covered)
        }
    }

    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..14].copy_from_slice(&self.worker.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.created_unix_ns.to_le_bytes());
        b[32..40].copy_from_slice(&self.capacity.to_le_bytes());
        b[40..48].copy_from_slice(&self.sealed_len.to_le_bytes());
        b[48..52].copy_from_slice(&self.flags.to_le_bytes());
        b[56..64].copy_from_slice(&self.salt.to_le_bytes());
        let crc = header_crc(&b, self.version);
        b[52..56].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, HeaderError> {
        let b: &[u8; SEGMENT_HEADER_LEN] = bytes
            .get(..SEGMENT_HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(HeaderError::TooShort)?;
        if b[0..8] != SEGMENT_MAGIC {
            return Err(HeaderError::Magic);
        }
        let version = le_u32(b, 8);
        if version != FORMAT_VERSION && version != FORMAT_VERSION_1 {
            return Err(HeaderError::Version(version));
        }
        if header_crc(b, version) != le_u32(b, SEGMENT_CRC_AT) {
            return Err(HeaderError::Checksum);
        }
        let header = SegmentHeader {
            version,
            worker: le_u16(b, 12),
            seq: le_u64(b, 16),
            created_unix_ns: le_u64(b, 24),
            capacity: le_u64(b, 32),
            sealed_len: le_u64(b, 40),
            flags: le_u32(b, 48),
            salt: le_u64(b, 56),
        };
        let header_len = SEGMENT_HEADER_LEN as u64;
        let geometry_ok = header.capacity >= header_len
            && header.flags & !SEGMENT_FLAG_SEALED == 0
            && if header.is_sealed() {
                header.sealed_len >= header_len
                    && header.sealed_len <= header.capacity
                    && header.sealed_len % RECORD_ALIGN as u64 == 0
            } else {
                header.sealed_len == 0
            };
        if !geometry_ok {
            return Err(HeaderError::Geometry);
        }
        Ok(header)
    }
}

/// The segment header's CRC: over everything but itself (version 1: the first 52 bytes).
fn header_crc(b: &[u8; SEGMENT_HEADER_LEN], version: u32) -> u32 {
    let crc = crc32c::crc32c(&b[..SEGMENT_CRC_AT]);
    if version == FORMAT_VERSION_1 {
        crc
    } else {
        crc32c::crc32c_append(crc, &b[SEGMENT_CRC_AT + 4..])
    }
}

/// A record header as stored; decoding does not validate (the scanner does, in one place).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub state: u32,
    pub payload_len: u32,
    pub crc: u32,
    pub segment_tag: u32,
    pub session_id: u64,
    pub arrival_unix_ns: u64,
    pub kind: u8,
    pub flags: u8,
    pub name_len: u16,
    pub payload_len_inv: u32,
}

impl RecordHeader {
    /// A header for a new record, with state END and CRC 0: both are stored last.
    pub fn new(meta: RecordMeta, segment_tag: u32, name_len: u16, payload_len: u32) -> Self {
        RecordHeader {
            state: STATE_END,
            payload_len,
            crc: 0,
            segment_tag,
            session_id: meta.session_id,
            arrival_unix_ns: meta.arrival_unix_ns,
            kind: meta.kind as u8,
            flags: 0,
            name_len,
            payload_len_inv: !payload_len,
        }
    }

    pub fn encode(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut b = [0u8; RECORD_HEADER_LEN];
        b[0..4].copy_from_slice(&self.state.to_le_bytes());
        b[4..8].copy_from_slice(&self.payload_len.to_le_bytes());
        b[8..12].copy_from_slice(&self.crc.to_le_bytes());
        b[12..16].copy_from_slice(&self.segment_tag.to_le_bytes());
        b[16..24].copy_from_slice(&self.session_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.arrival_unix_ns.to_le_bytes());
        b[32] = self.kind;
        b[33] = self.flags;
        b[34..36].copy_from_slice(&self.name_len.to_le_bytes());
        b[36..40].copy_from_slice(&self.payload_len_inv.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; RECORD_HEADER_LEN]) -> Self {
        RecordHeader {
            state: le_u32(b, 0),
            payload_len: le_u32(b, 4),
            crc: le_u32(b, 8),
            segment_tag: le_u32(b, 12),
            session_id: le_u64(b, 16),
            arrival_unix_ns: le_u64(b, 24),
            kind: b[32],
            flags: b[33],
            name_len: le_u16(b, 34),
            payload_len_inv: le_u32(b, 36),
        }
    }

    pub fn meta(&self) -> Option<RecordMeta> {
        Some(RecordMeta {
            session_id: self.session_id,
            arrival_unix_ns: self.arrival_unix_ns,
            kind: RecordKind::from_u8(self.kind)?,
        })
    }
}

/// The checksum a version-2 record stores: over `record[12 .. 40 + payload_len]`, given exactly
/// that slice, seeded with its segment's salt: XXH3-64's low half. twox-hash picks AVX2 at run
/// time (xxhash-rust only at compile time, so SSE2 in a portable build: half the speed, 5.3
/// against 2.7 µs for a 64 KiB body here).
pub fn record_checksum(salt: u64, covered: &[u8]) -> u32 {
    twox_hash::XxHash3_64::oneshot_with_seed(salt, covered) as u32
}

/// Bytes a record with `payload_len` payload bytes occupies, padding included; `None` if that
/// does not fit the address space.
pub fn record_len(payload_len: usize) -> Option<usize> {
    let unpadded = RECORD_HEADER_LEN.checked_add(payload_len)?;
    unpadded.checked_next_multiple_of(RECORD_ALIGN)
}

/// A segment's identity as spelled in its file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    pub worker: u16,
    pub seq: u64,
}

impl SegmentName {
    pub fn file_name(&self) -> String {
        format!("w{:03}-{:016x}{SEGMENT_SUFFIX}", self.worker, self.seq)
    }

    /// Parses a canonical segment file name (exactly what `file_name` produces, nothing else).
    pub fn parse(name: &str) -> Option<Self> {
        let stem = name.strip_suffix(SEGMENT_SUFFIX)?.strip_prefix('w')?;
        let (worker, seq) = stem.split_once('-')?;
        if !worker.bytes().all(|c| c.is_ascii_digit())
            || seq.len() != 16
            || !seq.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        let parsed = SegmentName {
            worker: worker.parse().ok()?,
            seq: u64::from_str_radix(seq, 16).ok()?,
        };
        (parsed.file_name() == name).then_some(parsed)
    }

    /// Parses a segment name that recovery set aside with the `.bad` suffix.
    pub fn parse_bad(name: &str) -> Option<Self> {
        Self::parse(name.strip_suffix(BAD_SUFFIX)?)
    }
}

/// Name of a file being prepared for `worker`; `n` only makes it unique.
pub fn prep_file_name(worker: u16, n: u64) -> String {
    format!("{PREP_PREFIX}w{worker:03}-{n:016x}")
}

/// Little-endian integers at `at` in `b` (panics past the end: callers check lengths first).
/// Shared with the compacted format (`compact::format`).
pub(crate) fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SegmentHeader {
        SegmentHeader {
            version: FORMAT_VERSION,
            worker: 3,
            seq: 0x1_0000_0007,
            created_unix_ns: 1_700_000_000_000_000_000,
            capacity: 65536,
            sealed_len: 0,
            flags: 0,
            salt: 0x0123_4567_89ab_cdef,
        }
    }

    /// Segments written before the checksum moved from xxhash-rust to twox-hash must still
    /// verify: the same XXH3-64 at every length (the short, mid and SIMD paths) and seed.
    #[test]
    fn record_checksums_are_those_of_the_previous_implementation() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut data = vec![0u8; 200_000];
        rng.fill(&mut data[..]);
        let random: Vec<usize> = (0..200).map(|_| rng.random_range(0..200_000)).collect();
        let lengths = (0..=260).chain([1023, 1024, 1025, 8192, 65_576, 200_000]);
        for len in lengths.chain(random) {
            let salt: u64 = rng.random();
            let covered = &data[..len];
            let before = xxhash_rust::xxh3::xxh3_64_with_seed(covered, salt) as u32;
            assert_eq!(record_checksum(salt, covered), before, "length {len}");
        }
        // XXH3-64 of nothing, seed 0: the reference implementation's 0x2D06800538D394C2.
        assert_eq!(record_checksum(0, b""), 0x38D3_94C2);
    }

    #[test]
    fn state_words_spell_their_names() {
        assert_eq!(STATE_COMMITTED, 0x3143_4552);
        assert_eq!(STATE_PENDING, 0x444E_4550);
        assert_eq!(STATE_ABANDONED, 0x444E_4241);
    }

    #[test]
    fn segment_header_round_trips_open_and_sealed() {
        for h in [header(), header().sealed_at(4096)] {
            let bytes = h.encode();
            assert_eq!(&bytes[0..8], b"RISEGLOG");
            assert_eq!(SegmentHeader::decode(&bytes), Ok(h));
        }
        assert_eq!(header().tag(), 0x89ab_cdef);
    }

    #[test]
    fn salt_is_covered_by_the_header_crc() {
        let mut b = header().encode();
        assert_eq!(&b[56..64], &0x0123_4567_89ab_cdef_u64.to_le_bytes());
        b[60] ^= 1;
        assert_eq!(SegmentHeader::decode(&b), Err(HeaderError::Checksum));
    }

    /// A version-1 header, as the first release wrote it (bytes spelled out, not encoded here):
    /// still read, with the sequence as tag and CRC-32C record checksums.
    #[test]
    fn version_1_headers_are_still_read() {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(b"RISEGLOG");
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[12..14].copy_from_slice(&3u16.to_le_bytes());
        b[16..24].copy_from_slice(&0x1_0000_0007u64.to_le_bytes());
        b[32..40].copy_from_slice(&65536u64.to_le_bytes());
        let crc = crc32c::crc32c(&b[..52]);
        b[52..56].copy_from_slice(&crc.to_le_bytes());
        let h = SegmentHeader::decode(&b).expect("version 1 header");
        assert_eq!((h.version, h.worker, h.salt, h.tag()), (1, 3, 0, 7));
        assert_eq!(h.record_checksum(b"abc"), crc32c::crc32c(b"abc"));
        assert_eq!(h.encode(), b, "re-encoding keeps version 1 bytes");
    }

    #[test]
    fn record_checksums_depend_on_the_salt() {
        let a = header();
        let b = SegmentHeader {
            salt: a.salt + 1,
            ..a
        };
        let covered = [7u8; 100];
        assert_eq!(
            a.record_checksum(&covered),
            record_checksum(a.salt, &covered)
        );
        assert_ne!(a.record_checksum(&covered), b.record_checksum(&covered));
        // XXH3-64 of the empty input with seed 0 (the reference value), low 32 bits.
        assert_eq!(record_checksum(0, b""), 0x2d06_8005_38d3_94c2_u64 as u32);
    }

    #[test]
    fn segment_header_refusals() {
        let good = header().encode();
        let mut flipped_seq = good;
        flipped_seq[16] ^= 1;
        let mut magic = good;
        magic[0] = b'X';
        let mut version = good;
        version[8] = 3;
        let bad_geometry = SegmentHeader {
            sealed_len: 128,
            ..header()
        }
        .encode();
        let past_capacity = header().sealed_at(70000).encode();
        let unaligned = header().sealed_at(100).encode();
        let cases: [(&[u8], HeaderError); 7] = [
            (&good[..63], HeaderError::TooShort),
            (&magic, HeaderError::Magic),
            (&version, HeaderError::Version(3)),
            (&flipped_seq, HeaderError::Checksum),
            (&bad_geometry, HeaderError::Geometry),
            (&past_capacity, HeaderError::Geometry),
            (&unaligned, HeaderError::Geometry),
        ];
        for (bytes, want) in cases {
            assert_eq!(SegmentHeader::decode(bytes), Err(want));
        }
    }

    #[test]
    fn record_header_round_trips() {
        let meta = RecordMeta {
            session_id: 0xdead_beef_0000_0001,
            arrival_unix_ns: 42,
            kind: RecordKind::Image,
        };
        let mut h = RecordHeader::new(meta, 9, 5, 100);
        h.state = STATE_PENDING;
        h.crc = 0x1234_5678;
        let back = RecordHeader::decode(&h.encode());
        assert_eq!(back, h);
        assert_eq!(back.payload_len_inv, !100);
        assert_eq!(back.meta(), Some(meta));
    }

    #[test]
    fn record_len_pads_to_eight() {
        let cases = [(0, Some(40)), (1, Some(48)), (8, Some(48)), (9, Some(56))];
        for (payload, want) in cases {
            assert_eq!(record_len(payload), want, "payload {payload}");
        }
        assert_eq!(record_len(usize::MAX - 10), None);
    }

    #[test]
    fn segment_names() {
        let n = SegmentName {
            worker: 7,
            seq: 0xab,
        };
        assert_eq!(n.file_name(), "w007-00000000000000ab.seg");
        assert_eq!(SegmentName::parse(&n.file_name()), Some(n));
        assert_eq!(
            SegmentName::parse_bad("w007-00000000000000ab.seg.bad"),
            Some(n)
        );
        for bad in [
            "w7-00000000000000ab.seg",
            "w007-00000000000000AB.seg",
            "w007-0000000000000ab.seg",
            "w007-00000000000000ab.seg.bad",
            "w0007-00000000000000ab.seg",
            "w99999-00000000000000ab.seg",
            "w-1-00000000000000ab.seg",
            ".prep-w007-00000000000000ab",
            "",
        ] {
            assert_eq!(SegmentName::parse(bad), None, "{bad}");
        }
        assert!(prep_file_name(7, 1).starts_with(PREP_PREFIX));
    }
}

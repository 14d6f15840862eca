//! Classifies the records of one segment file's bytes: the pure core shared by recovery and
//! readers (and the fuzz target). In: the bytes of a file as read (possibly torn, truncated, or
//! hostile). Out: its header and, per record, where it is and whether it can be used. Runs on
//! whatever thread reads; never panics on any input.

use std::ops::Range;

use crate::log::format::{
    record_len, RecordHeader, SegmentHeader, RECORD_CRC_START, RECORD_HEADER_LEN,
    SEGMENT_HEADER_LEN, STATE_ABANDONED, STATE_COMMITTED, STATE_END, STATE_PENDING,
};
use crate::log::{LogError, RecordKind, RecordMeta};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordClass {
    /// COMMITTED, checksum good, kind known: the only class readers return.
    Valid,
    /// COMMITTED but the checksum fails (or kind/flags are unknown): skipped, lengths were intact.
    Corrupt,
    /// PENDING: being filled, or was when the writer died. Never acknowledged.
    Incomplete,
    /// ABANDONED: a reservation given up (client went away). A hole.
    Abandoned,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScannedRecord {
    /// Offset of the record header in the file.
    pub offset: u64,
    pub class: RecordClass,
    pub header: RecordHeader,
}

impl ScannedRecord {
    /// Byte range of the name within the scanned bytes.
    pub fn name_range(&self) -> Range<usize> {
        let start = self.offset as usize + RECORD_HEADER_LEN;
        start..start + usize::from(self.header.name_len)
    }

    /// Byte range of the body within the scanned bytes.
    pub fn body_range(&self) -> Range<usize> {
        let start = self.offset as usize + RECORD_HEADER_LEN;
        start + usize::from(self.header.name_len)..start + self.header.payload_len as usize
    }

    /// `Some` for valid records.
    pub fn meta(&self) -> Option<RecordMeta> {
        match self.class {
            RecordClass::Valid => self.header.meta(),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentScan {
    pub header: SegmentHeader,
    pub records: Vec<ScannedRecord>,
    /// Offset just past the last record whose header could be trusted: where the next record
    /// would go, and the length to seal (and truncate) an unsealed segment at.
    pub end: u64,
    /// The scan stopped at bytes that are neither a trustworthy record nor a clean end (a torn
    /// write, a cut file, damage). Everything from `end` on is unusable.
    pub torn: bool,
}

impl SegmentScan {
    pub fn count(&self, class: RecordClass) -> u64 {
        self.records.iter().filter(|r| r.class == class).count() as u64
    }
}

/// Scans one segment file's bytes. Only an unusable segment header is an error; every record
/// problem is a classification or a torn tail.
pub fn scan_segment(bytes: &[u8]) -> Result<SegmentScan, LogError> {
    let header = SegmentHeader::decode(bytes).map_err(LogError::BadHeader)?;
    // Header geometry is validated by decode, so these conversions only fail on a 32-bit host
    // with a segment larger than its address space; treat that as "all of the bytes we have".
    let declared = if header.is_sealed() {
        header.sealed_len
    } else {
        header.capacity
    };
    let declared = usize::try_from(declared).unwrap_or(usize::MAX);
    let limit = declared.min(bytes.len());
    // A sealed segment promises records up to sealed_len; a shorter file is damage.
    let cut_short = header.is_sealed() && bytes.len() < declared;

    let mut records = Vec::new();
    let mut off = SEGMENT_HEADER_LEN;
    let torn = loop {
        let Some(rest) = bytes.get(off..limit) else {
            break true;
        };
        if rest.is_empty() {
            break cut_short;
        }
        // The writer keeps the state word at its cursor zero (a reused file may hold stale
        // bytes after it, even with fewer than a header's worth left).
        if rest.iter().take(4).all(|&b| b == 0) {
            break header.is_sealed();
        }
        let Some(head) = rest.get(..RECORD_HEADER_LEN) else {
            // Too short for a header, and not a clean end.
            break true;
        };
        let mut head_bytes = [0u8; RECORD_HEADER_LEN];
        head_bytes.copy_from_slice(head);
        let rec = RecordHeader::decode(&head_bytes);
        if rec.state == STATE_END {
            break header.is_sealed();
        }
        // A record is whole when its checksummed bytes are: a file cut inside the zero padding
        // after the last one still holds it (as the live reader, `consumer`, sees it).
        let payload = RECORD_HEADER_LEN + rec.payload_len as usize;
        let Some(len) = trusted_len(&rec, header.tag()).filter(|_| payload <= rest.len()) else {
            break true;
        };
        let class = match rec.state {
            STATE_COMMITTED => {
                let covered = &rest[RECORD_CRC_START..payload];
                let intact = header.record_checksum(covered) == rec.crc
                    && RecordKind::from_u8(rec.kind).is_some()
                    && rec.flags == 0;
                if intact {
                    RecordClass::Valid
                } else {
                    RecordClass::Corrupt
                }
            }
            STATE_PENDING => RecordClass::Incomplete,
            _ => RecordClass::Abandoned,
        };
        records.push(ScannedRecord {
            offset: off as u64,
            class,
            header: rec,
        });
        off += len;
    };
    Ok(SegmentScan {
        header,
        records,
        end: off as u64,
        torn,
    })
}

/// The length a record header claims, if the header can be trusted to step over it.
pub(crate) fn trusted_len(rec: &RecordHeader, tag: u32) -> Option<usize> {
    let known_state = matches!(rec.state, STATE_COMMITTED | STATE_PENDING | STATE_ABANDONED);
    let trusted = known_state
        && rec.payload_len == !rec.payload_len_inv
        && u32::from(rec.name_len) <= rec.payload_len
        && rec.segment_tag == tag;
    if !trusted {
        return None;
    }
    record_len(usize::try_from(rec.payload_len).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::format::SegmentHeader;
    use rand::{Rng, SeedableRng};

    const CAP: usize = 4096;
    /// The test segment's salt; its tag (low half) is 5.
    const SALT: u64 = 0xabcd_0000_0000_0005;

    fn segment(sealed_len: Option<u64>) -> Vec<u8> {
        let mut h = SegmentHeader {
            version: crate::log::format::FORMAT_VERSION,
            worker: 1,
            seq: 9,
            created_unix_ns: 1,
            capacity: CAP as u64,
            sealed_len: 0,
            flags: 0,
            salt: SALT,
        };
        if let Some(len) = sealed_len {
            h = h.sealed_at(len);
        }
        let mut b = vec![0u8; CAP];
        b[..SEGMENT_HEADER_LEN].copy_from_slice(&h.encode());
        b
    }

    /// Writes a record as the writer would; returns its end offset.
    fn put(b: &mut [u8], off: usize, state: u32, session: u64, body: &[u8]) -> usize {
        let meta = RecordMeta {
            session_id: session,
            arrival_unix_ns: 7,
            kind: RecordKind::WebBatch,
        };
        let mut h = RecordHeader::new(meta, 5, 0, body.len() as u32);
        h.state = state;
        b[off..off + 40].copy_from_slice(&h.encode());
        b[off + 40..off + 40 + body.len()].copy_from_slice(body);
        let crc = crate::log::format::record_checksum(SALT, &b[off + 12..off + 40 + body.len()]);
        b[off + 8..off + 12].copy_from_slice(&crc.to_le_bytes());
        off + record_len(body.len()).unwrap()
    }

    fn classes(scan: &SegmentScan) -> Vec<RecordClass> {
        scan.records.iter().map(|r| r.class).collect()
    }

    #[test]
    fn classifies_each_state() {
        let mut b = segment(None);
        let mut off = 64;
        for (state, body) in [
            (STATE_COMMITTED, &b"first"[..]),
            (STATE_PENDING, b"pending"),
            (STATE_ABANDONED, b""),
            (STATE_COMMITTED, b"last record!"),
        ] {
            off = put(&mut b, off, state, 1, body);
        }
        let scan = scan_segment(&b).unwrap();
        use RecordClass::*;
        assert_eq!(classes(&scan), [Valid, Incomplete, Abandoned, Valid]);
        assert_eq!((scan.end, scan.torn), (off as u64, false));
        let last = scan.records[3];
        assert_eq!(&b[last.body_range()], b"last record!");
        assert!(last.name_range().is_empty());
    }

    #[test]
    fn damage_table() {
        let mut base = segment(None);
        let a = put(&mut base, 64, STATE_COMMITTED, 1, b"aaaaaaaa");
        let end = put(&mut base, a, STATE_COMMITTED, 2, b"bbbbbbbbbbbb");
        use RecordClass::*;
        // (what is damaged, byte offset, new value, expected classes, expected end, torn)
        type Case = (&'static str, usize, u8, &'static [RecordClass], usize, bool);
        let cases: &[Case] = &[
            ("body byte", a + 40, b'X', &[Valid, Corrupt], end, false),
            ("session id", a + 16, 9, &[Valid, Corrupt], end, false),
            ("crc", a + 8, 0, &[Valid, Corrupt], end, false),
            ("kind", a + 32, 99, &[Valid, Corrupt], end, false),
            ("length", a + 4, 200, &[Valid], a, true),
            ("inverse length", a + 36, 0, &[Valid], a, true),
            ("state", a, b'Q', &[Valid], a, true),
            ("tag", a + 12, 6, &[Valid], a, true),
            ("junk after end", end, 1, &[Valid, Valid], end, true),
        ];
        for &(what, at, value, want, want_end, want_torn) in cases {
            let mut b = base.clone();
            b[at] = value;
            let scan = scan_segment(&b).unwrap();
            assert_eq!(classes(&scan), want, "{what}");
            assert_eq!(
                (scan.end as usize, scan.torn),
                (want_end, want_torn),
                "{what}"
            );
        }
    }

    /// A reused file: the writer's records, its zeroed end mark, then a stale record of the
    /// file's earlier life (another salt, so another tag and checksum seed).
    #[test]
    fn stale_bytes_of_a_reused_file_are_never_records() {
        let stale_salt = 0x7777_0000_0000_0006;
        let stale = |b: &mut Vec<u8>, off: usize, tag: u32| {
            let meta = RecordMeta {
                session_id: 99,
                arrival_unix_ns: 1,
                kind: RecordKind::WebBatch,
            };
            let mut h = RecordHeader::new(meta, tag, 0, 16);
            h.state = STATE_COMMITTED;
            b[off..off + 40].copy_from_slice(&h.encode());
            b[off + 40..off + 56].fill(0xee);
            let crc = crate::log::format::record_checksum(stale_salt, &b[off + 12..off + 56]);
            b[off + 8..off + 12].copy_from_slice(&crc.to_le_bytes());
        };
        let mut b = segment(None);
        let a = put(&mut b, 64, STATE_COMMITTED, 1, b"aaaaaaaa");
        // With the end mark in place (the writer's normal case): a clean end.
        stale(&mut b, a + 8, 6);
        let scan = scan_segment(&b).unwrap();
        assert_eq!(
            (classes(&scan), scan.end as usize, scan.torn),
            (vec![RecordClass::Valid], a, false)
        );
        // The end mark lost (a crash kept the stale page): a torn tail at the foreign tag.
        stale(&mut b, a, 6);
        let scan = scan_segment(&b).unwrap();
        assert_eq!(
            (classes(&scan), scan.end as usize, scan.torn),
            (vec![RecordClass::Valid], a, true)
        );
        // Even a stale record whose tag collides with ours fails its checksum: our salt seeds it.
        stale(&mut b, a, 5);
        let scan = scan_segment(&b).unwrap();
        assert_eq!(classes(&scan), [RecordClass::Valid, RecordClass::Corrupt]);
    }

    #[test]
    fn cut_files() {
        let mut b = segment(None);
        let a = put(&mut b, 64, STATE_COMMITTED, 1, b"aaaaaaaa");
        let end = put(&mut b, a, STATE_COMMITTED, 2, &[7u8; 100]);
        // Cut inside the second record: its length runs past the data.
        let scan = scan_segment(&b[..a + 60]).unwrap();
        assert_eq!(
            (scan.records.len(), scan.end as usize, scan.torn),
            (1, a, true)
        );
        // Cut exactly at a record end: clean.
        let scan = scan_segment(&b[..end]).unwrap();
        assert_eq!((scan.records.len(), scan.torn), (2, false));
        // Cut inside a zero tail shorter than a header: still clean.
        let scan = scan_segment(&b[..end + 20]).unwrap();
        assert_eq!((scan.records.len(), scan.torn), (2, false));
        // Cut inside the last record's padding: the record is whole, the file was cut.
        let payload_end = a + RECORD_HEADER_LEN + 100;
        assert!(payload_end < end);
        let scan = scan_segment(&b[..payload_end]).unwrap();
        assert_eq!(
            (scan.records.len(), scan.end as usize, scan.torn),
            (2, end, true)
        );
        assert_eq!(classes(&scan), [RecordClass::Valid, RecordClass::Valid]);
        // One byte of its payload short: gone.
        let scan = scan_segment(&b[..payload_end - 1]).unwrap();
        assert_eq!((scan.records.len(), scan.torn), (1, true));
    }

    #[test]
    fn sealed_segments_end_at_sealed_len() {
        let mut open = segment(None);
        let a = put(&mut open, 64, STATE_COMMITTED, 1, b"aaaaaaaa");
        let end = put(&mut open, a, STATE_COMMITTED, 2, b"bb");
        let mut sealed = open.clone();
        sealed[..64].copy_from_slice(
            &SegmentHeader::decode(&open)
                .unwrap()
                .sealed_at(end as u64)
                .encode(),
        );
        let scan = scan_segment(&sealed[..end]).unwrap();
        assert_eq!(
            (scan.records.len(), scan.end as usize, scan.torn),
            (2, end, false)
        );
        // A sealed file cut short of sealed_len is torn.
        let scan = scan_segment(&sealed[..a + 8]).unwrap();
        assert_eq!((scan.records.len(), scan.torn), (1, true));
        // Sealed past the last record: the zero state word inside sealed_len is damage.
        sealed[..64].copy_from_slice(
            &SegmentHeader::decode(&open)
                .unwrap()
                .sealed_at(end as u64 + 64)
                .encode(),
        );
        let scan = scan_segment(&sealed).unwrap();
        assert_eq!((scan.records.len(), scan.torn), (2, true));
    }

    #[test]
    fn bad_headers_are_errors() {
        let b = segment(None);
        for cut in [&b[..0], &b[..63], &vec![0u8; 4096][..]] {
            assert!(matches!(scan_segment(cut), Err(LogError::BadHeader(_))));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5ca9);
        let mut valid = segment(None);
        let mut off = 64;
        for i in 0..20u8 {
            off = put(
                &mut valid,
                off,
                STATE_COMMITTED,
                u64::from(i),
                &vec![i; usize::from(i) * 7],
            );
        }
        for round in 0..3000 {
            let mut b = if round % 2 == 0 {
                // Mutations of a valid segment reach deep into the record walk.
                let mut b = valid.clone();
                for _ in 0..rng.random_range(1..8) {
                    let at = rng.random_range(64..b.len());
                    b[at] = rng.random();
                }
                b
            } else {
                let len = rng.random_range(0..600);
                let mut b: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                if b.len() >= 64 && rng.random_bool(0.5) {
                    // A valid header over random records, open or sealed at a random length.
                    let sealed = rng
                        .random_bool(0.5)
                        .then(|| rng.random_range(8..600u64) * 8);
                    let mut h = SegmentHeader::decode(&segment(None)).unwrap();
                    if let Some(len) = sealed {
                        h = h.sealed_at(len.min(CAP as u64));
                    }
                    b[..64].copy_from_slice(&h.encode());
                }
                b
            };
            let cut = rng.random_range(0..=b.len());
            b.truncate(cut);
            if let Ok(scan) = scan_segment(&b) {
                // Up to the file's end, or the padding of a last record cut inside it.
                assert!(scan.end as usize <= b.len().max(64).next_multiple_of(8));
                for r in &scan.records {
                    let _ = (&b[r.name_range()], &b[r.body_range()]);
                }
            }
        }
    }
}

//! OpenReplay's message encoding: varints, strings, the SessionStart encoders, and the walker
//! that checks a batch's framing.
//!
//! Enters: a batch body exactly as the tracker sent it (after gzip decoding), or the fields of
//! a new session. Leaves: a [`BatchSummary`] (the batch meta, and how many messages the
//! framing holds) or a [`WalkError`] saying where the framing breaks; or the bytes of a
//! SessionStart / MobileSessionStart message to store before a session's first batch.
//! Runs on the worker threads, once per batch request; nothing here allocates except the
//! encoders, which append to the caller's buffer.
//!
//! Encoding (PROTOCOL.md, "Message encoding"): uint is unsigned LEB128 of at most 10 bytes;
//! int is zig-zag then uint; string is a uint byte length then the bytes; a message is its
//! type as uint, then its fields.
//!
//! Framing (PROTOCOL.md, "Batch framing"):
//!
//! ```text
//! web batch:    BatchMetadata(81) | BatchMeta(80), then messages
//!   81 version >= 1:  each message is  type uint | size u24 LE | body[size]
//!                     except PartitionedMessage(82): type uint | PartNo uint | PartTotal uint
//!   81 version 0, 80: the rest is opaque (legacy trackers do not size their messages)
//! mobile batch: MobileBatchMeta(107), then opaque
//! ```
//!
//! The walker never decodes a message body: checking the framing is enough to refuse garbage
//! and to count messages, without knowing every message schema the tracker may send.

/// Longest uint in bytes: 10 x 7 bits covers 64, and the 10th byte may only carry bit 63.
const MAX_VARINT_LEN: usize = 10;

/// Size prefix of a framed message, in bytes.
const FRAME_SIZE_LEN: usize = 3;

pub const MSG_SESSION_START: u64 = 1;
/// BatchMeta: PageNo uint, FirstIndex uint, Timestamp int.
pub const MSG_BATCH_META: u64 = 80;
/// BatchMetadata: Version uint, PageNo uint, FirstIndex uint, Timestamp int, Location string.
pub const MSG_BATCH_METADATA: u64 = 81;
/// PartitionedMessage: PartNo uint, PartTotal uint.
pub const MSG_PARTITIONED: u64 = 82;
pub const MSG_MOBILE_SESSION_START: u64 = 90;
/// MobileBatchMeta: Timestamp uint, Length uint, FirstIndex uint.
pub const MSG_MOBILE_BATCH_META: u64 = 107;

/// Where a batch's framing breaks. Offsets are byte positions in the batch as given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    #[error("empty batch")]
    Empty,
    /// A value, or for the walkers the message holding it, starts at `offset` and runs past
    /// the end of the batch.
    #[error("batch truncated in the message at byte {offset}")]
    Truncated { offset: usize },
    /// A uint at `offset` is longer than 10 bytes or does not fit in 64 bits.
    #[error("varint at byte {offset} overflows 64 bits")]
    VarintOverflow { offset: usize },
    /// The first message is not the batch meta this route expects.
    #[error("batch does not start with a batch meta message")]
    MissingMeta,
    /// A batch meta message (80, 81 or 107) after the first message.
    #[error("batch meta message at byte {offset}, not first")]
    MetaNotFirst { offset: usize },
    /// Only from [`web_messages`]: the batch is valid but its messages carry no size
    /// (BatchMeta, or BatchMetadata version 0), so they cannot be listed without schemas.
    #[error("batch messages carry no size")]
    Unsized,
}

pub fn put_uint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        // Truncation keeps the low 7 bits, which is the point.
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn put_int(out: &mut Vec<u8>, v: i64) {
    put_uint(out, zigzag(v));
}

pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_uint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

/// Reader over a byte slice, for walking batches (no allocation). A failed read leaves the
/// position where the value began.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn uint(&mut self) -> Result<u64, WalkError> {
        let start = self.pos;
        let mut value = 0u64;
        for i in 0..MAX_VARINT_LEN {
            let Some(&byte) = self.buf.get(start + i) else {
                return Err(WalkError::Truncated { offset: start });
            };
            // The 10th byte holds only bit 63: anything more, continuation included, is an
            // 11th byte or a value past u64.
            if i == MAX_VARINT_LEN - 1 && byte > 1 {
                return Err(WalkError::VarintOverflow { offset: start });
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                self.pos = start + i + 1;
                return Ok(value);
            }
        }
        // Unreachable: the 10th byte either ended the value or was refused above.
        Err(WalkError::VarintOverflow { offset: start })
    }

    pub fn int(&mut self) -> Result<i64, WalkError> {
        self.uint().map(unzigzag)
    }

    pub fn string(&mut self) -> Result<&'a [u8], WalkError> {
        let start = self.pos;
        let len = self.uint()?;
        // A length past usize cannot fit in the batch either.
        let read = usize::try_from(len)
            .map_err(|_| WalkError::Truncated { offset: start })
            .and_then(|len| self.bytes(len));
        read.map_err(|e| {
            self.pos = start;
            match e {
                WalkError::Truncated { .. } => WalkError::Truncated { offset: start },
                other => other,
            }
        })
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WalkError> {
        let start = self.pos;
        let taken = start
            .checked_add(n)
            .and_then(|end| self.buf.get(start..end))
            .ok_or(WalkError::Truncated { offset: start })?;
        self.pos = start + n;
        Ok(taken)
    }

    /// The first message type of a batch; an empty batch is its own error.
    fn uint_or_empty(&mut self) -> Result<u64, WalkError> {
        if self.buf.is_empty() {
            return Err(WalkError::Empty);
        }
        self.uint()
    }

    /// The 3-byte little-endian size that frames a message.
    pub fn u24_le(&mut self) -> Result<usize, WalkError> {
        let b = self.bytes(FRAME_SIZE_LEN)?;
        Ok(b.iter()
            .rev()
            .fold(0usize, |acc, &byte| (acc << 8) | usize::from(byte)))
    }
}

/// SessionStart, type 1 (field order exactly as PROTOCOL.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStart<'a> {
    pub timestamp: u64,
    pub project_id: u64,
    pub tracker_version: &'a str,
    pub rev_id: &'a str,
    pub user_uuid: &'a str,
    pub user_agent: &'a str,
    pub user_os: &'a str,
    pub user_os_version: &'a str,
    pub user_browser: &'a str,
    pub user_browser_version: &'a str,
    pub user_device: &'a str,
    pub user_device_type: &'a str,
    pub user_device_memory_size: u64,
    pub user_device_heap_size: u64,
    pub user_country: &'a str,
    pub user_id: &'a str,
}

impl SessionStart<'_> {
    /// Appends type 1 and the fields.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_uint(out, MSG_SESSION_START);
        put_uint(out, self.timestamp);
        put_uint(out, self.project_id);
        for s in [
            self.tracker_version,
            self.rev_id,
            self.user_uuid,
            self.user_agent,
            self.user_os,
            self.user_os_version,
            self.user_browser,
            self.user_browser_version,
            self.user_device,
            self.user_device_type,
        ] {
            put_str(out, s);
        }
        put_uint(out, self.user_device_memory_size);
        put_uint(out, self.user_device_heap_size);
        put_str(out, self.user_country);
        put_str(out, self.user_id);
    }
}

/// MobileSessionStart (IOSSessionStart), type 90.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MobileSessionStart<'a> {
    pub timestamp: u64,
    pub project_id: u64,
    pub tracker_version: &'a str,
    pub rev_id: &'a str,
    pub user_uuid: &'a str,
    pub user_os: &'a str,
    pub user_os_version: &'a str,
    pub user_device: &'a str,
    pub user_device_type: &'a str,
    pub user_country: &'a str,
}

impl MobileSessionStart<'_> {
    /// Appends type 90 and the fields.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_uint(out, MSG_MOBILE_SESSION_START);
        put_uint(out, self.timestamp);
        put_uint(out, self.project_id);
        for s in [
            self.tracker_version,
            self.rev_id,
            self.user_uuid,
            self.user_os,
            self.user_os_version,
            self.user_device,
            self.user_device_type,
            self.user_country,
        ] {
            put_str(out, s);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchMeta {
    /// type 81
    Web {
        version: u64,
        page_no: u64,
        first_index: u64,
        timestamp: i64,
    },
    /// type 80 (legacy trackers: messages carry no size, the rest of the batch is opaque)
    Legacy {
        page_no: u64,
        first_index: u64,
        timestamp: i64,
    },
    /// type 107
    Mobile {
        timestamp: u64,
        length: u64,
        first_index: u64,
    },
}

impl BatchMeta {
    /// Whether the messages after this meta are framed with a size, and so can be walked.
    fn sizes_messages(&self) -> bool {
        matches!(self, BatchMeta::Web { version, .. } if *version >= 1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSummary {
    pub meta: BatchMeta,
    /// Messages after the meta that were walked (sized framing); None when the rest is opaque
    /// (legacy web batches, BatchMetadata version 0, mobile batches).
    pub messages: Option<u32>,
}

/// Walks a web batch: must start with BatchMetadata (81) or BatchMeta (80). With version >= 1
/// every other message is `type uint, size (3 bytes LE), body(size)`, except 82 which is
/// decoded by its two uint fields; 80/81/107 after the first message is MetaNotFirst; a size
/// running past the end is Truncated. Walks to the end exactly (trailing partial message =
/// Truncated).
pub fn walk_web_batch(batch: &[u8]) -> Result<BatchSummary, WalkError> {
    let (meta, rest) = open_web_batch(batch)?;
    if !meta.sizes_messages() {
        return Ok(BatchSummary {
            meta,
            messages: None,
        });
    }
    let mut count = 0u32;
    for message in WebMessages::new(rest) {
        message?;
        count = count.saturating_add(1);
    }
    Ok(BatchSummary {
        meta,
        messages: Some(count),
    })
}

/// Mobile batch: must start with MobileBatchMeta (107); the rest is opaque (messages: None).
pub fn walk_mobile_batch(batch: &[u8]) -> Result<BatchSummary, WalkError> {
    let mut r = Reader::new(batch);
    if r.uint_or_empty()? != MSG_MOBILE_BATCH_META {
        return Err(WalkError::MissingMeta);
    }
    let meta = whole_message(0, || {
        Ok(BatchMeta::Mobile {
            timestamp: r.uint()?,
            length: r.uint()?,
            first_index: r.uint()?,
        })
    })?;
    Ok(BatchSummary {
        meta,
        messages: None,
    })
}

/// One framed message of a web batch: (offset in the batch, type, body).
pub type WebMessage<'a> = (usize, u64, &'a [u8]);

/// Iterator over the sized messages of a web batch after its meta (offset, type, body), for
/// tools/tests. Offsets are from the start of `batch`; for PartitionedMessage (82) the body is
/// its two uint fields. Yields the first framing error, then stops. A batch whose messages
/// carry no size is [`WalkError::Unsized`].
pub fn web_messages(
    batch: &[u8],
) -> Result<impl Iterator<Item = Result<WebMessage<'_>, WalkError>> + '_, WalkError> {
    let (meta, rest) = open_web_batch(batch)?;
    if meta.sizes_messages() {
        Ok(WebMessages::new(rest))
    } else {
        Err(WalkError::Unsized)
    }
}

/// Reads a web batch's meta; leaves the reader at the first message after it.
fn open_web_batch(batch: &[u8]) -> Result<(BatchMeta, Reader<'_>), WalkError> {
    let mut r = Reader::new(batch);
    let meta = match r.uint_or_empty()? {
        MSG_BATCH_METADATA => whole_message(0, || {
            let meta = BatchMeta::Web {
                version: r.uint()?,
                page_no: r.uint()?,
                first_index: r.uint()?,
                timestamp: r.int()?,
            };
            r.string()?; // Location: carried for the player, not needed to walk.
            Ok(meta)
        })?,
        MSG_BATCH_META => whole_message(0, || {
            Ok(BatchMeta::Legacy {
                page_no: r.uint()?,
                first_index: r.uint()?,
                timestamp: r.int()?,
            })
        })?,
        _ => return Err(WalkError::MissingMeta),
    };
    Ok((meta, r))
}

/// Runs the field reads of one message, blaming a truncation on the message that starts at
/// `offset` rather than on the field inside it.
fn whole_message<T>(
    offset: usize,
    read: impl FnOnce() -> Result<T, WalkError>,
) -> Result<T, WalkError> {
    read().map_err(|e| match e {
        WalkError::Truncated { .. } => WalkError::Truncated { offset },
        other => other,
    })
}

/// The sized messages after a web batch's meta. One piece of code serves both the walker's
/// count and the public listing, so the two cannot disagree about framing.
struct WebMessages<'a> {
    reader: Reader<'a>,
    failed: bool,
}

impl<'a> WebMessages<'a> {
    fn new(reader: Reader<'a>) -> Self {
        WebMessages {
            reader,
            failed: false,
        }
    }

    fn read_message(&mut self) -> Result<WebMessage<'a>, WalkError> {
        let r = &mut self.reader;
        let offset = r.pos();
        whole_message(offset, || {
            let msg_type = r.uint()?;
            let body = match msg_type {
                MSG_BATCH_META | MSG_BATCH_METADATA | MSG_MOBILE_BATCH_META => {
                    return Err(WalkError::MetaNotFirst { offset });
                }
                MSG_PARTITIONED => {
                    let fields_start = r.pos();
                    r.uint()?; // PartNo
                    r.uint()?; // PartTotal
                    r.buf.get(fields_start..r.pos()).unwrap_or_default()
                }
                _ => {
                    let size = r.u24_le()?;
                    r.bytes(size)?
                }
            };
            Ok((offset, msg_type, body))
        })
    }
}

impl<'a> Iterator for WebMessages<'a> {
    type Item = Result<WebMessage<'a>, WalkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.reader.is_empty() {
            return None;
        }
        let message = self.read_message();
        self.failed = message.is_err();
        Some(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            (
                $name,
                include_bytes!(concat!("../tests/fixtures/tracker-19.0.1/", $name, ".bin"))
                    as &[u8],
                include_str!(concat!(
                    "../tests/fixtures/tracker-19.0.1/",
                    $name,
                    ".decoded.txt"
                )),
            )
        };
    }

    /// Uncompressed batches as the real tracker sent them, with their independent decodings.
    const FIXTURES: &[(&str, &[u8], &str)] = &[
        fixture!("pv1-batch1-player.gunzipped"),
        fixture!("pv2-batch2-devtools"),
        fixture!("pv2-batch3-analytics"),
        fixture!("pv2-batch4-player.gunzipped"),
        fixture!("pv2-batch1-visual-split855"),
    ];

    /// The visual batch is a player batch and an assets batch back to back; `split=855`.
    const VISUAL_SPLIT: usize = 855;

    /// (offset, type) of every message of a batch, meta included.
    type Listing = Vec<(usize, u64)>;

    /// The listing a `.decoded.txt` gives.
    fn decoded_messages(text: &str) -> Listing {
        text.lines()
            .filter_map(|line| {
                let rest = line.strip_prefix('@')?;
                let mut words = rest.split_whitespace();
                let offset = words.next()?.parse().ok()?;
                let msg_type = words.next()?.strip_prefix("type=")?.parse().ok()?;
                Some((offset, msg_type))
            })
            .collect()
    }

    /// The fixture batches as walkable units: the visual one cut at its split.
    fn fixture_batches() -> Vec<(String, &'static [u8], Listing)> {
        let mut out = Vec::new();
        for &(name, bytes, text) in FIXTURES {
            let listed = decoded_messages(text);
            assert!(listed.len() > 1, "{name}: decoding not parsed");
            if name.contains("split855") {
                let (player, assets) = bytes.split_at(VISUAL_SPLIT);
                let head = listed.iter().copied().filter(|m| m.0 < VISUAL_SPLIT);
                let tail = listed
                    .iter()
                    .filter(|m| m.0 >= VISUAL_SPLIT)
                    .map(|&(o, t)| (o - VISUAL_SPLIT, t));
                out.push((format!("{name} player part"), player, head.collect()));
                out.push((format!("{name} assets part"), assets, tail.collect()));
            } else {
                out.push((name.to_string(), bytes, listed));
            }
        }
        out
    }

    #[test]
    fn uint_table() {
        let cases: &[(u64, &[u8])] = &[
            (0, &[0x00]),
            (1, &[0x01]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
            (16_383, &[0xff, 0x7f]),
            (16_384, &[0x80, 0x80, 0x01]),
            (u64::from(u32::MAX), &[0xff, 0xff, 0xff, 0xff, 0x0f]),
            (
                1 << 63,
                &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
            ),
            (
                u64::MAX,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ];
        for &(value, bytes) in cases {
            let mut out = Vec::new();
            put_uint(&mut out, value);
            assert_eq!(out, bytes, "encode {value}");
            let mut r = Reader::new(bytes);
            assert_eq!(r.uint(), Ok(value), "decode {value}");
            assert_eq!(r.pos(), bytes.len());
            assert!(r.is_empty());
        }
    }

    #[test]
    fn uint_errors() {
        let cases: &[(&str, &[u8], WalkError)] = &[
            ("empty", &[], WalkError::Truncated { offset: 0 }),
            (
                "dangling continuation",
                &[0x80],
                WalkError::Truncated { offset: 0 },
            ),
            (
                "nine continuations",
                &[0xff; 9],
                WalkError::Truncated { offset: 0 },
            ),
            (
                "10th byte over bit 63",
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
                WalkError::VarintOverflow { offset: 0 },
            ),
            (
                "11 bytes",
                &[
                    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                ],
                WalkError::VarintOverflow { offset: 0 },
            ),
            (
                "11 bytes of zero value",
                &[
                    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
                ],
                WalkError::VarintOverflow { offset: 0 },
            ),
        ];
        for &(name, bytes, want) in cases {
            let mut r = Reader::new(bytes);
            assert_eq!(r.uint(), Err(want), "{name}");
            assert_eq!(r.pos(), 0, "{name}: a failed read must not move");
        }
        // Non-minimal encodings within 10 bytes are still numbers, as in Go's reader.
        let mut r = Reader::new(&[0x80, 0x80, 0x00]);
        assert_eq!(r.uint(), Ok(0));
    }

    #[test]
    fn int_zigzag_table() {
        let cases: &[(i64, u64)] = &[
            (0, 0),
            (-1, 1),
            (1, 2),
            (-2, 3),
            (2, 4),
            (-64, 127),
            (64, 128),
            (i64::MAX, u64::MAX - 1),
            (i64::MIN, u64::MAX),
        ];
        for &(value, zz) in cases {
            let mut out = Vec::new();
            put_int(&mut out, value);
            let mut want = Vec::new();
            put_uint(&mut want, zz);
            assert_eq!(out, want, "encode {value}");
            assert_eq!(Reader::new(&out).int(), Ok(value), "decode {value}");
        }
    }

    #[test]
    fn varint_round_trips() {
        let mut values: Vec<u64> = (0..64).flat_map(|s| [1u64 << s, (1u64 << s) - 1]).collect();
        values.extend([u64::MAX, u64::MAX - 1, 0x0123_4567_89ab_cdef]);
        for &v in &values {
            let mut out = Vec::new();
            put_uint(&mut out, v);
            put_int(&mut out, v as i64);
            put_int(&mut out, (v as i64).wrapping_neg());
            let mut r = Reader::new(&out);
            assert_eq!(r.uint(), Ok(v));
            assert_eq!(r.int(), Ok(v as i64));
            assert_eq!(r.int(), Ok((v as i64).wrapping_neg()));
            assert!(r.is_empty());
        }
    }

    #[test]
    fn strings_and_bytes() {
        let mut out = Vec::new();
        put_str(&mut out, "");
        put_str(&mut out, "héllo");
        let long = "x".repeat(200);
        put_str(&mut out, &long);
        assert_eq!(&out[..8], &[0, 6, b'h', 0xc3, 0xa9, b'l', b'l', b'o']);
        assert_eq!(&out[8..10], &[0xc8, 0x01]);
        let mut r = Reader::new(&out);
        assert_eq!(r.string(), Ok(&b""[..]));
        assert_eq!(r.string(), Ok("héllo".as_bytes()));
        assert_eq!(r.string(), Ok(long.as_bytes()));
        assert!(r.is_empty());

        // The length says 5, only 2 follow: the string's start is blamed and nothing moves.
        let mut r = Reader::new(&[0x07, 0x05, b'a', b'b']);
        assert_eq!(r.bytes(1), Ok(&[0x07][..]));
        assert_eq!(r.string(), Err(WalkError::Truncated { offset: 1 }));
        assert_eq!(r.pos(), 1);
        // A length near u64::MAX must not overflow the position arithmetic.
        let mut huge = Vec::new();
        put_uint(&mut huge, u64::MAX);
        assert_eq!(
            Reader::new(&huge).string(),
            Err(WalkError::Truncated { offset: 0 })
        );
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.bytes(usize::MAX), Err(WalkError::Truncated { offset: 0 }));
        assert_eq!(r.bytes(3), Ok(&[1, 2, 3][..]));
        assert_eq!(r.bytes(0), Ok(&[][..]));
        assert_eq!(r.bytes(1), Err(WalkError::Truncated { offset: 3 }));
        assert_eq!(Reader::new(&[0x01, 0x02, 0x03]).u24_le(), Ok(0x030201));
    }

    #[test]
    fn session_start_bytes_by_hand() {
        let start = SessionStart {
            timestamp: 5,
            project_id: 300,
            tracker_version: "19",
            rev_id: "",
            user_uuid: "u",
            user_agent: "UA",
            user_os: "os",
            user_os_version: "9",
            user_browser: "b",
            user_browser_version: "2",
            user_device: "",
            user_device_type: "d",
            user_device_memory_size: 8,
            user_device_heap_size: 128,
            user_country: "FR",
            user_id: "id",
        };
        let mut out = vec![0xee]; // encode appends
        start.encode(&mut out);
        #[rustfmt::skip]
        let want: &[u8] = &[
            0xee,
            1,                    // type SessionStart
            5,                    // Timestamp
            0xac, 0x02,           // ProjectID 300
            2, b'1', b'9',        // TrackerVersion
            0,                    // RevID
            1, b'u',              // UserUUID
            2, b'U', b'A',        // UserAgent
            2, b'o', b's',        // UserOS
            1, b'9',              // UserOSVersion
            1, b'b',              // UserBrowser
            1, b'2',              // UserBrowserVersion
            0,                    // UserDevice
            1, b'd',              // UserDeviceType
            8,                    // UserDeviceMemorySize
            0x80, 0x01,           // UserDeviceHeapSize 128
            2, b'F', b'R',        // UserCountry
            2, b'i', b'd',        // UserID
        ];
        assert_eq!(out, want);
    }

    #[test]
    fn mobile_session_start_bytes_by_hand() {
        let start = MobileSessionStart {
            timestamp: 1,
            project_id: 2,
            tracker_version: "1.0",
            rev_id: "r",
            user_uuid: "",
            user_os: "iOS",
            user_os_version: "17",
            user_device: "iPhone14,2",
            user_device_type: "mobile",
            user_country: "DE",
        };
        let mut out = Vec::new();
        start.encode(&mut out);
        let mut want = vec![90, 1, 2, 3];
        want.extend(b"1.0");
        want.extend([1, b'r', 0, 3]);
        want.extend(b"iOS");
        want.extend([2, b'1', b'7', 10]);
        want.extend(b"iPhone14,2");
        want.push(6);
        want.extend(b"mobile");
        want.extend([2, b'D', b'E']);
        assert_eq!(out, want);
    }

    #[test]
    fn fixtures_walk_like_their_decodings() {
        for (name, batch, listed) in fixture_batches() {
            let summary = walk_web_batch(batch).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(summary.messages, Some((listed.len() - 1) as u32), "{name}");
            assert_eq!(listed[0], (0, MSG_BATCH_METADATA), "{name}");
            let walked: Vec<(usize, u64)> = web_messages(batch)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .map(|m| m.map(|(offset, msg_type, _)| (offset, msg_type)))
                .collect::<Result<_, _>>()
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(walked, listed[1..], "{name}");
        }
    }

    #[test]
    fn fixture_metas() {
        let versions: Vec<(String, Result<BatchMeta, WalkError>)> = fixture_batches()
            .into_iter()
            .map(|(name, batch, _)| (name, walk_web_batch(batch).map(|s| s.meta)))
            .collect();
        let want = [
            (1, 0, 1795771276856),
            (4, 4, 1795771262812),
            (5, 2, 1795771262812),
            (2, 58, 1795771262848),
            (2, 0, 1795771262812),
            (3, 19, 1795771262812),
        ];
        assert_eq!(versions.len(), want.len());
        for ((name, meta), (version, first_index, timestamp)) in versions.iter().zip(want) {
            assert_eq!(
                *meta,
                Ok(BatchMeta::Web {
                    version,
                    page_no: 0,
                    first_index,
                    timestamp
                }),
                "{name}"
            );
        }
    }

    #[test]
    fn visual_batch_unsplit_has_a_second_meta() {
        let (_, visual, _) = FIXTURES[4];
        assert_eq!(
            walk_web_batch(visual),
            Err(WalkError::MetaNotFirst {
                offset: VISUAL_SPLIT
            })
        );
    }

    #[test]
    fn truncation_at_every_offset() {
        for (name, batch, listed) in fixture_batches() {
            let starts: Vec<usize> = listed.iter().map(|m| m.0).collect();
            for cut in 0..=batch.len() {
                let got = walk_web_batch(&batch[..cut]);
                // The message the cut falls in (or right after, at a boundary).
                let complete = starts.iter().filter(|&&s| s < cut).count();
                let want = if cut == 0 {
                    Err(WalkError::Empty)
                } else if starts.contains(&cut) || cut == batch.len() {
                    Ok(Some((complete - 1) as u32))
                } else {
                    Err(WalkError::Truncated {
                        offset: starts[complete - 1],
                    })
                };
                assert_eq!(got.map(|s| s.messages), want, "{name} cut at {cut}");
            }
        }
    }

    fn web_meta(version: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_uint(&mut out, MSG_BATCH_METADATA);
        put_uint(&mut out, version);
        put_uint(&mut out, 3); // page
        put_uint(&mut out, 17); // first index
        put_int(&mut out, -5); // timestamp
        put_str(&mut out, "https://example.test/");
        out
    }

    fn sized(out: &mut Vec<u8>, msg_type: u64, body: &[u8]) {
        put_uint(out, msg_type);
        let size = u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes();
        out.extend_from_slice(&size[..3]);
        out.extend_from_slice(body);
    }

    #[test]
    fn synthetic_batches() {
        let meta_len = web_meta(1).len();
        let mut good = web_meta(1);
        sized(&mut good, 0, &[1, 2, 3]);
        sized(&mut good, 200, &[]); // a two-byte type nobody knows: still framed
        put_uint(&mut good, MSG_PARTITIONED);
        put_uint(&mut good, 1);
        put_uint(&mut good, 300);
        sized(&mut good, 4, &[9; 130]);

        let summary = walk_web_batch(&good);
        assert_eq!(
            summary,
            Ok(BatchSummary {
                meta: BatchMeta::Web {
                    version: 1,
                    page_no: 3,
                    first_index: 17,
                    timestamp: -5
                },
                messages: Some(4)
            })
        );
        let listed: Vec<_> = web_messages(&good)
            .map(|it| it.collect::<Vec<_>>())
            .unwrap_or_default();
        let m = meta_len;
        assert_eq!(
            listed,
            vec![
                Ok((m, 0, &[1, 2, 3][..])),
                Ok((m + 7, 200, &[][..])),
                Ok((m + 12, MSG_PARTITIONED, &[1, 0xac, 0x02][..])),
                Ok((m + 16, 4, &[9; 130][..])),
            ]
        );

        struct Case {
            name: &'static str,
            batch: Vec<u8>,
            want: Result<Option<u32>, WalkError>,
        }
        let with = |tail: &dyn Fn(&mut Vec<u8>)| {
            let mut b = web_meta(2);
            tail(&mut b);
            b
        };
        let cases = vec![
            Case {
                name: "empty",
                batch: vec![],
                want: Err(WalkError::Empty),
            },
            Case {
                name: "meta only",
                batch: web_meta(5),
                want: Ok(Some(0)),
            },
            Case {
                name: "version 0 is opaque",
                batch: [web_meta(0), vec![0xff; 7]].concat(),
                want: Ok(None),
            },
            Case {
                name: "legacy meta is opaque",
                batch: vec![80, 1, 2, 3, 0xff, 0xff],
                want: Ok(None),
            },
            Case {
                name: "legacy meta truncated",
                batch: vec![80, 1, 2],
                want: Err(WalkError::Truncated { offset: 0 }),
            },
            Case {
                name: "starts with a plain message",
                batch: vec![0, 1, 0, 0, 7],
                want: Err(WalkError::MissingMeta),
            },
            Case {
                name: "starts with a partition",
                batch: vec![82, 1, 2],
                want: Err(WalkError::MissingMeta),
            },
            Case {
                name: "starts with a mobile meta",
                batch: vec![107, 1, 2, 3],
                want: Err(WalkError::MissingMeta),
            },
            Case {
                name: "first type overflows",
                batch: vec![0xff; 11],
                want: Err(WalkError::VarintOverflow { offset: 0 }),
            },
            Case {
                name: "meta location runs past the end",
                batch: web_meta(1)[..meta_len - 1].to_vec(),
                want: Err(WalkError::Truncated { offset: 0 }),
            },
            Case {
                name: "BatchMeta after the first message",
                batch: with(&|b| {
                    sized(b, 0, &[1]);
                    b.extend([80, 1, 2, 3]);
                }),
                want: Err(WalkError::MetaNotFirst {
                    offset: meta_len + 5,
                }),
            },
            Case {
                name: "BatchMetadata after the first message",
                batch: with(&|b| b.extend(web_meta(2))),
                want: Err(WalkError::MetaNotFirst { offset: meta_len }),
            },
            Case {
                name: "MobileBatchMeta after the first message",
                batch: with(&|b| b.extend([107, 1, 2, 3])),
                want: Err(WalkError::MetaNotFirst { offset: meta_len }),
            },
            Case {
                name: "largest 3-byte size, short body",
                batch: with(&|b| b.extend([5, 0xff, 0xff, 0xff, 1, 2, 3])),
                want: Err(WalkError::Truncated { offset: meta_len }),
            },
            Case {
                name: "size one past the end",
                batch: with(&|b| {
                    sized(b, 0, &[1]);
                    b.extend([5, 4, 0, 0, 1, 2, 3]);
                }),
                want: Err(WalkError::Truncated {
                    offset: meta_len + 5,
                }),
            },
            Case {
                name: "size prefix cut short",
                batch: with(&|b| b.extend([5, 4, 0])),
                want: Err(WalkError::Truncated { offset: meta_len }),
            },
            Case {
                name: "partition cut short",
                batch: with(&|b| b.extend([82, 1, 0x80])),
                want: Err(WalkError::Truncated { offset: meta_len }),
            },
            Case {
                name: "message type overflows",
                batch: with(&|b| b.extend([0xff; 11])),
                want: Err(WalkError::VarintOverflow { offset: meta_len }),
            },
        ];
        for case in cases {
            assert_eq!(
                walk_web_batch(&case.batch).map(|s| s.messages),
                case.want,
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn web_messages_stops_after_an_error_and_refuses_unsized() {
        let mut batch = web_meta(1);
        sized(&mut batch, 0, &[1]);
        batch.extend([5, 9, 0, 0]);
        let meta_len = web_meta(1).len();
        let listed: Vec<_> = web_messages(&batch)
            .map(|it| it.map(|m| m.map(|(o, t, _)| (o, t))).collect::<Vec<_>>())
            .unwrap_or_default();
        assert_eq!(
            listed,
            vec![
                Ok((meta_len, 0)),
                Err(WalkError::Truncated {
                    offset: meta_len + 5
                })
            ]
        );
        assert!(matches!(
            web_messages(&[80, 1, 2, 3]).map(|_| ()),
            Err(WalkError::Unsized)
        ));
        assert!(matches!(
            web_messages(&[]).map(|_| ()),
            Err(WalkError::Empty)
        ));
    }

    #[test]
    fn mobile_batches() {
        let mut good = Vec::new();
        put_uint(&mut good, MSG_MOBILE_BATCH_META);
        put_uint(&mut good, 1_700_000_000_000);
        put_uint(&mut good, 42);
        put_uint(&mut good, 7);
        good.extend([0xff, 0x00, 0x80]); // opaque: not walked
        assert_eq!(
            walk_mobile_batch(&good),
            Ok(BatchSummary {
                meta: BatchMeta::Mobile {
                    timestamp: 1_700_000_000_000,
                    length: 42,
                    first_index: 7
                },
                messages: None
            })
        );
        let cases: &[(&str, &[u8], WalkError)] = &[
            ("empty", &[], WalkError::Empty),
            ("web meta", &[81, 1, 0, 0, 0, 0], WalkError::MissingMeta),
            ("plain message", &[0, 1, 0, 0, 1], WalkError::MissingMeta),
            (
                "cut in fields",
                &[107, 1, 2],
                WalkError::Truncated { offset: 0 },
            ),
            (
                "cut in a varint",
                &[107, 1, 2, 0x80],
                WalkError::Truncated { offset: 0 },
            ),
            (
                "field overflow",
                &[
                    107, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 1, 1,
                ],
                WalkError::VarintOverflow { offset: 1 },
            ),
        ];
        for &(name, batch, want) in cases {
            assert_eq!(walk_mobile_batch(batch), Err(want), "{name}");
        }
        for cut in 0..good.len() {
            assert!(
                walk_mobile_batch(&good[..cut]).is_ok() == (cut >= good.len() - 3),
                "cut {cut}"
            );
        }
    }
}

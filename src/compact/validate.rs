//! Whether a stored record is what its kind says it is, before it is compacted and forwarded.
//!
//! Enters: a record's kind and body, as read from a sealed segment. Leaves: `Ok(())`, or a
//! [`Quarantine`] reason that says which check failed and where, for the operator (counted and
//! logged by the caller, the record set aside). Runs on the compactor and forwarder threads; `cat`/`ls` may
//! call it on the CLI's thread to flag records. Pure, no allocation.
//!
//! OpenReplay's consumers drop a batch whose framing breaks and still acknowledge it
//! (PROTOCOL.md, "How consumers treat a batch"), so a malformed batch forwarded is lost without
//! trace: the node checks the framing here instead, with the same walker the routes use.
//!
//! | kind | accepted when |
//! | --- | --- |
//! | `WebBatch`, `WebAssetsBatch` | [`codec::walk_web_batch`] walks it to its exact end |
//! | `MobileBatch` | [`codec::walk_mobile_batch`] reads its MobileBatchMeta (the rest is opaque) |
//! | `SessionStart` | its first message type (a uint) is 1 |
//! | `MobileSessionStart` | its first message type (a uint) is 90 |
//! | `ImageUpload` | its files decode (`crate::upload`); the images themselves are opaque |
//! | `SessionRow` | it decodes as a row (`crate::db::row`) |
//! | `Image`, `NotStarted` | always: not batches |

use std::fmt;

use crate::codec::{self, Reader, WalkError};
use crate::log::RecordKind;

/// Why a record was refused: its kind and what was wrong. Small and `Copy`: the compactor may
/// meet one on every record of a damaged or hostile session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quarantine {
    pub kind: RecordKind,
    pub problem: Problem,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The batch walker (or, for starts, reading the first message type) failed.
    Framing(WalkError),
    /// A start record whose first message is another type.
    StartType { want: u64, found: u64 },
    /// An image upload record that does not decode.
    Upload(crate::upload::UploadError),
    /// A session row that does not decode.
    Row,
}

impl fmt::Display for Quarantine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            RecordKind::WebBatch => "web batch",
            RecordKind::WebAssetsBatch => "web assets batch",
            RecordKind::MobileBatch => "mobile batch",
            RecordKind::SessionStart => "session start",
            RecordKind::MobileSessionStart => "mobile session start",
            RecordKind::Image => "image",
            RecordKind::NotStarted => "not-started record",
            RecordKind::ImageUpload => "image upload",
            RecordKind::SessionRow => "session row",
        };
        match self.problem {
            Problem::Framing(e) => write!(f, "{what}: {e}"),
            Problem::StartType { want, found } => {
                write!(f, "{what}: first message is type {found}, not {want}")
            }
            Problem::Upload(e) => write!(f, "{e}"),
            Problem::Row => write!(f, "{what}: does not decode as a row"),
        }
    }
}

impl std::error::Error for Quarantine {}

/// Checks that `body` is a well-formed record of `kind` (see the module doc's table).
pub fn check_record(kind: RecordKind, body: &[u8]) -> Result<(), Quarantine> {
    let refuse = |problem| Quarantine { kind, problem };
    match kind {
        RecordKind::WebBatch | RecordKind::WebAssetsBatch => codec::walk_web_batch(body)
            .map(drop)
            .map_err(|e| refuse(Problem::Framing(e))),
        RecordKind::MobileBatch => codec::walk_mobile_batch(body)
            .map(drop)
            .map_err(|e| refuse(Problem::Framing(e))),
        RecordKind::SessionStart => check_start(body, codec::MSG_SESSION_START).map_err(refuse),
        RecordKind::MobileSessionStart => {
            check_start(body, codec::MSG_MOBILE_SESSION_START).map_err(refuse)
        }
        RecordKind::ImageUpload => crate::upload::decode(body)
            .map(drop)
            .map_err(|e| refuse(Problem::Upload(e))),
        RecordKind::SessionRow => crate::db::row::SessionRow::decode(body)
            .map(drop)
            .map_err(|_| refuse(Problem::Row)),
        RecordKind::Image | RecordKind::NotStarted => Ok(()),
    }
}

fn check_start(body: &[u8], want: u64) -> Result<(), Problem> {
    if body.is_empty() {
        return Err(Problem::Framing(WalkError::Empty));
    }
    match Reader::new(body).uint() {
        Ok(found) if found == want => Ok(()),
        Ok(found) => Err(Problem::StartType { want, found }),
        Err(e) => Err(Problem::Framing(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{put_int, put_str, put_uint, MobileSessionStart, SessionStart};

    const PLAYER_PV1: &[u8] =
        include_bytes!("../../tests/fixtures/tracker-19.0.1/pv1-batch1-player.gunzipped.bin");
    const PLAYER_PV2: &[u8] =
        include_bytes!("../../tests/fixtures/tracker-19.0.1/pv2-batch4-player.gunzipped.bin");
    const DEVTOOLS: &[u8] =
        include_bytes!("../../tests/fixtures/tracker-19.0.1/pv2-batch2-devtools.bin");
    const ANALYTICS: &[u8] =
        include_bytes!("../../tests/fixtures/tracker-19.0.1/pv2-batch3-analytics.bin");
    /// A `DataType: visual` batch: a player batch, then an assets batch from byte 855.
    const VISUAL: &[u8] =
        include_bytes!("../../tests/fixtures/tracker-19.0.1/pv2-batch1-visual-split855.bin");
    const VISUAL_SPLIT: usize = 855;

    fn mobile_batch(tail: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        put_uint(&mut b, codec::MSG_MOBILE_BATCH_META);
        put_uint(&mut b, 1_700_000_000_000); // timestamp
        put_uint(&mut b, 3); // length
        put_uint(&mut b, 0); // first index
        b.extend_from_slice(tail);
        b
    }

    fn session_start() -> Vec<u8> {
        let mut out = Vec::new();
        SessionStart {
            timestamp: 1,
            project_id: 2,
            user_country: "UN||",
            ..SessionStart::default()
        }
        .encode(&mut out);
        out
    }

    fn mobile_session_start() -> Vec<u8> {
        let mut out = Vec::new();
        MobileSessionStart {
            timestamp: 1,
            project_id: 2,
            tracker_version: "1.0",
            rev_id: "",
            user_uuid: "u",
            user_os: "iOS",
            user_os_version: "17",
            user_device: "iPhone",
            user_device_type: "mobile",
            user_country: "UN||",
        }
        .encode(&mut out);
        out
    }

    /// A version-2 web batch with one sized message that claims more bytes than follow.
    fn oversized_message() -> Vec<u8> {
        let mut b = Vec::new();
        put_uint(&mut b, codec::MSG_BATCH_METADATA);
        put_uint(&mut b, 2);
        put_uint(&mut b, 0);
        put_uint(&mut b, 0);
        put_int(&mut b, 0);
        put_str(&mut b, "");
        let at = b.len();
        b.extend_from_slice(&[0, 200, 0, 0, 1, 2, 3]);
        assert_eq!(at, 6);
        b
    }

    #[test]
    fn accepted_records() {
        let visual_player = &VISUAL[..VISUAL_SPLIT];
        let visual_assets = &VISUAL[VISUAL_SPLIT..];
        let cases: Vec<(&str, RecordKind, Vec<u8>)> = vec![
            ("pv1 player", RecordKind::WebBatch, PLAYER_PV1.to_vec()),
            ("pv2 player", RecordKind::WebBatch, PLAYER_PV2.to_vec()),
            ("devtools", RecordKind::WebBatch, DEVTOOLS.to_vec()),
            ("analytics", RecordKind::WebBatch, ANALYTICS.to_vec()),
            (
                "visual player",
                RecordKind::WebBatch,
                visual_player.to_vec(),
            ),
            (
                "visual assets",
                RecordKind::WebAssetsBatch,
                visual_assets.to_vec(),
            ),
            ("mobile", RecordKind::MobileBatch, mobile_batch(b"opaque")),
            ("start", RecordKind::SessionStart, session_start()),
            (
                "mobile start",
                RecordKind::MobileSessionStart,
                mobile_session_start(),
            ),
            ("image", RecordKind::Image, b"\x00\x01anything".to_vec()),
            ("empty image", RecordKind::Image, Vec::new()),
            ("not started", RecordKind::NotStarted, b"{}".to_vec()),
        ];
        for (name, kind, body) in cases {
            assert_eq!(check_record(kind, &body), Ok(()), "{name}");
        }
    }

    #[test]
    fn refused_records_and_what_an_operator_reads() {
        let framing = |kind, e| Quarantine {
            kind,
            problem: Problem::Framing(e),
        };
        let start_type = |kind, want, found| Quarantine {
            kind,
            problem: Problem::StartType { want, found },
        };
        let web = RecordKind::WebBatch;
        let cases: Vec<(&str, RecordKind, Vec<u8>, Quarantine, &str)> = vec![
            (
                "pv1 player cut inside its second message",
                web,
                PLAYER_PV1[..120].to_vec(),
                framing(web, WalkError::Truncated { offset: 117 }),
                "web batch: batch truncated in the message at byte 117",
            ),
            (
                "visual batch not split",
                web,
                VISUAL.to_vec(),
                framing(web, WalkError::MetaNotFirst { offset: 855 }),
                "web batch: batch meta message at byte 855, not first",
            ),
            (
                "assets batch that is a mobile batch",
                RecordKind::WebAssetsBatch,
                mobile_batch(b""),
                framing(RecordKind::WebAssetsBatch, WalkError::MissingMeta),
                "web assets batch: batch does not start with a batch meta message",
            ),
            (
                "message size past the end",
                web,
                oversized_message(),
                framing(web, WalkError::Truncated { offset: 6 }),
                "web batch: batch truncated in the message at byte 6",
            ),
            (
                "empty web batch",
                web,
                Vec::new(),
                framing(web, WalkError::Empty),
                "web batch: empty batch",
            ),
            (
                "mobile batch that is a web batch",
                RecordKind::MobileBatch,
                DEVTOOLS.to_vec(),
                framing(RecordKind::MobileBatch, WalkError::MissingMeta),
                "mobile batch: batch does not start with a batch meta message",
            ),
            (
                "mobile meta cut short",
                RecordKind::MobileBatch,
                mobile_batch(b"")[..3].to_vec(),
                framing(RecordKind::MobileBatch, WalkError::Truncated { offset: 0 }),
                "mobile batch: batch truncated in the message at byte 0",
            ),
            (
                "session start that is a batch",
                RecordKind::SessionStart,
                DEVTOOLS.to_vec(),
                start_type(RecordKind::SessionStart, 1, 81),
                "session start: first message is type 81, not 1",
            ),
            (
                "mobile start that is a web start",
                RecordKind::MobileSessionStart,
                session_start(),
                start_type(RecordKind::MobileSessionStart, 90, 1),
                "mobile session start: first message is type 1, not 90",
            ),
            (
                "empty start",
                RecordKind::SessionStart,
                Vec::new(),
                framing(RecordKind::SessionStart, WalkError::Empty),
                "session start: empty batch",
            ),
            (
                "start type overflows",
                RecordKind::MobileSessionStart,
                vec![0xff; 11],
                framing(
                    RecordKind::MobileSessionStart,
                    WalkError::VarintOverflow { offset: 0 },
                ),
                "mobile session start: varint at byte 0 overflows 64 bits",
            ),
            (
                "start type cut short",
                RecordKind::SessionStart,
                vec![0x81],
                framing(RecordKind::SessionStart, WalkError::Truncated { offset: 0 }),
                "session start: batch truncated in the message at byte 0",
            ),
        ];
        for (name, kind, body, want, text) in cases {
            let got = check_record(kind, &body);
            assert_eq!(got, Err(want), "{name}");
            assert_eq!(want.to_string(), text, "{name}");
        }
    }

    #[test]
    fn every_truncation_of_every_fixture_is_judged_without_panic() {
        for batch in [PLAYER_PV1, PLAYER_PV2, DEVTOOLS, ANALYTICS] {
            for cut in 0..batch.len() {
                for kind in RecordKind::ALL {
                    let _ = check_record(kind, &batch[..cut]);
                }
            }
            assert_eq!(check_record(RecordKind::WebBatch, batch), Ok(()));
        }
    }
}

//! The true order of one session's records.
//!
//! Enters: one session's records, in any order (as gathered from several segments and
//! workers). Leaves: the same slice, permuted in place into the order downstream must replay
//! it in. Runs on the compactor thread before a session is written, and on the CLI's thread in
//! `cat`, which orders what it reads from segments the same way.
//!
//! The order is the arrival order (`arrival_unix_ns`, ties in the order given), with a start
//! record (SessionStart, MobileSessionStart) moved before everything else, and one exception:
//! the tracker numbers its web batches with `firstIndex`, one counter per BatchMetadata
//! *version* within a page (player, assets, devtools and analytics batches count separately),
//! and two requests of one tab may reach different workers and so arrive swapped. The web
//! batches of one *group*, same (topic, pageNo, version), are therefore sorted by `firstIndex`
//! among themselves while keeping the positions that group occupies in the arrival sequence:
//!
//! ```text
//! arrival:  p0v2 fi58 | p0v5 fi2 | p0v2 fi0
//! true:     p0v2 fi0  | p0v5 fi2 | p0v2 fi58
//! ```
//!
//! A legacy BatchMeta (80) carries pageNo and firstIndex but no version: it is grouped as
//! version 0, with BatchMetadata version 0. Records without a readable batch meta (starts,
//! mobile batches, images, not-started records, damaged web batches) keep their arrival
//! positions. Reading a meta reads a few varints at the front of the body: no allocation, and
//! hostile bytes only make a record ungrouped.

use crate::codec::{Reader, WalkError, MSG_BATCH_META, MSG_BATCH_METADATA};
use crate::log::{RecordKind, StoredRecord};

/// What ordering needs to know of a record.
pub trait SessionRecord {
    fn kind(&self) -> RecordKind;
    fn arrival_unix_ns(&self) -> u64;
    fn body(&self) -> &[u8];
}

impl SessionRecord for StoredRecord {
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

/// The web batches whose `firstIndex` values are one sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchGroup {
    /// The topic the batch is forwarded to: 0 for `raw` (WebBatch), 1 for `raw-assets`
    /// (WebAssetsBatch). A number rather than `log::Topic` so groups sort.
    pub topic: u8,
    pub page_no: u64,
    /// BatchMetadata version; 0 for a legacy BatchMeta.
    pub version: u64,
}

/// A web batch's place in its group's sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchPlace {
    pub group: BatchGroup,
    pub first_index: u64,
}

/// The group and `firstIndex` of a web record; `None` for other kinds and for a body whose
/// meta cannot be read.
pub fn batch_place(kind: RecordKind, body: &[u8]) -> Option<BatchPlace> {
    let topic = match kind {
        RecordKind::WebBatch => 0,
        RecordKind::WebAssetsBatch => 1,
        _ => return None,
    };
    read_place(topic, body).ok()
}

fn read_place(topic: u8, body: &[u8]) -> Result<BatchPlace, WalkError> {
    let mut r = Reader::new(body);
    let (version, page_no, first_index) = match r.uint()? {
        MSG_BATCH_METADATA => {
            let version = r.uint()?;
            let page_no = r.uint()?;
            let first_index = r.uint()?;
            r.int()?; // Timestamp
            r.string()?; // Location
            (version, page_no, first_index)
        }
        MSG_BATCH_META => {
            let page_no = r.uint()?;
            let first_index = r.uint()?;
            r.int()?; // Timestamp
            (0, page_no, first_index)
        }
        _ => return Err(WalkError::MissingMeta),
    };
    Ok(BatchPlace {
        group: BatchGroup {
            topic,
            page_no,
            version,
        },
        first_index,
    })
}

fn is_start(kind: RecordKind) -> bool {
    matches!(
        kind,
        RecordKind::SessionStart | RecordKind::MobileSessionStart | RecordKind::SessionRow
    )
}

/// Puts one session's records in their true order (see the module doc). Stable: records that
/// compare equal keep the order given.
pub fn order_session<R: SessionRecord>(records: &mut [R]) {
    let perm = true_order(records);
    apply_permutation(records, perm);
}

/// `out[i] = records[perm[i]]` for the true order.
fn true_order<R: SessionRecord>(records: &[R]) -> Vec<usize> {
    // The arrival sequence: starts first, then by arrival time, ties as given.
    let mut arrival: Vec<usize> = (0..records.len()).collect();
    arrival.sort_by_key(|&i| {
        let r = &records[i];
        (!is_start(r.kind()), r.arrival_unix_ns())
    });
    // Grouped records as (place, position in the arrival sequence), in arrival order.
    let mut members: Vec<(BatchPlace, usize)> = arrival
        .iter()
        .enumerate()
        .filter_map(|(pos, &i)| Some((batch_place(records[i].kind(), records[i].body())?, pos)))
        .collect();
    if members.is_empty() {
        return arrival;
    }
    // The slots of each group, ascending; and its members by firstIndex. Both sorts are
    // stable and group-major, so the n-th slot and the n-th member belong to the same group.
    let mut slots: Vec<(BatchGroup, usize)> =
        members.iter().map(|(p, pos)| (p.group, *pos)).collect();
    slots.sort_by_key(|&(group, _)| group);
    members.sort_by_key(|(place, _)| (place.group, place.first_index));
    let mut out = arrival.clone();
    for (&(_, slot), &(_, from)) in slots.iter().zip(&members) {
        out[slot] = arrival[from];
    }
    out
}

/// Permutes in place so that `records[i]` becomes what was at `perm[i]`, by following cycles.
fn apply_permutation<R>(records: &mut [R], perm: Vec<usize>) {
    let mut done = vec![false; perm.len()];
    for start in 0..perm.len() {
        if done[start] {
            continue;
        }
        let mut at = start;
        loop {
            done[at] = true;
            let from = perm[at];
            if from == start {
                break;
            }
            records.swap(at, from);
            at = from;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{put_int, put_str, put_uint};
    use proptest::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Rec {
        id: usize,
        kind: RecordKind,
        arrival: u64,
        body: Vec<u8>,
    }

    impl SessionRecord for Rec {
        fn kind(&self) -> RecordKind {
            self.kind
        }
        fn arrival_unix_ns(&self) -> u64 {
            self.arrival
        }
        fn body(&self) -> &[u8] {
            &self.body
        }
    }

    fn metadata(version: u64, page_no: u64, first_index: u64) -> Vec<u8> {
        let mut b = Vec::new();
        put_uint(&mut b, MSG_BATCH_METADATA);
        put_uint(&mut b, version);
        put_uint(&mut b, page_no);
        put_uint(&mut b, first_index);
        put_int(&mut b, 1_795_771_262_812);
        put_str(&mut b, "https://example.test/");
        b
    }

    fn legacy(page_no: u64, first_index: u64) -> Vec<u8> {
        let mut b = Vec::new();
        put_uint(&mut b, MSG_BATCH_META);
        put_uint(&mut b, page_no);
        put_uint(&mut b, first_index);
        put_int(&mut b, -1);
        b
    }

    fn recs(list: Vec<(RecordKind, u64, Vec<u8>)>) -> Vec<Rec> {
        list.into_iter()
            .enumerate()
            .map(|(id, (kind, arrival, body))| Rec {
                id,
                kind,
                arrival,
                body,
            })
            .collect()
    }

    fn ids(records: &[Rec]) -> Vec<usize> {
        records.iter().map(|r| r.id).collect()
    }

    const PLAYER_PV2: &[u8] =
        include_bytes!("../../tests/fixtures/tracker-19.0.1/pv2-batch4-player.gunzipped.bin");
    const DEVTOOLS: &[u8] =
        include_bytes!("../../tests/fixtures/tracker-19.0.1/pv2-batch2-devtools.bin");
    const ANALYTICS: &[u8] =
        include_bytes!("../../tests/fixtures/tracker-19.0.1/pv2-batch3-analytics.bin");
    const VISUAL: &[u8] =
        include_bytes!("../../tests/fixtures/tracker-19.0.1/pv2-batch1-visual-split855.bin");

    #[test]
    fn fixture_places() {
        let group = |topic, version| BatchGroup {
            topic,
            page_no: 0,
            version,
        };
        let cases: [(RecordKind, &[u8], Option<BatchPlace>); 7] = [
            (
                RecordKind::WebBatch,
                &VISUAL[..855],
                Some(BatchPlace {
                    group: group(0, 2),
                    first_index: 0,
                }),
            ),
            (
                RecordKind::WebAssetsBatch,
                &VISUAL[855..],
                Some(BatchPlace {
                    group: group(1, 3),
                    first_index: 19,
                }),
            ),
            (
                RecordKind::WebBatch,
                PLAYER_PV2,
                Some(BatchPlace {
                    group: group(0, 2),
                    first_index: 58,
                }),
            ),
            (
                RecordKind::WebBatch,
                DEVTOOLS,
                Some(BatchPlace {
                    group: group(0, 4),
                    first_index: 4,
                }),
            ),
            (
                RecordKind::WebBatch,
                ANALYTICS,
                Some(BatchPlace {
                    group: group(0, 5),
                    first_index: 2,
                }),
            ),
            // Another kind with the same bytes is not a web batch.
            (RecordKind::MobileBatch, DEVTOOLS, None),
            (RecordKind::SessionStart, DEVTOOLS, None),
        ];
        for (kind, body, want) in cases {
            assert_eq!(batch_place(kind, body), want, "{kind:?}");
        }
        assert_eq!(
            batch_place(RecordKind::WebBatch, &legacy(3, 9)),
            Some(BatchPlace {
                group: BatchGroup {
                    topic: 0,
                    page_no: 3,
                    version: 0
                },
                first_index: 9
            })
        );
        // A meta cut anywhere is no place at all, never a panic.
        let meta = metadata(2, 1, 7);
        for cut in 0..meta.len() {
            assert_eq!(
                batch_place(RecordKind::WebBatch, &meta[..cut]),
                None,
                "{cut}"
            );
        }
        assert!(batch_place(RecordKind::WebBatch, &meta).is_some());
    }

    /// The tracker's real sequence of one page: player 0 then 58, devtools 4, analytics 2,
    /// arriving with the second player batch first.
    #[test]
    fn example_from_the_brief_and_the_fixtures() {
        let mut records = recs(vec![
            (RecordKind::WebBatch, 10, PLAYER_PV2.to_vec()), // v2 fi58
            (RecordKind::WebBatch, 11, ANALYTICS.to_vec()),  // v5 fi2
            (RecordKind::WebBatch, 12, VISUAL[..855].to_vec()), // v2 fi0
            (RecordKind::WebAssetsBatch, 12, VISUAL[855..].to_vec()), // assets fi19
            (RecordKind::WebBatch, 13, DEVTOOLS.to_vec()),   // v4 fi4
            (RecordKind::SessionStart, 14, vec![1]),         // late start: goes first
        ]);
        order_session(&mut records);
        assert_eq!(ids(&records), [5, 2, 1, 0, 3, 4]);
    }

    #[test]
    fn arrival_order_is_stable_and_groups_keep_their_slots() {
        let v2 = |fi| metadata(2, 0, fi);
        let mut records = recs(vec![
            (RecordKind::WebBatch, 5, v2(3)),
            (RecordKind::Image, 1, b"img".to_vec()),
            (RecordKind::WebBatch, 5, v2(1)),
            (RecordKind::MobileBatch, 2, b"m".to_vec()),
            (RecordKind::WebBatch, 4, metadata(2, 1, 0)), // another page: own group
            (RecordKind::WebBatch, 5, v2(2)),
            (RecordKind::WebBatch, 3, b"\xff\xff".to_vec()), // unreadable: stays
            (RecordKind::WebBatch, 6, legacy(0, 1)),
            (RecordKind::WebBatch, 6, legacy(0, 0)),
            (RecordKind::WebAssetsBatch, 7, metadata(2, 0, 0)), // other topic: own group
        ]);
        order_session(&mut records);
        // Arrival: 1(t1) 3(t2) 6(t3) 4(t4) 0 2 5 (t5) 7 8 (t6) 9 (t7).
        assert_eq!(ids(&records), [1, 3, 6, 4, 2, 5, 0, 8, 7, 9]);
    }

    #[test]
    fn duplicates_keep_their_arrival_order() {
        let mut records = recs(vec![
            (RecordKind::WebBatch, 2, metadata(2, 0, 5)),
            (RecordKind::WebBatch, 1, metadata(2, 0, 5)),
            (RecordKind::WebBatch, 3, metadata(2, 0, 4)),
        ]);
        order_session(&mut records);
        assert_eq!(ids(&records), [2, 1, 0]);
        let mut empty: Vec<Rec> = Vec::new();
        order_session(&mut empty);
    }

    fn arb_record() -> impl Strategy<Value = (RecordKind, u64, Vec<u8>)> {
        let web = (0u8..2, 0u64..3, 1u64..4, 0u64..6).prop_map(|(assets, page, version, fi)| {
            let kind = if assets == 1 {
                RecordKind::WebAssetsBatch
            } else {
                RecordKind::WebBatch
            };
            (kind, metadata(version, page, fi))
        });
        let legacy =
            (0u64..2, 0u64..6).prop_map(|(page, fi)| (RecordKind::WebBatch, legacy(page, fi)));
        let other = (
            prop::sample::select(RecordKind::ALL.to_vec()),
            prop::collection::vec(any::<u8>(), 0..12),
        );
        (prop_oneof![3 => web, 1 => legacy, 2 => other], 0u64..8)
            .prop_map(|((kind, body), arrival)| (kind, arrival, body))
    }

    proptest! {
        #[test]
        fn true_order_properties(list in prop::collection::vec(arb_record(), 0..40)) {
            let input = recs(list);
            let mut output = input.clone();
            order_session(&mut output);

            // A permutation.
            let mut seen = ids(&output);
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..input.len()).collect::<Vec<_>>());

            // The arrival sequence it must agree with.
            let mut arrival = input.clone();
            arrival.sort_by_key(|r| (!is_start(r.kind), r.arrival));
            let place = |r: &Rec| batch_place(r.kind, &r.body);
            for (pos, (got, arrived)) in output.iter().zip(&arrival).enumerate() {
                match (place(got), place(arrived)) {
                    // A group's slot holds a member of the same group.
                    (Some(a), Some(b)) => prop_assert_eq!(a.group, b.group, "slot {}", pos),
                    // Everything else keeps its position.
                    (None, None) => prop_assert_eq!(got.id, arrived.id, "slot {}", pos),
                    _ => prop_assert!(false, "slot {} changed between grouped and not", pos),
                }
            }
            // Within a group: by firstIndex, then by arrival.
            let grouped: Vec<(BatchPlace, usize)> = output
                .iter()
                .filter_map(|r| Some((place(r)?, arrival.iter().position(|a| a.id == r.id)?)))
                .collect();
            for (i, (a, pa)) in grouped.iter().enumerate() {
                for (b, pb) in &grouped[i + 1..] {
                    if a.group == b.group {
                        prop_assert!((a.first_index, pa) < (b.first_index, pb));
                    }
                }
            }
            // Starts come first.
            let first_other = output.iter().position(|r| !is_start(r.kind)).unwrap_or(output.len());
            prop_assert!(output[first_other..].iter().all(|r| !is_start(r.kind)));
        }

        #[test]
        fn hostile_bodies_never_panic(kind in prop::sample::select(RecordKind::ALL.to_vec()),
                                      body in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = batch_place(kind, &body);
        }
    }
}

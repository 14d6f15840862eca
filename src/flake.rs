//! Session ids: OpenReplay's 64-bit flake ids.
//!
//! Enters: the wall clock in ms, from whichever worker thread is answering a start request.
//! Leaves: a session id that no other call in this process, nor any node with another shard,
//! hands out. One [`SessionIdGenerator`] is shared by all worker threads.
//!
//! Layout (PROTOCOL.md, "Session id"):
//!
//! ```text
//! bits 63..16  ms since FLAKE_EPOCH_MS   (the session's start timestamp)
//! bits 15..8   shard                      (the node's configured shard, 0-255)
//! bits  7..0   sequence within that ms
//! ```
//!
//! OpenReplay's own generator lets the sequence wrap within one ms and so can repeat an id
//! under a burst. Here the (ms, sequence) pair is one counter: the 257th id in a ms carries
//! into the next ms, so ids stay unique and monotonic, and a start timestamp runs at most a
//! few ms ahead of the clock under an extreme burst.

use std::sync::atomic::{AtomicU64, Ordering};

pub const FLAKE_EPOCH_MS: u64 = 1_550_000_000_000;

const SEQ_BITS: u32 = 8;
const SHARD_BITS: u32 = 8;
const TIMESTAMP_SHIFT: u32 = SEQ_BITS + SHARD_BITS;
/// The timestamp field has 48 bits: enough for about 8,900 years after the epoch.
const MAX_OFFSET_MS: u64 = (1 << (64 - TIMESTAMP_SHIFT)) - 1;
const MAX_PACKED: u64 = (MAX_OFFSET_MS << SEQ_BITS) | ((1 << SEQ_BITS) - 1);

pub struct SessionIdGenerator {
    shard: u8,
    /// The last id handed out, without its shard: `(ms since epoch << 8) | seq`. Counting in
    /// this packed form is what makes a full ms borrow the next one.
    last: AtomicU64,
}

impl SessionIdGenerator {
    pub fn new(shard: u8) -> Self {
        SessionIdGenerator {
            shard,
            last: AtomicU64::new(0),
        }
    }

    /// Shared by all worker threads (Sync). Never returns the same id twice in one process:
    /// if 256 ids were handed out in the same ms, borrow the next ms (ids stay monotonic).
    /// A clock that steps back is ignored until it catches up with the ids already issued.
    pub fn next_id(&self, now_ms: u64) -> u64 {
        let floor = now_ms.saturating_sub(FLAKE_EPOCH_MS).min(MAX_OFFSET_MS) << SEQ_BITS;
        let prev = self
            .last
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(successor(last, floor))
            })
            // The closure always returns Some, so Err never happens; either arm holds `last`.
            .unwrap_or_else(|last| last);
        let packed = successor(prev, floor);
        let offset_ms = packed >> SEQ_BITS;
        let seq = packed & ((1 << SEQ_BITS) - 1);
        (offset_ms << TIMESTAMP_SHIFT) | (u64::from(self.shard) << SEQ_BITS) | seq
    }
}

/// The packed (ms, seq) after `last`, never behind the clock. At the end of the 48-bit
/// timestamp range it stops instead of wrapping to the epoch.
fn successor(last: u64, floor: u64) -> u64 {
    last.saturating_add(1).max(floor).min(MAX_PACKED)
}

pub fn start_timestamp_ms(session_id: u64) -> u64 {
    (session_id >> TIMESTAMP_SHIFT) + FLAKE_EPOCH_MS
}

pub fn shard_of(session_id: u64) -> u8 {
    // Truncation keeps exactly the 8 shard bits.
    (session_id >> SEQ_BITS) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const NOW: u64 = 1_795_771_262_812;

    #[test]
    fn layout() {
        let ids = SessionIdGenerator::new(0xab);
        let first = ids.next_id(NOW);
        assert_eq!(first, ((NOW - FLAKE_EPOCH_MS) << 16) | (0xab << 8));
        assert_eq!(start_timestamp_ms(first), NOW);
        assert_eq!(shard_of(first), 0xab);
        let second = ids.next_id(NOW);
        assert_eq!(second, first + 1);
        let later = ids.next_id(NOW + 5);
        assert_eq!(later, ((NOW + 5 - FLAKE_EPOCH_MS) << 16) | (0xab << 8));
    }

    #[test]
    fn ten_thousand_in_one_ms_are_unique_and_monotonic() {
        for shard in [0, 7, 255] {
            let ids = SessionIdGenerator::new(shard);
            let mut seen = HashSet::new();
            let mut prev = 0;
            for i in 0..10_000u64 {
                let id = ids.next_id(NOW);
                assert!(id > prev, "not monotonic at {i}");
                assert!(seen.insert(id), "repeated at {i}");
                assert_eq!(shard_of(id), shard);
                // 256 ids per ms, so id i borrows i / 256 ms.
                assert_eq!(start_timestamp_ms(id), NOW + i / 256);
                prev = id;
            }
        }
    }

    #[test]
    fn clock_stepping_back_stays_monotonic() {
        let ids = SessionIdGenerator::new(3);
        let a = ids.next_id(NOW);
        let b = ids.next_id(NOW - 1_000);
        let c = ids.next_id(NOW + 1);
        assert!(a < b && b < c);
        assert_eq!(start_timestamp_ms(b), NOW);
        assert_eq!(start_timestamp_ms(c), NOW + 1);
    }

    #[test]
    fn two_shards_never_collide() {
        let left = SessionIdGenerator::new(1);
        let right = SessionIdGenerator::new(2);
        let mut seen = HashSet::new();
        for ms in 0..20u64 {
            for _ in 0..300 {
                assert!(seen.insert(left.next_id(NOW + ms)));
                assert!(seen.insert(right.next_id(NOW + ms)));
            }
        }
    }

    #[test]
    fn shared_across_threads() {
        let ids = SessionIdGenerator::new(9);
        let all: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..2_000).map(|_| ids.next_id(NOW)).collect::<Vec<_>>()))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        let unique: HashSet<_> = all.iter().collect();
        assert_eq!(all.len(), 8_000);
        assert_eq!(unique.len(), 8_000);
    }

    #[test]
    fn clock_extremes_do_not_panic() {
        let ids = SessionIdGenerator::new(255);
        assert_eq!(ids.next_id(0), 255 << 8 | 1);
        let far = ids.next_id(u64::MAX);
        assert_eq!(far >> 16, MAX_OFFSET_MS);
        assert_eq!(shard_of(far), 255);
        // Past the end of time the counter saturates rather than wrapping into the shard.
        for _ in 0..300 {
            assert_eq!(shard_of(ids.next_id(u64::MAX)), 255);
        }
    }
}

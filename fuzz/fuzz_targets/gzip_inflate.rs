//! Capped gzip inflation: the cap holds whatever the stream claims.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replay_ingest::http::inflate_capped;

fuzz_target!(|data: &[u8]| {
    let Some((cap, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let mut dst = vec![0u8; usize::from(u16::from_le_bytes(*cap)) % 4096];
    if let Ok(n) = inflate_capped(body, &mut dst) {
        assert!(n <= dst.len());
    }
});

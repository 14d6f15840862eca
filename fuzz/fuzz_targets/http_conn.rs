//! The connection state machine fed arbitrary bytes cut at arbitrary points: heads, fixed and
//! chunked bodies, pipelining, every route behind them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replay_ingest_fuzz::{check_answers, cut, Harness};

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let chunks = cut(input, seed);
    let written = Harness::with(|h| h.connection(chunks, seed & 0x80 != 0));
    check_answers(&written);
});

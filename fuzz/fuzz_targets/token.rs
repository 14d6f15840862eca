//! Token parsing and verification: never panics; whatever verifies recomposes to a token that
//! verifies to the same fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replay_ingest::token::TokenSigner;

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static SIGNER: TokenSigner = TokenSigner::new(replay_ingest_fuzz::SECRET.as_bytes());
    }
    SIGNER.with(|signer| {
        if let Ok(token) = signer.verify(data) {
            let again = signer.compose(&token);
            assert_eq!(signer.verify(again.as_bytes()), Ok(token));
        }
    });
});

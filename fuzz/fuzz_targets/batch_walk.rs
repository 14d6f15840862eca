//! The batch framing walkers (web and mobile) agree with the message iterator.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replay_ingest::codec::{walk_mobile_batch, walk_web_batch, web_messages};

fuzz_target!(|data: &[u8]| {
    let _ = walk_mobile_batch(data);
    let walked = walk_web_batch(data);
    if let Ok(iter) = web_messages(data) {
        let mut count = 0u32;
        let mut failed = false;
        for message in iter {
            match message {
                Ok((offset, _, body)) => {
                    assert!(offset < data.len() && body.len() <= data.len());
                    count += 1;
                }
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if let Ok(summary) = walked {
            assert!(!failed);
            assert_eq!(summary.messages, Some(count));
        }
    }
});

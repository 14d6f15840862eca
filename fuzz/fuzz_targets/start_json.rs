//! Start-request JSON, web and mobile, through the real route (request head written here).
#![no_main]

use libfuzzer_sys::fuzz_target;
use replay_ingest_fuzz::{check_answers, Harness};

const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

fuzz_target!(|data: &[u8]| {
    let Some((&choice, body)) = data.split_first() else {
        return;
    };
    let path = if choice & 1 == 0 {
        "/ingest/v1/web/start"
    } else {
        "/v1/mobile/start"
    };
    let gzip = if choice & 2 != 0 {
        "Content-Encoding: gzip\r\n"
    } else {
        ""
    };
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: f\r\nUser-Agent: {UA}\r\n{gzip}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    let written = Harness::with(|h| h.connection(vec![request], false));
    check_answers(&written);
    assert!(!written.is_empty(), "every start gets an answer");
});

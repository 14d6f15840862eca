//! The multipart parser of the images routes: boundary from the first line, body after it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replay_ingest::http::parse_form;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (boundary, body) = data.split_at(split);
    let body = body.get(1..).unwrap_or_default();
    let mut content_type = b"multipart/form-data; boundary=".to_vec();
    content_type.extend_from_slice(boundary);
    if let Ok(parts) = parse_form(&content_type, body) {
        for part in parts {
            assert!(part.data.len() <= body.len());
        }
    }
    // The raw first line as the whole Content-Type too.
    let _ = parse_form(boundary, body);
});

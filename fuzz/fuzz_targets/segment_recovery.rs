//! Segment recovery from arbitrary file bytes: the scan, then recovery and reading of a data
//! directory holding those bytes as an unsealed segment.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replay_ingest::log::{read_records, recover, scan_segment};

fuzz_target!(|data: &[u8]| {
    if let Ok(scan) = scan_segment(data) {
        if !scan.torn {
            assert!(
                scan.end as usize <= data.len(),
                "a clean scan ends inside the file"
            );
        }
        for record in &scan.records {
            assert!((record.offset as usize) < data.len());
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let segments = dir.path().join("segments");
    std::fs::create_dir_all(&segments).expect("segments dir");
    std::fs::write(segments.join("w000-0000000000000000.seg"), data).expect("write");
    if recover(dir.path()).is_ok() {
        // After recovery every remaining record reads back.
        let _ = read_records(dir.path()).expect("recovered segments read");
    }
});

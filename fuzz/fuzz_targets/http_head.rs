//! Request heads, then a chunked body decoded from what follows, fed in two cuts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replay_ingest::http::{parse_head, BodyFraming, ChunkedDecoder};

fuzz_target!(|data: &[u8]| {
    let Ok(Some(head)) = parse_head(data) else {
        return;
    };
    assert!(head.head_len <= data.len());
    let spans = [head.path]
        .into_iter()
        .chain(head.query)
        .chain(head.authorization);
    for span in spans {
        assert!(span.end as usize <= head.head_len);
    }
    if head.framing == BodyFraming::Chunked {
        let body = &data[head.head_len..];
        let mut whole = ChunkedDecoder::new(1 << 20);
        let mut out = Vec::new();
        let one_shot = whole.decode(body, &mut out);
        // The same bytes in two cuts decode to the same result.
        let cut = body.len() / 2;
        let mut parts = ChunkedDecoder::new(1 << 20);
        let mut out2 = Vec::new();
        let first = parts.decode(&body[..cut], &mut out2);
        if let (Ok(n), Ok(total)) = (first, one_shot) {
            if n == cut && !parts.is_done() {
                if let Ok(m) = parts.decode(&body[cut..], &mut out2) {
                    assert_eq!(n + m, total);
                    assert_eq!(out, out2);
                }
            }
        }
    }
});

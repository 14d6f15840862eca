//! `Content-Encoding: gzip` bodies, inflated into a caller's buffer with a hard cap.
//!
//! Enters: a complete compressed body and the space it may decode into (a slice of the segment
//! mapping, a scratch buffer, or a vector of its own). Leaves: the decoded bytes' length, or why
//! decoding stopped. Runs on a preparation thread (`net::prepare`) or, when those are busy, on the
//! worker that owns the request. The cap is the route's decoded limit: a few kilobytes of gzip
//! can claim gigabytes (a gzip bomb), so decoding stops the moment the output would not fit.

use std::io::Read;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflateError {
    /// The decoded body is larger than the space given: 413.
    TooLarge,
    /// Not gzip, or a damaged stream: 400.
    Corrupt,
}

/// Inflates `body` (one or more gzip members) into `dst`; the decoded length.
pub fn inflate_capped(body: &[u8], dst: &mut [u8]) -> Result<usize, InflateError> {
    let mut decoder = flate2::read::MultiGzDecoder::new(body);
    let mut filled = 0;
    while filled < dst.len() {
        match decoder.read(&mut dst[filled..]) {
            Ok(0) => return Ok(filled),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err(InflateError::Corrupt),
        }
    }
    // Full: one more byte of output means the body does not fit.
    let mut probe = [0u8; 1];
    match decoder.read(&mut probe) {
        Ok(0) => Ok(filled),
        Ok(_) => Err(InflateError::TooLarge),
        Err(_) => Err(InflateError::Corrupt),
    }
}

/// Inflates `body` into a vector of its own, at most `limit` decoded bytes.
pub fn inflate_to_vec(body: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    // The last member's trailer says its decoded size (mod 2^32): a hint for one allocation
    // instead of a doubling series, bounded by the cap whatever the client wrote there.
    let hint = body.len().checked_sub(4).map_or(0, |at| {
        u32::from_le_bytes(body[at..].try_into().unwrap()) as usize
    });
    let mut out = Vec::with_capacity(hint.min(limit) + 1);
    let mut decoder = flate2::read::MultiGzDecoder::new(body).take(limit as u64 + 1);
    match decoder.read_to_end(&mut out) {
        Err(_) => Err(InflateError::Corrupt),
        Ok(n) if n > limit => Err(InflateError::TooLarge),
        Ok(_) => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn inflation_is_capped() {
        let bomb = gzip(&vec![0u8; 100_000]);
        let mut dst = vec![0u8; 100_000];
        assert_eq!(inflate_capped(&bomb, &mut dst), Ok(100_000));
        let mut small = vec![0u8; 99_999];
        assert_eq!(
            inflate_capped(&bomb, &mut small),
            Err(InflateError::TooLarge)
        );
        assert_eq!(
            inflate_capped(b"not gzip", &mut dst),
            Err(InflateError::Corrupt)
        );
        assert_eq!(
            inflate_capped(&bomb[..bomb.len() - 9], &mut dst),
            Err(InflateError::Corrupt)
        );
    }

    #[test]
    fn inflation_into_a_vector_is_capped_alike() {
        let bomb = gzip(&vec![7u8; 100_000]);
        assert_eq!(inflate_to_vec(&bomb, 100_000), Ok(vec![7u8; 100_000]));
        assert_eq!(inflate_to_vec(&bomb, 99_999), Err(InflateError::TooLarge));
        assert_eq!(inflate_to_vec(b"not gzip", 10), Err(InflateError::Corrupt));
        assert_eq!(
            inflate_to_vec(&bomb[..bomb.len() - 9], 100_000),
            Err(InflateError::Corrupt)
        );
        // A trailer claiming 4 GiB is only a hint, capped; the stream is still checked.
        let mut lying = gzip(b"abc");
        let at = lying.len() - 4;
        lying[at..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(inflate_to_vec(&lying, 16), Err(InflateError::Corrupt));
        let mut two = gzip(b"abc");
        two.extend(gzip(b"def"));
        assert_eq!(inflate_to_vec(&two, 6).as_deref(), Ok(&b"abcdef"[..]));
    }

    #[test]
    fn members_concatenate() {
        let mut two = gzip(b"abc");
        two.extend(gzip(b"def"));
        let mut dst = [0u8; 16];
        assert_eq!(inflate_capped(&two, &mut dst), Ok(6));
        assert_eq!(&dst[..6], b"abcdef");
    }
}

//! `Transfer-Encoding: chunked` bodies, decoded incrementally.
//!
//! Enters: body bytes as they arrive from the socket, cut anywhere (a read may end inside a size
//! line, inside data, or between CR and LF). Leaves: the decoded body appended to a caller's
//! buffer, and the count of input bytes consumed, so that bytes after the last chunk stay in the
//! connection buffer as the next pipelined request. Runs on the `net` worker that owns the
//! connection; one decoder per request body.
//!
//! Strict on line endings (CRLF only, no bare LF or CR) because a lenient chunk parser behind
//! a strict proxy, or the reverse, is a request smuggling vector.

use super::head::MAX_HEAD_BYTES;

/// A chunk-size line is a few hex digits; extensions are never sent by real clients. The bound
/// keeps a client from streaming an endless size line (leading zeros or extension) at us.
const MAX_SIZE_LINE: u32 = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// Not chunked framing: a bad size line, missing CRLF, bare LF, oversized trailers...
    Malformed,
    /// A chunk size that does not fit in u64.
    Overflow,
    /// The decoded total would pass the decoder's limit.
    TooLarge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size; `digits` counts them so that an empty size is refused.
    Size {
        value: u64,
        digits: u32,
    },
    /// After the digits: optional whitespace, then `;extension` or CR.
    SizeTail {
        value: u64,
    },
    Extension {
        value: u64,
    },
    SizeLf {
        value: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// After the last chunk: a trailer field line, or the CR of the final empty line.
    TrailerLineStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
    Failed(ChunkError),
}

/// Incremental decoder for one chunked body.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    limit: u64,
    decoded: u64,
    /// Bytes of the current size line so far, against [`MAX_SIZE_LINE`].
    size_line: u32,
    /// Bytes of trailer fields so far, against [`MAX_HEAD_BYTES`].
    trailers: usize,
}

impl ChunkedDecoder {
    /// `limit` bounds the decoded total: [`ChunkError::TooLarge`] as soon as a chunk size would
    /// pass it, before its data is read.
    pub fn new(limit: u64) -> Self {
        ChunkedDecoder {
            state: State::Size {
                value: 0,
                digits: 0,
            },
            limit,
            decoded: 0,
            size_line: 0,
            trailers: 0,
        }
    }

    /// Consumes from `input` and appends decoded data to `out`; returns the bytes consumed.
    /// Consumes everything unless the body ends inside `input`: then it stops right after the
    /// final CRLF and [`is_done`](Self::is_done) is true. Trailers are read and dropped. After an
    /// error the decoder keeps returning it; what was appended to `out` is then garbage.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        let mut consumed = 0usize;
        while let Some(rest) = input.get(consumed..).filter(|rest| !rest.is_empty()) {
            match self.state {
                State::Done => break,
                State::Failed(error) => return Err(error),
                State::Data { remaining } => {
                    let take = usize::try_from(remaining).map_or(rest.len(), |r| r.min(rest.len()));
                    let data = rest.get(..take).unwrap_or_default();
                    out.extend_from_slice(data);
                    consumed += data.len();
                    // `data.len() <= remaining`, and the limit check admitted the whole chunk.
                    let taken = data.len() as u64;
                    self.decoded = self.decoded.saturating_add(taken);
                    self.state = match remaining.saturating_sub(taken) {
                        0 => State::DataCr,
                        remaining => State::Data { remaining },
                    };
                }
                _ => {
                    let byte = rest.first().copied().unwrap_or_default();
                    consumed += 1;
                    self.state = match self.step(byte) {
                        Ok(next) => next,
                        Err(error) => {
                            self.state = State::Failed(error);
                            return Err(error);
                        }
                    };
                }
            }
        }
        match self.state {
            State::Failed(error) => Err(error),
            _ => Ok(consumed),
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decoded bytes so far.
    pub fn decoded(&self) -> u64 {
        self.decoded
    }

    /// One framing byte (anything but chunk data).
    fn step(&mut self, byte: u8) -> Result<State, ChunkError> {
        use ChunkError::Malformed;
        if matches!(
            self.state,
            State::Size { .. } | State::SizeTail { .. } | State::Extension { .. }
        ) {
            self.size_line = self.size_line.saturating_add(1);
            if self.size_line > MAX_SIZE_LINE {
                return Err(Malformed);
            }
        }
        Ok(match (self.state, byte) {
            (State::Size { value, digits }, _) if byte.is_ascii_hexdigit() => {
                let digit = u64::from(hex_value(byte));
                let value = value
                    .checked_mul(16)
                    .and_then(|v| v.checked_add(digit))
                    .ok_or(ChunkError::Overflow)?;
                State::Size {
                    value,
                    digits: digits.saturating_add(1),
                }
            }
            (State::Size { digits: 0, .. }, _) => return Err(Malformed),
            (State::Size { value, .. } | State::SizeTail { value }, b' ' | b'\t') => {
                State::SizeTail { value }
            }
            (State::Size { value, .. } | State::SizeTail { value }, b';') => {
                State::Extension { value }
            }
            (
                State::Size { value, .. } | State::SizeTail { value } | State::Extension { value },
                b'\r',
            ) => State::SizeLf { value },
            (State::Extension { value }, _) if byte == b'\t' || !byte.is_ascii_control() => {
                State::Extension { value }
            }
            (State::SizeLf { value: 0 }, b'\n') => State::TrailerLineStart,
            (State::SizeLf { value }, b'\n') => {
                let total = self
                    .decoded
                    .checked_add(value)
                    .ok_or(ChunkError::TooLarge)?;
                if total > self.limit {
                    return Err(ChunkError::TooLarge);
                }
                State::Data { remaining: value }
            }
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => {
                self.size_line = 0;
                State::Size {
                    value: 0,
                    digits: 0,
                }
            }
            (State::TrailerLineStart, b'\r') => State::FinalLf,
            (State::TrailerLineStart | State::TrailerLine, b'\n') => return Err(Malformed),
            (State::TrailerLineStart | State::TrailerLine, _) => {
                self.trailers = self.trailers.saturating_add(1);
                if self.trailers > MAX_HEAD_BYTES {
                    return Err(Malformed);
                }
                if byte == b'\r' {
                    State::TrailerLf
                } else {
                    State::TrailerLine
                }
            }
            (State::TrailerLf, b'\n') => State::TrailerLineStart,
            (State::FinalLf, b'\n') => State::Done,
            _ => return Err(Malformed),
        })
    }
}

fn hex_value(byte: u8) -> u8 {
    match byte {
        b'0'..=b'9' => byte - b'0',
        b'a'..=b'f' => byte - b'a' + 10,
        b'A'..=b'F' => byte - b'A' + 10,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One call over the whole input.
    fn one_shot(input: &[u8], limit: u64) -> (Result<usize, ChunkError>, Vec<u8>, bool) {
        let mut decoder = ChunkedDecoder::new(limit);
        let mut out = Vec::new();
        let result = decoder.decode(input, &mut out);
        (result, out, decoder.is_done())
    }

    /// Feeds `pieces` in turn, the way a socket would, stopping at the end of the body.
    fn fed(pieces: &[&[u8]], limit: u64) -> (Result<usize, ChunkError>, Vec<u8>, bool) {
        let mut decoder = ChunkedDecoder::new(limit);
        let mut out = Vec::new();
        let mut total = 0;
        for piece in pieces {
            match decoder.decode(piece, &mut out) {
                Ok(n) => {
                    total += n;
                    if decoder.is_done() {
                        break;
                    }
                    assert_eq!(n, piece.len(), "an unfinished decoder consumes everything");
                }
                Err(e) => return (Err(e), out, false),
            }
        }
        (Ok(total), out, decoder.is_done())
    }

    const VALID: &[(&[u8], &[u8])] = &[
        (b"0\r\n\r\n", b""),
        (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world"),
        (
            b"A\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n",
            b"0123456789abcdefghij",
        ),
        (b"000003\r\nabc\r\n000\r\n\r\n", b"abc"),
        (b"3;name=value\r\nabc\r\n0;last\r\n\r\n", b"abc"),
        (b"3 ; name=\"quoted value\"\r\nabc\r\n0\r\n\r\n", b"abc"),
        (b"3\t\r\nabc\r\n0\r\n\r\n", b"abc"),
        (b"4\r\n\r\n\r\n\r\n0\r\n\r\n", b"\r\n\r\n"),
        (
            b"3\r\n0\r\n\r\n0\r\nX-Trailer: 1\r\nX-Other: two\r\n\r\n",
            b"0\r\n",
        ),
        (
            b"3\r\n\x00\xff\n\r\n0\r\nChecksum: abc\r\n\r\n",
            b"\x00\xff\n",
        ),
    ];

    #[test]
    fn valid_bodies_decode() {
        for (input, expected) in VALID {
            let (result, out, done) = one_shot(input, 1 << 20);
            assert_eq!(result, Ok(input.len()), "{input:?}");
            assert_eq!(out, *expected, "{input:?}");
            assert!(done, "{input:?}");
        }
    }

    #[test]
    fn every_split_and_byte_by_byte_match_one_shot() {
        let pipelined_tail = b"GET / HTTP/1.1\r\n";
        for (body, _) in VALID {
            let mut input = body.to_vec();
            input.extend_from_slice(pipelined_tail);
            let whole = one_shot(&input, 1 << 20);
            assert_eq!(whole.0, Ok(body.len()), "the next request is not consumed");
            for cut in 0..=input.len() {
                let (a, b) = input.split_at(cut);
                assert_eq!(fed(&[a, b], 1 << 20), whole, "{body:?} cut at {cut}");
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(fed(&bytes, 1 << 20), whole, "{body:?} byte by byte");
        }
    }

    #[test]
    fn invalid_bodies_fail_whole_and_split() {
        use ChunkError::*;
        let cases: &[(&[u8], ChunkError)] = &[
            (b"\r\n", Malformed),
            (b"x\r\n", Malformed),
            (b" 5\r\nhello\r\n0\r\n\r\n", Malformed),
            (b"-5\r\n", Malformed),
            (b"+5\r\n", Malformed),
            (b"0x5\r\n", Malformed),
            (b"5 5\r\n", Malformed),
            (b"5\nhello\r\n0\r\n\r\n", Malformed),
            (b"5\rhello", Malformed),
            (b"5\r\nhelloX\r\n", Malformed),
            (b"5\r\nhello\n0\r\n\r\n", Malformed),
            (b"5\r\nhello\r0\r\n\r\n", Malformed),
            (b"5;ext\nhello", Malformed),
            (b"5;e\0xt\r\nhello", Malformed),
            (b"0\r\n\n", Malformed),
            (b"0\r\nX-T: 1\n\r\n", Malformed),
            (b"0\r\n\r\r", Malformed),
            (b"0\r\nX-T: 1\r\r\n", Malformed),
            (b"10000000000000000\r\n", Overflow),
            (b"ffffffffffffffff0\r\n", Overflow),
            (b"ffffffffffffffff\r\n", TooLarge),
            (b"3e9\r\n", TooLarge),
        ];
        for (input, expected) in cases {
            let (result, _, _) = one_shot(input, 1000);
            assert_eq!(result, Err(*expected), "{input:?}");
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(
                fed(&bytes, 1000).0,
                Err(*expected),
                "{input:?} byte by byte"
            );
        }
    }

    #[test]
    fn limit_is_checked_before_data_arrives() {
        let mut decoder = ChunkedDecoder::new(10);
        let mut out = Vec::new();
        assert_eq!(decoder.decode(b"6\r\nabcdef\r\n", &mut out), Ok(11));
        assert_eq!(decoder.decoded(), 6);
        // 6 + 5 > 10: refused on the size line, with no data yet read.
        assert_eq!(
            decoder.decode(b"5\r\n", &mut out),
            Err(ChunkError::TooLarge)
        );
        assert_eq!(out, b"abcdef");
        // A failed decoder stays failed.
        assert_eq!(
            decoder.decode(b"0\r\n\r\n", &mut out),
            Err(ChunkError::TooLarge)
        );
        assert_eq!(decoder.decode(b"", &mut out), Err(ChunkError::TooLarge));

        // Exactly the limit (0x3e8 = 1000) is fine.
        let mut at_limit = b"3e8\r\n".to_vec();
        at_limit.extend_from_slice(&[b'x'; 1000]);
        at_limit.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(one_shot(&at_limit, 1000).0, Ok(at_limit.len()));

        let (result, out, done) = one_shot(b"4\r\nabcd\r\n6\r\nefghij\r\n0\r\n\r\n", 10);
        assert_eq!(
            (result, out.as_slice(), done),
            (Ok(25), &b"abcdefghij"[..], true)
        );
    }

    #[test]
    fn done_decoder_consumes_nothing_more() {
        let mut decoder = ChunkedDecoder::new(100);
        let mut out = Vec::new();
        assert_eq!(decoder.decode(b"0\r\n\r\nPOST", &mut out), Ok(5));
        assert!(decoder.is_done());
        assert_eq!(decoder.decode(b"POST / HTTP/1.1", &mut out), Ok(0));
        assert!(out.is_empty());
    }

    #[test]
    fn size_line_and_trailers_are_bounded() {
        let mut long_zeros = vec![b'0'; MAX_SIZE_LINE as usize];
        long_zeros.extend_from_slice(b"1\r\n");
        assert_eq!(one_shot(&long_zeros, 100).0, Err(ChunkError::Malformed));

        let mut long_ext = b"1;".to_vec();
        long_ext.extend(std::iter::repeat_n(b'e', MAX_SIZE_LINE as usize));
        assert_eq!(one_shot(&long_ext, 100).0, Err(ChunkError::Malformed));

        let mut trailers = b"0\r\n".to_vec();
        while trailers.len() <= 2 * MAX_HEAD_BYTES {
            trailers.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(one_shot(&trailers, 100).0, Err(ChunkError::Malformed));
    }

    #[test]
    fn partial_body_is_not_done() {
        let input = b"5\r\nhello\r\n0\r\n\r\n";
        for cut in 0..input.len() {
            let (result, _, done) = one_shot(&input[..cut], 100);
            assert_eq!(result, Ok(cut));
            assert!(!done, "cut at {cut}");
        }
    }
}

//! Session tokens, byte-compatible with OpenReplay's ingest service.
//!
//! Enters: a session's (id, delay, expiry) to sign at start time, or the bytes after
//! `Authorization: Bearer ` on every batch request. Leaves: the token string handed to the
//! tracker, or the verified [`SessionToken`] (expiry is the caller's decision, not ours).
//! Runs on the worker threads, inside request handling; [`TokenSigner::verify`] sits on the
//! per-batch hot path, so it neither allocates nor copies.
//!
//! Wire form (PROTOCOL.md, "Session token"):
//!
//! ```text
//! base36(sessionID) "." base36(delay) "." base36(expiresAtMs) "." base58(HMAC-SHA256(secret, head))
//! ```
//!
//! where `head` is the first three parts joined by `.`, base36 is lower case with a leading `-`
//! for negatives, and base58 is Bitcoin's alphabet with each leading zero byte written as `1`.
//! Every ingest node shares the secret, so any node verifies any node's token.

use ring::hmac;

/// The signature is a whole HMAC-SHA256 tag; a shorter or longer one is not ours.
const SIGNATURE_LEN: usize = 32;

/// PROTOCOL.md: a token that expired less than 30 s ago is "just expired" — its batch is still
/// stored, because the tracker only learns about the expiry from the answer to that batch.
const JUST_EXPIRED_MS: i64 = 30_000;

const BASE36_DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
const BASE58_DIGITS: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// What a verified token says about its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionToken {
    pub session_id: u64,
    /// Server clock minus tracker clock at start, in ms; the tracker adds it to every timestamp.
    pub delay: i64,
    pub expires_at_ms: i64,
}

impl SessionToken {
    /// Expired when expiresAtMs <= now.
    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms <= now_ms
    }

    /// Expired, but less than 30 s ago (PROTOCOL.md "just expired").
    pub fn is_just_expired(&self, now_ms: i64) -> bool {
        self.is_expired(now_ms) && now_ms.saturating_sub(self.expires_at_ms) < JUST_EXPIRED_MS
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("bad token signature")]
    BadSignature,
}

/// Signs and verifies tokens with the cluster-wide TOKEN_SECRET.
pub struct TokenSigner {
    key: hmac::Key,
}

impl TokenSigner {
    pub fn new(secret: &[u8]) -> Self {
        TokenSigner {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    pub fn compose(&self, token: &SessionToken) -> String {
        let mut out = String::with_capacity(96);
        push_base36(&mut out, false, token.session_id);
        out.push('.');
        push_base36(&mut out, token.delay < 0, token.delay.unsigned_abs());
        out.push('.');
        push_base36(
            &mut out,
            token.expires_at_ms < 0,
            token.expires_at_ms.unsigned_abs(),
        );
        let tag = hmac::sign(&self.key, out.as_bytes());
        out.push('.');
        push_base58(&mut out, tag.as_ref());
        out
    }

    /// Parses and checks the signature; does NOT check expiry (callers decide: the late route
    /// accepts expired tokens, just-expired batches are still stored). No heap allocation.
    ///
    /// Only the canonical alphabet is accepted: lower-case base36, `-` only on delay and
    /// expiry. Go's `strconv` would also take upper case and `+`, but the signature covers the
    /// exact text and no signer ever writes those, so refusing them loses no real token.
    pub fn verify(&self, token: &[u8]) -> Result<SessionToken, TokenError> {
        let mut parts = token.split(|&b| b == b'.');
        let (Some(id), Some(delay), Some(expires), Some(signature), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TokenError::Malformed);
        };
        let parsed = SessionToken {
            session_id: parse_base36_u64(id).ok_or(TokenError::Malformed)?,
            delay: parse_base36_i64(delay).ok_or(TokenError::Malformed)?,
            expires_at_ms: parse_base36_i64(expires).ok_or(TokenError::Malformed)?,
        };
        let tag = decode_signature(signature).ok_or(TokenError::Malformed)?;
        // The head is everything before the last dot; the three parts above are non-empty,
        // so this length is within the token.
        let head_len = id.len() + delay.len() + expires.len() + 2;
        let head = token.get(..head_len).ok_or(TokenError::Malformed)?;
        hmac::verify(&self.key, head, &tag).map_err(|_| TokenError::BadSignature)?;
        Ok(parsed)
    }
}

fn push_base36(out: &mut String, negative: bool, mut magnitude: u64) {
    // u64::MAX is 13 base36 digits.
    let mut digits = [0u8; 13];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = BASE36_DIGITS[(magnitude % 36) as usize];
        magnitude /= 36;
        if magnitude == 0 {
            break;
        }
    }
    if negative {
        out.push('-');
    }
    out.extend(digits[start..].iter().map(|&d| char::from(d)));
}

fn base36_digit(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'z' => Some(u64::from(b - b'a') + 10),
        _ => None,
    }
}

fn parse_base36_u64(text: &[u8]) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0u64, |acc, &b| {
        acc.checked_mul(36)?.checked_add(base36_digit(b)?)
    })
}

fn parse_base36_i64(text: &[u8]) -> Option<i64> {
    match text.split_first() {
        Some((b'-', magnitude)) => {
            let magnitude = parse_base36_u64(magnitude)?;
            // i64::MIN's magnitude is one past i64::MAX, so negate in the unsigned domain.
            0i64.checked_sub_unsigned(magnitude)
        }
        _ => i64::try_from(parse_base36_u64(text)?).ok(),
    }
}

fn push_base58(out: &mut String, bytes: &[u8]) {
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    // Little-endian base58 digits of the big-endian number after the zero bytes; 32 bytes
    // need at most 44 digits, so this never reallocates for a signature.
    let mut digits: Vec<u8> = Vec::with_capacity(bytes.len() * 138 / 100 + 1);
    for &byte in &bytes[zeros..] {
        let mut carry = u32::from(byte);
        for digit in digits.iter_mut() {
            carry += u32::from(*digit) << 8;
            *digit = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    out.extend(std::iter::repeat_n('1', zeros));
    out.extend(
        digits
            .iter()
            .rev()
            .map(|&d| char::from(BASE58_DIGITS[usize::from(d)])),
    );
}

fn base58_digit(b: u8) -> Option<u32> {
    BASE58_DIGITS
        .iter()
        .position(|&d| d == b)
        .and_then(|p| u32::try_from(p).ok())
}

/// Decodes a base58 signature that must stand for exactly 32 bytes, as Go's
/// `base58.Decode` followed by a length-checked compare would: each leading `1` is one zero
/// byte, the rest is the big-endian number without leading zeros.
fn decode_signature(text: &[u8]) -> Option<[u8; SIGNATURE_LEN]> {
    let zeros = text.iter().take_while(|&&b| b == b'1').count();
    if zeros > SIGNATURE_LEN {
        return None;
    }
    let mut number = [0u8; SIGNATURE_LEN];
    for &b in &text[zeros..] {
        let mut carry = base58_digit(b)?;
        for byte in number.iter_mut().rev() {
            carry += u32::from(*byte) * 58;
            *byte = (carry & 0xff) as u8;
            carry >>= 8;
        }
        // A number that no longer fits in 32 bytes is not an HMAC-SHA256 tag; stopping here
        // also bounds the work a long hostile signature can cause.
        if carry != 0 {
            return None;
        }
    }
    let number_len = SIGNATURE_LEN - number.iter().take_while(|&&b| b == 0).count();
    (zeros + number_len == SIGNATURE_LEN).then_some(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Vector {
        secret: &'static str,
        token: SessionToken,
        text: &'static str,
    }

    /// PROTOCOL.md's vectors, computed by an independent implementation.
    const VECTORS: &[Vector] = &[
        Vector {
            secret: "test-secret",
            token: SessionToken {
                session_id: 7044371216235345,
                delay: 0,
                expires_at_ms: 4102444800000,
            },
            text: "1xd0rglvdjl.0.1gcmxpmo0.AvB75S1BQFBRPQcgtFqdWos8j518oQvg7s72cG9oCSYZ",
        },
        Vector {
            secret: "test-secret",
            token: SessionToken {
                session_id: u64::MAX,
                delay: -1500,
                expires_at_ms: 1700000000000,
            },
            text: "3w5e11264sgsf.-15o.loyw3v28.ACxAE7eShPyUwo8e3kcwVcJcZ8SWzQqaQsqvug1y4Uu2",
        },
        Vector {
            secret: "",
            token: SessionToken {
                session_id: 1,
                delay: 0,
                expires_at_ms: 1,
            },
            text: "1.0.1.8aLxiGfZ3JZgRCvbVtR6ZFPwkXzrj5pVKa1Q1jvXc6xh",
        },
    ];

    #[test]
    fn protocol_vectors_compose_exactly() {
        for v in VECTORS {
            let signer = TokenSigner::new(v.secret.as_bytes());
            assert_eq!(signer.compose(&v.token), v.text);
        }
    }

    #[test]
    fn protocol_vectors_verify() {
        for v in VECTORS {
            let signer = TokenSigner::new(v.secret.as_bytes());
            assert_eq!(signer.verify(v.text.as_bytes()), Ok(v.token), "{}", v.text);
        }
    }

    #[test]
    fn round_trips_over_edge_values() {
        let ids = [0, 1, 35, 36, 7044371216235345, u64::MAX - 1, u64::MAX];
        let signed = [
            i64::MIN,
            i64::MIN + 1,
            -36,
            -35,
            -1,
            0,
            1,
            36,
            i64::MAX - 1,
            i64::MAX,
        ];
        let signer = TokenSigner::new(b"round-trip");
        for &session_id in &ids {
            for &delay in &signed {
                for &expires_at_ms in &signed {
                    let token = SessionToken {
                        session_id,
                        delay,
                        expires_at_ms,
                    };
                    let text = signer.compose(&token);
                    assert_eq!(signer.verify(text.as_bytes()), Ok(token), "{text}");
                }
            }
        }
    }

    #[test]
    fn signatures_with_leading_zero_bytes_round_trip() {
        // About one tag in 256 starts with a zero byte; search for a few so the `1` prefix
        // path of both encoder and decoder is exercised against each other.
        let signer = TokenSigner::new(b"zeros");
        let mut found = 0;
        for session_id in 0..20_000u64 {
            let token = SessionToken {
                session_id,
                delay: 0,
                expires_at_ms: 1,
            };
            let text = signer.compose(&token);
            let signature = text.rsplit('.').next().unwrap_or_default();
            if signature.starts_with('1') {
                found += 1;
                assert_eq!(signer.verify(text.as_bytes()), Ok(token), "{text}");
            }
        }
        assert!(found > 10, "only {found} tags with a leading zero byte");
    }

    #[test]
    fn tampering_is_a_bad_signature() {
        let good = VECTORS[0].text;
        let signer = TokenSigner::new(b"test-secret");
        let cases = [
            // last signature digit changed
            good.replace("CSYZ", "CSYY"),
            // session id changed (still valid base36)
            good.replacen("1xd0rglvdjl", "1xd0rglvdjm", 1),
            // delay changed
            good.replacen(".0.", ".1.", 1),
            // expiry changed
            good.replacen("1gcmxpmo0", "1gcmxpmo1", 1),
            // another token's signature
            format!("1xd0rglvdjl.0.1gcmxpmo0.{}", &VECTORS[1].text[29..]),
        ];
        for case in &cases {
            assert_ne!(case, good);
            assert_eq!(
                signer.verify(case.as_bytes()),
                Err(TokenError::BadSignature),
                "{case}"
            );
        }
        assert_eq!(
            TokenSigner::new(b"other-secret").verify(good.as_bytes()),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn malformed_tokens() {
        let sig = "AvB75S1BQFBRPQcgtFqdWos8j518oQvg7s72cG9oCSYZ";
        let signer = TokenSigner::new(b"test-secret");
        let cases: Vec<(&str, String)> = vec![
            ("empty", String::new()),
            ("three parts", "1xd0rglvdjl.0.1gcmxpmo0".into()),
            ("five parts", format!("1xd0rglvdjl.0.1gcmxpmo0.{sig}.x")),
            ("trailing dot", format!("1xd0rglvdjl.0.1gcmxpmo0.{sig}.")),
            ("empty id", format!(".0.1gcmxpmo0.{sig}")),
            ("empty delay", format!("1xd0rglvdjl..1gcmxpmo0.{sig}")),
            ("empty expiry", format!("1xd0rglvdjl.0..{sig}")),
            ("empty signature", "1xd0rglvdjl.0.1gcmxpmo0.".into()),
            (
                "upper-case base36",
                format!("1XD0RGLVDJL.0.1gcmxpmo0.{sig}"),
            ),
            ("plus sign", format!("1xd0rglvdjl.+0.1gcmxpmo0.{sig}")),
            ("negative id", format!("-1.0.1gcmxpmo0.{sig}")),
            ("lone minus", format!("1xd0rglvdjl.-.1gcmxpmo0.{sig}")),
            ("double minus", format!("1xd0rglvdjl.--1.1gcmxpmo0.{sig}")),
            ("bad digit", format!("1xd0rglv_jl.0.1gcmxpmo0.{sig}")),
            ("space", format!("1xd0rglvdjl.0 .1gcmxpmo0.{sig}")),
            ("non-ascii", format!("1xd0rglvdjl.0.1gcmxpmo0é.{sig}")),
            // u64::MAX is 3w5e11264sgsf
            ("id overflow", format!("3w5e11264sgsg.0.1gcmxpmo0.{sig}")),
            (
                "id far overflow",
                format!("zzzzzzzzzzzzzz.0.1gcmxpmo0.{sig}"),
            ),
            // i64::MAX is 1y2p0ij32e8e7, i64::MIN is -1y2p0ij32e8e8
            ("delay overflow", format!("1.1y2p0ij32e8e8.1.{sig}")),
            ("delay underflow", format!("1.-1y2p0ij32e8e9.1.{sig}")),
            ("expiry overflow", format!("1.0.1y2p0ij32e8e8.{sig}")),
            // base58 has no 0, O, I, l
            (
                "base58 zero",
                format!("1xd0rglvdjl.0.1gcmxpmo0.{}", sig.replace('A', "0")),
            ),
            (
                "base58 ell",
                format!("1xd0rglvdjl.0.1gcmxpmo0.{}", sig.replace('A', "l")),
            ),
            // 41 digits stay below 2^248, so at most 31 bytes.
            (
                "signature too short",
                format!("1xd0rglvdjl.0.1gcmxpmo0.{}", &sig[3..]),
            ),
            (
                "signature too long",
                format!("1xd0rglvdjl.0.1gcmxpmo0.{sig}z"),
            ),
            (
                "extra leading one",
                format!("1xd0rglvdjl.0.1gcmxpmo0.1{sig}"),
            ),
            ("33 ones", format!("1.0.1.{}", "1".repeat(33))),
            ("huge signature", format!("1.0.1.{}", "z".repeat(10_000))),
        ];
        for (name, case) in &cases {
            assert_eq!(
                signer.verify(case.as_bytes()),
                Err(TokenError::Malformed),
                "{name}: {case}"
            );
        }
    }

    #[test]
    fn base36_edges_parse() {
        let cases: &[(&str, Option<i64>)] = &[
            ("0", Some(0)),
            ("-0", Some(0)),
            ("z", Some(35)),
            ("-10", Some(-36)),
            ("1y2p0ij32e8e7", Some(i64::MAX)),
            ("-1y2p0ij32e8e8", Some(i64::MIN)),
            ("1y2p0ij32e8e8", None),
            ("-1y2p0ij32e8e9", None),
            ("", None),
            ("-", None),
        ];
        for &(text, want) in cases {
            assert_eq!(parse_base36_i64(text.as_bytes()), want, "{text}");
        }
    }

    #[test]
    fn all_zero_signature_is_thirty_two_ones() {
        let mut text = String::new();
        push_base58(&mut text, &[0u8; 32]);
        assert_eq!(text, "1".repeat(32));
        assert_eq!(decode_signature(text.as_bytes()), Some([0u8; 32]));
    }

    #[test]
    fn expiry() {
        let token = SessionToken {
            session_id: 1,
            delay: 0,
            expires_at_ms: 1_000_000,
        };
        // (now, expired, just expired)
        let cases = [
            (i64::MIN, false, false),
            (999_999, false, false),
            (1_000_000, true, true),
            (1_029_999, true, true),
            (1_030_000, true, false),
            (i64::MAX, true, false),
        ];
        for (now, expired, just) in cases {
            assert_eq!(token.is_expired(now), expired, "{now}");
            assert_eq!(token.is_just_expired(now), just, "{now}");
        }
        let ancient = SessionToken {
            expires_at_ms: i64::MIN,
            ..token
        };
        assert!(ancient.is_expired(i64::MAX));
        assert!(!ancient.is_just_expired(i64::MAX));
    }
}

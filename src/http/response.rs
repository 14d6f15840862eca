//! The catalogue of answers: every byte this server writes to a client is produced here.
//!
//! Enters: a [`Status`], [`ResponseOptions`] decided by the route and the request head, and at
//! most a JSON body or an error message. Leaves: a complete HTTP/1.1 response appended to the
//! connection's output buffer (a reused `Vec<u8>`; nothing else is allocated). Runs on the `net`
//! worker that owns the connection.
//!
//! The answer to nearly every request is "200, empty, keep-alive": it is a precomputed byte
//! string, copied with one `extend_from_slice`. Error texts are JSON-escaped by serde_json, and
//! no header carries anything taken from a request, so no request can inject CR/LF into a header.

use std::io::Write as _;

use super::head::RequestHead;

/// Every status this server answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Continue = 100,
    Ok = 200,
    NoContent = 204,
    BadRequest = 400,
    Unauthorized = 401,
    Forbidden = 403,
    NotFound = 404,
    MethodNotAllowed = 405,
    RequestTimeout = 408,
    PayloadTooLarge = 413,
    UnsupportedMediaType = 415,
    ExpectationFailed = 417,
    HeaderFieldsTooLarge = 431,
    InternalServerError = 500,
    NotImplemented = 501,
    ServiceUnavailable = 503,
    VersionNotSupported = 505,
}

impl Status {
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The reason phrases of RFC 9110 §15 (the same ones Go's `net/http` sends).
    pub fn reason(self) -> &'static str {
        match self {
            Status::Continue => "Continue",
            Status::Ok => "OK",
            Status::NoContent => "No Content",
            Status::BadRequest => "Bad Request",
            Status::Unauthorized => "Unauthorized",
            Status::Forbidden => "Forbidden",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::PayloadTooLarge => "Payload Too Large",
            Status::UnsupportedMediaType => "Unsupported Media Type",
            Status::ExpectationFailed => "Expectation Failed",
            Status::HeaderFieldsTooLarge => "Request Header Fields Too Large",
            Status::InternalServerError => "Internal Server Error",
            Status::NotImplemented => "Not Implemented",
            Status::ServiceUnavailable => "Service Unavailable",
            Status::VersionNotSupported => "HTTP Version Not Supported",
        }
    }

    /// RFC 9110 §8.6: no Content-Length on 1xx and 204 answers.
    fn has_content_length(self) -> bool {
        !matches!(self, Status::Continue | Status::NoContent)
    }
}

/// How to frame one answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseOptions {
    /// Add the CORS headers (`USE_CORS`, on by default).
    pub cors: bool,
    /// Keep the connection open after this answer; `false` adds `Connection: close`.
    pub keep_alive: bool,
    /// CORS methods `GET,POST` instead of `POST` (the tags and conditions routes).
    pub allow_get: bool,
    /// The request's HTTP minor version: an HTTP/1.0 client only keeps the connection open when
    /// the answer says `Connection: keep-alive`. 1 when no head could be parsed.
    pub minor_version: u8,
}

impl ResponseOptions {
    /// Options for answering `head`: its keep-alive and version.
    pub fn for_request(head: &RequestHead, cors: bool, allow_get: bool) -> Self {
        ResponseOptions {
            cors,
            keep_alive: head.keep_alive,
            allow_get,
            minor_version: head.minor_version,
        }
    }

    /// Options for an answer after which the connection closes (a refused head, a timeout).
    pub fn closing(cors: bool) -> Self {
        ResponseOptions {
            cors,
            keep_alive: false,
            allow_get: false,
            minor_version: 1,
        }
    }
}

/// Sent before reading the body of a request with `Expect: 100-continue`.
pub const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The CORS headers, as a literal so that the precomputed answers below can be `concat!`ed.
macro_rules! cors_headers {
    ($methods:literal) => {
        concat!(
            "Access-Control-Allow-Origin: *\r\n",
            "Access-Control-Allow-Methods: ",
            $methods,
            "\r\n",
            "Access-Control-Allow-Headers: Content-Type,Authorization,Content-Encoding,DataType\r\n",
        )
    };
}

const CORS_POST: &[u8] = cors_headers!("POST").as_bytes();
const CORS_GET_POST: &[u8] = cors_headers!("GET,POST").as_bytes();

/// The answer to an accepted batch, by `(cors, allow_get)`, on a kept-alive HTTP/1.1 connection.
/// A test checks each against the general writer.
const OK_EMPTY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
const OK_EMPTY_CORS_POST: &[u8] = concat!(
    "HTTP/1.1 200 OK\r\n",
    cors_headers!("POST"),
    "Content-Length: 0\r\n\r\n"
)
.as_bytes();
const OK_EMPTY_CORS_GET_POST: &[u8] = concat!(
    "HTTP/1.1 200 OK\r\n",
    cors_headers!("GET,POST"),
    "Content-Length: 0\r\n\r\n"
)
.as_bytes();

const JSON_CONTENT_TYPE: &[u8] = b"Content-Type: application/json\r\n";
/// A 503 says when to come back: storage refusals clear within a budget check or two (a
/// quarter second each), so one second, the smallest value the header can say.
const JSON_RETRY_AFTER: &[u8] = b"Content-Type: application/json\r\nRetry-After: 1\r\n";
/// Browsers cache the preflight answer this long (Chromium caps it at 2 h): one preflight per
/// URL instead of one per batch where the URL repeats.
const PREFLIGHT_CACHE: &[u8] = b"Cache-Control: max-age=86400\r\n";

/// An answer without a body.
pub fn write_empty(out: &mut Vec<u8>, status: Status, opts: ResponseOptions) {
    if let Some(canned) = canned_empty(status, opts) {
        out.extend_from_slice(canned);
        return;
    }
    write_head(out, status, opts, &[], 0);
}

/// An answer with a JSON body that the caller has already serialised.
pub fn write_json(out: &mut Vec<u8>, status: Status, opts: ResponseOptions, json_body: &[u8]) {
    write_head(out, status, opts, JSON_CONTENT_TYPE, json_body.len());
    out.extend_from_slice(json_body);
}

/// `{"error":"<message>"}`, the message JSON-escaped.
pub fn write_error(out: &mut Vec<u8>, status: Status, opts: ResponseOptions, message: &str) {
    // The body's length is only known once it is escaped, and the head must come first: write
    // the body, then the head after it, then rotate the two into place. No temporary buffer.
    let start = out.len();
    out.extend_from_slice(b"{\"error\":");
    if serde_json::to_writer(&mut *out, message).is_err() {
        // Writing a `str` into a Vec cannot fail; should it ever, answer without the text.
        out.truncate(start);
        out.extend_from_slice(b"{\"error\":\"\"");
    }
    out.extend_from_slice(b"}");
    let body_len = out.len() - start;
    let extra = if status == Status::ServiceUnavailable {
        JSON_RETRY_AFTER
    } else {
        JSON_CONTENT_TYPE
    };
    write_head(out, status, opts, extra, body_len);
    if let Some(response) = out.get_mut(start..) {
        response.rotate_left(body_len);
    }
}

/// The answer to a CORS preflight (`OPTIONS` on any route): 200, empty.
pub fn write_preflight(out: &mut Vec<u8>, opts: ResponseOptions) {
    write_head(out, Status::Ok, opts, PREFLIGHT_CACHE, 0);
}

fn canned_empty(status: Status, opts: ResponseOptions) -> Option<&'static [u8]> {
    if status != Status::Ok || !opts.keep_alive || opts.minor_version == 0 {
        return None;
    }
    Some(match (opts.cors, opts.allow_get) {
        (false, _) => OK_EMPTY,
        (true, false) => OK_EMPTY_CORS_POST,
        (true, true) => OK_EMPTY_CORS_GET_POST,
    })
}

/// Status line and headers; `extra` is whole header lines (content type, cache control).
fn write_head(
    out: &mut Vec<u8>,
    status: Status,
    opts: ResponseOptions,
    extra: &[u8],
    content_length: usize,
) {
    // Always 1.1: a server sends its own highest version (RFC 9110 §2.5), also to 1.0 clients.
    out.extend_from_slice(b"HTTP/1.1 ");
    write_decimal(out, u64::from(status.code()));
    out.push(b' ');
    out.extend_from_slice(status.reason().as_bytes());
    out.extend_from_slice(b"\r\n");
    if opts.cors {
        out.extend_from_slice(if opts.allow_get {
            CORS_GET_POST
        } else {
            CORS_POST
        });
    }
    out.extend_from_slice(extra);
    if status.has_content_length() {
        out.extend_from_slice(b"Content-Length: ");
        write_decimal(out, content_length as u64);
        out.extend_from_slice(b"\r\n");
    }
    if !opts.keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if opts.minor_version == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn write_decimal(out: &mut Vec<u8>, value: u64) {
    // `write!` into a Vec formats in place, without an intermediate String, and cannot fail.
    let _ = write!(out, "{value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: ResponseOptions = ResponseOptions {
        cors: false,
        keep_alive: true,
        allow_get: false,
        minor_version: 1,
    };
    const CORS: ResponseOptions = ResponseOptions { cors: true, ..KEEP };
    const CORS_GET: ResponseOptions = ResponseOptions {
        allow_get: true,
        ..CORS
    };
    const CLOSE: ResponseOptions = ResponseOptions {
        keep_alive: false,
        ..KEEP
    };
    const CORS_CLOSE: ResponseOptions = ResponseOptions {
        keep_alive: false,
        ..CORS
    };
    const HTTP10_KEEP: ResponseOptions = ResponseOptions {
        minor_version: 0,
        ..KEEP
    };

    const CORS_POST_TEXT: &str = "Access-Control-Allow-Origin: *\r\n\
        Access-Control-Allow-Methods: POST\r\n\
        Access-Control-Allow-Headers: Content-Type,Authorization,Content-Encoding,DataType\r\n";
    const CORS_GET_POST_TEXT: &str = "Access-Control-Allow-Origin: *\r\n\
        Access-Control-Allow-Methods: GET,POST\r\n\
        Access-Control-Allow-Headers: Content-Type,Authorization,Content-Encoding,DataType\r\n";

    fn written(write: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        write(&mut out);
        String::from_utf8(out).expect("answers are UTF-8")
    }

    #[test]
    fn empty_answers_exact_bytes() {
        let cases: &[(Status, ResponseOptions, String)] = &[
            (Status::Ok, KEEP, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".into()),
            (
                Status::Ok,
                CORS,
                format!("HTTP/1.1 200 OK\r\n{CORS_POST_TEXT}Content-Length: 0\r\n\r\n"),
            ),
            (
                Status::Ok,
                CORS_GET,
                format!("HTTP/1.1 200 OK\r\n{CORS_GET_POST_TEXT}Content-Length: 0\r\n\r\n"),
            ),
            (
                Status::Ok,
                CLOSE,
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
            ),
            (
                Status::Ok,
                CORS_CLOSE,
                format!(
                    "HTTP/1.1 200 OK\r\n{CORS_POST_TEXT}Content-Length: 0\r\nConnection: close\r\n\r\n"
                ),
            ),
            (
                Status::Ok,
                HTTP10_KEEP,
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n".into(),
            ),
            (
                Status::Ok,
                ResponseOptions {
                    keep_alive: false,
                    ..HTTP10_KEEP
                },
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
            ),
            (Status::NoContent, KEEP, "HTTP/1.1 204 No Content\r\n\r\n".into()),
            (
                Status::Unauthorized,
                CORS,
                format!("HTTP/1.1 401 Unauthorized\r\n{CORS_POST_TEXT}Content-Length: 0\r\n\r\n"),
            ),
            (
                Status::RequestTimeout,
                CLOSE,
                "HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .into(),
            ),
        ];
        for (status, opts, expected) in cases {
            assert_eq!(
                written(|out| write_empty(out, *status, *opts)),
                *expected,
                "{status:?} {opts:?}"
            );
        }
    }

    #[test]
    fn canned_answers_match_the_general_writer() {
        for opts in [KEEP, CORS, CORS_GET] {
            let canned = canned_empty(Status::Ok, opts).expect("hot answer is canned");
            let general = written(|out| write_head(out, Status::Ok, opts, &[], 0));
            assert_eq!(String::from_utf8_lossy(canned), general, "{opts:?}");
        }
        for opts in [CLOSE, HTTP10_KEEP] {
            assert_eq!(canned_empty(Status::Ok, opts), None);
        }
        assert_eq!(canned_empty(Status::NoContent, KEEP), None);
    }

    #[test]
    fn preflight_exact_bytes() {
        assert_eq!(
            written(|out| write_preflight(out, CORS)),
            format!(
                "HTTP/1.1 200 OK\r\n{CORS_POST_TEXT}Cache-Control: max-age=86400\r\n\
                 Content-Length: 0\r\n\r\n"
            )
        );
        assert_eq!(
            written(|out| write_preflight(out, CORS_GET)),
            format!(
                "HTTP/1.1 200 OK\r\n{CORS_GET_POST_TEXT}Cache-Control: max-age=86400\r\n\
                 Content-Length: 0\r\n\r\n"
            )
        );
        assert_eq!(
            written(|out| write_preflight(out, KEEP)),
            "HTTP/1.1 200 OK\r\nCache-Control: max-age=86400\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn json_exact_bytes() {
        let body = br#"{"tags":[]}"#;
        assert_eq!(
            written(|out| write_json(out, Status::Ok, CORS_GET, body)),
            format!(
                "HTTP/1.1 200 OK\r\n{CORS_GET_POST_TEXT}Content-Type: application/json\r\n\
                 Content-Length: 11\r\n\r\n{{\"tags\":[]}}"
            )
        );
    }

    #[test]
    fn error_exact_bytes_and_escaping() {
        let cases: &[(&str, &str)] = &[
            ("no token", r#"{"error":"no token"}"#),
            (r#"say "hi""#, r#"{"error":"say \"hi\""}"#),
            ("back\\slash", r#"{"error":"back\\slash"}"#),
            (
                "a\r\nSet-Cookie: x=1\r\n\r\n",
                r#"{"error":"a\r\nSet-Cookie: x=1\r\n\r\n"}"#,
            ),
            ("\0\x01\x1f\x7f", r#"{"error":"\u0000\u0001\u001f"#),
            ("tab\there", r#"{"error":"tab\there"}"#),
            ("</script>", r#"{"error":"</script>"}"#),
            ("ünïcødé ✓", r#"{"error":"ünïcødé ✓"}"#),
            ("", r#"{"error":""}"#),
        ];
        for (message, body_start) in cases {
            let response = written(|out| write_error(out, Status::BadRequest, CLOSE, message));
            let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
            assert!(body.starts_with(body_start), "{message:?}: {body}");
            assert_eq!(
                head,
                format!(
                    "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close",
                    body.len()
                )
            );
            let parsed: serde_json::Value = serde_json::from_str(body).expect("valid JSON");
            assert_eq!(parsed["error"], *message);
            assert!(!body.bytes().any(|b| b == b'\r' || b == b'\n'));
        }
    }

    #[test]
    fn answers_append_after_pending_output() {
        // A pipelined connection may already hold an unsent answer: it must survive intact.
        let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec();
        let pending = out.len();
        write_error(&mut out, Status::NotFound, CORS, "not found");
        assert_eq!(&out[..pending], OK_EMPTY);
        assert_eq!(
            String::from_utf8_lossy(&out[pending..]),
            format!(
                "HTTP/1.1 404 Not Found\r\n{CORS_POST_TEXT}Content-Type: application/json\r\n\
                 Content-Length: 21\r\n\r\n{{\"error\":\"not found\"}}"
            )
        );
    }

    #[test]
    fn status_codes_and_reasons() {
        let cases = [
            (Status::Continue, 100, "Continue"),
            (Status::Ok, 200, "OK"),
            (Status::NoContent, 204, "No Content"),
            (Status::BadRequest, 400, "Bad Request"),
            (Status::Unauthorized, 401, "Unauthorized"),
            (Status::Forbidden, 403, "Forbidden"),
            (Status::NotFound, 404, "Not Found"),
            (Status::MethodNotAllowed, 405, "Method Not Allowed"),
            (Status::RequestTimeout, 408, "Request Timeout"),
            (Status::PayloadTooLarge, 413, "Payload Too Large"),
            (Status::UnsupportedMediaType, 415, "Unsupported Media Type"),
            (Status::ExpectationFailed, 417, "Expectation Failed"),
            (
                Status::HeaderFieldsTooLarge,
                431,
                "Request Header Fields Too Large",
            ),
            (Status::InternalServerError, 500, "Internal Server Error"),
            (Status::NotImplemented, 501, "Not Implemented"),
            (Status::ServiceUnavailable, 503, "Service Unavailable"),
            (
                Status::VersionNotSupported,
                505,
                "HTTP Version Not Supported",
            ),
        ];
        for (status, code, reason) in cases {
            assert_eq!((status.code(), status.reason()), (code, reason));
        }
        assert_eq!(CONTINUE_100, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn options_from_a_request_head() {
        let request = b"POST /v1/web/i HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        let head = crate::http::head::parse_head(request)
            .ok()
            .flatten()
            .expect("valid head");
        assert_eq!(
            ResponseOptions::for_request(&head, true, false),
            ResponseOptions {
                cors: true,
                keep_alive: true,
                allow_get: false,
                minor_version: 0
            }
        );
        assert!(!ResponseOptions::closing(true).keep_alive);
    }
}

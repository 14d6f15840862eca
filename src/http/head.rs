//! Request heads: the request line and header fields, parsed by `httparse` into a `Copy` struct
//! of byte offsets.
//!
//! Enters: the front of a connection's read buffer (the head, possibly followed by body bytes or
//! a pipelined request). Leaves: a [`RequestHead`] whose [`Span`]s index that same buffer, or a
//! [`HeadError`] that names the answer to send. Runs on the `net` worker that owns the connection,
//! once per request, so it allocates nothing: the header array lives on the stack.
//!
//! Body framing follows RFC 9112 §6.3 strictly, because a framing disagreement with a proxy in
//! front of us is how requests get smuggled: Transfer-Encoding together with Content-Length,
//! or Content-Length values that disagree, are refused and the connection closed.

use super::response::Status;

/// Browsers send well under 2 KiB of head; 16 KiB leaves room for long cookies on a shared
/// domain while bounding what a slow client can make a worker hold before it is answered.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Chromium's batch POST carries about 15 header fields; 64 is far above any real tracker.
pub const MAX_HEADERS: usize = 64;

/// A byte range into the buffer the head was parsed from. `u32` keeps [`RequestHead`] small;
/// heads are bounded by [`MAX_HEAD_BYTES`], so every offset fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    /// The bytes this span covers in `buf`, or an empty slice when `buf` is not the buffer
    /// the span came from (too short): a caller's mistake must not become a panic.
    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start) as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Patch,
    Other,
}

impl Method {
    /// Methods are case-sensitive (RFC 9110 §9.1): `post` is some other method, not POST.
    fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }
}

/// How the body that follows the head is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// Neither Content-Length nor Transfer-Encoding: a request without a body.
    None,
    Length(u64),
    Chunked,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    /// The path, without the query; for an absolute-form target, only its path part.
    pub path: Span,
    /// After `?`, without it.
    pub query: Option<Span>,
    /// 0 or 1 (`HTTP/1.0`, `HTTP/1.1`).
    pub minor_version: u8,
    /// Bytes of the head including the final empty line: the body starts here.
    pub head_len: usize,
    pub framing: BodyFraming,
    /// `Content-Encoding: gzip` (or `x-gzip`); `identity` is no encoding.
    pub gzip: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request (RFC 9110 §10.1.1: ignored on 1.0).
    pub expect_continue: bool,
    /// 1.1: unless `Connection: close`; 1.0: only with `Connection: keep-alive`.
    pub keep_alive: bool,
    pub authorization: Option<Span>,
    /// The tracker's batch type (`player`, `assets`, `devtools`, `analytics`, `visual`).
    pub data_type: Option<Span>,
    pub origin: Option<Span>,
    pub user_agent: Option<Span>,
    pub content_type: Option<Span>,
    pub forwarded_for: Option<Span>,
    pub real_ip: Option<Span>,
}

/// Why a head was refused. Each maps to one answer ([`HeadError::status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Head over [`MAX_HEAD_BYTES`], or more than [`MAX_HEADERS`] fields: 431.
    TooLarge,
    /// Not HTTP: httparse refused it, a bad Content-Length, a bad or missing Host...: 400.
    Malformed,
    /// Transfer-Encoding with Content-Length, or Content-Lengths that differ: 400.
    AmbiguousLength,
    /// `chunked` last, after a transfer coding the node does not implement (`gzip, chunked`):
    /// 501 (RFC 9112 §6.1).
    UnsupportedTransferEncoding,
    /// A Transfer-Encoding whose final coding is not a single `chunked` (`chunked, identity`,
    /// `identity`, `chunked, chunked`): the body's length cannot be known, 400 and close
    /// (RFC 9112 §6.3).
    UnframedBody,
    /// Content-Encoding other than gzip/identity: 415.
    UnsupportedEncoding,
    /// Expect other than 100-continue: 417.
    BadExpect,
    /// An `HTTP/x.y` version other than 1.0 and 1.1: 505.
    UnsupportedVersion,
}

impl HeadError {
    pub fn status(self) -> Status {
        match self {
            HeadError::TooLarge => Status::HeaderFieldsTooLarge,
            HeadError::Malformed | HeadError::AmbiguousLength | HeadError::UnframedBody => {
                Status::BadRequest
            }
            HeadError::UnsupportedTransferEncoding => Status::NotImplemented,
            HeadError::UnsupportedEncoding => Status::UnsupportedMediaType,
            HeadError::BadExpect => Status::ExpectationFailed,
            HeadError::UnsupportedVersion => Status::VersionNotSupported,
        }
    }

    /// The `error` text of the JSON answer. Fixed strings: nothing from the request is echoed.
    pub fn message(self) -> &'static str {
        match self {
            HeadError::TooLarge => "request head too large",
            HeadError::Malformed => "malformed request",
            HeadError::AmbiguousLength => "ambiguous message length",
            HeadError::UnsupportedTransferEncoding => "unsupported transfer encoding",
            HeadError::UnframedBody => "transfer encoding does not end in chunked",
            HeadError::UnsupportedEncoding => "unsupported content encoding",
            HeadError::BadExpect => "unsupported expectation",
            HeadError::UnsupportedVersion => "HTTP version not supported",
        }
    }

    /// Whether the connection must be closed after the answer. Always true: on an error no
    /// [`RequestHead`] is returned, so the caller knows neither where the head ends nor how long
    /// the body is, and cannot find the start of a next request. Refused heads come from broken
    /// or hostile clients (the tracker never sends any of these), so closing costs nothing real.
    pub fn must_close(self) -> bool {
        true
    }
}

/// Parses the head at the front of `buf`.
///
/// `Ok(None)` means incomplete: read more bytes and call again with the whole buffer. Errors
/// `TooLarge` once `buf` holds [`MAX_HEAD_BYTES`] or more without a complete head. Bytes after
/// the head (body, pipelined requests) are never looked at.
pub fn parse_head(buf: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    // Parse at most MAX_HEAD_BYTES: a client cannot make us rescan an ever-growing buffer.
    let window = buf.get(..MAX_HEAD_BYTES).unwrap_or(buf);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if window.len() >= MAX_HEAD_BYTES => {
            return Err(HeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => return Err(version_error(window)),
        Err(_) => return Err(HeadError::Malformed),
    };
    let (Some(method), Some(target), Some(minor_version)) =
        (request.method, request.path, request.version)
    else {
        return Err(HeadError::Malformed);
    };
    let method = Method::from_token(method);
    let (path, query) = split_target(method, target.as_bytes()).ok_or(HeadError::Malformed)?;

    let mut fields = FieldScan::default();
    for header in request.headers.iter() {
        fields.take(header.name, header.value)?;
    }

    let framing = match (fields.transfer_encoding, fields.content_length) {
        (Some(_), Some(_)) => return Err(HeadError::AmbiguousLength),
        // RFC 9112 §6.1: an HTTP/1.0 message cannot be chunked; its framing is faulty.
        (Some(_), None) if minor_version == 0 => return Err(HeadError::Malformed),
        (Some(codings), None) => match codings.framing() {
            Ok(()) => BodyFraming::Chunked,
            Err(e) => return Err(e),
        },
        (None, Some(length)) => BodyFraming::Length(length),
        (None, None) => BodyFraming::None,
    };
    // RFC 9112 §3.2: exactly one Host on 1.1, at most one on 1.0.
    match (fields.hosts, minor_version) {
        (0, 0) | (1, _) => {}
        _ => return Err(HeadError::Malformed),
    }

    Ok(Some(RequestHead {
        method,
        path: span_in(window, path)?,
        query: query.map(|q| span_in(window, q)).transpose()?,
        minor_version,
        head_len,
        framing,
        gzip: fields.gzip,
        expect_continue: fields.expect_continue && minor_version >= 1,
        keep_alive: !fields.connection_close
            && (minor_version >= 1 || fields.connection_keep_alive),
        authorization: spans_in(window, fields.authorization)?,
        data_type: spans_in(window, fields.data_type)?,
        origin: spans_in(window, fields.origin)?,
        user_agent: spans_in(window, fields.user_agent)?,
        content_type: spans_in(window, fields.content_type)?,
        forwarded_for: spans_in(window, fields.forwarded_for)?,
        real_ip: spans_in(window, fields.real_ip)?,
    }))
}

/// httparse reports any unreadable version token the same way; only a well-formed `HTTP/d.d`
/// that is not 1.0/1.1 deserves a 505, anything else is not HTTP at all.
fn version_error(buf: &[u8]) -> HeadError {
    let line_end = buf
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(buf.len());
    let line = buf.get(..line_end).unwrap_or_default();
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            HeadError::UnsupportedVersion
        }
        _ => HeadError::Malformed,
    }
}

/// Splits a request target into path and query. Origin-form (`/p?q`) is what trackers send;
/// absolute-form (`http://host/p?q`) must be accepted from proxies (RFC 9112 §3.2.2); `*` only
/// with OPTIONS. Authority-form (CONNECT) is not served.
fn split_target(method: Method, target: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    if target.first() == Some(&b'/') {
        return Some(split_query(target));
    }
    if target == b"*" && method == Method::Options {
        return Some((target, None));
    }
    let scheme_len = if starts_with_ignore_case(target, b"http://") {
        "http://".len()
    } else if starts_with_ignore_case(target, b"https://") {
        "https://".len()
    } else {
        return None;
    };
    let after_scheme = target.get(scheme_len..)?;
    // An empty path means "/" (RFC 9110 §4.2.3). Borrow the last '/' of "://" for it, so that
    // the path is still a span of the request buffer.
    let root = target.get(scheme_len - 1..scheme_len)?;
    match after_scheme.iter().position(|&b| b == b'/' || b == b'?') {
        Some(at) if after_scheme.get(at) == Some(&b'/') => {
            Some(split_query(after_scheme.get(at..)?))
        }
        Some(at) => Some((root, Some(after_scheme.get(at + 1..)?))),
        None => Some((root, None)),
    }
}

fn split_query(path_and_query: &[u8]) -> (&[u8], Option<&[u8]>) {
    match path_and_query.iter().position(|&b| b == b'?') {
        Some(mark) => (
            path_and_query.get(..mark).unwrap_or_default(),
            path_and_query.get(mark + 1..),
        ),
        None => (path_and_query, None),
    }
}

fn starts_with_ignore_case(haystack: &[u8], prefix: &[u8]) -> bool {
    haystack
        .get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
}

/// What the header fields say, gathered in one pass before any decision is made, so that the
/// order of fields cannot change the outcome (CL before TE or after, it is the same refusal).
#[derive(Default)]
struct FieldScan<'b> {
    content_length: Option<u64>,
    transfer_encoding: Option<TransferCodings>,
    gzip: bool,
    expect_continue: bool,
    connection_close: bool,
    connection_keep_alive: bool,
    hosts: u32,
    authorization: Option<&'b [u8]>,
    data_type: Option<&'b [u8]>,
    origin: Option<&'b [u8]>,
    user_agent: Option<&'b [u8]>,
    content_type: Option<&'b [u8]>,
    forwarded_for: Option<&'b [u8]>,
    real_ip: Option<&'b [u8]>,
}

/// The transfer codings of a request, across all its Transfer-Encoding fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct TransferCodings {
    chunked: u32,
    others: u32,
    last_is_chunked: bool,
}

impl TransferCodings {
    /// Only a lone `chunked`, last, frames a body the node reads.
    fn framing(self) -> Result<(), HeadError> {
        match self {
            TransferCodings {
                chunked: 1,
                others: 0,
                last_is_chunked: true,
            } => Ok(()),
            TransferCodings {
                chunked: 1,
                last_is_chunked: true,
                ..
            } => Err(HeadError::UnsupportedTransferEncoding),
            _ => Err(HeadError::UnframedBody),
        }
    }
}

impl<'b> FieldScan<'b> {
    fn take(&mut self, name: &str, value: &'b [u8]) -> Result<(), HeadError> {
        let is = |known: &str| name.eq_ignore_ascii_case(known);
        if is("content-length") {
            self.take_content_length(value)?;
        } else if is("transfer-encoding") {
            self.take_transfer_encoding(value);
        } else if is("content-encoding") {
            self.take_content_encoding(value)?;
        } else if is("expect") {
            if !trim_ows(value).eq_ignore_ascii_case(b"100-continue") {
                return Err(HeadError::BadExpect);
            }
            self.expect_continue = true;
        } else if is("connection") {
            for option in list_elements(value) {
                if option.eq_ignore_ascii_case(b"close") {
                    self.connection_close = true;
                } else if option.eq_ignore_ascii_case(b"keep-alive") {
                    self.connection_keep_alive = true;
                }
            }
        } else if is("host") {
            self.hosts = self.hosts.saturating_add(1);
        } else {
            // Single-valued fields: the first one counts, as with Go's `Header.Get`.
            let slot = if is("authorization") {
                &mut self.authorization
            } else if is("datatype") {
                &mut self.data_type
            } else if is("origin") {
                &mut self.origin
            } else if is("user-agent") {
                &mut self.user_agent
            } else if is("content-type") {
                &mut self.content_type
            } else if is("x-forwarded-for") {
                &mut self.forwarded_for
            } else if is("x-real-ip") {
                &mut self.real_ip
            } else {
                return Ok(());
            };
            slot.get_or_insert(value);
        }
        Ok(())
    }

    /// RFC 9110 §8.6: a list of identical values (`5, 5`, or the field repeated) is one length;
    /// any disagreement is ambiguous. Each value is digits only and must fit u64.
    fn take_content_length(&mut self, value: &[u8]) -> Result<(), HeadError> {
        for element in value.split(|&b| b == b',') {
            let length = parse_decimal(trim_ows(element)).ok_or(HeadError::Malformed)?;
            match self.content_length {
                Some(seen) if seen != length => return Err(HeadError::AmbiguousLength),
                _ => self.content_length = Some(length),
            }
        }
        Ok(())
    }

    /// Counts the codings (see [`TransferCodings::framing`] for which framings are served).
    fn take_transfer_encoding(&mut self, value: &[u8]) {
        let codings = self
            .transfer_encoding
            .get_or_insert_with(TransferCodings::default);
        for coding in value.split(|&b| b == b',').map(trim_ows) {
            let chunked = coding.eq_ignore_ascii_case(b"chunked");
            if chunked {
                codings.chunked += 1;
            } else {
                codings.others += 1;
            }
            codings.last_is_chunked = chunked;
        }
    }

    /// The tracker gzips large batches; nothing else is decoded. gzip twice is refused too:
    /// the body is decoded exactly once.
    fn take_content_encoding(&mut self, value: &[u8]) -> Result<(), HeadError> {
        for coding in list_elements(value) {
            let gzip =
                coding.eq_ignore_ascii_case(b"gzip") || coding.eq_ignore_ascii_case(b"x-gzip");
            if gzip && !self.gzip {
                self.gzip = true;
            } else if !coding.eq_ignore_ascii_case(b"identity") {
                return Err(HeadError::UnsupportedEncoding);
            }
        }
        Ok(())
    }
}

/// The non-empty elements of a comma-separated field value (RFC 9110 §5.6.1).
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|element| !element.is_empty())
}

fn trim_ows(bytes: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    bytes.get(start..end).unwrap_or_default()
}

/// Digits only: no sign, no inner spaces, no hex; `None` when empty or past u64.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        let digit = match b {
            b'0'..=b'9' => u64::from(b - b'0'),
            _ => return None,
        };
        acc.checked_mul(10)?.checked_add(digit)
    })
}

/// The offsets of `part`, a subslice that httparse borrowed from `buf`.
fn span_in(buf: &[u8], part: &[u8]) -> Result<Span, HeadError> {
    let start = (part.as_ptr() as usize)
        .checked_sub(buf.as_ptr() as usize)
        .filter(|start| start + part.len() <= buf.len())
        .ok_or(HeadError::Malformed)?;
    let start = u32::try_from(start).map_err(|_| HeadError::TooLarge)?;
    let len = u32::try_from(part.len()).map_err(|_| HeadError::TooLarge)?;
    Ok(Span {
        start,
        end: start.checked_add(len).ok_or(HeadError::TooLarge)?,
    })
}

fn spans_in(buf: &[u8], part: Option<&[u8]>) -> Result<Option<Span>, HeadError> {
    part.map(|p| span_in(buf, p)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_head(text.as_bytes())
    }

    fn complete(text: &str) -> RequestHead {
        match parse(text) {
            Ok(Some(head)) => head,
            other => panic!("expected a complete head for {text:?}, got {other:?}"),
        }
    }

    fn text(buf: &str, span: Option<Span>) -> Option<&str> {
        span.map(|s| std::str::from_utf8(s.get(buf.as_bytes())).expect("ascii"))
    }

    /// The head Chromium sent with the tracker's first cross-origin batch
    /// (fixtures/tracker-19.0.1/requests-esm-pv2-crossorigin.jsonl, n=12).
    const TRACKER_BATCH: &str = "POST /ingest/v1/web/i?batch=0_1_1129_kyes&split=855 HTTP/1.1\r\n\
        Host: 127.0.0.1:8701\r\n\
        Connection: keep-alive\r\n\
        Content-Length: 1129\r\n\
        User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/156.0.0.0 Safari/537.36\r\n\
        DataType: visual\r\n\
        Authorization: Bearer stub-token-1\r\n\
        Accept: */*\r\n\
        Origin: http://127.0.0.1:8700\r\n\
        Sec-Fetch-Site: same-site\r\n\
        Sec-Fetch-Mode: cors\r\n\
        Sec-Fetch-Dest: empty\r\n\
        Accept-Encoding: gzip, deflate, br, zstd\r\n\
        Accept-Language: en-US,en;q=0.9\r\n\r\n";

    const TRACKER_PREFLIGHT: &str = "OPTIONS /ingest/v1/web/i?batch=0_2_277_kyes HTTP/1.1\r\n\
        Host: 127.0.0.1:8701\r\n\
        Connection: keep-alive\r\n\
        Accept: */*\r\n\
        Access-Control-Request-Method: POST\r\n\
        Access-Control-Request-Headers: authorization,datatype\r\n\
        Origin: http://127.0.0.1:8700\r\n\
        Sec-Fetch-Mode: cors\r\n\r\n";

    #[test]
    fn tracker_batch_head() {
        let head = complete(TRACKER_BATCH);
        assert_eq!(head.method, Method::Post);
        assert_eq!(
            text(TRACKER_BATCH, Some(head.path)),
            Some("/ingest/v1/web/i")
        );
        assert_eq!(
            text(TRACKER_BATCH, head.query),
            Some("batch=0_1_1129_kyes&split=855")
        );
        assert_eq!(head.minor_version, 1);
        assert_eq!(head.head_len, TRACKER_BATCH.len());
        assert_eq!(head.framing, BodyFraming::Length(1129));
        assert!(!head.gzip);
        assert!(!head.expect_continue);
        assert!(head.keep_alive);
        assert_eq!(
            text(TRACKER_BATCH, head.authorization),
            Some("Bearer stub-token-1")
        );
        assert_eq!(text(TRACKER_BATCH, head.data_type), Some("visual"));
        assert_eq!(
            text(TRACKER_BATCH, head.origin),
            Some("http://127.0.0.1:8700")
        );
        assert!(text(TRACKER_BATCH, head.user_agent)
            .is_some_and(|ua| ua.starts_with("Mozilla/5.0 (X11") && ua.ends_with("Safari/537.36")));
        assert_eq!(head.content_type, None);
        assert_eq!(head.forwarded_for, None);
        assert_eq!(head.real_ip, None);
    }

    #[test]
    fn tracker_preflight_head() {
        let head = complete(TRACKER_PREFLIGHT);
        assert_eq!(head.method, Method::Options);
        assert_eq!(
            text(TRACKER_PREFLIGHT, Some(head.path)),
            Some("/ingest/v1/web/i")
        );
        assert_eq!(head.framing, BodyFraming::None);
        assert_eq!(head.authorization, None);
    }

    #[test]
    fn every_prefix_is_incomplete_and_trailing_bytes_are_ignored() {
        for cut in 0..TRACKER_BATCH.len() {
            assert_eq!(parse(&TRACKER_BATCH[..cut]), Ok(None), "cut at {cut}");
        }
        let pipelined = format!("{TRACKER_BATCH}{}GET / HTTP/1.1\r\n", "x".repeat(1129));
        let head = complete(&pipelined);
        assert_eq!(head, complete(TRACKER_BATCH));
        assert_eq!(head.head_len, TRACKER_BATCH.len());
    }

    #[test]
    fn head_size_limits() {
        let start = "POST /v1/web/i HTTP/1.1\r\nHost: a\r\nX-Pad: ";
        let padded = |total: usize| format!("{start}{}", "a".repeat(total - start.len()));
        assert_eq!(parse(&padded(MAX_HEAD_BYTES - 1)), Ok(None));
        assert_eq!(parse(&padded(MAX_HEAD_BYTES)), Err(HeadError::TooLarge));
        assert_eq!(
            parse(&padded(MAX_HEAD_BYTES + 5000)),
            Err(HeadError::TooLarge)
        );

        // A head that ends exactly at the limit is accepted.
        let tail = "\r\n\r\n";
        let exact = format!("{}{tail}", padded(MAX_HEAD_BYTES - tail.len()));
        assert_eq!(complete(&exact).head_len, MAX_HEAD_BYTES);

        let fields = |n: usize| {
            let mut head = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
            for i in 1..n {
                head.push_str(&format!("X-{i}: v\r\n"));
            }
            head + "\r\n"
        };
        assert!(parse(&fields(MAX_HEADERS)).is_ok_and(|h| h.is_some()));
        assert_eq!(parse(&fields(MAX_HEADERS + 1)), Err(HeadError::TooLarge));
    }

    #[test]
    fn body_framing_table() {
        use BodyFraming::*;
        use HeadError::*;
        let cases: &[(&str, Result<BodyFraming, HeadError>)] = &[
            ("", Ok(None)),
            ("Content-Length: 0\r\n", Ok(Length(0))),
            ("Content-Length: 1129\r\n", Ok(Length(1129))),
            ("content-length:7\r\n", Ok(Length(7))),
            ("Content-Length: 5 \r\n", Ok(Length(5))),
            ("Content-Length: 005\r\n", Ok(Length(5))),
            (
                "Content-Length: 18446744073709551615\r\n",
                Ok(Length(u64::MAX)),
            ),
            ("Content-Length: 18446744073709551616\r\n", Err(Malformed)),
            (
                "Content-Length: 99999999999999999999999\r\n",
                Err(Malformed),
            ),
            ("Content-Length: 5, 5\r\n", Ok(Length(5))),
            ("Content-Length: 5,5,5\r\n", Ok(Length(5))),
            ("Content-Length: 5\r\nContent-Length: 5\r\n", Ok(Length(5))),
            ("Content-Length: 5, 6\r\n", Err(AmbiguousLength)),
            (
                "Content-Length: 5\r\nContent-Length: 6\r\n",
                Err(AmbiguousLength),
            ),
            ("Content-Length: \r\n", Err(Malformed)),
            ("Content-Length: +5\r\n", Err(Malformed)),
            ("Content-Length: -5\r\n", Err(Malformed)),
            ("Content-Length: 5 5\r\n", Err(Malformed)),
            ("Content-Length: 0x5\r\n", Err(Malformed)),
            ("Content-Length: 5,\r\n", Err(Malformed)),
            ("Content-Length: 1e3\r\n", Err(Malformed)),
            ("Content-Length: ５\r\n", Err(Malformed)),
            ("Transfer-Encoding: chunked\r\n", Ok(Chunked)),
            ("Transfer-Encoding: Chunked\r\n", Ok(Chunked)),
            ("transfer-encoding:  chunked \r\n", Ok(Chunked)),
            (
                "Transfer-Encoding: gzip, chunked\r\n",
                Err(UnsupportedTransferEncoding),
            ),
            ("Transfer-Encoding: chunked, gzip\r\n", Err(UnframedBody)),
            (
                "Transfer-Encoding: chunked, identity\r\n",
                Err(UnframedBody),
            ),
            ("Transfer-Encoding: chunked, chunked\r\n", Err(UnframedBody)),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                Err(UnframedBody),
            ),
            (
                "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
                Err(UnsupportedTransferEncoding),
            ),
            ("Transfer-Encoding: identity\r\n", Err(UnframedBody)),
            ("Transfer-Encoding: chunkedx\r\n", Err(UnframedBody)),
            ("Transfer-Encoding: \r\n", Err(UnframedBody)),
            (
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                Err(AmbiguousLength),
            ),
            (
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                Err(AmbiguousLength),
            ),
            (
                "Transfer-Encoding: gzip\r\nContent-Length: 5\r\n",
                Err(AmbiguousLength),
            ),
        ];
        for (fields, expected) in cases {
            let request = format!("POST /v1/web/i HTTP/1.1\r\nHost: a\r\n{fields}\r\n");
            let got = parse(&request).map(|h| h.map(|h| h.framing));
            assert_eq!(got, expected.map(Some), "fields {fields:?}");
        }
    }

    #[test]
    fn http10_cannot_be_chunked() {
        assert_eq!(
            parse("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HeadError::Malformed)
        );
    }

    #[test]
    fn content_encoding_table() {
        let cases: &[(&str, Result<bool, HeadError>)] = &[
            ("", Ok(false)),
            ("Content-Encoding: gzip\r\n", Ok(true)),
            ("Content-Encoding: GZIP\r\n", Ok(true)),
            ("Content-Encoding: x-gzip\r\n", Ok(true)),
            ("Content-Encoding: identity\r\n", Ok(false)),
            ("Content-Encoding: identity, gzip\r\n", Ok(true)),
            (
                "Content-Encoding: br\r\n",
                Err(HeadError::UnsupportedEncoding),
            ),
            (
                "Content-Encoding: deflate\r\n",
                Err(HeadError::UnsupportedEncoding),
            ),
            (
                "Content-Encoding: gzip, gzip\r\n",
                Err(HeadError::UnsupportedEncoding),
            ),
            (
                "Content-Encoding: gzip\r\nContent-Encoding: gzip\r\n",
                Err(HeadError::UnsupportedEncoding),
            ),
            (
                "Content-Encoding: gzip, br\r\n",
                Err(HeadError::UnsupportedEncoding),
            ),
        ];
        for (fields, expected) in cases {
            let request =
                format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n{fields}\r\n");
            let got = parse(&request).map(|h| h.map(|h| h.gzip));
            assert_eq!(got, expected.map(Some), "fields {fields:?}");
        }
    }

    #[test]
    fn expect_table() {
        let cases: &[(&str, &str, Result<bool, HeadError>)] = &[
            ("1.1", "", Ok(false)),
            ("1.1", "Expect: 100-continue\r\n", Ok(true)),
            ("1.1", "Expect: 100-Continue\r\n", Ok(true)),
            ("1.1", "Expect: 200-ok\r\n", Err(HeadError::BadExpect)),
            ("1.1", "Expect: \r\n", Err(HeadError::BadExpect)),
            ("1.0", "Expect: 100-continue\r\n", Ok(false)),
            ("1.0", "Expect: something\r\n", Err(HeadError::BadExpect)),
        ];
        for (version, fields, expected) in cases {
            let request = format!("POST / HTTP/{version}\r\nHost: a\r\n{fields}\r\n");
            let got = parse(&request).map(|h| h.map(|h| h.expect_continue));
            assert_eq!(got, expected.map(Some), "{version} {fields:?}");
        }
    }

    #[test]
    fn keep_alive_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("1.1", "", true),
            ("1.1", "Connection: keep-alive\r\n", true),
            ("1.1", "Connection: close\r\n", false),
            ("1.1", "Connection: Close\r\n", false),
            ("1.1", "Connection: upgrade, close\r\n", false),
            (
                "1.1",
                "Connection: keep-alive\r\nConnection: close\r\n",
                false,
            ),
            ("1.1", "Connection: upgrade\r\n", true),
            ("1.0", "", false),
            ("1.0", "Connection: keep-alive\r\n", true),
            ("1.0", "Connection: Keep-Alive\r\n", true),
            ("1.0", "Connection: keep-alive, close\r\n", false),
        ];
        for (version, fields, expected) in cases {
            let request = format!("GET / HTTP/{version}\r\nHost: a\r\n{fields}\r\n");
            assert_eq!(
                complete(&request).keep_alive,
                *expected,
                "{version} {fields:?}"
            );
        }
    }

    #[test]
    fn request_line_table() {
        /// Method, path, query, minor version.
        type Line<'a> = (Method, &'a str, Option<&'a str>, u8);
        let cases: &[(&str, Result<Line, HeadError>)] = &[
            ("GET / HTTP/1.1", Ok((Method::Get, "/", None, 1))),
            ("HEAD / HTTP/1.1", Ok((Method::Head, "/", None, 1))),
            ("PUT /a HTTP/1.1", Ok((Method::Put, "/a", None, 1))),
            ("DELETE /a HTTP/1.1", Ok((Method::Delete, "/a", None, 1))),
            ("PATCH /a HTTP/1.1", Ok((Method::Patch, "/a", None, 1))),
            ("post /a HTTP/1.1", Ok((Method::Other, "/a", None, 1))),
            ("BREW /pot HTTP/1.0", Ok((Method::Other, "/pot", None, 0))),
            (
                "POST /v1/web/i? HTTP/1.1",
                Ok((Method::Post, "/v1/web/i", Some(""), 1)),
            ),
            (
                "POST /a?b?c HTTP/1.1",
                Ok((Method::Post, "/a", Some("b?c"), 1)),
            ),
            (
                "POST http://ingest.example/v1/web/i?batch=1 HTTP/1.1",
                Ok((Method::Post, "/v1/web/i", Some("batch=1"), 1)),
            ),
            (
                "POST HTTPS://ingest.example:443/ingest/v1/web/start HTTP/1.1",
                Ok((Method::Post, "/ingest/v1/web/start", None, 1)),
            ),
            (
                "GET http://ingest.example HTTP/1.1",
                Ok((Method::Get, "/", None, 1)),
            ),
            (
                "GET http://ingest.example?x=1 HTTP/1.1",
                Ok((Method::Get, "/", Some("x=1"), 1)),
            ),
            ("OPTIONS * HTTP/1.1", Ok((Method::Options, "*", None, 1))),
            ("GET * HTTP/1.1", Err(HeadError::Malformed)),
            (
                "CONNECT ingest.example:443 HTTP/1.1",
                Err(HeadError::Malformed),
            ),
            ("GET ftp://x/ HTTP/1.1", Err(HeadError::Malformed)),
            ("GET / HTTP/2.0", Err(HeadError::UnsupportedVersion)),
            ("GET / HTTP/1.2", Err(HeadError::UnsupportedVersion)),
            ("GET / HTTP/0.9", Err(HeadError::UnsupportedVersion)),
            ("PRI * HTTP/2.0", Err(HeadError::UnsupportedVersion)),
            ("GET / FOO/1.1", Err(HeadError::Malformed)),
            ("GET / HTTP/1.1 extra", Err(HeadError::Malformed)),
            ("GET  / HTTP/1.1", Err(HeadError::Malformed)),
            ("GET /\0 HTTP/1.1", Err(HeadError::Malformed)),
            ("\x16\x03\x01\x02\x00", Err(HeadError::Malformed)),
        ];
        for (line, expected) in cases {
            let request = format!("{line}\r\nHost: a\r\n\r\n");
            let got = parse(&request).map(|h| {
                h.map(|h| {
                    (
                        h.method,
                        text(&request, Some(h.path)).unwrap_or_default(),
                        text(&request, h.query),
                        h.minor_version,
                    )
                })
            });
            assert_eq!(got, expected.map(Some), "line {line:?}");
        }
    }

    #[test]
    fn malformed_fields_table() {
        let cases: &[&[u8]] = &[
            b"X-A: a\0b\r\n",
            b"X-A: a\rb\r\n",
            b"X-A: a\x7fb\r\n",
            b"X-A: a\x01b\r\n",
            b"Bad Name: v\r\n",
            b"Bad\0Name: v\r\n",
            b": v\r\n",
            b"NoColon\r\n",
            b" Folded: v\r\n",
            b"Host: b\r\n",
        ];
        for fields in cases {
            let mut request = b"POST / HTTP/1.1\r\nHost: a\r\n".to_vec();
            request.extend_from_slice(fields);
            request.extend_from_slice(b"\r\n");
            assert_eq!(
                parse_head(&request),
                Err(HeadError::Malformed),
                "{}",
                String::from_utf8_lossy(fields)
            );
        }
    }

    #[test]
    fn host_is_required_on_1_1_only() {
        assert_eq!(parse("GET / HTTP/1.1\r\n\r\n"), Err(HeadError::Malformed));
        assert!(complete("GET / HTTP/1.0\r\n\r\n").framing == BodyFraming::None);
    }

    #[test]
    fn single_valued_fields_first_wins_and_names_ignore_case() {
        let request = "POST /v1/web/i HTTP/1.1\r\nHOST: a\r\n\
            authorization: Bearer first\r\nAuthorization: Bearer second\r\n\
            datatype: player\r\nCONTENT-TYPE: multipart/form-data; boundary=x\r\n\
            x-forwarded-for: 203.0.113.7, 10.0.0.1\r\nX-Real-IP: 198.51.100.2\r\n\
            X-Forwarded-For: 192.0.2.1\r\nuser-agent: OkHttp/4.12\r\n\r\n";
        let head = complete(request);
        assert_eq!(text(request, head.authorization), Some("Bearer first"));
        assert_eq!(text(request, head.data_type), Some("player"));
        assert_eq!(
            text(request, head.content_type),
            Some("multipart/form-data; boundary=x")
        );
        assert_eq!(
            text(request, head.forwarded_for),
            Some("203.0.113.7, 10.0.0.1")
        );
        assert_eq!(text(request, head.real_ip), Some("198.51.100.2"));
        assert_eq!(text(request, head.user_agent), Some("OkHttp/4.12"));
        assert_eq!(head.origin, None);
    }

    #[test]
    fn empty_header_value_is_an_empty_span() {
        let request = "POST / HTTP/1.1\r\nHost: a\r\nAuthorization:\r\n\r\n";
        let head = complete(request);
        assert!(head.authorization.is_some_and(|s| s.is_empty()));
    }

    #[test]
    fn span_get_never_panics() {
        let span = Span { start: 3, end: 10 };
        assert_eq!(span.get(b"abc"), b"");
        assert_eq!(span.get(b"0123456789"), b"3456789");
        let inverted = Span { start: 5, end: 2 };
        assert!(inverted.is_empty());
        assert_eq!(inverted.get(b"0123456789"), b"");
        assert_eq!(inverted.len(), 0);
    }

    #[test]
    fn error_answers() {
        let cases = [
            (HeadError::TooLarge, 431),
            (HeadError::Malformed, 400),
            (HeadError::AmbiguousLength, 400),
            (HeadError::UnsupportedTransferEncoding, 501),
            (HeadError::UnframedBody, 400),
            (HeadError::UnsupportedEncoding, 415),
            (HeadError::BadExpect, 417),
            (HeadError::UnsupportedVersion, 505),
        ];
        for (error, code) in cases {
            assert_eq!(error.status().code(), code, "{error:?}");
            assert!(!error.message().is_empty());
            assert!(error.must_close());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap stand-in for the fuzz target: every prefix and every single-byte corruption
        // of a real head must give an answer, never a panic.
        let base = TRACKER_BATCH.as_bytes();
        let mut corrupted = base.to_vec();
        for at in 0..base.len() {
            for byte in [0u8, b'\n', b'\r', b' ', b':', 0xff] {
                corrupted[at] = byte;
                let _ = parse_head(&corrupted);
            }
            corrupted[at] = base[at];
        }
    }
}

//! Hostile HTTP against the real binary: request smuggling shapes, malformed heads, oversized
//! parts, garbage after a good request, header injection. Each attack must get the right 4xx,
//! close the connection where the framing is in doubt, store nothing from the bad request, keep
//! earlier good requests intact, and leave the node serving.

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::*;

/// A node with one session; the bytes `cat` returns for it before any attack.
struct Target {
    node: Node,
    token: String,
    sid: u64,
    stored: Vec<u8>,
}

impl Target {
    fn new() -> Target {
        let node = Node::start();
        let s = node.start_web("web-key");
        let token = Node::token(&s);
        let sid = Node::session_id(&s);
        let stored = node.cat(sid, Some("raw"));
        Target {
            node,
            token,
            sid,
            stored,
        }
    }

    fn auth(&self) -> String {
        format!("Authorization: Bearer {}", self.token)
    }

    /// Sends raw bytes on a fresh connection; the answer and the connection.
    fn attack(&self, raw: &[u8]) -> (Response, TcpStream) {
        let mut s = self.node.connect();
        s.write_all(raw).unwrap();
        let r = read_response(&mut s).expect("an answer to the attack");
        (r, s)
    }

    /// Nothing new stored, and the node still serves.
    fn assert_unharmed(&self) {
        assert_eq!(
            self.node.cat(self.sid, Some("raw")),
            self.stored,
            "nothing stored"
        );
        let r = self.node.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 200, "still serving");
    }
}

fn expect(t: &Target, raw: &[u8], status: u16, closed: bool, what: &str) {
    let (r, mut conn) = t.attack(raw);
    assert_eq!(r.status, status, "{what}: {}", r.text());
    assert!(r.json()["error"].is_string(), "{what}: JSON error body");
    if closed {
        assert_eq!(
            r.header("connection"),
            Some("close"),
            "{what}: says it closes"
        );
        assert!(is_closed(&mut conn), "{what}: connection closed");
    }
    t.assert_unharmed();
}

#[test]
fn smuggling_shapes_are_refused_and_the_connection_closed() {
    let t = Target::new();
    let auth = t.auth();
    let cases: Vec<(String, u16, &str)> = vec![
        (
            format!("POST /v1/web/i HTTP/1.1\r\nHost: x\r\n{auth}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nABCD\r\n0\r\n\r\n"),
            400,
            "Content-Length with Transfer-Encoding",
        ),
        (
            format!("POST /v1/web/i HTTP/1.1\r\nHost: x\r\n{auth}\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nABCDE"),
            400,
            "two different Content-Lengths",
        ),
        (
            format!("POST /v1/web/i HTTP/1.1\r\nHost: x\r\n{auth}\r\nContent-Length: 4, 5\r\n\r\nABCDE"),
            400,
            "a Content-Length list that disagrees",
        ),
        (
            format!("POST /v1/web/i HTTP/1.1\r\nHost: x\r\n{auth}\r\nContent-Length: +4\r\n\r\nABCD"),
            400,
            "a signed Content-Length",
        ),
        (
            format!("POST /v1/web/i HTTP/1.1\r\nHost: x\r\n{auth}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
            501,
            "an unknown coding before a final chunked (RFC 9112 §6.1: 501)",
        ),
        (
            format!("POST /v1/web/i HTTP/1.1\r\nHost: x\r\n{auth}\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
            400,
            "chunked not last (RFC 9112 §6.3: 400 and close)",
        ),
        (
            format!("POST /v1/web/i HTTP/1.1\r\nHost: x\r\n{auth}\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
            400,
            "an unknown coding, no chunked: the length cannot be known",
        ),
        (
            format!("POST /v1/web/i HTTP/1.1\r\nHost: x\r\n{auth}\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\nA\r\n0\r\n\r\n"),
            400,
            "a chunk size that overflows",
        ),
        (
            format!("POST /v1/web/i HTTP/1.1\r\nHost: x\r\n{auth}\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nABCDXX\r\n0\r\n\r\n"),
            400,
            "chunk data longer than its size",
        ),
        (
            format!("POST /v1/web/i HTTP/1.1\r\nHost: x\r\n{auth}\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n"),
            400,
            "a chunk size that is not hex",
        ),
    ];
    for (raw, status, what) in cases {
        expect(&t, raw.as_bytes(), status, true, what);
    }
}

#[test]
fn chunk_extensions_and_trailers_are_accepted() {
    let t = Target::new();
    let batch = [81u8, 2, 0, 0, 0, 0];
    let mut raw = format!(
        "POST /v1/web/i HTTP/1.1\r\nHost: x\r\n{}\r\nTransfer-Encoding: chunked\r\n\r\n3;name=value;other=\"quoted\"\r\n",
        t.auth()
    )
    .into_bytes();
    raw.extend_from_slice(&batch[..3]);
    raw.extend_from_slice(b"\r\n3\r\n");
    raw.extend_from_slice(&batch[3..]);
    raw.extend_from_slice(b"\r\n0\r\nTrailer-One: 1\r\nTrailer-Two: 2\r\n\r\n");
    let (r, _) = t.attack(&raw);
    assert_eq!(r.status, 200, "{}", r.text());
    let mut expected = t.stored.clone();
    expected.extend_from_slice(&batch);
    assert_eq!(t.node.cat(t.sid, Some("raw")), expected);
}

#[test]
fn malformed_heads() {
    let t = Target::new();
    let auth = t.auth();
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (format!("POST /v1/web/i HTTP/1.1\r\nHost: x\r\n{auth}\r\nX-Folded: a\r\n b\r\nContent-Length: 6\r\n\r\nQ\x02\0\0\0\0").into_bytes(), 400, "obs-fold"),
        (format!("POST /v1/web/i HTTP/1.1\r\nHost: x\r\n{auth}\r\nX-Nul: a\0b\r\nContent-Length: 6\r\n\r\nQ\x02\0\0\0\0").into_bytes(), 400, "NUL in a header value"),
        (format!("POST /v1/web/i HTTP/1.1\r\nHost: x\r\n{auth}\r\nX-Ctl: a\x01b\r\nContent-Length: 6\r\n\r\nQ\x02\0\0\0\0").into_bytes(), 400, "a control byte in a header value"),
        (format!("POST /v1/web/i HTTP/1.1\r\nHost: x\r\n{auth}\r\nBad Name: v\r\nContent-Length: 6\r\n\r\nQ\x02\0\0\0\0").into_bytes(), 400, "a space in a header name"),
        (b"POST /v1/web/i HTTP/1.1\r\nContent-Length: 1\r\n\r\nx".to_vec(), 400, "HTTP/1.1 without Host"),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n".to_vec(), 505, "HTTP/2.0 in an HTTP/1 request line"),
        (b"GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400, "DEL in the target"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(), 400, "a TLS ClientHello"),
    ];
    for (raw, status, what) in cases {
        expect(&t, &raw, status, true, what);
    }
}

#[test]
fn bare_lf_heads_are_parsed_as_one_message() {
    // RFC 9112 §2.2 lets a recipient accept a bare LF as a line end; what matters is that the
    // framing is read one way only. The batch is stored exactly once, and the next request on
    // the connection is answered on its own.
    let t = Target::new();
    let batch = [81u8, 2, 0, 0, 0, 7];
    let mut raw = format!(
        "POST /v1/web/i HTTP/1.1\nHost: x\n{}\nContent-Length: 6\n\n",
        t.auth()
    )
    .into_bytes();
    raw.extend_from_slice(&batch);
    raw.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut s = t.node.connect();
    s.write_all(&raw).unwrap();
    let first = read_response(&mut s).unwrap();
    if first.status == 200 {
        assert_eq!(read_response(&mut s).unwrap().status, 200);
        let mut expected = t.stored.clone();
        expected.extend_from_slice(&batch);
        assert_eq!(t.node.cat(t.sid, Some("raw")), expected);
    } else {
        assert_eq!(first.status, 400);
        assert!(is_closed(&mut s));
        t.assert_unharmed();
    }
}

#[test]
fn oversized_heads() {
    let t = Target::new();
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..10_000 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    expect(&t, many.as_bytes(), 431, true, "10,000 headers");
    let url = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(1 << 20));
    expect(&t, url.as_bytes(), 431, true, "a 1 MiB URL");
}

#[test]
fn odd_methods_targets_and_expectations() {
    let t = Target::new();
    let (r, _) = t.attack(b"BREW /v1/web/i HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 405, "an unknown method");
    let (r, _) = t.attack(b"post /v1/web/i HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(r.status, 405, "methods are case-sensitive");
    expect(
        &t,
        format!("POST /v1/web/i HTTP/1.1\r\nHost: x\r\n{}\r\nExpect: 200-ok\r\nContent-Length: 6\r\n\r\nQ\x02\0\0\0\0", t.auth()).as_bytes(),
        417,
        true,
        "an Expect other than 100-continue",
    );

    // Absolute-form targets are served by their path.
    let batch = [81u8, 2, 0, 0, 0, 9];
    let mut raw = format!(
        "POST http://ingest.example/ingest/v1/web/i?batch=0_1_6_kno HTTP/1.1\r\nHost: ingest.example\r\n{}\r\nContent-Length: 6\r\n\r\n",
        t.auth()
    )
    .into_bytes();
    raw.extend_from_slice(&batch);
    let (r, _) = t.attack(&raw);
    assert_eq!(r.status, 200, "{}", r.text());
    let mut expected = t.stored.clone();
    expected.extend_from_slice(&batch);
    assert_eq!(t.node.cat(t.sid, Some("raw")), expected);
}

#[test]
fn garbage_after_a_good_request_keeps_the_good_one() {
    let t = Target::new();
    let batch = [81u8, 2, 0, 0, 0, 5];
    let mut raw = format!(
        "POST /v1/web/i HTTP/1.1\r\nHost: x\r\n{}\r\nContent-Length: 6\r\n\r\n",
        t.auth()
    )
    .into_bytes();
    raw.extend_from_slice(&batch);
    raw.extend_from_slice(b"\x00\x01\x02 garbage garbage\r\n\r\n");
    let mut s = t.node.connect();
    s.write_all(&raw).unwrap();
    assert_eq!(read_response(&mut s).unwrap().status, 200);
    let bad = read_response(&mut s).unwrap();
    assert_eq!(bad.status, 400);
    assert!(is_closed(&mut s));
    let mut expected = t.stored.clone();
    expected.extend_from_slice(&batch);
    assert_eq!(t.node.cat(t.sid, Some("raw")), expected);
}

#[test]
fn nothing_from_a_request_is_echoed() {
    let t = Target::new();
    let raw = b"GET /<script>\"quote\"%0d%0aSet-Cookie:x HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.example\r\nUser-Agent: \"><img>\r\n\r\n";
    let mut s = t.node.connect();
    s.write_all(raw).unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.body, br#"{"error":"not found"}"#);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r.header("set-cookie").is_none());
    let all: String = r
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\n"))
        .collect();
    for needle in ["evil", "script", "quote", "img"] {
        assert!(!all.contains(needle), "{needle} echoed in {all}");
    }
    // A token that carries markup is refused without echoing it.
    let (r, _) = t.attack(b"POST /v1/web/i HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer <b>\"x\"</b>\r\nContent-Length: 1\r\n\r\nx");
    assert_eq!(r.status, 401);
    assert!(!r.text().contains('<'));
}

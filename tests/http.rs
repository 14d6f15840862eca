//! Black-box tests of the HTTP side: the real binary on port 0, raw TCP.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

#[test]
fn health_answers_on_both_prefixes() {
    let node = Node::start();
    for path in ["/", "/ingest", "/ingest/"] {
        let r = node.request(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        assert_eq!(r.status, 200, "{path}");
    }
    let r = node.request(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
}

#[test]
fn unknown_route_is_404_and_wrong_method_405() {
    let node = Node::start();
    let r = node.request(b"GET /v1/web/nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 404);
    assert_eq!(r.error(), "not found");
    let r = node.request(b"GET /ingest/v1/web/i HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 405);
    assert!(r.json()["error"].is_string());
    let r = node.request(b"DELETE /v1/web/start HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 405);
}

#[test]
fn keep_alive_and_ten_pipelined_requests_answered_in_order() {
    let node = Node::start();
    let start = node.start_web("web-key");
    let token = Node::token(&start);
    let sid = Node::session_id(&start);
    let mut all = Vec::new();
    let mut expected = Vec::new();
    let mut stored = Vec::new();
    for i in 0..10u8 {
        match i % 3 {
            0 => {
                let body = batch_body(i);
                all.extend(batch_request(&token, "player", "", &body));
                expected.push(200);
                stored.extend(body);
            }
            1 => {
                all.extend_from_slice(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n");
                expected.push(404);
            }
            _ => {
                all.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
                expected.push(200);
            }
        }
    }
    let mut s = node.connect();
    s.write_all(&all).unwrap();
    let statuses: Vec<u16> = (0..10)
        .map(|_| read_response(&mut s).unwrap().status)
        .collect();
    assert_eq!(statuses, expected);
    // The connection is still usable afterwards.
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s).unwrap().status, 200);
    let raw = node.cat(sid, Some("raw"));
    assert!(raw.ends_with(&stored), "batches stored in order");
}

/// After a large body a connection reads its next head in a short read (so that the body after
/// it goes straight to the log): heads longer than that read, pipelined behind large bodies,
/// still parse, and every body is stored whole and in order.
#[test]
fn large_bodies_then_long_heads_pipelined() {
    let node = Node::start();
    let start = node.start_web("web-key");
    let token = Node::token(&start);
    let sid = Node::session_id(&start);
    let large = |tag: u8| {
        let n = 64 * 1024 - 10;
        // BatchMetadata, then one message of type 0 and a 3-byte size.
        let mut b = vec![81, 2, 0, 0, 0, 0, 0];
        b.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
        b.extend((0..n).map(|i| (i % 251) as u8 ^ tag));
        b
    };
    let pad = "p".repeat(6000);
    let long_head = |body: &[u8]| {
        post_request(
            "/ingest/v1/web/i",
            &[
                ("Authorization", &format!("Bearer {token}")),
                ("DataType", "player"),
                ("X-Pad", &pad),
            ],
            body,
        )
    };
    let bodies = [large(1), batch_body(2), large(3), batch_body(4), large(5)];
    let mut all = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        if i % 2 == 1 {
            all.extend(long_head(body));
        } else {
            all.extend(batch_request(&token, "player", "", body));
        }
    }
    let mut s = node.connect();
    s.write_all(&all).unwrap();
    for i in 0..bodies.len() {
        let r = read_response(&mut s).unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    let raw = node.cat(sid, Some("raw"));
    assert!(
        raw.ends_with(&bodies.concat()),
        "bodies stored whole, in order"
    );
}

/// A small valid web batch: BatchMetadata v2 then one sized message carrying `tag`.
fn batch_body(tag: u8) -> Vec<u8> {
    let mut b = vec![81, 2, 0, 0, 0, 0];
    b.extend_from_slice(&[0, 3, 0, 0, 0xAA, 0xBB, tag]);
    b
}

#[test]
fn chunked_body_is_stored_decoded() {
    let node = Node::start();
    let start = node.start_web("web-key");
    let token = Node::token(&start);
    let sid = Node::session_id(&start);
    let body = fixture("pv2-batch2-devtools.bin");
    let mut raw = format!(
        "POST /ingest/v1/web/i HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nDataType: devtools\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(100) {
        raw.extend(format!("{:x};ext=1\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\nX-Trailer: y\r\n\r\n");
    let mut s = node.connect();
    // Byte by byte for the head, so the parser sees every cut.
    for b in &raw[..40] {
        s.write_all(&[*b]).unwrap();
    }
    s.write_all(&raw[40..]).unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let stored = node.cat(sid, Some("raw"));
    assert!(stored.ends_with(&body));
}

#[test]
fn expect_100_continue() {
    let node = Node::start();
    let start = node.start_web("web-key");
    let token = Node::token(&start);
    let sid = Node::session_id(&start);
    let body = fixture("pv2-batch3-analytics.bin");
    let mut s = node.connect();
    write!(
        s,
        "POST /v1/web/i HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nDataType: analytics\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    )
    .unwrap();
    let interim = read_response(&mut s).unwrap();
    assert_eq!(interim.status, 100);
    s.write_all(&body).unwrap();
    assert_eq!(read_response(&mut s).unwrap().status, 200);
    assert!(node.cat(sid, None).ends_with(&body));

    // Refused before the body: no 100, a final answer, and the connection closes.
    let mut s = node.connect();
    write!(
        s,
        "POST /v1/web/i HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"
    )
    .unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(is_closed(&mut s));
}

#[test]
fn http_1_0_closes_unless_keep_alive() {
    let node = Node::start();
    let mut s = node.connect();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.status, 200);
    assert!(is_closed(&mut s));

    let mut s = node.connect();
    s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).unwrap().status, 200);
    s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).unwrap().status, 200);

    let mut s = node.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.header("connection"), Some("close"));
    assert!(is_closed(&mut s));
}

#[test]
fn oversized_head_is_431() {
    let node = Node::start();
    let big = "a".repeat(17 * 1024);
    let r = node.request(format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes());
    assert_eq!(r.status, 431);
    assert!(r.json()["error"].is_string());
}

#[test]
fn malformed_head_is_400_and_closes() {
    let node = Node::start();
    let mut s = node.connect();
    s.write_all(b"GARBAGE\0\r\n\r\n").unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.status, 400);
    assert!(is_closed(&mut s));
}

#[test]
fn oversized_bodies_are_413() {
    let node = Node::start();
    let start = node.start_web("web-key");
    let token = Node::token(&start);
    let sid = Node::session_id(&start);

    // Decided from Content-Length, before any body byte is sent.
    let mut s = node.connect();
    write!(
        s,
        "POST /v1/web/i HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 5000000\r\n\r\n"
    )
    .unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.status, 413);
    assert!(is_closed(&mut s));

    // Chunked: as soon as the running total passes the limit.
    let mut s = node.connect();
    write!(
        s,
        "POST /v1/web/i HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b'x'; 100_000];
    let mut answer = None;
    for _ in 0..20 {
        write!(s, "{:x}\r\n", chunk.len()).unwrap();
        if s.write_all(&chunk).is_err() || s.write_all(b"\r\n").is_err() {
            break;
        }
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut peek = [0u8; 1];
        if s.peek(&mut peek).is_ok() {
            break;
        }
    }
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    if answer.is_none() {
        answer = read_response(&mut s);
    }
    assert_eq!(answer.unwrap().status, 413);

    // A start body over JSON_SIZE_LIMIT.
    let r = node.post(
        "/v1/web/start",
        &[("User-Agent", UA)],
        format!(
            "{{\"projectKey\":\"web-key\",\"pad\":\"{}\"}}",
            "p".repeat(2000)
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 413);

    // A gzip bomb: small on the wire, over the decoded limit; nothing stored.
    let bomb = gzip(&vec![0u8; 3_000_000]);
    assert!(bomb.len() < 100_000);
    let r = node.post(
        "/v1/web/i",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Encoding", "gzip"),
        ],
        &bomb,
    );
    assert_eq!(r.status, 413);
    let records = node.ls();
    let of_session: Vec<_> = records
        .iter()
        .filter(|r| r["session"].as_str() == Some(sid.to_string().as_str()))
        .collect();
    assert_eq!(of_session.len(), 1, "only the SessionStart: {of_session:?}");
}

#[test]
fn timeouts_close_slow_and_idle_connections() {
    let node = Node::builder()
        .arg("--head-timeout")
        .arg("1s")
        .arg("--idle-timeout")
        .arg("1s")
        .arg("--http-timeout")
        .arg("1s")
        .start();
    // A head that never completes: 408, closed.
    let mut s = node.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.status, 408);
    assert!(is_closed(&mut s));
    // A body that never completes.
    let start = node.start_web("web-key");
    let mut s = node.connect();
    write!(
        s,
        "POST /v1/web/i HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 100\r\n\r\nabc",
        Node::token(&start)
    )
    .unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.status, 408);
    // An idle keep-alive connection: closed without a word.
    let mut s = node.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s).unwrap().status, 200);
    let t = std::time::Instant::now();
    assert!(read_response(&mut s).is_none());
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn cors_preflight_with_the_trackers_headers() {
    let node = Node::start();
    let r = node.request(
        b"OPTIONS /ingest/v1/web/i?batch=0_1_1129_kyes&split=855 HTTP/1.1\r\nHost: x\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization,content-encoding,datatype\r\nOrigin: http://127.0.0.1:8700\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    let allowed = r
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    for h in [
        "content-type",
        "authorization",
        "content-encoding",
        "datatype",
    ] {
        assert!(allowed.contains(h), "{h} in {allowed}");
    }
    assert_eq!(r.header("cache-control"), Some("max-age=86400"));

    let r = node.request(
        b"OPTIONS /ingest/v1/web/tags HTTP/1.1\r\nHost: x\r\nAccess-Control-Request-Method: GET\r\nOrigin: http://a\r\n\r\n",
    );
    assert!(r
        .header("access-control-allow-methods")
        .unwrap()
        .contains("GET"));

    // Real answers carry the origin header too, errors included.
    let r = node.post("/v1/web/i", &[], b"x");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));

    let node = Node::builder().env("USE_CORS", "false").start();
    let r = node.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.header("access-control-allow-origin"), None);
}

/// An answer that closes while the client is still sending (413 from `Content-Length`, 400 on a
/// bad head) stays readable by a client that sends its whole body before it reads, as Python's
/// `http.client` does: the node shuts its sending side and drops what still arrives (a lingering
/// close) instead of resetting the connection.
#[test]
fn early_answers_that_close_are_readable_by_a_client_that_sends_everything_first() {
    let node = Node::start();
    let body = vec![b'x'; 8 << 20];
    let heads = [
        (
            format!(
                "POST /v1/web/start HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n",
                body.len()
            ),
            413,
        ),
        (
            format!(
                "POST /v1/web/start HTTP/1.1\r\nHost: t\r\nContent-Length: +{}\r\n\r\n",
                body.len()
            ),
            400,
        ),
    ];
    for (head, status) in heads {
        let mut s = node.connect();
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&body)
            .unwrap_or_else(|e| panic!("{status}: sending the whole body: {e}"));
        let answer = read_response(&mut s).unwrap_or_else(|| panic!("{status}: no answer"));
        assert_eq!(answer.status, status);
        assert_eq!(answer.header("connection"), Some("close"));
        assert!(is_closed(&mut s), "{status}: closed after the answer");
    }
    node.stop();
}

/// A node whose preparation jobs (gzip inflation and the other heavy work) wait at a gate the
/// test opens: one worker, one preparation thread.
fn gated_node() -> (Node, std::path::PathBuf, tempfile::TempDir) {
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("open");
    let node = Node::builder()
        .workers(1)
        .arg("--prepare-threads")
        .arg("1")
        .arg("--test-prepare-gate")
        .arg(gate.to_str().unwrap())
        .start();
    (node, gate, gate_dir)
}

fn gzip_batch_request(token: &str, body: &[u8]) -> Vec<u8> {
    post_request(
        "/v1/web/i",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Encoding", "gzip"),
        ],
        &gzip(body),
    )
}

fn prepared_counts(node: &Node) -> (f64, f64) {
    let (_, text) = node.admin_get("/metrics");
    (
        metric_sample(&text, "replay_ingest_requests_prepared_off_loop_total"),
        metric_sample(&text, "replay_ingest_requests_prepared_inline_total"),
    )
}

/// Issue 13: no request waits for another request's gzip inflation. While one connection's gzip
/// batch is held at the preparation gate, the only worker keeps answering other connections;
/// the held connection's pipelined requests are answered after it, in order, and every record
/// is stored once.
#[test]
fn a_gzip_batch_being_inflated_holds_up_only_its_own_connection() {
    let (node, gate, _gate_dir) = gated_node();
    let expires = now_ms() + 3_600_000;
    let (held_token, other_token) = (mint_token(701, 0, expires), mint_token(702, 0, expires));
    let first = walkable_batch(1, 1, b"first, gzip");
    let second = walkable_batch(1, 2, b"second, plain");
    let mut held = node.connect();
    let mut pipelined = gzip_batch_request(&held_token, &first);
    pipelined.extend(batch_request(&held_token, "player", "", &second));
    pipelined.extend_from_slice(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    held.write_all(&pipelined).unwrap();
    wait_for(
        "the gzip batch to reach the pool",
        Duration::from_secs(10),
        || prepared_counts(&node).0 == 1.0,
    );

    let other = walkable_batch(1, 1, b"other");
    for _ in 0..3 {
        let r = node.request(&batch_request(&other_token, "player", "", &other));
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        node.request(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").status,
        200
    );
    held.set_nonblocking(true).unwrap();
    let mut peek = [0u8; 1];
    let nothing = held.peek(&mut peek).unwrap_err();
    assert_eq!(
        nothing.kind(),
        std::io::ErrorKind::WouldBlock,
        "no answer before the gate"
    );
    let stored_701 = |node: &Node| {
        node.ls()
            .iter()
            .filter(|r| r["session"].as_str() == Some("701"))
            .count()
    };
    assert_eq!(
        stored_701(&node),
        0,
        "nothing of the held connection stored yet"
    );
    held.set_nonblocking(false).unwrap();

    std::fs::write(&gate, b"").unwrap();
    for _ in 0..3 {
        assert_eq!(read_response(&mut held).unwrap().status, 200);
    }
    assert_eq!(node.cat(701, Some("raw")), [first, second].concat());
    assert_eq!(node.cat(702, Some("raw")), other.repeat(3));
    assert_eq!(prepared_counts(&node), (1.0, 0.0));
    node.stop();
}

/// When the pool's queue is full the worker inflates the batch itself: every request is still
/// answered and stored once, the ones done inline without waiting for the gate; and a gzip bomb
/// prepared by the pool is refused, 413, with nothing stored.
#[test]
fn a_full_preparation_queue_is_worked_off_by_the_worker() {
    let (node, gate, _gate_dir) = gated_node();
    let token = mint_token(801, 0, now_ms() + 3_600_000);
    let batches: Vec<Vec<u8>> = (0..24)
        .map(|i| walkable_batch(1, i + 1, format!("batch {i}").as_bytes()))
        .collect();
    let mut conns = Vec::new();
    for batch in &batches {
        let mut s = node.connect();
        s.write_all(&gzip_batch_request(&token, batch)).unwrap();
        conns.push(s);
    }
    wait_for("every batch taken", Duration::from_secs(10), || {
        let (off, inline) = prepared_counts(&node);
        off + inline == 24.0
    });
    let (off, inline) = prepared_counts(&node);
    // One job at the gate and sixteen queued (the queue holds 16 per thread); the rest inline.
    assert!((16.0..=17.0).contains(&off), "{off} off the loop");
    // Those done inline are answered while the pool is still shut, and only those.
    let answered = |conns: &mut Vec<std::net::TcpStream>| {
        conns
            .iter_mut()
            .filter(|s| {
                s.set_nonblocking(true).unwrap();
                let ready = s.peek(&mut [0u8; 1]).is_ok();
                s.set_nonblocking(false).unwrap();
                ready
            })
            .count() as f64
    };
    assert!(inline >= 7.0, "{inline} inline");
    wait_for("the inline answers", Duration::from_secs(10), || {
        answered(&mut conns) == inline
    });

    std::fs::write(&gate, b"").unwrap();
    for s in &mut conns {
        assert_eq!(read_response(s).unwrap().status, 200);
    }
    // Stored once each; `cat` puts a page's batches in firstIndex order.
    assert_eq!(node.cat(801, Some("raw")), batches.concat());
    let bomb = node.request(&gzip_batch_request(&token, &vec![0u8; 3_000_000]));
    assert_eq!(bomb.status, 413);
    assert_eq!(node.cat(801, Some("raw")), batches.concat());
    node.stop();
}

//! Black-box tests of the OpenReplay protocol: every route's success path and error answers,
//! tokens, and what `cat`/`ls` read back. The real binary, raw TCP.

mod common;

use std::io::Write;

use common::*;
use serde_json::Value;

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A start request body as the tracker sends it (from the fixture), for `key`.
fn start_body(key: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture("start-request.json")).unwrap();
    v["projectKey"] = key.into();
    v["timestamp"] = now_ms().into();
    serde_json::to_vec(&v).unwrap()
}

fn start(node: &Node, key: &str, ua: &str) -> Response {
    node.post(
        "/ingest/v1/web/start",
        &[("Content-Type", "application/json"), ("User-Agent", ua)],
        &start_body(key),
    )
}

#[test]
fn web_start_answers_every_field_with_the_trackers_types() {
    let node = Node::start();
    let r = start(&node, "web-key", UA);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    for key in [
        "token",
        "sessionID",
        "projectID",
        "userUUID",
        "userOS",
        "userDevice",
        "userBrowser",
        "userCountry",
        "userState",
        "userCity",
    ] {
        assert!(v[key].is_string(), "{key} is a string: {v}");
    }
    for key in [
        "timestamp",
        "startTimestamp",
        "delay",
        "beaconSizeLimit",
        "compressionThreshold",
        "protocolVersion",
        "canvasFPS",
    ] {
        assert!(v[key].is_number(), "{key} is a number: {v}");
    }
    for key in ["assistOnly", "canvasEnabled", "framesSupport"] {
        assert!(v[key].is_boolean(), "{key} is a bool: {v}");
    }
    assert_eq!(v["projectID"], "11");
    assert_eq!(v["protocolVersion"], 2);
    assert_eq!(v["beaconSizeLimit"], 1_000_000);
    assert_eq!(v["compressionThreshold"], 20_000);
    assert_eq!(v["userOS"], "Linux");
    let sid: u64 = v["sessionID"].as_str().unwrap().parse().unwrap();
    // The start timestamp is the session id's.
    assert_eq!(
        v["startTimestamp"].as_u64().unwrap(),
        (sid >> 16) + 1_550_000_000_000
    );
    // The token is ours and names the session.
    let token = v["token"].as_str().unwrap();
    let parsed = replay_ingest::token::TokenSigner::new(SECRET.as_bytes())
        .verify(token.as_bytes())
        .unwrap();
    assert_eq!(parsed.session_id, sid);
    assert_eq!(
        parsed.expires_at_ms,
        v["startTimestamp"].as_i64().unwrap() + 7_200_000
    );
    // A fresh UUID, since the request's was null.
    assert!(uuid_like(v["userUUID"].as_str().unwrap()));

    let v1 = start(&node, "web-v1", UA).json();
    assert_eq!(v1["protocolVersion"], 1);
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

/// Decodes the SessionStart message by hand, straight from PROTOCOL.md's field list.
#[test]
fn session_start_bytes_follow_the_protocol() {
    let node = Node::start();
    let mut body: Value = serde_json::from_slice(&start_body("web-key")).unwrap();
    body["userUUID"] = "00000000-0000-4000-8000-000000000001".into();
    body["revID"] = "rev-7".into();
    let r = node.post(
        "/v1/web/start",
        &[("User-Agent", UA)],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    let sid = Node::session_id(&v);
    let raw = node.cat(sid, Some("raw"));

    // Write the expected message out by hand: type 1, then the fields in order.
    fn uint(out: &mut Vec<u8>, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    fn string(out: &mut Vec<u8>, s: &str) {
        uint(out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    }
    let mut expected = Vec::new();
    uint(&mut expected, 1);
    uint(&mut expected, v["startTimestamp"].as_u64().unwrap()); // Timestamp (server time, tracker >= 4.1.6)
    uint(&mut expected, 11); // ProjectID
    string(&mut expected, "19.0.1"); // TrackerVersion
    string(&mut expected, "rev-7"); // RevID
    string(&mut expected, "00000000-0000-4000-8000-000000000001"); // UserUUID
    string(&mut expected, UA); // UserAgent
    string(&mut expected, "Linux"); // UserOS
    string(&mut expected, ""); // UserOSVersion: the UA names none
    string(&mut expected, v["userBrowser"].as_str().unwrap()); // UserBrowser
    string(&mut expected, "156.0.0"); // UserBrowserVersion
    string(&mut expected, ""); // UserDevice
    string(&mut expected, "desktop"); // UserDeviceType
    uint(&mut expected, 16384); // UserDeviceMemorySize
    uint(&mut expected, 4_395_630_592); // UserDeviceHeapSize
    string(&mut expected, "UN||"); // UserCountry, packed country|state|city (no GeoIP database)
    string(&mut expected, "harness-user@example.test"); // UserID
    assert_eq!(raw, expected);
}

#[test]
fn web_start_errors() {
    let node = Node::start();
    let r = start(&node, "no-such-key", UA);
    assert_eq!(
        (r.status, r.error().as_str()),
        (404, "project doesn't exist")
    );
    let r = start(&node, "mobile-key", UA);
    assert_eq!(r.status, 403);
    let r = start(&node, "never", UA);
    assert_eq!((r.status, r.error().as_str()), (403, "cancel"));
    let r = start(&node, "web-key", "curl/7.88.1");
    assert_eq!(
        (r.status, r.error().as_str()),
        (403, "browser not recognized")
    );
    let r = node.post(
        "/v1/web/start",
        &[("User-Agent", UA)],
        b"{\"trackerVersion\":\"1\"}",
    );
    assert_eq!(
        (r.status, r.error().as_str()),
        (403, "projectKey value required")
    );
    let r = node.post("/v1/web/start", &[("User-Agent", UA)], b"{not json");
    assert_eq!(r.status, 400);
    let r = node.post("/v1/web/start", &[("User-Agent", UA)], b"");
    assert_eq!(r.status, 400);
    // gzip start bodies are accepted.
    let r = node.post(
        "/v1/web/start",
        &[("User-Agent", UA), ("Content-Encoding", "gzip")],
        &gzip(&start_body("web-key")),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_valid_old_token_continues_its_session_and_an_expired_one_starts_anew() {
    let node = Node::start();
    let first = node.start_web("web-key");
    let sid = Node::session_id(&first);
    let mut body: Value = serde_json::from_slice(&start_body("web-key")).unwrap();
    body["token"] = first["token"].clone();
    let again = node
        .post(
            "/v1/web/start",
            &[("User-Agent", UA)],
            body.to_string().as_bytes(),
        )
        .json();
    assert_eq!(Node::session_id(&again), sid);
    assert_eq!(again["token"], first["token"]);
    // Exactly one SessionStart for the continued session.
    let starts = node
        .ls()
        .into_iter()
        .filter(|r| {
            r["session"].as_str() == Some(sid.to_string().as_str()) && r["kind"] == "session-start"
        })
        .count();
    assert_eq!(starts, 1);

    body["token"] = mint_token(sid, 0, now_ms() - 1000).into();
    let renewed = node
        .post(
            "/v1/web/start",
            &[("User-Agent", UA)],
            body.to_string().as_bytes(),
        )
        .json();
    assert_ne!(Node::session_id(&renewed), sid);

    body["token"] = first["token"].clone();
    body["reset"] = true.into();
    let reset = node
        .post(
            "/v1/web/start",
            &[("User-Agent", UA)],
            body.to_string().as_bytes(),
        )
        .json();
    assert_ne!(Node::session_id(&reset), sid);
}

/// Extra request headers of one send.
type Headers<'a> = Vec<(&'a str, &'a str)>;

#[test]
fn fixture_batches_read_back_byte_identical() {
    let node = Node::start();
    let s = start(&node, "web-key", UA).json();
    let token = Node::token(&s);
    let sid = Node::session_id(&s);
    let start_message = node.cat(sid, Some("raw"));

    let visual = fixture("pv2-batch1-visual-split855.bin");
    let devtools = fixture("pv2-batch2-devtools.bin");
    let analytics = fixture("pv2-batch3-analytics.bin");
    let player_gz = fixture("pv2-batch4-player.wire-gzip.bin");
    let player = fixture("pv2-batch4-player.gunzipped.bin");
    let pv1_gz = fixture("pv1-batch1-player.wire-gzip.bin");
    let pv1 = fixture("pv1-batch1-player.gunzipped.bin");
    let auth = bearer(&token);
    let mut conn = node.connect();
    let sends: Vec<(Headers, &str, &[u8])> = vec![
        (
            vec![("DataType", "visual")],
            "?batch=0_1_1129_kyes&split=855",
            &visual,
        ),
        (
            vec![("DataType", "devtools")],
            "?batch=0_2_277_kyes",
            &devtools,
        ),
        (
            vec![("DataType", "analytics")],
            "?batch=0_3_199_kyes",
            &analytics,
        ),
        (
            vec![("DataType", "player"), ("Content-Encoding", "gzip")],
            "?batch=0_4_726_kyes",
            &player_gz,
        ),
        (
            vec![("DataType", "player"), ("Content-Encoding", "gzip")],
            "?batch=0_5_1706_kyes",
            &pv1_gz,
        ),
    ];
    for (headers, query, body) in sends {
        let mut headers = headers;
        headers.push(("Authorization", &auth));
        headers.push(("Origin", "http://127.0.0.1:8700"));
        conn.write_all(&post_request(
            &format!("/ingest/v1/web/i{query}"),
            &headers,
            body,
        ))
        .unwrap();
        let r = read_response(&mut conn).unwrap();
        assert_eq!(r.status, 200, "{query}: {}", r.text());
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    }

    let mut raw = start_message.clone();
    raw.extend_from_slice(&visual[..855]);
    raw.extend_from_slice(&devtools);
    raw.extend_from_slice(&analytics);
    raw.extend_from_slice(&player);
    raw.extend_from_slice(&pv1);
    assert_eq!(node.cat(sid, Some("raw")), raw);
    assert_eq!(
        node.cat(sid, None),
        raw,
        "raw is the default topic of a web session"
    );
    assert_eq!(node.cat(sid, Some("raw-assets")), &visual[855..]);

    // Each stored batch walks cleanly.
    for batch in [
        &visual[..855],
        &visual[855..],
        &devtools[..],
        &analytics[..],
        &player[..],
        &pv1[..],
    ] {
        replay_ingest::codec::walk_web_batch(batch).unwrap();
    }
}

#[test]
fn assets_batches_go_to_raw_assets() {
    let node = Node::start();
    let s = node.start_web("web-key");
    let token = Node::token(&s);
    let sid = Node::session_id(&s);
    let body = fixture("pv2-batch1-visual-split855.bin")[855..].to_vec();
    let r = node.request(&batch_request(&token, "assets", "?batch=0_9_1_kyes", &body));
    assert_eq!(r.status, 200);
    assert_eq!(node.cat(sid, Some("raw-assets")), body);
}

#[test]
fn visual_batches_need_a_split_inside_the_body() {
    let node = Node::start();
    let s = node.start_web("web-key");
    let token = Node::token(&s);
    let sid = Node::session_id(&s);
    let visual = fixture("pv2-batch1-visual-split855.bin");
    for query in [
        "",
        "?split=",
        "?split=abc",
        "?split=0",
        "?split=1129",
        "?split=99999",
        "?split=-1",
    ] {
        let r = node.request(&batch_request(&token, "visual", query, &visual));
        assert_eq!(r.status, 400, "{query}");
        assert!(r.json()["error"].is_string());
    }
    assert_eq!(node.cat(sid, Some("raw-assets")), b"", "nothing stored");
    // gzip visual: split applies to the decoded batch.
    let r = node.post(
        "/v1/web/i?split=855",
        &[
            ("Authorization", &bearer(&token)),
            ("DataType", "visual"),
            ("Content-Encoding", "gzip"),
        ],
        &gzip(&visual),
    );
    assert_eq!(r.status, 200);
    assert_eq!(node.cat(sid, Some("raw-assets")), &visual[855..]);
}

#[test]
fn bad_tampered_expired_and_just_expired_tokens() {
    let node = Node::start();
    let s = node.start_web("web-key");
    let token = Node::token(&s);
    let sid = Node::session_id(&s);
    let batch = fixture("pv2-batch3-analytics.bin");
    let post = |auth: Option<String>| {
        let mut h = vec![("DataType", "analytics")];
        let a;
        if let Some(auth) = auth {
            a = auth;
            h.push(("Authorization", a.as_str()));
        }
        node.post("/v1/web/i", &h, &batch)
    };
    let r = post(None);
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].is_string());
    assert_eq!(post(Some("Basic abc".into())).status, 401);
    assert_eq!(post(Some(bearer("garbage"))).status, 401);
    assert_eq!(post(Some(bearer("1.2.3"))).status, 401);
    // Tampered: another session id, same signature.
    let mut parts: Vec<&str> = token.split('.').collect();
    let other = format!("{:x}", sid + 1);
    parts[0] = &other;
    assert_eq!(post(Some(bearer(&parts.join(".")))).status, 401);
    // Signed with another secret.
    let foreign = replay_ingest::token::TokenSigner::new(b"other").compose(
        &replay_ingest::token::SessionToken {
            session_id: sid,
            delay: 0,
            expires_at_ms: now_ms() + 60_000,
        },
    );
    assert_eq!(post(Some(bearer(&foreign))).status, 401);
    let only_start = node.cat(sid, Some("raw"));

    // Expired a minute ago: refused, not stored.
    let expired = mint_token(sid, 0, now_ms() - 60_000);
    let r = post(Some(bearer(&expired)));
    assert_eq!((r.status, r.error().as_str()), (401, "token expired"));
    assert_eq!(node.cat(sid, Some("raw")), only_start);

    // Expired 5 s ago: stored, and still answered 401 so the tracker starts anew.
    let just = mint_token(sid, 0, now_ms() - 5_000);
    let r = post(Some(bearer(&just)));
    assert_eq!(r.status, 401);
    let mut expected = only_start.clone();
    expected.extend_from_slice(&batch);
    assert_eq!(node.cat(sid, Some("raw")), expected);

    // A valid token works.
    assert_eq!(post(Some(bearer(&token))).status, 200);
}

/// A mobile batch: MobileBatchMeta (107: Timestamp, Length, FirstIndex) then opaque messages.
fn mobile_batch(first_index: u8, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![107, 0x80, 0x01, 2, first_index];
    b.extend_from_slice(payload);
    b
}

#[test]
fn mobile_start_batches_late_and_images() {
    let node = Node::start();
    let r = node.mobile_start("mobile-key");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    for key in ["token", "sessionID", "projectID", "userUUID"] {
        assert!(v[key].is_string(), "{key}: {v}");
    }
    assert!(v["imagesHashList"].is_array());
    assert!(v["beaconSizeLimit"].is_number());
    let sid = Node::session_id(&v);
    let token = Node::token(&v);
    let auth = bearer(&token);

    let mut expected = node.cat(sid, None);
    assert_eq!(expected[0], 90, "MobileSessionStart first");
    let text = String::from_utf8_lossy(&expected);
    assert!(text.contains("iPhone 13 Pro"), "marketing name in {text:?}");
    for (i, path) in [
        "/v1/ios/i",
        "/v1/ios/append",
        "/v1/mobile/i",
        "/ingest/v1/mobile/i",
    ]
    .iter()
    .enumerate()
    {
        let b = mobile_batch(i as u8, b"payload");
        let r = node.post(path, &[("Authorization", &auth)], &b);
        assert_eq!(r.status, 200, "{path}");
        expected.extend(b);
    }
    // Late batches are accepted with a long-expired token.
    let expired = mint_token(sid, 0, now_ms() - 3_600_000);
    let late = mobile_batch(9, b"late");
    let r = node.post(
        "/v1/ios/late",
        &[("Authorization", &bearer(&expired))],
        &late,
    );
    assert_eq!(r.status, 200);
    expected.extend(late);
    // ...but not on the normal route.
    let r = node.post(
        "/v1/ios/i",
        &[("Authorization", &bearer(&expired))],
        &mobile_batch(10, b"x"),
    );
    assert_eq!(r.status, 401);
    assert_eq!(
        node.cat(sid, None),
        expected,
        "raw-ios is the default topic of a mobile session"
    );
    assert_eq!(node.cat(sid, Some("raw")), b"");

    // Images: several files, read back by ls with names and sizes.
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            (
                format!("{i:02}abcdef.jpeg"),
                (0..(1000 + i * 777)).map(|b| (b * 7 + i) as u8).collect(),
            )
        })
        .collect();
    let boundary = "----boundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    write!(
        body,
        "--{boundary}\r\nContent-Disposition: form-data; name=\"projectKey\"\r\n\r\nmobile-key\r\n"
    )
    .unwrap();
    for (name, data) in &files {
        write!(body, "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\nContent-Type: image/jpeg\r\n\r\n").unwrap();
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    write!(body, "--{boundary}--\r\n").unwrap();
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = node.post(
        "/v1/ios/images",
        &[("Authorization", &auth), ("Content-Type", &ct)],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // One record for the upload, named by its storage prefix, holding every file.
    let images: Vec<Value> = node
        .ls()
        .into_iter()
        .filter(|r| r["kind"] == "image-upload")
        .collect();
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0]["name"], format!("mobile-key/{sid}/"));
    assert_eq!(images[0]["session"], sid.to_string());
    // Image bytes are intact: read them back through the library's reader (segments or
    // compacted files, wherever they are by now).
    let stored = replay_ingest::compact::store::read_everything(&node.dir).unwrap();
    let rec = stored
        .iter()
        .find(|r| r.meta.kind == replay_ingest::log::RecordKind::ImageUpload)
        .unwrap();
    let upload = replay_ingest::upload::decode(&rec.body).unwrap();
    assert_eq!(upload.source, replay_ingest::upload::Source::Mobile);
    assert!(!upload.frames);
    let got: Vec<(String, Vec<u8>)> = upload
        .files
        .iter()
        .map(|f| (f.name.to_string(), f.data.to_vec()))
        .collect();
    assert_eq!(got, files);
    // `export` writes the session's stream and its images under <projectKey>/<sessionID>/.
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(BIN)
        .arg("export")
        .arg("--data-dir")
        .arg(&node.dir)
        .arg("--session")
        .arg(sid.to_string())
        .arg("--out")
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success());
    let session_dir = out.path().join("mobile-key").join(sid.to_string());
    assert_eq!(
        std::fs::read(session_dir.join("raw-ios")).unwrap(),
        expected
    );
    for (name, data) in &files {
        assert_eq!(
            &std::fs::read(session_dir.join("images").join(name)).unwrap(),
            data
        );
    }

    // Not multipart: 415.
    let r = node.post(
        "/v1/ios/images",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        b"{}",
    );
    assert_eq!(r.status, 415);
    // A web project on the mobile start: 403.
    assert_eq!(node.mobile_start("web-key").status, 403);
    assert_eq!(node.mobile_start("nope").status, 404);
}

#[test]
fn tags_conditions_flags_and_not_started() {
    let node = Node::start();
    let s = node.start_web("web-key");
    let auth = bearer(&Node::token(&s));
    let r = node.request(
        format!("GET /ingest/v1/web/tags HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"tags": [{"name": "t1"}]}));
    let r = node.request(b"GET /ingest/v1/web/tags HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 401);

    let r = node.request(
        format!("GET /v1/web/conditions/11 HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(
        (r.status, r.json()),
        (200, serde_json::json!({"conditions": []}))
    );
    let r = node.request(
        format!("GET /v1/web/conditions/999 HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(r.status, 404);

    let r = node.post(
        "/v1/web/feature-flags",
        &[("Authorization", &auth)],
        br#"{"projectID":"11"}"#,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["flags"][0]["key"], "ff1");

    let body = br#"{"projectKey":"web-key","trackerVersion":"3.5.0","DoNotTrack":true}"#;
    let r = node.post("/v1/web/not-started", &[("User-Agent", UA)], body);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = node.post(
        "/v1/web/not-started",
        &[("User-Agent", UA)],
        br#"{"projectKey":"zzz"}"#,
    );
    assert_eq!(r.status, 404);
    let not_started: Vec<Value> = node
        .ls()
        .into_iter()
        .filter(|r| r["kind"] == "not-started")
        .collect();
    assert_eq!(not_started.len(), 1);
    assert_eq!(not_started[0]["size"], body.len());
}

#[test]
fn demo_project_works_with_no_set_up() {
    let node = Node::builder().no_projects().start();
    let key = std::fs::read_to_string(node.dir.join("demo-project-key")).unwrap();
    let printed = &node.printed;
    assert!(
        printed
            .iter()
            .any(|l| l == &format!("demo project key: {key}")),
        "{printed:?}"
    );
    let s = node.start_web(&key);
    assert_eq!(s["projectID"], "1");
}

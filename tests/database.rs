//! OpenReplay's PostgreSQL through the binary: projects read from the table (and followed as it
//! changes), a `sessions` row per new session with every column OpenReplay writes, at least
//! once across database outages and node kills, and no queue entry of a session before its row.
//! Against a real PostgreSQL (`common::postgres`) and a real `redis-server`.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::postgres::PgServer;
use common::queues::RedisServer;
use common::{now_ms, wait_for, Node, NodeBuilder, UA};
use serde_json::json;

const WEB_KEY: &str = "webprojectkey0000001";
const IOS_KEY: &str = "iosprojectkey0000001";

/// Adds a project; its id.
fn add_project(
    db: &mut postgres::Client,
    key: &str,
    platform: &str,
    sample_rate: i16,
    active: bool,
    beacon_size: i32,
) -> i32 {
    db.query_one(
        "INSERT INTO projects (project_key, name, platform, active, sample_rate, beacon_size, \
         max_session_duration) VALUES ($1, $6, $2::text::platform, $3, $4, $5, 3600000) \
         RETURNING project_id",
        &[&key, &platform, &active, &sample_rate, &beacon_size, &key],
    )
    .unwrap()
    .get(0)
}

/// A node reading its projects from `pg` and writing rows there.
fn node_on(pg: &PgServer) -> NodeBuilder {
    Node::builder()
        .no_projects()
        .env("POSTGRES_STRING", &pg.url())
}

/// Waits until the node has read its projects (readiness says so).
fn wait_until_ready(node: &Node) {
    wait_for(
        "the node to read its projects",
        Duration::from_secs(30),
        || {
            let r = node.request(b"GET /health/ready HTTP/1.1\r\nHost: t\r\n\r\n");
            r.status == 200 && r.json()["projects"]["loaded"] == true
        },
    );
}

fn web_start_body(key: &str) -> serde_json::Value {
    json!({
        "projectKey": key, "trackerVersion": "19.0.1", "timestamp": now_ms(),
        "userUUID": null, "revID": "rev-7", "isSnippet": false, "deviceMemory": 8192,
        "jsHeapSizeLimit": 4294967296u64, "userID": "u@example.test",
        "timezone": "UTC+02:00", "width": 1920, "height": 1080,
    })
}

fn web_start(node: &Node, key: &str) -> common::Response {
    node.post(
        "/v1/web/start",
        &[("Content-Type", "application/json"), ("User-Agent", UA)],
        web_start_body(key).to_string().as_bytes(),
    )
}

fn row_count(db: &mut postgres::Client) -> i64 {
    db.query_one("SELECT count(*) FROM sessions", &[])
        .unwrap()
        .get(0)
}

fn session_ids(db: &mut postgres::Client) -> Vec<u64> {
    db.query("SELECT session_id FROM sessions", &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i64>(0) as u64)
        .collect()
}

/// A GeoLite2-City-like database with London's test network (MaxMind's own test data).
fn geo_database(dir: &std::path::Path) -> std::path::PathBuf {
    use maxminddb_writer::metadata::IpVersion;
    use maxminddb_writer::paths::IpAddrWithMask;
    let mut db = maxminddb_writer::Database::default();
    db.metadata.ip_version = IpVersion::V6;
    db.metadata.database_type = "GeoLite2-City".into();
    db.metadata.binary_format_major_version = 2;
    db.metadata.languages = vec!["en".into()];
    let record = json!({
        "country": { "iso_code": "GB", "names": { "en": "United Kingdom" } },
        "subdivisions": [{ "names": { "en": "England" } }],
        "city": { "names": { "en": "London" } },
    });
    let v4: std::net::Ipv4Addr = "81.2.69.142".parse().unwrap();
    let network = IpAddrWithMask::new(std::net::IpAddr::V6(v4.to_ipv6_compatible()), 96 + 31);
    let data = db.insert_value(record).unwrap();
    db.insert_node(network, data);
    let path = dir.join("GeoLite2-City.mmdb");
    let mut file = std::fs::File::create(&path).unwrap();
    db.write_to(&mut file).unwrap();
    file.flush().unwrap();
    path
}

#[test]
fn web_and_mobile_starts_write_rows_with_every_column_and_packed_geo() {
    let pg = PgServer::start();
    let mut db = pg.client();
    let web_id = add_project(&mut db, WEB_KEY, "web", 100, true, 0);
    let ios_id = add_project(&mut db, IOS_KEY, "ios", 100, true, 0);
    let geo_dir = tempfile::tempdir().unwrap();
    let geo = geo_database(geo_dir.path());
    let node = node_on(&pg)
        .arg("--geoip-db")
        .arg(geo.to_str().unwrap())
        .start();
    wait_until_ready(&node);

    let web = node.post(
        "/v1/web/start",
        &[
            ("Content-Type", "application/json"),
            ("User-Agent", UA),
            ("X-Forwarded-For", "81.2.69.142"),
        ],
        web_start_body(WEB_KEY).to_string().as_bytes(),
    );
    assert_eq!(web.status, 200, "{}", web.text());
    let web = web.json();
    // The answer keeps the three parts apart.
    assert_eq!(
        (&web["userCountry"], &web["userState"], &web["userCity"]),
        (&json!("GB"), &json!("England"), &json!("London"))
    );
    let mobile_body = json!({
        "projectKey": IOS_KEY, "trackerVersion": "1.0.15", "revID": "",
        "userUUID": "0cfeb1c0-fb25-4aa3-8fc0-4d0c1d28b1a1", "userOSVersion": "17.2",
        "userDevice": "iPhone14,2", "userDeviceType": "mobile", "timestamp": now_ms(),
        "timezone": "UTC+01:00", "deviceMemory": 6000, "doNotRecord": false,
        "platform": "ios", "width": 390, "height": 844,
    });
    let mobile = node.post(
        "/v1/mobile/start",
        &[
            ("Content-Type", "application/json"),
            ("X-Forwarded-For", "81.2.69.142"),
        ],
        mobile_body.to_string().as_bytes(),
    );
    assert_eq!(mobile.status, 200, "{}", mobile.text());
    let mobile = mobile.json();
    // doNotRecord: a token, but no start message and no row (as OpenReplay).
    let mut quiet = web_start_body(WEB_KEY);
    quiet["doNotRecord"] = json!(true);
    let quiet = node.post(
        "/v1/web/start",
        &[("Content-Type", "application/json"), ("User-Agent", UA)],
        quiet.to_string().as_bytes(),
    );
    assert_eq!(quiet.status, 200);
    let quiet_id = Node::session_id(&quiet.json());

    wait_for("both rows", Duration::from_secs(20), || {
        row_count(&mut db) == 2
    });
    let web_session = Node::session_id(&web);
    let row = db
        .query_one(
            "SELECT project_id, start_ts, user_uuid::text, user_device, \
             user_device_type::text, user_country::text, user_os, user_os_version, rev_id, \
             tracker_version, platform::text, user_browser, user_browser_version, \
             user_device_memory_size, user_device_heap_size, user_id, user_state, user_city, \
             timezone, screen_width, screen_height FROM sessions WHERE session_id = $1",
            &[&(web_session as i64)],
        )
        .unwrap();
    let start_ts: i64 = row.get(1);
    assert!((now_ms() - start_ts).abs() < 60_000, "start_ts {start_ts}");
    assert_eq!(row.get::<_, i32>(0), web_id);
    assert_eq!(row.get::<_, String>(2), web["userUUID"].as_str().unwrap());
    assert_eq!(row.get::<_, String>(3), web["userDevice"].as_str().unwrap());
    assert_eq!(row.get::<_, String>(4), "desktop");
    assert_eq!(row.get::<_, String>(5), "GB");
    assert_eq!(row.get::<_, String>(6), web["userOS"].as_str().unwrap());
    assert_eq!(row.get::<_, Option<String>>(8).as_deref(), Some("rev-7"));
    assert_eq!(row.get::<_, String>(9), "19.0.1");
    assert_eq!(row.get::<_, String>(10), "web");
    assert_eq!(
        row.get::<_, Option<String>>(11).as_deref(),
        web["userBrowser"].as_str()
    );
    assert!(row.get::<_, Option<String>>(12).is_some());
    assert_eq!(row.get::<_, Option<i32>>(13), Some(8192));
    assert_eq!(row.get::<_, Option<i64>>(14), Some(4_294_967_296));
    assert_eq!(
        row.get::<_, Option<String>>(15).as_deref(),
        Some("u@example.test")
    );
    assert_eq!(row.get::<_, Option<String>>(16).as_deref(), Some("England"));
    assert_eq!(row.get::<_, Option<String>>(17).as_deref(), Some("London"));
    assert_eq!(
        row.get::<_, Option<String>>(18).as_deref(),
        Some("UTC+02:00")
    );
    assert_eq!(row.get::<_, Option<i32>>(19), Some(1920));
    assert_eq!(row.get::<_, Option<i32>>(20), Some(1080));

    let mobile_session = Node::session_id(&mobile);
    let row = db
        .query_one(
            "SELECT project_id, user_uuid::text, user_device, user_device_type::text, \
             user_country::text, user_os, user_os_version, rev_id, tracker_version, \
             platform::text, user_browser, user_browser_version, user_device_memory_size, \
             user_device_heap_size, user_id, timezone, screen_width, screen_height \
             FROM sessions WHERE session_id = $1",
            &[&(mobile_session as i64)],
        )
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), ios_id);
    assert_eq!(
        row.get::<_, String>(1),
        mobile["userUUID"].as_str().unwrap()
    );
    assert!(!row.get::<_, String>(2).is_empty());
    assert_eq!(row.get::<_, String>(3), "mobile");
    assert_eq!(row.get::<_, String>(4), "GB");
    assert_eq!(row.get::<_, String>(5), "IOS");
    assert_eq!(row.get::<_, Option<String>>(6).as_deref(), Some("17.2"));
    assert_eq!(
        row.get::<_, Option<String>>(7),
        None,
        "an empty revID is NULL"
    );
    assert_eq!(row.get::<_, String>(8), "1.0.15");
    assert_eq!(row.get::<_, String>(9), "ios");
    assert_eq!(
        row.get::<_, Option<String>>(10),
        None,
        "no browser on mobile"
    );
    assert_eq!(row.get::<_, Option<String>>(11), None);
    assert_eq!(row.get::<_, Option<i32>>(12), Some(6000));
    assert_eq!(row.get::<_, Option<i64>>(13), Some(6000));
    assert_eq!(row.get::<_, Option<String>>(14), None);
    assert_eq!(
        row.get::<_, Option<String>>(15).as_deref(),
        Some("UTC+01:00")
    );
    assert_eq!(row.get::<_, Option<i32>>(16), Some(390));
    assert_eq!(row.get::<_, Option<i32>>(17), Some(844));

    // The start messages carry UserCountry packed, as OpenReplay's db service unpacks it.
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(contains(
        &node.cat(web_session, Some("raw")),
        b"GB|England|London"
    ));
    assert!(contains(
        &node.cat(mobile_session, Some("raw-ios")),
        b"GB|England|London"
    ));
    let quiet_rows: i64 = db
        .query_one(
            "SELECT count(*) FROM sessions WHERE session_id = $1",
            &[&(quiet_id as i64)],
        )
        .unwrap()
        .get(0);
    assert_eq!(quiet_rows, 0);
    node.stop();
}

#[test]
fn projects_come_from_the_table_and_follow_its_changes() {
    let pg = PgServer::start();
    let mut db = pg.client();
    let web_id = add_project(&mut db, WEB_KEY, "web", 100, true, 0);
    add_project(&mut db, "sampledout0000000001", "web", 0, true, 0);
    add_project(&mut db, "inactive000000000001", "web", 100, false, 0);
    add_project(&mut db, IOS_KEY, "ios", 100, true, 0);
    add_project(&mut db, "bigbeacon00000000001", "web", 100, true, 300_000);
    db.execute(
        "INSERT INTO tags (name, project_id, selector, ignore_click_rage, ignore_dead_click, \
         location) VALUES ('buy', $1, '#buy', true, false, '/checkout')",
        &[&web_id],
    )
    .unwrap();
    db.execute(
        "INSERT INTO projects_conditions (project_id, name, capture_rate, filters) \
         VALUES ($1, 'errors', 40, '[{\"type\":\"error\"}]')",
        &[&web_id],
    )
    .unwrap();
    let node = node_on(&pg).start();
    wait_until_ready(&node);

    let started = web_start(&node, WEB_KEY);
    assert_eq!(started.status, 200, "{}", started.text());
    let started = started.json();
    assert_eq!(started["projectID"], json!(web_id.to_string()));
    // beacon_size 0: the node's limit (BEACON_SIZE_LIMIT, 1000000 by default).
    assert_eq!(started["beaconSizeLimit"], json!(1_000_000));
    assert_eq!(
        web_start(&node, "bigbeacon00000000001").json()["beaconSizeLimit"],
        json!(300_000)
    );
    let r = web_start(&node, "sampledout0000000001");
    assert_eq!((r.status, r.error()), (403, "cancel".to_string()));
    assert_eq!(web_start(&node, "inactive000000000001").status, 404);
    assert_eq!(web_start(&node, "nosuchproject0000001").status, 404);
    assert_eq!(web_start(&node, IOS_KEY).status, 403, "platform mismatch");
    assert_eq!(node.mobile_start(WEB_KEY).status, 403, "platform mismatch");
    assert_eq!(node.mobile_start(IOS_KEY).status, 200);

    // Tags and conditions in OpenReplay's shapes; flags as current OpenReplay answers them.
    let auth = format!("Bearer {}", Node::token(&started));
    let r = node.request(
        format!("GET /v1/web/tags HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n").as_bytes(),
    );
    let tags = &r.json()["tags"];
    assert_eq!(tags.as_array().map(Vec::len), Some(1), "{tags}");
    assert_eq!(tags[0]["selector"], json!("#buy"));
    assert_eq!(
        (&tags[0]["icr"], &tags[0]["idc"], &tags[0]["location"]),
        (&json!(true), &json!(false), &json!("/checkout"))
    );
    assert!(tags[0]["id"].is_number());
    let r = node.request(
        format!(
            "GET /v1/web/conditions/{web_id} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n"
        )
        .as_bytes(),
    );
    let conditions = &r.json()["conditions"];
    assert_eq!(conditions[0]["name"], json!("errors"));
    assert_eq!(conditions[0]["captureRate"], json!(40));
    assert_eq!(conditions[0]["filters"], json!([{"type": "error"}]));
    assert!(conditions[0]["conditionId"].is_number());
    let r = node.post(
        "/v1/web/feature-flags",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
        ],
        json!({"projectID": web_id.to_string()})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.json(), json!({"flags": []}));

    // A project added while the node runs is served without a restart, well before the 30 s
    // refresh: OpenReplay's `project` notification brings it.
    let added_at = Instant::now();
    add_project(&mut db, "addedlater0000000001", "web", 100, true, 0);
    wait_for("the new project", Duration::from_secs(10), || {
        web_start(&node, "addedlater0000000001").status == 200
    });
    assert!(added_at.elapsed() < Duration::from_secs(10));
    db.execute(
        "UPDATE projects SET active = false WHERE project_key = $1",
        &[&WEB_KEY],
    )
    .unwrap();
    wait_for("the deactivated project", Duration::from_secs(10), || {
        web_start(&node, WEB_KEY).status == 404
    });
    db.execute(
        "UPDATE projects SET sample_rate = 100 WHERE project_key = 'sampledout0000000001'",
        &[],
    )
    .unwrap();
    wait_for("the new sample rate", Duration::from_secs(10), || {
        web_start(&node, "sampledout0000000001").status == 200
    });
    node.stop();
}

/// Starts sessions of `key` from `threads` connections until `stop`; the ids answered 200, and
/// the statuses of the others.
fn start_load(
    node: &Node,
    key: &'static str,
    threads: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<(Vec<u64>, Vec<u16>)>> {
    (0..threads)
        .map(|_| {
            let addr = node.addr;
            let stop = Arc::clone(stop);
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                let mut refused = Vec::new();
                let body = web_start_body(key).to_string();
                let request = common::post_request(
                    "/v1/web/start",
                    &[("Content-Type", "application/json"), ("User-Agent", UA)],
                    body.as_bytes(),
                );
                while !stop.load(Ordering::SeqCst) {
                    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
                        // The node was killed: the test restarts it.
                        break;
                    };
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    if s.write_all(&request).is_err() {
                        break;
                    }
                    match common::read_response(&mut s) {
                        Some(r) if r.status == 200 => ids.push(Node::session_id(&r.json())),
                        Some(r) => refused.push(r.status),
                        None => break,
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                (ids, refused)
            })
        })
        .collect()
}

fn join_load(load: Vec<std::thread::JoinHandle<(Vec<u64>, Vec<u16>)>>) -> (Vec<u64>, Vec<u16>) {
    let mut ids = Vec::new();
    let mut refused = Vec::new();
    for t in load {
        let (i, r) = t.join().unwrap();
        ids.extend(i);
        refused.extend(r);
    }
    (ids, refused)
}

#[test]
fn a_database_outage_loses_no_row_and_known_projects_keep_starting() {
    let pg = PgServer::start();
    let mut db = pg.client();
    add_project(&mut db, WEB_KEY, "web", 100, true, 0);
    let node = node_on(&pg).start();
    wait_until_ready(&node);

    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&node, WEB_KEY, 2, &stop);
    std::thread::sleep(Duration::from_millis(700));
    drop(db);
    pg.stop();
    // Down: starts of a known project go on; an unknown key cannot be looked up (503, not 404).
    std::thread::sleep(Duration::from_secs(2));
    let r = web_start(&node, "nosuchproject0000001");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("Retry-After").is_some());
    let ready = node.request(b"GET /health/ready HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(ready.json()["projects"]["current"], json!(false));
    let during = web_start(&node, WEB_KEY);
    assert_eq!(during.status, 200, "{}", during.text());
    std::thread::sleep(Duration::from_secs(1));
    pg.restart();
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::SeqCst);
    let (mut ids, refused) = join_load(load);
    assert!(refused.is_empty(), "starts refused: {refused:?}");
    ids.push(Node::session_id(&during.json()));
    assert!(ids.len() > 50, "only {} starts", ids.len());

    let mut db = pg.client();
    let want: BTreeSet<u64> = ids.iter().copied().collect();
    wait_for(
        "every row after the outage",
        Duration::from_secs(30),
        || session_ids(&mut db).len() >= want.len(),
    );
    let rows = session_ids(&mut db);
    let got: BTreeSet<u64> = rows.iter().copied().collect();
    assert_eq!(got, want, "rows differ from the sessions started");
    assert_eq!(rows.len(), want.len());
    let log = node.stderr();
    assert!(log.contains("PostgreSQL is back"), "{log}");
    node.stop();
}

#[test]
fn sigkill_mid_insert_leaves_every_row_exactly_once() {
    let pg = PgServer::start();
    let mut db = pg.client();
    add_project(&mut db, WEB_KEY, "web", 100, true, 0);
    let dir = tempfile::tempdir().unwrap();
    let mut want = BTreeSet::new();
    for cycle in 0..3u64 {
        let node = node_on(&pg).dir(dir.path()).start();
        wait_until_ready(&node);
        let stop = Arc::new(AtomicBool::new(false));
        let load = start_load(&node, WEB_KEY, 3, &stop);
        std::thread::sleep(Duration::from_millis(400 + 150 * cycle));
        node.crash();
        stop.store(true, Ordering::SeqCst);
        let (ids, _) = join_load(load);
        assert!(!ids.is_empty());
        want.extend(ids);
    }
    let node = node_on(&pg).dir(dir.path()).start();
    wait_for("every row after the kills", Duration::from_secs(30), || {
        let got: BTreeSet<u64> = session_ids(&mut db).into_iter().collect();
        want.is_subset(&got)
    });
    // Rows of starts whose answer the kill cut off may be there too; none twice (and the
    // primary key would refuse a second one: the writer's replays were no-ops).
    let rows = session_ids(&mut db);
    let distinct: BTreeSet<u64> = rows.iter().copied().collect();
    assert_eq!(rows.len(), distinct.len());
    node.stop();
}

#[test]
fn no_stream_entry_of_a_session_before_its_row() {
    let pg = PgServer::start();
    let redis = RedisServer::start();
    let mut db = pg.client();
    add_project(&mut db, WEB_KEY, "web", 100, true, 0);
    let node = node_on(&pg).env("REDIS_STRING", &redis.url()).start();
    wait_until_ready(&node);

    // Hold the sessions table: the writer's insert waits on the lock, so no row can commit.
    let mut holder = pg.client();
    let mut lock = holder.transaction().unwrap();
    lock.batch_execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let mut sessions = Vec::new();
    for page in 0..4u64 {
        let start = node.start_web(WEB_KEY);
        let token = Node::token(&start);
        let batch = common::walkable_batch(page, 0, b"");
        let r = node.request(&common::batch_request(&token, "player", "", &batch));
        assert_eq!(r.status, 200, "{}", r.text());
        sessions.push(Node::session_id(&start));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        redis.entries("raw").is_empty(),
        "entries reached the stream before their rows"
    );
    lock.commit().unwrap();

    wait_for("the sessions' entries", Duration::from_secs(20), || {
        redis.entries("raw").len() >= 2 * sessions.len()
    });
    // From now on, whenever an entry is seen, its row is there already.
    let seen = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..20 {
        let start = node.start_web(WEB_KEY);
        let token = Node::token(&start);
        let batch = common::walkable_batch(0, 0, b"");
        assert_eq!(
            node.request(&common::batch_request(&token, "player", "", &batch))
                .status,
            200
        );
        seen.lock().unwrap().push(Node::session_id(&start));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let entries = redis.entries("raw");
        let rows: BTreeSet<u64> = session_ids(&mut db).into_iter().collect();
        for entry in &entries {
            assert!(
                rows.contains(&entry.session()),
                "session {} has an entry but no row",
                entry.session()
            );
        }
        if entries.len() >= 2 * (sessions.len() + seen.lock().unwrap().len()) {
            break;
        }
        assert!(Instant::now() < deadline, "entries missing");
        std::thread::sleep(Duration::from_millis(20));
    }
    node.stop();
}

#[test]
fn a_node_started_while_the_database_is_down_serves_once_it_is_up() {
    let pg = PgServer::start();
    add_project(&mut pg.client(), WEB_KEY, "web", 100, true, 0);
    pg.stop();
    let node = node_on(&pg).start();
    // It listens and answers, but cannot start sessions of projects it has never read.
    let ready = node.request(b"GET /health/ready HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(ready.status, 503);
    let reasons = ready.json()["reasons"].to_string();
    assert!(reasons.contains("projects not read yet"), "{reasons}");
    assert_eq!(ready.json()["projects"]["loaded"], json!(false));
    let r = web_start(&node, WEB_KEY);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("Retry-After").is_some());
    // A batch of a valid token needs no project: it is stored.
    let token = common::mint_token(7, 0, now_ms() + 60_000);
    let batch = common::walkable_batch(0, 0, b"");
    let stored = node.request(&common::batch_request(&token, "player", "", &batch));
    assert_eq!(stored.status, 200, "{}", stored.text());

    pg.restart();
    wait_until_ready(&node);
    let started = web_start(&node, WEB_KEY);
    assert_eq!(started.status, 200, "{}", started.text());
    let session = Node::session_id(&started.json());
    let mut db = pg.client();
    wait_for("the row", Duration::from_secs(20), || {
        session_ids(&mut db).contains(&session)
    });
    let log = node.stderr();
    assert!(log.contains("unreachable"), "{log}");
    node.stop();
}

/// `sslmode=require` (libpq's: encrypted, the certificate not checked, as a self-signed one
/// is here): both the loader and the writer connect over TLS.
#[test]
fn sslmode_require_connects_over_tls() {
    let pg = PgServer::start_tls();
    let mut db = pg.client();
    add_project(&mut db, WEB_KEY, "web", 100, true, 0);
    let node = Node::builder()
        .no_projects()
        .env("POSTGRES_STRING", &pg.url_with("require"))
        .start();
    wait_until_ready(&node);
    let started = web_start(&node, WEB_KEY);
    assert_eq!(started.status, 200, "{}", started.text());
    let session = Node::session_id(&started.json());
    wait_for("the row", Duration::from_secs(20), || {
        session_ids(&mut db).contains(&session)
    });
    let connections: Vec<bool> = db
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'replay-ingest'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(connections, [true, true], "the loader's and the writer's");
    node.stop();
}

//! The forwarders through the binary: what OpenReplay's queues receive, in order, at least once,
//! through outages and crashes. Redis is a real `redis-server`; Kafka librdkafka's mock cluster.

mod common;

use std::io::Write as _;
use std::time::Duration;

use common::queues::{Entry, RedisServer};
use common::*;

const WAIT: Duration = Duration::from_secs(30);

fn redis_node(redis: &RedisServer) -> NodeBuilder {
    Node::builder().env("REDIS_STRING", &redis.url())
}

/// Waits until `stream` holds at least `n` entries; returns them.
fn wait_entries(redis: &RedisServer, stream: &str, n: usize) -> Vec<Entry> {
    let mut got = Vec::new();
    wait_for(&format!("{n} entries in {stream}"), WAIT, || {
        got = redis.entries(stream);
        got.len() >= n
    });
    got
}

/// Waits until `stream` holds at least `n` distinct values (at least once: some may come
/// twice); returns every entry.
fn wait_distinct(redis: &RedisServer, stream: &str, n: usize) -> Vec<Entry> {
    let mut got = Vec::new();
    wait_for(&format!("{n} distinct values in {stream}"), WAIT, || {
        got = redis.entries(stream);
        first_occurrences(&got).len() >= n
    });
    got
}

fn multipart(fields: &[(&str, &str)], files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "----boundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (name, value) in fields {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        )
        .unwrap();
    }
    for (name, data) in files {
        write!(body, "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").unwrap();
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    write!(body, "--{boundary}--\r\n").unwrap();
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn image_json(value: &[u8]) -> (String, Vec<u8>) {
    use base64::Engine;
    let v: serde_json::Value = serde_json::from_slice(value).unwrap();
    let obj = v.as_object().unwrap();
    assert_eq!(obj.len(), 2, "Name and Data only: {v}");
    let data = base64::engine::general_purpose::STANDARD
        .decode(obj["Data"].as_str().unwrap())
        .unwrap();
    (obj["Name"].as_str().unwrap().to_string(), data)
}

fn frame(ts: u64, bytes: &[u8]) -> Vec<u8> {
    let mut out = ts.to_le_bytes().to_vec();
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

/// Every kind of request, and what each topic holds afterwards: the fields OpenReplay's
/// consumers look up (`sessionID` in decimal, then `value`), auto ids, log order, the bare
/// SessionStart, `visual` split in two, images as `{"Name", "Data"}`, nothing for a batch
/// that does not walk or a not-started.
#[test]
fn every_request_reaches_redis_as_openreplay_reads_it() {
    let redis = RedisServer::start();
    let node = redis_node(&redis).start();

    let s = node.start_web("web-key");
    let (token, sid) = (Node::token(&s), Node::session_id(&s));
    let player = walkable_batch(1, 0, b"player");
    let assets = walkable_batch(1, 1, b"assets");
    let visual = fixture("pv2-batch1-visual-split855.bin");
    let broken = vec![81, 2, 1, 0, 0, 0, 100, 9, 9, 9, 9];
    let gzipped = walkable_batch(1, 2, &[b'g'; 3000]);
    let r = node.post(
        "/v1/web/i",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("DataType", "player"),
            ("Content-Encoding", "gzip"),
        ],
        &gzip(&gzipped),
    );
    assert_eq!(r.status, 200, "gzip: {}", r.text());
    for (data_type, query, body) in [
        ("player", "", &player),
        ("assets", "", &assets),
        ("visual", "?split=855", &visual),
        ("player", "", &broken),
    ] {
        let r = node.request(&batch_request(&token, data_type, query, body));
        assert_eq!(r.status, 200, "{data_type}: {}", r.text());
    }
    let r = node.post(
        "/v1/web/not-started",
        &[("Content-Type", "application/json"), ("User-Agent", UA)],
        br#"{"projectKey":"web-key","trackerVersion":"19.0.1","doNotTrack":false}"#,
    );
    assert_eq!(r.status, 200, "not-started: {}", r.text());
    // Canvas frames: every file of the upload in one message.
    let (ct, body) = multipart(
        &[],
        &[("c1_100.jpeg", b"first frame"), ("c1_250.jpeg", b"second")],
    );
    let auth = format!("Bearer {token}");
    let r = node.post(
        "/v1/web/images",
        &[("Authorization", &auth), ("Content-Type", &ct)],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());

    let r = node.mobile_start("mobile-key");
    assert_eq!(r.status, 200, "{}", r.text());
    let m = r.json();
    let (mtoken, msid) = (Node::token(&m), Node::session_id(&m));
    let mauth = format!("Bearer {mtoken}");
    let mbatch = [&[107u8, 0x80, 0x01, 2, 0][..], b"mobile messages"].concat();
    let r = node.post("/v1/mobile/i", &[("Authorization", &mauth)], &mbatch);
    assert_eq!(r.status, 200, "{}", r.text());
    // Mobile screenshots: a gzipped tar of `<base>_<ts>.<ext>` entries.
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("screen_1700000000001.jpeg", &b"one"[..]),
        ("screen_1700000000002.jpeg", b"two!"),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, data).unwrap();
    }
    let tgz = gzip(&tar.into_inner().unwrap());
    let (ct, body) = multipart(&[("projectKey", "mobile-key")], &[("shots.tar.gz", &tgz)]);
    let r = node.post(
        "/v1/mobile/images",
        &[("Authorization", &mauth), ("Content-Type", &ct)],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // raw: the bare SessionStart, the player batch, visual's player half; never the broken one.
    let raw = wait_entries(&redis, "raw", 4);
    let web_start = node.cat(sid, Some("raw"));
    assert_eq!(raw[0].value()[0], 1, "a bare SessionStart (type 1) first");
    let want_raw: Vec<Vec<u8>> = vec![
        raw[0].value().to_vec(),
        gzipped.clone(),
        player.clone(),
        visual[..855].to_vec(),
    ];
    assert_eq!(
        raw.iter().map(|e| e.value().to_vec()).collect::<Vec<_>>(),
        want_raw
    );
    assert!(web_start.starts_with(raw[0].value()), "the start as stored");
    for e in &raw {
        assert_eq!(e.fields.len(), 2, "sessionID and value only: {e:?}");
        assert_eq!(e.fields[0].1, sid.to_string().as_bytes());
        let (ms, seq) = e.id.split_once('-').unwrap();
        assert!(
            ms.parse::<u64>().unwrap() > 1_600_000_000_000 && seq.parse::<u64>().unwrap() <= 8191
        );
    }
    let assets_got = wait_entries(&redis, "raw-assets", 2);
    assert_eq!(
        assets_got
            .iter()
            .map(|e| e.value().to_vec())
            .collect::<Vec<_>>(),
        vec![assets.clone(), visual[855..].to_vec()]
    );
    let canvas = wait_entries(&redis, "canvas-images", 1);
    assert_eq!(canvas[0].session(), sid);
    assert_eq!(
        image_json(canvas[0].value()),
        (
            "c1.jpeg".to_string(),
            [frame(100, b"first frame"), frame(250, b"second")].concat()
        )
    );

    let ios = wait_entries(&redis, "raw-ios", 2);
    assert_eq!(ios[0].value()[0], 90, "a bare MobileSessionStart first");
    assert_eq!(ios[1].value(), &mbatch[..]);
    assert!(ios.iter().all(|e| e.session() == msid));
    let images = wait_entries(&redis, "raw-images", 1);
    assert_eq!(images[0].session(), msid);
    assert_eq!(
        image_json(images[0].value()),
        (
            "screen.jpeg".to_string(),
            [frame(1700000000001, b"one"), frame(1700000000002, b"two!")].concat()
        )
    );

    // Nothing else arrives (the broken batch, the not-started), and the consumer says what it
    // handed on.
    wait_for("ls to show the forwarder caught up", WAIT, || {
        consumers(&node.dir).iter().any(|c| {
            c["consumer"] == "forward-redis"
                && c["lag_records"] == 0
                && c["delivered_records"].as_u64() >= Some(11)
        })
    });
    assert_eq!(redis.entries("raw").len(), 4);
    assert_eq!(redis.entries("raw-assets").len(), 2);

    // Read as OpenReplay's services read: a consumer group from id 0, ten at a time; every
    // entry has a decimal sessionID and a value that is a bare start or a batch that walks.
    let mut conn = redis.connection();
    let mut read = 0;
    for stream in ["raw", "raw-assets", "raw-ios"] {
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg("g")
            .arg("0")
            .arg("MKSTREAM")
            .query(&mut conn)
            .unwrap();
        loop {
            type Reply = Option<Vec<(String, Vec<(String, Vec<(String, Vec<u8>)>)>)>>;
            let reply: Reply = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("g")
                .arg("g")
                .arg("COUNT")
                .arg(10)
                .arg("BLOCK")
                .arg(200)
                .arg("STREAMS")
                .arg(stream)
                .arg(">")
                .query(&mut conn)
                .unwrap();
            let Some(streams) = reply else { break };
            for (_, entries) in streams {
                for (id, fields) in entries {
                    let map: std::collections::HashMap<_, _> = fields.into_iter().collect();
                    let session: u64 = std::str::from_utf8(&map["sessionID"])
                        .unwrap()
                        .parse()
                        .unwrap();
                    assert!(session == sid || session == msid);
                    let value = &map["value"];
                    match (stream, value[0]) {
                        ("raw-ios", 90) | ("raw", 1) => {}
                        ("raw-ios", _) => {
                            replay_ingest::codec::walk_mobile_batch(value).unwrap();
                        }
                        _ => {
                            replay_ingest::codec::walk_web_batch(value).unwrap();
                        }
                    }
                    let _: i64 = redis::cmd("XACK")
                        .arg(stream)
                        .arg("g")
                        .arg(&id)
                        .query(&mut conn)
                        .unwrap();
                    read += 1;
                }
            }
        }
    }
    assert_eq!(read, 4 + 2 + 2);
    node.stop();
}

/// Redis goes away for 30 s while batches keep coming (50 a second): every one is answered
/// 200, waits in the log (`ls` shows the lag), and reaches Redis in order once it is back; none
/// is lost.
#[test]
fn a_redis_outage_loses_nothing_and_the_backlog_drains_in_order() {
    let mut redis = RedisServer::start();
    let node = redis_node(&redis).start();
    let s = node.start_web("web-key");
    let (token, sid) = (Node::token(&s), Node::session_id(&s));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (addr, stop) = (node.addr, std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut conn = std::net::TcpStream::connect(addr).unwrap();
            let mut sent = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let i = sent.len() as u64;
                let body = walkable_batch(1, i, format!("batch {i:05}").as_bytes());
                conn.write_all(&batch_request(&token, "player", "", &body))
                    .unwrap();
                let r = read_response(&mut conn).expect("an answer");
                assert_eq!(r.status, 200, "batch {i}: {}", r.text());
                sent.push(body);
                std::thread::sleep(Duration::from_millis(20));
            }
            sent
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    redis.stop();
    let down_at = std::time::Instant::now();
    // The forwarder falls behind by what is sent meanwhile (its saved cursor shows it).
    let mut last = Vec::new();
    let lagging = (0..300).any(|_| {
        last = consumers(&node.dir);
        let behind = last
            .iter()
            .any(|c| c["consumer"] == "forward-redis" && c["lag_records"].as_u64() >= Some(100));
        std::thread::sleep(Duration::from_millis(100));
        behind
    });
    assert!(lagging, "ls: {last:?}");
    std::thread::sleep(Duration::from_secs(30).saturating_sub(down_at.elapsed()));
    redis.restart();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let want = sender.join().unwrap();
    assert!(want.len() > 1000, "under load: {} batches", want.len());

    let got = wait_distinct(&redis, "raw", want.len() + 1);
    // At least once, in order: the first occurrences are exactly the batches as sent.
    let firsts = first_occurrences(&got);
    assert_eq!(firsts[0][0], 1, "the SessionStart first");
    assert!(
        firsts[1..] == want[..],
        "every batch, in order, at least once"
    );
    assert!(got.iter().all(|e| e.session() == sid));
    eprintln!(
        "outage: {} batches acknowledged, {} entries in Redis ({} duplicates)",
        want.len(),
        got.len(),
        got.len() - firsts.len()
    );
    assert!(
        node.stderr().contains("the queue is back"),
        "{}",
        node.stderr()
    );
}

/// The values of `entries` without repeats, in the order they first appear.
fn first_occurrences(entries: &[Entry]) -> Vec<Vec<u8>> {
    let mut seen = std::collections::HashSet::new();
    entries
        .iter()
        .map(|e| e.value().to_vec())
        .filter(|v| seen.insert(v.clone()))
        .collect()
}

/// With its queue down, a forwarder's lag passes `--ready-max-lag` and `/health/ready` says so
/// (503, naming it); once the queue is back and the backlog sent, the node is ready again.
#[test]
fn readiness_fails_while_a_forwarder_lags_past_its_bound() {
    let mut redis = RedisServer::start();
    let node = redis_node(&redis)
        .arg("--ready-max-lag")
        .arg("1s")
        .arg("--segment-max-age")
        .arg("1s")
        .start();
    let ready = || node.request(b"GET /health/ready HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(ready().status, 200, "{}", ready().text());
    redis.stop();
    let s = node.start_web("web-key");
    let token = Node::token(&s);
    let body = walkable_batch(1, 0, b"while redis is down");
    assert_eq!(
        node.request(&batch_request(&token, "player", "", &body))
            .status,
        200
    );
    let mut last = None;
    wait_for("not ready", WAIT, || {
        let r = ready();
        let lagging = r.status == 503 && r.text().contains("forward-redis");
        last = Some(r.text());
        lagging
    });
    redis.restart();
    wait_for("ready again", WAIT, || ready().status == 200);
    assert!(last.unwrap().contains("forward-redis"));
    wait_entries(&redis, "raw", 2);
    node.stop();
}

/// `rediss://`: the forwarder speaks TLS to a Redis that serves nothing else.
#[test]
fn rediss_urls_forward_over_tls() {
    let redis = RedisServer::start_tls();
    let node = redis_node(&redis).start();
    let s = node.start_web("web-key");
    let (token, sid) = (Node::token(&s), Node::session_id(&s));
    let body = walkable_batch(1, 0, b"over tls");
    let r = node.request(&batch_request(&token, "player", "", &body));
    assert_eq!(r.status, 200);
    let got = wait_entries(&redis, "raw", 2);
    assert_eq!(got[1].value(), &body[..]);
    assert_eq!(got[1].session(), sid);
    node.stop();
}

/// What the forwarder `name` handed on up to its saved cursor (its cursor file).
fn saved_delivered(dir: &std::path::Path, name: &str) -> u64 {
    let path = dir.join("consumers").join(format!("{name}.cursor"));
    let Ok(text) = std::fs::read(&path) else {
        return 0;
    };
    let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
    v["delivered"]["records"].as_u64().unwrap_or(0)
}

/// Kills a node (SIGKILL) while it takes and forwards batches, three times, and restarts it:
/// every batch answered 200 reaches Redis at least once, in order, and the duplicates are no
/// more than what had been sent after the last saved cursor.
#[test]
fn a_crashed_node_resumes_forwarding_from_its_cursor() {
    let redis = RedisServer::start();
    let keep = tempfile::tempdir().unwrap();
    let dir = keep.path().join("data");
    let mut want = Vec::new();
    let mut allowed = 0;
    for life in 0..3 {
        let node = redis_node(&redis).dir(&dir).start();
        let s = node.start_web("web-key");
        let token = Node::token(&s);
        want.push(None); // its SessionStart
        let n = 200 + life * 50;
        for i in 0..n {
            let body = walkable_batch(1, i as u64, format!("life {life} batch {i:05}").as_bytes());
            let r = node.request(&batch_request(&token, "player", "", &body));
            assert_eq!(r.status, 200);
            want.push(Some(body));
        }
        node.crash();
        // Sent but not saved: what the next life may send again.
        allowed += redis.entries("raw").len() as u64 - saved_delivered(&dir, "forward-redis");
    }
    let node = redis_node(&redis).dir(&dir).start();
    let got = wait_distinct(&redis, "raw", want.len());
    let firsts = first_occurrences(&got);
    // None lost: every batch answered 200 is there (and each life's SessionStart).
    let sent: std::collections::HashSet<&Vec<u8>> = want.iter().flatten().collect();
    let arrived: std::collections::HashSet<&Vec<u8>> = firsts.iter().collect();
    assert!(
        sent.is_subset(&arrived),
        "a batch answered 200 never reached Redis"
    );
    assert_eq!(firsts.len(), want.len(), "nothing else arrived");
    assert_eq!(
        firsts.iter().filter(|v| v[0] == 1).count(),
        3,
        "three SessionStarts"
    );
    // In order across workers (these requests alternate between them): each batch was
    // answered before the next was sent, so it goes first.
    let position: std::collections::HashMap<&Vec<u8>, usize> =
        firsts.iter().enumerate().map(|(i, v)| (v, i)).collect();
    let bodies: Vec<&Vec<u8>> = want.iter().flatten().collect();
    let overtaken = bodies
        .windows(2)
        .filter(|w| position[w[0]] > position[w[1]])
        .count();
    assert_eq!(overtaken, 0, "batches overtaken by the next one");
    let duplicates = (got.len() - firsts.len()) as u64;
    eprintln!(
        "3 kills: {} records, {duplicates} duplicates (at most {allowed} allowed)",
        want.len()
    );
    assert!(
        duplicates <= allowed,
        "{duplicates} duplicates, {allowed} sent after the saves"
    );
    node.stop();
}

/// `redrive` sends exactly one session's records again, in order, to the queue named.
#[test]
fn redrive_sends_exactly_one_sessions_records() {
    let redis = RedisServer::start();
    let node = redis_node(&redis).start();
    let mut sessions = Vec::new();
    for s in 0..2 {
        let start = node.start_web("web-key");
        let (token, sid) = (Node::token(&start), Node::session_id(&start));
        let mut bodies = Vec::new();
        for i in 0..5u64 {
            let body = walkable_batch(1, i, format!("session {s} batch {i}").as_bytes());
            assert_eq!(
                node.request(&batch_request(&token, "player", "", &body))
                    .status,
                200
            );
            bodies.push(body);
        }
        sessions.push((sid, bodies));
    }
    wait_entries(&redis, "raw", 12);
    // Into a second, empty Redis: what it holds is what the redrive sent.
    let other = RedisServer::start();
    let (sid, bodies) = &sessions[1];
    let out = std::process::Command::new(BIN)
        .args(["redrive", "--session", &sid.to_string(), "--data-dir"])
        .arg(&node.dir)
        .env("REDIS_STRING", other.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = other.entries("raw");
    assert_eq!(got.len(), 6, "{}", String::from_utf8_lossy(&out.stdout));
    assert!(got.iter().all(|e| e.session() == *sid));
    assert_eq!(got[0].value()[0], 1, "its SessionStart first");
    let values: Vec<Vec<u8>> = got[1..].iter().map(|e| e.value().to_vec()).collect();
    assert!(values == *bodies);
    node.stop();
}

/// Three nodes (distinct shards, one secret) behind Debian's haproxy, round robin: a session
/// whose start and batches land on different nodes arrives whole in the one Redis.
#[test]
fn three_nodes_behind_haproxy_feed_one_redis() {
    let redis = RedisServer::start();
    let nodes: Vec<Node> = (0..3)
        .map(|shard| redis_node(&redis).env("SHARD", &shard.to_string()).start())
        .collect();
    let lb = common::queues::Haproxy::start(&nodes.iter().map(|n| n.addr).collect::<Vec<_>>());
    let mut want: std::collections::HashMap<u64, Vec<Vec<u8>>> = Default::default();
    let mut shards = std::collections::HashSet::new();
    for s in 0..6 {
        let start = lb.post_json(
            "/v1/web/start",
            &serde_json::json!({
                "projectKey": "web-key", "trackerVersion": "19.0.1", "timestamp": now_ms(),
                "userUUID": null, "revID": "", "isSnippet": false,
            }),
        );
        let (token, sid) = (Node::token(&start), Node::session_id(&start));
        shards.insert((sid >> 8) & 0xff);
        for i in 0..6u64 {
            let body = walkable_batch(1, i, format!("session {s} batch {i}").as_bytes());
            // A new connection each time: haproxy sends it to the next node.
            let r = lb.request(&batch_request(&token, "player", "", &body));
            assert_eq!(r.status, 200, "{}", r.text());
            want.entry(sid).or_default().push(body);
        }
    }
    assert_eq!(shards.len(), 3, "starts landed on every node: {shards:?}");
    let got = wait_entries(&redis, "raw", 6 * 7);
    for (sid, bodies) in &want {
        let values: Vec<Vec<u8>> = got
            .iter()
            .filter(|e| e.session() == *sid)
            .map(|e| e.value().to_vec())
            .collect();
        assert_eq!(values.len(), 7, "session {sid}");
        // Nodes forward independently: the start (from one node) and the batches (from the
        // others) each arrive in their node's order, not in one order across nodes, as with
        // OpenReplay's own ingest pods. The session is whole.
        assert_eq!(
            values.iter().filter(|v| v[0] == 1).count(),
            1,
            "its SessionStart"
        );
        let mut batches: Vec<Vec<u8>> = values.into_iter().filter(|v| v[0] != 1).collect();
        batches.sort();
        let mut sorted = bodies.clone();
        sorted.sort();
        assert!(batches == sorted, "session {sid} whole");
    }
    for node in nodes {
        node.stop();
    }
}

#[cfg(feature = "kafka")]
mod kafka {
    use super::*;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;
    use rdkafka::{ClientConfig, Message};

    /// (partition, key, value) of every record of `topic`, by partition then offset.
    fn records(
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        want: usize,
    ) -> Vec<(i32, Vec<u8>, Vec<u8>)> {
        records_until(bootstrap, topic, partitions, |got| got.len() >= want)
    }

    /// (partition, key, value) of `topic`'s records from the start, once `done` holds (or
    /// after the wait).
    fn records_until(
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        done: impl Fn(&[(i32, Vec<u8>, Vec<u8>)]) -> bool,
    ) -> Vec<(i32, Vec<u8>, Vec<u8>)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("test-{topic}"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut assignment = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            assignment
                .add_partition_offset(topic, p, rdkafka::Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + WAIT;
        while !done(&out) && std::time::Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                out.push((
                    m.partition(),
                    m.key().unwrap_or_default().to_vec(),
                    m.payload().unwrap_or_default().to_vec(),
                ));
            }
        }
        out
    }

    /// Key the session id as 8 bytes little-endian, partition `sessionID & 15`, values as
    /// stored; through a broker outage; values over QUEUE_MESSAGE_SIZE_LIMIT quarantined.
    #[test]
    fn kafka_gets_openreplays_keys_and_partitions_through_an_outage() {
        let mock = MockCluster::new(1).unwrap();
        for topic in [
            "raw",
            "raw-assets",
            "raw-ios",
            "raw-images",
            "canvas-images",
        ] {
            mock.create_topic(topic, 16, 1).unwrap();
        }
        let bootstrap = mock.bootstrap_servers();
        let keep = tempfile::tempdir().unwrap();
        let dir = keep.path().join("data");
        let kafka_node = || {
            Node::builder()
                .dir(&dir)
                .env("KAFKA_SERVERS", &bootstrap)
                .env("QUEUE_MESSAGE_SIZE_LIMIT", "4000")
                .start()
        };
        let node = kafka_node();
        let mut sessions = Vec::new();
        let mut want = Vec::new();
        for s in 0..3 {
            let start = node.start_web("web-key");
            let (token, sid) = (Node::token(&start), Node::session_id(&start));
            sessions.push(sid);
            for i in 0..5u64 {
                let body = walkable_batch(1, i, format!("s{s} batch {i}").as_bytes());
                let r = node.request(&batch_request(&token, "player", "", &body));
                assert_eq!(r.status, 200);
                want.push((sid, body));
            }
            // Over the limit: quarantined, not sent.
            let big = walkable_batch(1, 9, &vec![b'x'; 5000]);
            let r = node.request(&batch_request(&token, "player", "", &big));
            assert_eq!(r.status, 200);
        }
        let got = records(&bootstrap, "raw", 16, 18);
        assert_eq!(got.len(), 18, "3 starts and 15 batches: {}", node.stderr());
        for (partition, key, _) in &got {
            assert_eq!(key.len(), 8);
            let sid = u64::from_le_bytes(key[..].try_into().unwrap());
            assert!(sessions.contains(&sid));
            assert_eq!(*partition as u64, sid & 15);
        }
        for &sid in &sessions {
            let values: Vec<&Vec<u8>> = got
                .iter()
                .filter(|(_, k, _)| k[..] == sid.to_le_bytes())
                .map(|(_, _, v)| v)
                .collect();
            assert_eq!(values[0][0], 1, "the SessionStart first");
            let batches: Vec<&Vec<u8>> = want
                .iter()
                .filter(|(s, _)| *s == sid)
                .map(|(_, b)| b)
                .collect();
            assert_eq!(values[1..], batches[..], "in order, none over the limit");
        }
        let quarantined: String = std::fs::read_dir(node.dir.join("quarantine"))
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        assert_eq!(
            quarantined.matches("over the queue's limit").count(),
            3,
            "{quarantined}"
        );

        // The broker goes down: batches are answered and wait; it comes back: they arrive.
        mock.broker_down(1).unwrap();
        let start = node.start_web("web-key");
        let (token, sid) = (Node::token(&start), Node::session_id(&start));
        let mut later = Vec::new();
        for i in 0..10u64 {
            let body = walkable_batch(1, i, format!("during the outage {i}").as_bytes());
            let r = node.request(&batch_request(&token, "player", "", &body));
            assert_eq!(r.status, 200);
            later.push(body);
        }
        std::thread::sleep(Duration::from_secs(2));
        mock.broker_up(1).unwrap();
        let got = records(&bootstrap, "raw", 16, 18 + 11);
        let values: Vec<&Vec<u8>> = got
            .iter()
            .filter(|(_, k, _)| k[..] == sid.to_le_bytes())
            .map(|(_, _, v)| v)
            .collect();
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<&Vec<u8>> = values
            .into_iter()
            .skip(1)
            .filter(|v| seen.insert(v.to_vec()))
            .collect();
        assert_eq!(firsts, later.iter().collect::<Vec<_>>());
        // Killed while forwarding, restarted: what it acknowledged arrives, at least once.
        let mut last = Vec::new();
        for i in 0..50u64 {
            let body = walkable_batch(1, 100 + i, format!("before the kill {i}").as_bytes());
            let r = node.request(&batch_request(&token, "player", "", &body));
            assert_eq!(r.status, 200);
            last.push(body);
        }
        node.crash();
        let node = kafka_node();
        let all_there = |got: &[(i32, Vec<u8>, Vec<u8>)]| {
            last.iter().all(|b| got.iter().any(|(_, _, v)| v == b))
        };
        let got = records_until(&bootstrap, "raw", 16, all_there);
        assert!(
            all_there(&got),
            "every batch acknowledged before the kill reached Kafka"
        );
        node.stop();
    }
}

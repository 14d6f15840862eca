//! The forwarders through the binary: what OpenReplay's queues receive, in order, at least once,
//! through outages and crashes. Redis is a real `redis-server`; Kafka librdkafka's mock cluster.

mod common;

use std::io::Write;
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

fn mobile_start(node: &Node) -> serde_json::Value {
    let body = serde_json::json!({
        "projectKey": "mobile-key", "trackerVersion": "1.0.15", "revID": "",
        "userUUID": "0CFEB1C0-FB25-4AA3-8FC0-4D0C1D28B1A1", "userOSVersion": "17.2",
        "userDevice": "iPhone14,2", "userDeviceType": "mobile", "timestamp": now_ms(),
        "timezone": "UTC+01:00", "deviceMemory": 6000, "doNotRecord": false, "platform": "ios",
        "width": 390, "height": 844,
    });
    let r = node.post(
        "/v1/mobile/start",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
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

    let m = mobile_start(&node);
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
    let raw = wait_entries(&redis, "raw", 3);
    let web_start = node.cat(sid, Some("raw"));
    assert_eq!(raw[0].value()[0], 1, "a bare SessionStart (type 1) first");
    let want_raw: Vec<Vec<u8>> = vec![
        raw[0].value().to_vec(),
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
    assert_eq!(redis.entries("raw").len(), 3);
    assert_eq!(redis.entries("raw-assets").len(), 2);
    node.stop();
}

/// Redis goes away while batches keep coming: every one is answered 200, waits in the log
/// (`ls` shows the lag), and reaches Redis in order once it is back; none is lost.
#[test]
fn a_redis_outage_loses_nothing_and_the_backlog_drains_in_order() {
    let mut redis = RedisServer::start();
    let node = redis_node(&redis).start();
    let s = node.start_web("web-key");
    let (token, sid) = (Node::token(&s), Node::session_id(&s));
    let send = |i: u64| {
        let body = walkable_batch(1, i, format!("batch {i:05}").as_bytes());
        let r = node.request(&batch_request(&token, "player", "", &body));
        assert_eq!(r.status, 200, "batch {i}: {}", r.text());
        body
    };
    let mut want: Vec<Vec<u8>> = (0..20).map(send).collect();
    wait_entries(&redis, "raw", 21);

    redis.stop();
    want.extend((20..220).map(send));
    // The forwarder is behind by the batches sent meanwhile (its saved cursor shows it).
    let mut last = Vec::new();
    let lagging = (0..300).any(|_| {
        last = consumers(&node.dir);
        let behind = last
            .iter()
            .any(|c| c["consumer"] == "forward-redis" && c["lag_records"].as_u64() >= Some(150));
        std::thread::sleep(Duration::from_millis(100));
        behind
    });
    assert!(lagging, "ls: {last:?}");
    redis.restart();
    want.extend((220..240).map(send));

    let got = wait_distinct(&redis, "raw", 241);
    // At least once, in order: the first occurrences are exactly the batches as sent.
    let firsts = first_occurrences(&got);
    assert_eq!(firsts[0][0], 1, "the SessionStart first");
    assert!(
        firsts[1..] == want[..],
        "every batch, in order, at least once"
    );
    assert!(got.iter().all(|e| e.session() == sid));
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

/// A node killed while it forwards resumes from its saved cursor: every batch answered 200
/// reaches Redis at least once, in order.
#[test]
fn a_crashed_node_resumes_forwarding_from_its_cursor() {
    let redis = RedisServer::start();
    let keep = tempfile::tempdir().unwrap();
    let dir = keep.path().join("data");
    let node = redis_node(&redis).dir(&dir).start();
    let s = node.start_web("web-key");
    let token = Node::token(&s);
    let mut want = Vec::new();
    for i in 0..300u64 {
        let body = walkable_batch(1, i, format!("batch {i:05}").as_bytes());
        let r = node.request(&batch_request(&token, "player", "", &body));
        assert_eq!(r.status, 200);
        want.push(body);
    }
    node.crash();
    let node = redis_node(&redis).dir(&dir).start();
    let got = wait_distinct(&redis, "raw", 301);
    let firsts = first_occurrences(&got);
    assert_eq!(firsts[0][0], 1, "the SessionStart first");
    assert!(
        firsts[1..] == want[..],
        "every batch, in order, at least once"
    );
    node.stop();
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
        while out.len() < want && std::time::Instant::now() < deadline {
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
        let node = Node::builder()
            .env("KAFKA_SERVERS", &bootstrap)
            .env("QUEUE_MESSAGE_SIZE_LIMIT", "4000")
            .start();
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
        node.stop();
    }
}

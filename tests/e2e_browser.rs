//! End to end with the real client: the OpenReplay web tracker (npm `@openreplay/tracker` 19.0.1,
//! pinned in `e2e/package-lock.json`) recording a scripted user in real headless Chromium, against
//! the real node binary. `e2e/run.mjs` drives the browser and logs every request the page made to
//! the ingest; these tests then wait on the node's side (`ls`/`cat`, with a deadline) until every
//! batch the node accepted is in the store, and check it there.
//!
//! Needs Chromium (`apt-get install -y chromium`), Node.js and `npm ci` in `e2e/`; `./test.sh`
//! (the README's test command) installs them. When one is missing the tests fail, saying so:
//! they never skip.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use replay_ingest::codec::{self, BatchMeta, Reader};
use serde_json::Value;

const E2E_PROJECTS: &str = r#"[
  {"projectKey": "e2e-pv2", "projectID": 71, "platform": "web", "protocolVersion": 2},
  {"projectKey": "e2e-pv1", "projectID": 72, "platform": "web", "protocolVersion": 1},
  {"projectKey": "e2e-short", "projectID": 73, "platform": "web", "protocolVersion": 2, "maxSessionDuration": 4000}
]"#;

/// How long the node gets to show every accepted batch once the browser is done. A 200 is only
/// sent once the record is complete, so this is slack for the page-close batches.
const STORE_DEADLINE: Duration = Duration::from_secs(20);

/// One browser at a time: the machine is small and shared, and the expiry scenario is timed.
static BROWSER: Mutex<()> = Mutex::new(());

fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e")
}

fn chromium_path() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Fails, saying how to install what is missing: a suite that skips proves nothing.
fn require_tools() {
    let mut missing = Vec::new();
    if !chromium_path().exists() {
        missing.push(format!(
            "Chromium at {} — `apt-get update && apt-get install -y chromium` (or set CHROMIUM)",
            chromium_path().display()
        ));
    }
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_ok {
        missing.push("Node.js (`node`) — `apt-get install -y nodejs npm`".to_string());
    }
    for file in [
        "@openreplay/tracker/dist/lib/entry.js",
        "playwright-core/package.json",
    ] {
        if !e2e_dir().join("node_modules").join(file).exists() {
            missing.push(format!(
                "e2e/node_modules/{file} — `npm ci` in {}",
                e2e_dir().display()
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "the end-to-end suite needs:\n  {}\n(./test.sh installs all of them)",
        missing.join("\n  ")
    );
}

struct Scenario {
    key: &'static str,
    rounds: u32,
    pause_ms: u32,
    /// Page and ingest on one origin (the runner passes /ingest through): no CORS preflights.
    same_origin: bool,
}

/// What the page sent, as the runner logged it.
struct Run {
    requests: Vec<Value>,
    page_log: String,
}

fn run_browser(node: &Node, scenario: &Scenario) -> Run {
    require_tools();
    let out = node.dir.join(format!("requests-{}.json", scenario.key));
    let runner_log = node.dir.join(format!("runner-{}.log", scenario.key));
    let _one_browser = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let mut cmd = Command::new("node");
    cmd.arg(e2e_dir().join("run.mjs"))
        .arg("--node")
        .arg(format!("http://{}", node.addr))
        .arg("--key")
        .arg(scenario.key)
        .arg("--out")
        .arg(&out)
        .arg("--rounds")
        .arg(scenario.rounds.to_string())
        .arg("--pause")
        .arg(scenario.pause_ms.to_string())
        .arg("--timeout")
        .arg("60000")
        .arg("--chromium")
        .arg(chromium_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&runner_log).unwrap());
    if scenario.same_origin {
        cmd.arg("--same-origin");
    }
    let mut child = cmd.spawn().expect("start node e2e/run.mjs");
    let status = wait_timeout(&mut child, Duration::from_secs(90));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let page_log = std::fs::read_to_string(&runner_log).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "the browser run failed ({status:?}); runner and page log:\n{page_log}"
    );
    let log: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    Run {
        requests: log["requests"].as_array().cloned().unwrap_or_default(),
        page_log,
    }
}

fn header<'a>(request: &'a Value, name: &str) -> Option<&'a str> {
    request["headers"]
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
}

fn query_param<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    url.split_once('?')?.1.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then_some(v)
    })
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// The session a token names: its first part is the session id in base 36.
fn token_session(token: &str) -> u64 {
    let id = token.split('.').next().unwrap_or_default();
    u64::from_str_radix(id, 36).unwrap_or_else(|_| panic!("not one of our tokens: {token}"))
}

/// A batch request the page made to `/i`.
#[derive(Debug)]
struct Sent {
    session: u64,
    page_no: u64,
    seq: u64,
    data_type: String,
    split: Option<usize>,
    gzip: bool,
    status: Option<u64>,
    /// "browser", "proxy" (sent while the page unloaded: only the pass-through saw it) or "both".
    seen_by: String,
    /// The body as the node must store it (gzip decoded).
    body: Vec<u8>,
}

impl Sent {
    /// (topic, bytes) the node must have stored for this batch.
    fn parts(&self) -> Vec<(&'static str, &[u8])> {
        match (self.data_type.as_str(), self.split) {
            ("visual", Some(split)) => vec![
                ("raw", &self.body[..split]),
                ("raw-assets", &self.body[split..]),
            ],
            ("assets", _) => vec![("raw-assets", &self.body)],
            _ => vec![("raw", &self.body)],
        }
    }

    fn accepted(&self) -> bool {
        // 401 counts: the node stores a batch whose token expired less than 30 s ago.
        matches!(self.status, Some(200 | 401))
    }
}

fn sent_batches(run: &Run) -> Vec<Sent> {
    run.requests
        .iter()
        .filter(|r| r["method"] == "POST")
        .filter(|r| {
            r["url"]
                .as_str()
                .is_some_and(|u| u.starts_with("/ingest/v1/web/i?"))
        })
        .map(|r| {
            let url = r["url"].as_str().unwrap();
            let batch = query_param(url, "batch").unwrap_or_else(|| panic!("no batch= in {url}"));
            let mut fields = batch.split('_');
            let mut number = || -> u64 { fields.next().and_then(|f| f.parse().ok()).unwrap() };
            let (page_no, seq) = (number(), number());
            let token = header(r, "authorization")
                .and_then(|a| a.strip_prefix("Bearer "))
                .unwrap_or_else(|| panic!("no token on {url}"));
            Sent {
                session: token_session(token),
                page_no,
                seq,
                data_type: header(r, "datatype").unwrap_or("").to_string(),
                split: query_param(url, "split").map(|s| s.parse().unwrap()),
                gzip: header(r, "content-encoding").is_some_and(|e| e.eq_ignore_ascii_case("gzip")),
                status: r["status"].as_u64(),
                seen_by: r["seen_by"].as_str().unwrap_or("").to_string(),
                body: unhex(
                    r["body_decoded_hex"]
                        .as_str()
                        .unwrap_or_else(|| panic!("no body logged for {url}")),
                ),
            }
        })
        .collect()
}

/// The start requests: (request JSON, status, answer JSON).
fn starts(run: &Run) -> Vec<(Value, Option<u64>, Value)> {
    run.requests
        .iter()
        .filter(|r| r["method"] == "POST" && r["url"] == "/ingest/v1/web/start")
        .map(|r| {
            (
                r["request_json"].clone(),
                r["status"].as_u64(),
                r["response_json"].clone(),
            )
        })
        .collect()
}

/// One stored record, its body cut out of `cat` by the sizes `ls` gives.
#[derive(Debug)]
struct Record {
    session: u64,
    topic: String,
    kind: String,
    body: Vec<u8>,
}

fn read_store(node: &Node) -> Vec<Record> {
    // ls and cat are separate reads of a live store: retry until a record list is stable around
    // the cats, so that the sizes cut the right bytes.
    for _ in 0..20 {
        let before = node.ls();
        let mut cats: BTreeMap<(u64, String), (Vec<u8>, usize)> = BTreeMap::new();
        let mut records = Vec::new();
        for entry in &before {
            let topic = entry["topic"].as_str().unwrap_or("-").to_string();
            if topic != "raw" && topic != "raw-assets" {
                continue;
            }
            let session: u64 = entry["session"].as_str().unwrap().parse().unwrap();
            let size = entry["size"].as_u64().unwrap() as usize;
            let (bytes, at) = cats
                .entry((session, topic.clone()))
                .or_insert_with(|| (node.cat(session, Some(&topic)), 0));
            let Some(body) = bytes.get(*at..*at + size) else {
                break;
            };
            records.push(Record {
                session,
                topic,
                kind: entry["kind"].as_str().unwrap().to_string(),
                body: body.to_vec(),
            });
            *at += size;
        }
        let complete = cats.values().all(|(bytes, at)| bytes.len() == *at);
        if complete && node.ls().len() == before.len() {
            return records;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the store did not hold still long enough to read it");
}

/// Polls the node until `check` passes or the deadline; the store as last read.
fn wait_for_store(node: &Node, check: impl Fn(&[Record]) -> Result<(), String>) -> Vec<Record> {
    let deadline = Instant::now() + STORE_DEADLINE;
    loop {
        let records = read_store(node);
        match check(&records) {
            Ok(()) => return records,
            Err(why) if Instant::now() > deadline => {
                panic!("after {STORE_DEADLINE:?} the node still misses: {why}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn missing_parts(sent: &[Sent], records: &[Record]) -> Result<(), String> {
    let mut missing = Vec::new();
    for batch in sent.iter().filter(|b| b.accepted()) {
        for (topic, bytes) in batch.parts() {
            let found = records
                .iter()
                .any(|r| r.session == batch.session && r.topic == topic && r.body == bytes);
            if !found {
                missing.push(format!(
                    "page {} seq {} {} ({} bytes on {topic}, answered {:?})",
                    batch.page_no,
                    batch.seq,
                    batch.data_type,
                    bytes.len(),
                    batch.status
                ));
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join("; "))
    }
}

fn batch_version(body: &[u8]) -> u64 {
    match codec::walk_web_batch(body) {
        Ok(summary) => match summary.meta {
            BatchMeta::Web { version, .. } => version,
            other => panic!("not a web batch meta: {other:?}"),
        },
        Err(e) => panic!("a stored batch does not walk: {e:?} ({} bytes)", body.len()),
    }
}

/// The session's one SessionStart: project id and tracker version decoded from its fields.
fn check_session_start(records: &[Record], session: u64, project_id: u64) {
    let starts: Vec<&Record> = records
        .iter()
        .filter(|r| r.session == session && r.kind == "session-start")
        .collect();
    assert_eq!(starts.len(), 1, "one SessionStart for session {session}");
    let mut r = Reader::new(&starts[0].body);
    assert_eq!(r.uint().unwrap(), codec::MSG_SESSION_START);
    let _timestamp = r.uint().unwrap();
    assert_eq!(r.uint().unwrap(), project_id, "SessionStart.ProjectID");
    assert_eq!(
        r.string().unwrap(),
        b"19.0.1",
        "SessionStart.TrackerVersion"
    );
}

/// What a run showed, for the closing report (`cargo test -- --nocapture` prints it).
#[derive(Default)]
struct Figures {
    batches: usize,
    by_type: BTreeMap<String, usize>,
    gzip: usize,
    by_status: BTreeMap<String, usize>,
    page_close: usize,
    stored_raw: usize,
    stored_assets: usize,
    sessions: usize,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} batch requests {:?}, {} gzip, answers {:?}, {} sent on page close; stored: {} raw + {} raw-assets records over {} session(s)",
            self.batches, self.by_type, self.gzip, self.by_status, self.page_close,
            self.stored_raw, self.stored_assets, self.sessions
        )
    }
}

/// The checks every run gets: no seq gaps per page, every accepted batch stored byte for byte
/// (gzip decoded, visual split at `split`), every stored batch walks, and (when the pass-through
/// saw everything) nothing stored that the page did not send.
fn check_run(node: &Node, run: &Run, complete_log: bool) -> (Vec<Sent>, Vec<Record>, Figures) {
    let sent = sent_batches(run);
    assert!(
        !sent.is_empty(),
        "the page sent no batch:\n{}",
        run.page_log
    );
    for batch in &sent {
        if let Some(status) = batch.status {
            assert!(
                batch.accepted(),
                "page {} seq {} answered {status}:\n{}",
                batch.page_no,
                batch.seq,
                run.page_log
            );
        }
    }

    let mut seqs: BTreeMap<(u64, u64), BTreeSet<u64>> = BTreeMap::new();
    for batch in &sent {
        seqs.entry((batch.session, batch.page_no))
            .or_default()
            .insert(batch.seq);
    }
    for ((session, page), seqs) in &seqs {
        let max = *seqs.iter().max().unwrap();
        assert_eq!(
            seqs.len() as u64,
            max,
            "session {session} page {page}: seqs sent {seqs:?} have a gap"
        );
    }

    let sessions: BTreeSet<u64> = sent.iter().map(|b| b.session).collect();
    let records = wait_for_store(node, |records| missing_parts(&sent, records));
    let ours: Vec<&Record> = records
        .iter()
        .filter(|r| sessions.contains(&r.session) && r.kind != "session-start")
        .collect();
    let mut unlogged = 0;
    for record in &ours {
        batch_version(&record.body);
        let logged = sent.iter().any(|b| {
            b.session == record.session
                && b.parts()
                    .iter()
                    .any(|(topic, bytes)| *topic == record.topic && *bytes == record.body)
        });
        if !logged {
            unlogged += 1;
        }
    }
    if complete_log {
        assert_eq!(unlogged, 0, "stored batches the page never sent");
    }

    let mut figures = Figures {
        batches: sent.len(),
        gzip: sent.iter().filter(|b| b.gzip).count(),
        page_close: sent.iter().filter(|b| b.seen_by == "proxy").count() + unlogged,
        stored_raw: ours.iter().filter(|r| r.topic == "raw").count(),
        stored_assets: ours.iter().filter(|r| r.topic == "raw-assets").count(),
        sessions: sessions.len(),
        ..Figures::default()
    };
    for batch in &sent {
        *figures.by_type.entry(batch.data_type.clone()).or_default() += 1;
        let status = batch.status.map_or("none".to_string(), |s| s.to_string());
        *figures.by_status.entry(status).or_default() += 1;
    }
    (sent, records, figures)
}

fn e2e_node() -> NodeBuilder {
    Node::builder().projects(E2E_PROJECTS)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Tracker message types the pv2 test looks for (OpenReplay's message catalogue).
const MSG_CREATE_DOCUMENT: u64 = 7;
const MSG_SET_NODE_ATTRIBUTE_URL_BASED: u64 = 60;

/// Whether a (single-meta) web batch holds a message of type `kind` whose body contains
/// `needle`.
fn has_message(batch: &[u8], kind: u64, needle: &[u8]) -> bool {
    codec::web_messages(batch)
        .unwrap_or_else(|e| panic!("a batch the page sent does not walk: {e:?}"))
        .map(|m| m.unwrap_or_else(|e| panic!("a batch the page sent does not walk: {e:?}")))
        .any(|(_, t, body)| t == kind && (needle.is_empty() || contains(body, needle)))
}

#[test]
fn protocol_v2_cross_origin_batches_land_on_raw_and_raw_assets() {
    let node = e2e_node().start();
    let run = run_browser(
        &node,
        &Scenario {
            key: "e2e-pv2",
            rounds: 4,
            pause_ms: 300,
            same_origin: false,
        },
    );
    let starts = starts(&run);
    assert_eq!(starts.len(), 1, "one start:\n{}", run.page_log);
    let (_, status, answer) = &starts[0];
    assert_eq!(*status, Some(200));
    assert_eq!(answer["protocolVersion"], 2);
    assert_eq!(answer["compressionThreshold"], 20_000);
    let session: u64 = answer["sessionID"].as_str().unwrap().parse().unwrap();

    let (sent, records, figures) = check_run(&node, &run, false);
    check_session_start(&records, session, 71);
    assert!(sent.iter().all(|b| b.session == session));

    // The page's first batch carries the DOM snapshot, whose URL-based parts (the stylesheet
    // link of index.html) go to raw-assets. It is usually one `visual` batch (player part, then
    // assets part at `split`), but not always, and that is the tracker's doing, not the node's.
    // The tracker's worker builds the visual batch when the snapshot's `orloaded` marker
    // reaches it; the page's main thread hands messages to the worker only on its 30 ms commit
    // tick, while `forceFlushBatch()` is posted to the worker at once. The scenario's first
    // flush comes after round 0 and its fetch. When that fetch is answered before the first
    // tick (seen in 1 of 24 runs with both cores of the test machine kept busy), the flush
    // reaches the worker before the first commit, finds nothing to send, and still ends the
    // visual phase (finalizeVisual sets visualSent even when it emits nothing). The snapshot
    // then goes out at the next flush as a plain `player` batch (seq 1) followed by an `assets`
    // batch, and the session has no visual batch at all: this test failed on that as
    // `left: (1, "player")` when it demanded a visual first batch. What holds either way is
    // asserted here. check_run has already found every part of every batch stored byte for
    // byte on its topic (a visual batch split at `split`), and tests/protocol.rs
    // (fixture_batches_read_back_byte_identical) stores a captured visual batch every run.
    let first = sent.iter().min_by_key(|b| b.seq).unwrap();
    assert_eq!(first.seq, 1, "the page's first batch was sent");
    assert!(
        sent.iter()
            .filter(|b| b.data_type == "visual")
            .all(|b| b.seq == 1),
        "a visual batch is only ever the page's first"
    );
    let snapshot_assets: &[u8] = match first.data_type.as_str() {
        "visual" => {
            let split = first.split.expect("a visual batch carries split=");
            assert_eq!(batch_version(&first.body[..split]), 2, "player part");
            assert_eq!(batch_version(&first.body[split..]), 3, "assets part");
            &first.body[split..]
        }
        "player" => {
            // The first flush beat the first commit: the snapshot's assets went in the
            // first assets batch.
            let assets = sent
                .iter()
                .filter(|b| b.data_type == "assets")
                .min_by_key(|b| b.seq)
                .expect("an assets batch after the snapshot");
            &assets.body
        }
        other => panic!("the first batch is {other}, neither visual nor player"),
    };
    assert!(
        sent.iter()
            .all(|b| b.split.is_none() || b.data_type == "visual"),
        "only a visual batch carries split="
    );
    let snapshot_player = first.parts()[0].1;
    assert!(
        has_message(snapshot_player, MSG_CREATE_DOCUMENT, b""),
        "the first batch's raw part holds the DOM snapshot (CreateDocument)"
    );
    assert!(
        has_message(
            snapshot_assets,
            MSG_SET_NODE_ATTRIBUTE_URL_BASED,
            b"/page/style.css"
        ),
        "the snapshot's stylesheet link went to raw-assets"
    );

    let types: BTreeSet<&str> = sent.iter().map(|b| b.data_type.as_str()).collect();
    for wanted in ["player", "assets", "devtools", "analytics"] {
        assert!(types.contains(wanted), "no {wanted} batch among {types:?}");
    }
    for record in records.iter().filter(|r| r.session == session) {
        match (record.topic.as_str(), record.kind.as_str()) {
            (_, "session-start") => assert_eq!(record.topic, "raw"),
            ("raw", _) => assert!(
                matches!(batch_version(&record.body), 2 | 4 | 5),
                "raw holds player, devtools and analytics batches"
            ),
            ("raw-assets", _) => assert_eq!(batch_version(&record.body), 3),
            other => panic!("unexpected record {other:?}"),
        }
    }
    eprintln!(
        "e2e pv2 (cross-origin): {figures}; first batch {}",
        first.data_type
    );
}

#[test]
fn protocol_v1_same_origin_and_a_page_close_delivers_its_last_batches() {
    let node = e2e_node().start();
    let rounds = 3;
    let run = run_browser(
        &node,
        &Scenario {
            key: "e2e-pv1",
            rounds,
            pause_ms: 300,
            same_origin: true,
        },
    );
    let starts = starts(&run);
    assert_eq!(starts.len(), 1, "one start:\n{}", run.page_log);
    assert_eq!(starts[0].2["protocolVersion"], 1);
    let session: u64 = starts[0].2["sessionID"].as_str().unwrap().parse().unwrap();

    let (sent, records, figures) = check_run(&node, &run, true);
    check_session_start(&records, session, 72);
    assert!(sent.iter().all(|b| b.data_type == "player"));
    let mine: Vec<&Record> = records.iter().filter(|r| r.session == session).collect();
    assert!(mine.iter().all(|r| r.topic == "raw"), "raw-assets is empty");
    for record in mine.iter().filter(|r| r.kind != "session-start") {
        assert_eq!(batch_version(&record.body), 1);
    }

    // The last round was never force-flushed: it can only have come with the page close.
    let last_round = format!("e2e: round {rounds}");
    let closing: Vec<&Sent> = sent.iter().filter(|b| b.seen_by == "proxy").collect();
    assert!(
        !closing.is_empty(),
        "no batch sent while the page unloaded:\n{}",
        run.page_log
    );
    assert!(
        closing
            .iter()
            .any(|b| contains(&b.body, last_round.as_bytes())),
        "the page-close batches carry the last round"
    );
    assert!(
        mine.iter()
            .any(|r| contains(&r.body, last_round.as_bytes())),
        "the last round is stored"
    );
    eprintln!("e2e pv1 (same origin, page close): {figures}");
}

#[test]
fn a_low_compression_threshold_makes_the_tracker_gzip_and_the_node_stores_decoded() {
    let node = e2e_node().arg("--compression-threshold").arg("500").start();
    let run = run_browser(
        &node,
        &Scenario {
            key: "e2e-pv2",
            rounds: 4,
            pause_ms: 300,
            same_origin: false,
        },
    );
    let starts = starts(&run);
    assert_eq!(starts[0].2["compressionThreshold"], 500);
    let (sent, records, figures) = check_run(&node, &run, false);
    let gzip: Vec<&Sent> = sent.iter().filter(|b| b.gzip).collect();
    assert!(!gzip.is_empty(), "no gzip batch among {} sent", sent.len());
    assert!(gzip
        .iter()
        .all(|b| b.status == Some(200) && b.body.len() > 500));
    assert!(
        records.iter().all(|r| !r.body.starts_with(&[0x1f, 0x8b])),
        "nothing is stored gzipped"
    );
    eprintln!("e2e gzip (threshold 500): {figures}");
}

#[test]
fn an_expiring_token_gets_401_and_the_tracker_starts_a_new_session_losing_nothing() {
    let node = e2e_node().start();
    // maxSessionDuration is 4 s: the rounds outlast the token.
    let run = run_browser(
        &node,
        &Scenario {
            key: "e2e-short",
            rounds: 10,
            pause_ms: 600,
            same_origin: false,
        },
    );
    let starts = starts(&run);
    assert!(
        starts.len() >= 2,
        "the tracker started again after the 401:\n{}",
        run.page_log
    );
    let first_token = starts[0].2["token"].as_str().unwrap();
    let again = &starts[1];
    assert_eq!(again.1, Some(200));
    assert_eq!(
        again.0["token"].as_str(),
        Some(first_token),
        "the tracker presents its old token"
    );
    let sessions: Vec<u64> = starts
        .iter()
        .map(|s| s.2["sessionID"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_ne!(
        sessions[0], sessions[1],
        "an expired token starts a new session"
    );

    let (sent, records, figures) = check_run(&node, &run, false);
    for session in &sessions {
        check_session_start(&records, *session, 73);
    }
    let rejected: Vec<&Sent> = sent.iter().filter(|b| b.status == Some(401)).collect();
    assert!(!rejected.is_empty(), "a batch met the expired token");
    assert!(rejected.iter().all(|b| sessions.contains(&b.session)));
    // The tracker cancels every answer's body, so the browser rarely gets to read it.
    let answers: Vec<&str> = run
        .requests
        .iter()
        .filter(|r| r["status"] == 401)
        .filter_map(|r| r["response_text"].as_str())
        .filter(|text| !text.is_empty())
        .collect();
    assert!(
        answers.iter().all(|a| a.contains("token expired")),
        "{answers:?}"
    );
    // The renewed session records a new page.
    let first_page = sent
        .iter()
        .filter(|b| b.session == sessions[0])
        .map(|b| b.page_no)
        .max()
        .unwrap();
    assert!(sent
        .iter()
        .filter(|b| b.session == sessions[1])
        .all(|b| b.page_no > first_page));
    eprintln!(
        "e2e token expiry: {figures}; {} batch(es) answered 401 and stored",
        rejected.len()
    );
}

/// The tracker against a node whose projects come from PostgreSQL and whose database writer is
/// on: every session it started has its `sessions` row, with what its start sent and got.
#[test]
fn with_the_database_writer_on_the_trackers_session_gets_its_row() {
    let pg = common::postgres::PgServer::start();
    let mut db = pg.client();
    let project_id: i32 = db
        .query_one(
            "INSERT INTO projects (project_key, name, platform, active) \
             VALUES ('e2e-pv2', 'e2e', 'web', true) RETURNING project_id",
            &[],
        )
        .unwrap()
        .get(0);
    let node = Node::builder()
        .no_projects()
        .env("POSTGRES_STRING", &pg.url())
        .start();
    wait_for("the projects", Duration::from_secs(30), || {
        let r = node.request(b"GET /health/ready HTTP/1.1\r\nHost: t\r\n\r\n");
        r.status == 200
    });
    let run = run_browser(
        &node,
        &Scenario {
            key: "e2e-pv2",
            rounds: 2,
            pause_ms: 300,
            same_origin: false,
        },
    );
    let starts: Vec<(Value, Value)> = starts(&run)
        .into_iter()
        .filter(|(_, status, _)| *status == Some(200))
        .map(|(request, _, answer)| (request, answer))
        .collect();
    assert!(!starts.is_empty(), "the tracker started no session");
    check_run(&node, &run, false);
    for (request, answer) in &starts {
        let session: u64 = answer["sessionID"].as_str().unwrap().parse().unwrap();
        let mut row = None;
        wait_for("the session's row", Duration::from_secs(20), || {
            row = db
                .query_opt(
                    "SELECT project_id, user_uuid::text, platform::text, user_browser, \
                     user_os, tracker_version, timezone, screen_width FROM sessions \
                     WHERE session_id = $1",
                    &[&(session as i64)],
                )
                .unwrap();
            row.is_some()
        });
        let row = row.unwrap();
        assert_eq!(row.get::<_, i32>(0), project_id);
        assert_eq!(
            row.get::<_, String>(1),
            answer["userUUID"].as_str().unwrap()
        );
        assert_eq!(row.get::<_, String>(2), "web");
        assert_eq!(
            row.get::<_, Option<String>>(3).as_deref(),
            answer["userBrowser"].as_str()
        );
        assert_eq!(row.get::<_, String>(4), answer["userOS"].as_str().unwrap());
        assert_eq!(
            row.get::<_, String>(5),
            request["trackerVersion"].as_str().unwrap()
        );
        // The tracker sends its timezone and screen width; the row must never hold NULL there.
        let timezone: Option<String> = row.get(6);
        assert_eq!(
            timezone.as_deref(),
            request["timezone"].as_str().or(Some(""))
        );
        let width: Option<i32> = row.get(7);
        assert_eq!(
            width.map(i64::from),
            Some(request["width"].as_i64().unwrap_or(0))
        );
    }
    node.stop();
}

//! Test harness: starts the real `replay-ingest` binary on port 0 with a temporary data
//! directory, and speaks raw HTTP/1.1 to it over TCP.

#![allow(dead_code)]

pub mod postgres;
pub mod queues;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_replay-ingest");
pub const SECRET: &str = "test-secret";
pub const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/156.0.0.0 Safari/537.36";

/// Projects every test node knows.
pub const PROJECTS: &str = r#"[
  {"projectKey": "web-key", "projectID": 11, "platform": "web", "tags": [{"name": "t1"}], "featureFlags": [{"key": "ff1", "value": true}]},
  {"projectKey": "web-v1", "projectID": 12, "platform": "web", "protocolVersion": 1},
  {"projectKey": "mobile-key", "projectID": 21, "platform": "ios"},
  {"projectKey": "both-key", "projectID": 31, "platform": "all"},
  {"projectKey": "never", "projectID": 41, "sampleRate": 0},
  {"projectKey": "short", "projectID": 51, "maxSessionDuration": 1000}
]"#;

pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tracker-19.0.1")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub struct Node {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub stdout_lines: mpsc::Receiver<String>,
    /// What the node printed before its address.
    pub printed: Vec<String>,
}

pub struct NodeBuilder {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    dir: Option<PathBuf>,
    projects: Option<String>,
    workers: usize,
}

impl NodeBuilder {
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }
    /// Reuse a data directory (restart tests).
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }
    /// 4 MiB segments, so that a test rolls many with few batches. Every body limit must fit
    /// twice in a segment (the node refuses to start otherwise), so the images limit comes down
    /// from its 10 MB default to 1 MB with it.
    pub fn small_segments(self) -> Self {
        self.arg("--segment-size")
            .arg("4194304")
            .env("FILE_SIZE_LIMIT", "1000000")
    }
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }
    pub fn no_projects(mut self) -> Self {
        self.projects = None;
        self
    }
    /// A projects file of the test's own instead of [`PROJECTS`].
    pub fn projects(mut self, json: &str) -> Self {
        self.projects = Some(json.to_string());
        self
    }
    pub fn start(self) -> Node {
        let (tmp, dir) = match self.dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::tempdir().unwrap();
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&dir)
            .arg("--workers")
            .arg(self.workers.to_string())
            .arg("--admin-listen")
            .arg("127.0.0.1:0")
            .env_remove("HTTP_HOST")
            .env_remove("HTTP_PORT")
            .env("TOKEN_SECRET", SECRET)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(stderr_path(&dir))
                    .unwrap(),
            ));
        if let Some(projects) = &self.projects {
            let path = dir.join("projects.json");
            std::fs::write(&path, projects).unwrap();
            cmd.arg("--projects").arg(&path);
        }
        for a in &self.args {
            cmd.arg(a);
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start replay-ingest");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut printed = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("listening on http://") {
                        break a.parse().unwrap();
                    }
                    printed.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("node did not print its address: {:?}", child.wait());
                }
            }
        };
        Node {
            child,
            addr,
            dir,
            _tmp: tmp,
            stdout_lines: rx,
            printed,
        }
    }
}

impl Node {
    pub fn builder() -> NodeBuilder {
        NodeBuilder {
            args: Vec::new(),
            envs: Vec::new(),
            dir: None,
            projects: Some(PROJECTS.to_string()),
            workers: 2,
        }
    }

    pub fn start() -> Node {
        Node::builder().start()
    }

    /// The admin listener's address, as the node printed it.
    pub fn admin_addr(&self) -> SocketAddr {
        self.printed
            .iter()
            .find_map(|l| l.strip_prefix("admin listening on http://"))
            .expect("the node prints its admin address")
            .parse()
            .unwrap()
    }

    /// `GET path` on the admin listener: status and body.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.admin_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8_lossy(&raw).to_string();
        let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        (status, body)
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// One request on a fresh connection; the answer.
    pub fn request(&self, raw: &[u8]) -> Response {
        let mut s = self.connect();
        s.write_all(raw).unwrap();
        read_response(&mut s).expect("an answer")
    }

    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        self.request(&post_request(path, headers, body))
    }

    /// Starts a web session of `project_key`; the start answer's JSON.
    pub fn start_web(&self, project_key: &str) -> serde_json::Value {
        let body = serde_json::json!({
            "projectKey": project_key, "trackerVersion": "19.0.1", "timestamp": now_ms(),
            "userUUID": null, "revID": "", "isSnippet": false, "deviceMemory": 8192,
            "jsHeapSizeLimit": 4294967296u64, "userID": "u@example.test", "timezone": "UTC+00:00",
        });
        let r = self.post(
            "/ingest/v1/web/start",
            &[("Content-Type", "application/json"), ("User-Agent", UA)],
            body.to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "start: {}", r.text());
        r.json()
    }

    /// A mobile start request of `project_key` (an iPhone), whatever it answers.
    pub fn mobile_start(&self, project_key: &str) -> Response {
        let body = serde_json::json!({
            "projectKey": project_key, "trackerVersion": "1.0.15", "revID": "",
            "userUUID": "0CFEB1C0-FB25-4AA3-8FC0-4D0C1D28B1A1", "userOSVersion": "17.2",
            "userDevice": "iPhone14,2", "userDeviceType": "mobile", "timestamp": now_ms(),
            "timezone": "UTC+01:00", "deviceMemory": 6000, "doNotRecord": false,
            "platform": "ios", "width": 390, "height": 844,
        });
        self.post(
            "/v1/mobile/start",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    pub fn session_id(start: &serde_json::Value) -> u64 {
        start["sessionID"].as_str().unwrap().parse().unwrap()
    }

    pub fn token(start: &serde_json::Value) -> String {
        start["token"].as_str().unwrap().to_string()
    }

    /// `replay-ingest cat` for a session; stdout bytes.
    pub fn cat(&self, session: u64, topic: Option<&str>) -> Vec<u8> {
        cat(&self.dir, session, topic)
    }

    pub fn ls(&self) -> Vec<serde_json::Value> {
        ls(&self.dir)
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        signal(&self.child, libc_sigterm());
        wait_timeout(&mut self.child, Duration::from_secs(30)).expect("node exits after SIGTERM")
    }
}

impl Node {
    /// What the node logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(stderr_path(&self.dir)).unwrap_or_default()
    }

    /// SIGKILL: a crash, nothing flushed or sealed by the node itself.
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The node's log lives beside its data, so that a restart appends to it.
pub fn stderr_path(dir: &Path) -> PathBuf {
    dir.join("node.log")
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- node log ---\n{}", self.stderr());
        }
    }
}

pub fn libc_sigterm() -> i32 {
    15
}

pub fn signal(child: &Child, sig: i32) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn cat(dir: &Path, session: u64, topic: Option<&str>) -> Vec<u8> {
    let mut cmd = Command::new(BIN);
    cmd.arg("cat")
        .arg("--data-dir")
        .arg(dir)
        .arg("--session")
        .arg(session.to_string());
    if let Some(t) = topic {
        cmd.arg("--topic").arg(t);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "cat failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The stored records `ls --json` lists (its consumer lines are left out: see [`consumers`]).
pub fn ls(dir: &Path) -> Vec<serde_json::Value> {
    ls_lines(dir)
        .into_iter()
        .filter(|v| v.get("session").is_some())
        .collect()
}

/// The consumer lines of `ls --json`: name, saved cursor, lag.
pub fn consumers(dir: &Path) -> Vec<serde_json::Value> {
    ls_lines(dir)
        .into_iter()
        .filter(|v| v.get("consumer").is_some())
        .collect()
}

fn ls_lines(dir: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(BIN)
        .arg("ls")
        .arg("--data-dir")
        .arg(dir)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ls failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub fn post_request(path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    let mut raw = raw.into_bytes();
    raw.extend_from_slice(body);
    raw
}

pub fn batch_request(token: &str, data_type: &str, query: &str, body: &[u8]) -> Vec<u8> {
    post_request(
        &format!("/ingest/v1/web/i{query}"),
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("DataType", data_type),
        ],
        body,
    )
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap().to_string()
    }
}

/// Reads one response (Content-Length framed, as this server always answers). None on EOF
/// before any byte.
pub fn read_response(s: &mut TcpStream) -> Option<Response> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(0) => {
                if head.is_empty() {
                    return None;
                }
                panic!(
                    "EOF inside a response head: {:?}",
                    String::from_utf8_lossy(&head)
                );
            }
            Ok(_) => head.push(byte[0]),
            Err(e) if head.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                return None
            }
            Err(e) => panic!("reading a response: {e}"),
        }
    }
    let text = String::from_utf8(head).unwrap();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; len];
    s.read_exact(&mut body).unwrap();
    Some(Response {
        status,
        headers,
        body,
    })
}

/// True when the server closed the connection (EOF or reset) within the read timeout.
pub fn is_closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

pub fn mint_token(session: u64, delay: i64, expires_at_ms: i64) -> String {
    replay_ingest::token::TokenSigner::new(SECRET.as_bytes()).compose(
        &replay_ingest::token::SessionToken {
            session_id: session,
            delay,
            expires_at_ms,
        },
    )
}

/// A web batch that walks, as the tracker frames one: BatchMetadata (version 2, `page`,
/// `first_index`, timestamp 0, no location), then one sized message (type 100) holding `body`.
/// The compactor keeps such batches; its firstIndex orders it among its page's batches.
pub fn walkable_batch(page: u64, first_index: u64, body: &[u8]) -> Vec<u8> {
    fn put_uint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    let mut b = vec![81, 2];
    put_uint(&mut b, page);
    put_uint(&mut b, first_index);
    b.extend_from_slice(&[0, 0, 100]);
    b.extend_from_slice(&(body.len() as u32).to_le_bytes()[..3]);
    b.extend_from_slice(body);
    b
}

/// The value of the sample `name` (with its labels exactly as written) in a `/metrics` text, 0
/// when absent.
pub fn metric_sample(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Polls `done` every 50 ms until it holds; fails the test after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

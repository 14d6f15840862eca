//! Shared harness of the fuzz targets: a real node's routes and segment log behind a connection
//! state machine whose "socket" is a script of input chunks.
//!
//! Enters: bytes from libFuzzer, cut into chunks. Leaves: nothing but the absence of a crash (the
//! answers are checked for shape). Runs on libFuzzer's single thread; the node state lives in a
//! thread-local built once, in a temporary data directory.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use replay_ingest::config::{Config, ServeArgs};
use replay_ingest::log::{LogConfig, SegmentService, SegmentWriter};
use replay_ingest::net::conn::{Conn, Env, ReadBuffer, Step, Timeouts};
use replay_ingest::project::{Catalog, Projects};
use replay_ingest::routes::{NodeState, WorkerCtx};
use replay_ingest::useragent::AgentCache;

/// The token secret the seeds' tokens are signed with (see `make_seeds.py`).
pub const SECRET: &str = "fuzz-secret";

/// Projects the seeds name.
const PROJECTS: &str = r#"[
  {"projectKey": "web-key", "projectID": 11, "platform": "web"},
  {"projectKey": "mobile-key", "projectID": 21, "platform": "ios"},
  {"projectKey": "both-key", "projectID": 31, "platform": "all", "sampleRate": 50}
]"#;

/// A socket made of input chunks: each drive sees the next chunk, then `WouldBlock`; after the
/// last, end of stream. Writes are kept (and can be refused to exercise backpressure).
pub struct ScriptedStream {
    chunks: VecDeque<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
    eof: bool,
    pub written: Vec<u8>,
    /// Refuse every other write with `WouldBlock`.
    pub choppy_writes: bool,
    flip: bool,
}

impl replay_ingest::net::conn::HalfClose for ScriptedStream {
    fn shutdown_write(&self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for ScriptedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.current.len() {
            match self.chunks.pop_front() {
                Some(next) => {
                    self.current = next;
                    self.at = 0;
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                None if self.eof => return Ok(0),
                None => return Err(io::ErrorKind::WouldBlock.into()),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Write for ScriptedStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.flip = !self.flip;
        if self.choppy_writes && self.flip {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // Keep the answers small: only their start is checked.
        if self.written.len() < 1 << 16 {
            self.written.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub struct Harness {
    node: Arc<NodeState>,
    log: SegmentWriter,
    scratch: Vec<u8>,
    agents: AgentCache,
    rbuf: ReadBuffer,
    dir: tempfile::TempDir,
    _service: SegmentService,
    runs: u64,
}

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let args = ServeArgs {
            data_dir: Some(dir.path().to_path_buf()),
            token_secret: Some(SECRET.into()),
            ..ServeArgs::default()
        };
        let config = Config::load(&args).expect("config");
        let service = SegmentService::start(
            LogConfig {
                dir: dir.path().to_path_buf(),
                segment_size: 4 << 20,
                segment_max_age: Duration::from_secs(3600),
                prefault_window: 0,
                disk_budget: None,
                durability: replay_ingest::log::Durability::Os,
                flush_interval: LogConfig::DEFAULT_FLUSH_INTERVAL,
            },
            1,
        )
        .expect("segment service");
        let log = service.writer(0).expect("writer");
        let projects = Projects::from_json(PROJECTS, "fuzz").expect("projects");
        let health = replay_ingest::admin::Health::new(
            std::sync::Arc::clone(service.consumers()),
            replay_ingest::admin::health::DEFAULT_READY_MAX_LAG,
        );
        let projects = std::sync::Arc::new(Catalog::fixed(projects));
        let node = NodeState::new(config, projects, SECRET.as_bytes(), None, health);
        Harness {
            node,
            log,
            scratch: Vec::new(),
            agents: AgentCache::default(),
            rbuf: ReadBuffer::default(),
            dir,
            _service: service,
            runs: 0,
        }
    }

    /// Runs `f` with the thread's harness, building it on first use.
    pub fn with<R>(f: impl FnOnce(&mut Harness) -> R) -> R {
        HARNESS.with(|h| {
            let mut h = h.borrow_mut();
            f(h.get_or_insert_with(Harness::new))
        })
    }

    /// Feeds `chunks` to one connection, as if each arrived in its own read readiness, then
    /// closes the input. Returns what the node wrote back.
    pub fn connection(&mut self, chunks: Vec<Vec<u8>>, choppy_writes: bool) -> Vec<u8> {
        self.runs += 1;
        if self.runs % 5000 == 0 {
            self.drop_sealed_segments();
        }
        let stream = ScriptedStream {
            chunks: chunks.into(),
            current: Vec::new(),
            at: 0,
            eof: false,
            written: Vec::new(),
            choppy_writes,
            flip: false,
        };
        let now = Instant::now();
        let mut conn = Conn::new(
            stream,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            now,
            Duration::from_secs(75),
        );
        let metrics = self.node.metrics.worker(0);
        let mut ctx = WorkerCtx {
            node: &self.node,
            metrics: &metrics,
            log: &mut self.log,
            scratch: &mut self.scratch,
            agents: &mut self.agents,
        };
        let mut env = Env {
            ctx: &mut ctx,
            rbuf: &mut self.rbuf,
            now,
            stopping: false,
            timeouts: Timeouts {
                head: Duration::from_secs(10),
                body: Duration::from_secs(60),
                idle: Duration::from_secs(75),
            },
            // No preparation pool: heavy requests finish inline, as when the pool is full.
            pool: None,
            key: 0,
        };
        // Bounded: each drive consumes a chunk, writes, or ends the connection. Once the input is
        // over, a few more drives let choppy writes flush before giving up on a waiting peer.
        let mut idle_drives = 0;
        for _ in 0..100_000 {
            match conn.drive(&mut env) {
                Step::Close => break,
                Step::Again => {}
                Step::Wait => {
                    let s = conn.socket();
                    if s.chunks.is_empty() && s.at == s.current.len() {
                        if s.eof {
                            idle_drives += 1;
                            if idle_drives > 4 {
                                break;
                            }
                        }
                        s.eof = true;
                    }
                }
            }
        }
        std::mem::take(&mut conn.socket().written)
    }

    /// Sealed segments are never written again; deleting them keeps long runs off the disk.
    fn drop_sealed_segments(&mut self) {
        let _ = self.log.roll();
        let Ok(entries) = std::fs::read_dir(self.dir.path().join("segments")) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "seg") {
                if let Ok(bytes) = std::fs::read(&path) {
                    if replay_ingest::log::scan_segment(&bytes).is_ok_and(|s| s.header.is_sealed())
                    {
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
        }
    }
}

/// Cuts `data` into chunks whose sizes come from a small generator seeded by `seed`: from single
/// bytes to whole kilobytes, so that every parser sees input cut at arbitrary points.
pub fn cut(data: &[u8], seed: u8) -> Vec<Vec<u8>> {
    let mut state = u32::from(seed) | 1;
    let mut chunks = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let size = match state % 4 {
            0 => 1,
            1 => 1 + (state >> 8) as usize % 16,
            2 => 1 + (state >> 8) as usize % 512,
            _ => rest.len(),
        };
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        chunks.push(chunk.to_vec());
        rest = tail;
    }
    chunks
}

/// Every answer the node wrote starts with a status line.
pub fn check_answers(written: &[u8]) {
    if !written.is_empty() {
        assert!(
            written.starts_with(b"HTTP/1."),
            "answer: {:?}",
            &written[..written.len().min(64)]
        );
    }
}

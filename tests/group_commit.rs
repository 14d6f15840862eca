//! "fsync" durability at the storage seam: a connection's answers to stored batches are held
//! until the worker's end-of-turn flush has written the records back, and one flush covers
//! every request of the turn. Driven in-process (the connection over an in-memory stream, the
//! real segment log on a temporary directory), so the order can be observed exactly; the
//! binary's own loop is tested in `compaction.rs` (crash cycles) and by the benchmarks.

mod common;

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::{batch_request, SECRET};
use replay_ingest::admin::health::DEFAULT_READY_MAX_LAG;
use replay_ingest::admin::Health;
use replay_ingest::config::{Config, ServeArgs};
use replay_ingest::log::{Durability, SegmentService, SegmentWriter};
use replay_ingest::net::conn::{Conn, Env, ReadBuffer, Step, Timeouts};
use replay_ingest::project::{Catalog, Projects};
use replay_ingest::routes::{NodeState, WorkerCtx};
use replay_ingest::token::{SessionToken, TokenSigner};
use replay_ingest::useragent::AgentCache;

/// A socket whose peer has sent `input` and reads everything written.
struct Pipe {
    input: io::Cursor<Vec<u8>>,
    written: Vec<u8>,
}

impl replay_ingest::net::conn::HalfClose for Pipe {
    fn shutdown_write(&self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.input.read(buf)? {
            0 => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn batch(i: u8) -> Vec<u8> {
    common::walkable_batch(0, i.into(), &[i; 3])
}

fn answers(written: &[u8]) -> usize {
    written
        .windows(15)
        .filter(|w| w == b"HTTP/1.1 200 OK")
        .count()
}

/// The log, a node and a token, as one worker has them.
struct Rig {
    log: SegmentWriter,
    node: std::sync::Arc<NodeState>,
    token: String,
    rbuf: ReadBuffer,
    scratch: Vec<u8>,
    agents: AgentCache,
    service: SegmentService,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn new(durability: Option<Durability>) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let args = ServeArgs {
            workers: Some(1),
            data_dir: Some(dir.path().to_path_buf()),
            token_secret: Some(SECRET.into()),
            durability,
            ..ServeArgs::default()
        };
        let config = Config::load(&args).unwrap();
        let service = SegmentService::start(config.log_config(), 1).unwrap();
        let log = service.writer(0).unwrap();
        let health = Health::new(
            std::sync::Arc::clone(service.consumers()),
            DEFAULT_READY_MAX_LAG,
        );
        let node = NodeState::new(
            config,
            std::sync::Arc::new(Catalog::fixed(Projects::demo("k".into()))),
            SECRET.as_bytes(),
            None,
            health,
        );
        let token = TokenSigner::new(SECRET.as_bytes()).compose(&SessionToken {
            session_id: 7,
            delay: 0,
            expires_at_ms: common::now_ms() + 3_600_000,
        });
        Rig {
            log,
            node,
            token,
            rbuf: ReadBuffer::default(),
            scratch: Vec::new(),
            agents: AgentCache::default(),
            service,
            _dir: dir,
        }
    }

    /// A connection whose peer has sent `n` batches, pipelined.
    fn conn(&self, n: u8) -> Conn<Pipe> {
        let mut input = Vec::new();
        for i in 0..n {
            input.extend(batch_request(&self.token, "player", "", &batch(i)));
        }
        let pipe = Pipe {
            input: io::Cursor::new(input),
            written: Vec::new(),
        };
        let idle = Duration::from_secs(75);
        Conn::new(pipe, IpAddr::V4(Ipv4Addr::LOCALHOST), Instant::now(), idle)
    }

    fn drive(&mut self, conn: &mut Conn<Pipe>) -> Step {
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
            now: Instant::now(),
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
        conn.drive(&mut env)
    }

    fn stop(self) {
        self.log.close().unwrap();
        self.service.shutdown();
    }
}

#[test]
fn fsync_answers_wait_for_the_turns_flush_and_one_flush_covers_the_turn() {
    let mut rig = Rig::new(Some(Durability::Fsync));
    assert_eq!(rig.log.durability(), Durability::Fsync);
    // Three pipelined batches on one connection: one event-loop turn's worth.
    let mut conn = rig.conn(3);
    assert_eq!(rig.drive(&mut conn), Step::Wait);
    assert!(conn.awaits_sync(), "the answers wait for the flush");
    assert_eq!(
        answers(&conn.socket().written),
        0,
        "no 200 before the flush"
    );
    assert_eq!(rig.log.flushes(), (0, 0));

    rig.log.end_turn().unwrap();
    assert_eq!(
        rig.log.flushes(),
        (1, 3),
        "one flush for the turn's three records"
    );
    conn.synced();
    rig.drive(&mut conn);
    assert_eq!(
        answers(&conn.socket().written),
        3,
        "all three answered after it"
    );
    assert!(!conn.awaits_sync());

    // A turn without stored records flushes nothing.
    rig.log.end_turn().unwrap();
    assert_eq!(rig.log.flushes(), (1, 3));
    rig.stop();
}

/// A flush that fails (a device error, injected at the storage seam) must not be followed by
/// the 200s it held: one 500 goes in their place and the connection closes, so the client sends
/// again; the records stay in the log.
#[test]
fn a_failed_flush_answers_500_and_closes_instead_of_the_held_200s() {
    let mut rig = Rig::new(Some(Durability::Fsync));
    let mut conn = rig.conn(3);
    assert_eq!(rig.drive(&mut conn), Step::Wait);
    assert!(conn.awaits_sync());
    rig.log.inject_flush_failures(true);
    assert!(rig.log.end_turn().is_err(), "the failure is reported");
    conn.sync_failed(false);
    rig.drive(&mut conn);
    let written = String::from_utf8_lossy(&conn.socket().written).into_owned();
    assert_eq!(
        answers(conn.socket().written.as_slice()),
        0,
        "no 200: {written}"
    );
    assert!(
        written.starts_with("HTTP/1.1 500 ") && written.matches("HTTP/1.1 ").count() == 1,
        "one 500: {written}"
    );
    assert!(written.contains("Connection: close"), "{written}");
    assert!(
        written.ends_with(r#"{"error":"cannot store the request"}"#),
        "{written}"
    );
    assert_eq!(rig.log.written().0, 3, "the records stay in the log");

    // A flush that works again answers as before.
    rig.log.inject_flush_failures(false);
    let mut next = rig.conn(1);
    rig.drive(&mut next);
    rig.log.end_turn().unwrap();
    next.synced();
    rig.drive(&mut next);
    assert_eq!(answers(&next.socket().written), 1);
    rig.stop();
}

/// In "os" durability nothing waits: the answer goes out in the same drive.
#[test]
fn os_answers_go_out_at_once() {
    let mut rig = Rig::new(None);
    let mut conn = rig.conn(1);
    rig.drive(&mut conn);
    assert!(!conn.awaits_sync());
    assert_eq!(answers(&conn.socket().written), 1);
    rig.stop();
}

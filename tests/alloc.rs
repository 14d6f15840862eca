//! The batch path allocates nothing once warm: an in-process node (the library's own `Server`)
//! under a counting global allocator that counts only on worker threads.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{batch_request, read_response, SECRET};
use replay_ingest::config::{Config, ServeArgs};
use replay_ingest::log::SegmentService;
use replay_ingest::net::Server;
use replay_ingest::project::{Catalog, Projects};
use replay_ingest::routes::NodeState;
use replay_ingest::token::{SessionToken, TokenSigner};

struct CountingOnWorkers;

static WORKER_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// 0: not yet known, 1: a worker thread, 2: another thread.
    static ROLE: Cell<u8> = const { Cell::new(0) };
}

fn on_worker() -> bool {
    ROLE.with(|role| match role.get() {
        0 => {
            role.set(2); // no recursion while finding out
            let worker = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("worker-"));
            role.set(if worker { 1 } else { 2 });
            worker
        }
        r => r == 1,
    })
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting has no effect on it.
unsafe impl GlobalAlloc for CountingOnWorkers {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if on_worker() {
            WORKER_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if on_worker() {
            WORKER_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingOnWorkers = CountingOnWorkers;

#[test]
fn warm_batch_path_does_not_allocate() {
    let dir = tempfile::tempdir().unwrap();
    let args = ServeArgs {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        workers: Some(1),
        data_dir: Some(dir.path().to_path_buf()),
        token_secret: Some(SECRET.into()),
        segment_max_age: Some(std::time::Duration::from_secs(3600)),
        ..ServeArgs::default()
    };
    let config = Config::load(&args).unwrap();
    let segments = SegmentService::start(config.log_config(), 1).unwrap();
    let health = replay_ingest::admin::Health::new(
        Arc::clone(segments.consumers()),
        replay_ingest::admin::health::DEFAULT_READY_MAX_LAG,
    );
    let node = NodeState::new(
        config,
        Arc::new(Catalog::fixed(Projects::demo("k".into()))),
        SECRET.as_bytes(),
        None,
        health,
    );
    let server = Server::start(node, Arc::new(segments), None).unwrap();

    let token = TokenSigner::new(SECRET.as_bytes()).compose(&SessionToken {
        session_id: 42,
        delay: 0,
        expires_at_ms: common::now_ms() + 3_600_000,
    });
    let body = vec![7u8; 1024];
    let request = batch_request(&token, "player", "?batch=0_1_1024_kyes", &body);
    let mut conn = std::net::TcpStream::connect(server.local_addr()).unwrap();
    let mut send = |n: usize| {
        for _ in 0..n {
            conn.write_all(&request).unwrap();
            assert_eq!(read_response(&mut conn).unwrap().status, 200);
        }
    };
    send(500);
    let before = WORKER_ALLOCATIONS.load(Ordering::SeqCst);
    send(2000);
    let after = WORKER_ALLOCATIONS.load(Ordering::SeqCst);
    assert_eq!(
        after - before,
        0,
        "allocations on the worker for 2000 warm batches"
    );
    drop(conn);
    server.stop();
}

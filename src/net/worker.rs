//! A worker thread's event loop, in mio's own shape: reserved tokens for the listener and the
//! waker, connections in a `Slab`, accept/read/write until `WouldBlock`, events treated as hints,
//! timers (connection deadlines, segment age) handled once per poll turn. Requests sent to the
//! preparation pool come back through the worker's mailbox; its waker wakes the poll for them.
//!
//! Shutdown: the main thread sets `stopping` and wakes the loop. The listener is dropped, idle
//! connections are closed, connections mid-request finish (their answers say `Connection: close`)
//! until the shutdown timeout, and then the segment writer is closed, which seals its segment.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::conn::{Conn, Env, ReadBuffer, Step, Timeouts};
use super::prepare::Port;
use crate::admin::{Heartbeat, WorkerMetrics};
use crate::log::SegmentWriter;
use crate::routes::{NodeState, WorkerCtx};
use crate::useragent::AgentCache;

pub const LISTENER: Token = Token(usize::MAX - 1);
pub const WAKER: Token = Token(usize::MAX - 2);

/// How often deadlines are checked: timeouts are seconds long, a sweep of ten thousand
/// connections costs microseconds.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

pub struct Worker {
    id: u16,
    poll: Poll,
    listener: Option<TcpListener>,
    node: Arc<NodeState>,
    log: SegmentWriter,
    stopping: Arc<AtomicBool>,
    conns: Slab<Conn>,
    max_connections: usize,
    /// Connections whose drive ran out of budget: driven again before the next poll blocks.
    again: VecDeque<usize>,
    rbuf: ReadBuffer,
    scratch: Vec<u8>,
    agents: AgentCache,
    pool: Port,
    timeouts: Timeouts,
    refused_at_cap: u64,
    evicted_at_cap: u64,
    /// Liveness: beaten once per loop turn (none in harnesses without health).
    heartbeat: Option<Arc<Heartbeat>>,
    metrics: Arc<WorkerMetrics>,
    /// Test-only (`--test-wedge-worker-after`): worker 0 stops making progress then.
    wedge_at: Option<Instant>,
    /// "fsync" durability: connections whose answers wait for this turn's flush.
    awaiting_sync: Vec<usize>,
    /// The same list being served (kept to reuse its allocation).
    synced: Vec<usize>,
}

/// What a worker thread owns from its start: its poll (with the waker registered), its share of
/// the listening socket, its segment writer, and its end of the preparation pool.
pub struct Own {
    pub poll: Poll,
    pub listener: TcpListener,
    pub log: SegmentWriter,
    pub pool: Port,
}

impl Worker {
    pub fn new(
        id: u16,
        own: Own,
        node: Arc<NodeState>,
        stopping: Arc<AtomicBool>,
        max_connections: usize,
    ) -> io::Result<Worker> {
        let Own {
            poll,
            mut listener,
            log,
            pool,
        } = own;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let timeouts = Timeouts {
            head: node.config.head_timeout,
            body: node.config.body_timeout,
            idle: node.config.idle_timeout,
        };
        Ok(Worker {
            id,
            poll,
            listener: Some(listener),
            log,
            stopping,
            conns: Slab::with_capacity(1024),
            max_connections,
            // Sized ahead so that the first connection to run out of budget allocates nothing.
            again: VecDeque::with_capacity(256),
            rbuf: ReadBuffer::default(),
            scratch: Vec::new(),
            agents: AgentCache::default(),
            pool,
            timeouts,
            refused_at_cap: 0,
            evicted_at_cap: 0,
            heartbeat: node.health.heartbeat_of(&format!("worker-{id}")),
            metrics: node.metrics.worker(usize::from(id)),
            wedge_at: node
                .config
                .test_wedge_worker_after
                .filter(|_| id == 0)
                .map(|after| Instant::now() + after),
            awaiting_sync: Vec::with_capacity(64),
            synced: Vec::with_capacity(64),
            node,
        })
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
        let mut next_tick = Instant::now();
        let mut shutdown_deadline: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let timeout = if self.again.is_empty() && self.awaiting_sync.is_empty() {
                next_sweep.min(next_tick).saturating_duration_since(now)
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("worker {}: poll failed: {e}", self.id);
                    break;
                }
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    WAKER => {}
                    Token(key) => self.drive(key, now),
                }
            }
            while let Some(done) = self.pool.receive() {
                let back = self
                    .conns
                    .get_mut(done.key)
                    .is_some_and(|conn| conn.prepared(done.ticket, done.pending, done.body));
                if back {
                    self.drive(done.key, now);
                }
            }
            for _ in 0..self.again.len() {
                if let Some(key) = self.again.pop_front() {
                    self.drive(key, now);
                }
            }
            // Group commit ("fsync" durability): one write-back for the turn, then the
            // answers that waited for it.
            let flushed = self.log.end_turn().is_ok();
            self.release_synced(now, flushed);
            self.metrics
                .publish_log(self.log.written(), self.log.flushes());
            if let Some(beat) = &self.heartbeat {
                beat.beat();
            }
            if self.wedge_at.is_some_and(|at| now >= at) {
                wedge(self.id);
            }
            if now >= next_sweep {
                self.sweep(now);
                next_sweep = now + SWEEP_INTERVAL;
            }
            if now >= next_tick {
                next_tick = self.log.tick(now);
            }
            if self.stopping.load(Ordering::Relaxed) {
                let deadline = *shutdown_deadline.get_or_insert_with(|| {
                    self.begin_shutdown();
                    now + self.node.config.shutdown_timeout
                });
                self.close_idle();
                if self.conns.is_empty() || now >= deadline {
                    break;
                }
                // Come back soon to close connections as their last answers go out.
                next_sweep = next_sweep.min(now + Duration::from_millis(50));
            }
        }
        let unfinished = self.conns.len();
        if unfinished > 0 {
            log::warn!(
                "worker {}: closing {unfinished} connections still busy at shutdown",
                self.id
            );
        }
        // Dropping the connections drops their reservations, which marks them abandoned.
        self.conns.clear();
        let (flushes, records) = self.log.flushes();
        if flushes > 0 {
            log::info!(
                "worker {}: {flushes} group commits for {records} records ({:.1} records a flush)",
                self.id,
                records as f64 / flushes as f64
            );
        }
        if let Err(e) = self.log.close() {
            log::error!("worker {}: closing the segment failed: {e}", self.id);
        }
    }

    fn accept(&mut self, now: Instant) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((mut socket, peer)) => {
                    if self.conns.len() >= self.max_connections && !self.evict_one() {
                        self.refused_at_cap += 1;
                        if self.refused_at_cap.is_power_of_two() {
                            log::warn!(
                                "worker {}: at the connection cap ({}), {} refused so far",
                                self.id,
                                self.max_connections,
                                self.refused_at_cap
                            );
                        }
                        continue;
                    }
                    let _ = socket.set_nodelay(true);
                    let entry = self.conns.vacant_entry();
                    let key = entry.key();
                    if let Err(e) = self.poll.registry().register(
                        &mut socket,
                        Token(key),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        log::warn!("worker {}: cannot register a connection: {e}", self.id);
                        continue;
                    }
                    entry.insert(Conn::new(socket, peer.ip(), now, self.timeouts.idle));
                    WorkerMetrics::add(&self.metrics.connections_accepted, 1);
                    // Data may have arrived with the connection; edge-triggered readiness would
                    // report it anyway, this saves a wake-up.
                    self.drive(key, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors or memory: leave the backlog for the next event.
                    log::warn!("worker {}: accept failed: {e}", self.id);
                    return;
                }
            }
        }
    }

    fn drive(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let mut ctx = WorkerCtx {
            node: &self.node,
            metrics: &self.metrics,
            log: &mut self.log,
            scratch: &mut self.scratch,
            agents: &mut self.agents,
        };
        let mut env = Env {
            ctx: &mut ctx,
            rbuf: &mut self.rbuf,
            now,
            stopping: self.stopping.load(Ordering::Relaxed),
            timeouts: self.timeouts,
            pool: Some(&self.pool),
            key,
        };
        let held = conn.awaits_sync();
        let step = conn.drive(&mut env);
        if !held && conn.awaits_sync() {
            self.awaiting_sync.push(key);
        }
        match step {
            Step::Wait => {}
            Step::Again => self.again.push_back(key),
            Step::Close => self.close(key),
        }
    }

    /// Sends the answers that waited for this turn's flush, or a 500 in their place if it
    /// failed (driving the connection again, which also takes its next requests).
    fn release_synced(&mut self, now: Instant, flushed: bool) {
        std::mem::swap(&mut self.synced, &mut self.awaiting_sync);
        let mut synced = std::mem::take(&mut self.synced);
        let cors = self.node.live.use_cors();
        for &key in &synced {
            if let Some(conn) = self.conns.get_mut(key) {
                if flushed {
                    conn.synced();
                } else {
                    conn.sync_failed(cors);
                }
                self.drive(key, now);
            }
        }
        synced.clear();
        self.synced = synced;
    }

    fn close(&mut self, key: usize) {
        if let Some(mut conn) = self.conns.try_remove(key) {
            let _ = self.poll.registry().deregister(conn.socket());
            WorkerMetrics::add(&self.metrics.connections_closed, 1);
        }
    }

    /// Closes the connection the cap policy gives up first (see `Conn::eviction_rank`); false
    /// when every connection is busy with a request.
    fn evict_one(&mut self) -> bool {
        let victim = self
            .conns
            .iter()
            .filter_map(|(key, c)| c.eviction_rank().map(|rank| (rank, key)))
            .min();
        match victim {
            Some((_, key)) => {
                self.evicted_at_cap += 1;
                if self.evicted_at_cap.is_power_of_two() {
                    log::warn!(
                        "worker {}: at the connection cap ({}), {} idle or slow connections \
                         closed to make room so far",
                        self.id,
                        self.max_connections,
                        self.evicted_at_cap
                    );
                }
                self.close(key);
                true
            }
            None => false,
        }
    }

    fn sweep(&mut self, now: Instant) {
        let cors = self.node.live.use_cors();
        let expired: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline() <= now)
            .map(|(key, _)| key)
            .collect();
        for key in expired {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.time_out(cors);
                WorkerMetrics::add(&self.metrics.timeouts, 1);
            }
            self.close(key);
        }
    }

    fn begin_shutdown(&mut self) {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
    }

    fn close_idle(&mut self) {
        let idle: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_idle())
            .map(|(key, _)| key)
            .collect();
        for key in idle {
            self.close(key);
        }
    }
}

/// The test hook for the watchdog: the worker stops turning for good (its connections hang, its
/// heartbeat stops), as a worker stuck in a bug would.
fn wedge(id: u16) -> ! {
    log::error!("worker {id}: wedged on purpose (--test-wedge-worker-after)");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

//! What the log's consumer threads (the forwarders, the database writer) and the projects loader
//! share about their lives: a thread that can be asked to stop and joined ([`Background`]), the
//! drain at shutdown ([`Drain`]: once asked to stop, a consumer keeps handing on what is in the
//! log while its downstream takes it, for a bounded time, then saves its cursor and exits), and
//! the loop of turns around both ([`run_consumer`]).
//!
//! In: a stop request from main's shutdown. Out: when to read without waiting, when to give up
//! retrying, when to exit. Runs on the thread it belongs to (the handle on main's).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::admin::Heartbeat;
use crate::log::Consumer;

/// A named thread with a stop flag; dropping the handle stops and joins it.
pub struct Background {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Background {
    /// Starts `run` on thread `name`; it gets the flag that says it should stop.
    pub fn spawn(
        name: String,
        run: impl FnOnce(Arc<AtomicBool>) + Send + 'static,
    ) -> io::Result<Background> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(flag))?;
        Ok(Background {
            thread: Some(thread),
            stop,
        })
    }

    /// Asks the thread to stop and returns once it has.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Sleeps `total` in steps of at most 50 ms, calling `each_step` before each (a heartbeat);
/// returns early once `stop` is set.
pub fn nap(stop: &AtomicBool, total: Duration, mut each_step: impl FnMut()) {
    let until = Instant::now() + total;
    while !stop.load(Ordering::SeqCst) {
        each_step();
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

/// Retry delays while a downstream (a queue, the database) fails: doubling from the first to
/// the last.
pub const RETRY_MIN: Duration = Duration::from_millis(100);
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// The delays between attempts against a failing downstream: [`RETRY_MIN`], doubling up to
/// [`RETRY_MAX`].
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: RETRY_MIN }
    }
}

impl Backoff {
    /// The delay before the next attempt (and the one after it doubles).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(RETRY_MAX);
        delay
    }
}

/// A downstream's state as a consumer sees it: failed attempts counted, an outage logged once
/// when it begins (the attempts after it at debug) and once when it ends.
pub struct Outage<'a> {
    /// For log lines: `forwarder redis`, `database writer`.
    pub label: &'a str,
    pub errors: &'a AtomicU64,
    pub down: &'a AtomicBool,
}

impl Outage<'_> {
    /// An attempt failed with `error`; `meanwhile` says what the node does about it.
    pub fn failed(&self, error: &str, meanwhile: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::Relaxed) {
            log::error!("{}: {error}; {meanwhile}", self.label);
        } else {
            log::debug!("{}: still failing: {error}", self.label);
        }
    }

    /// An attempt succeeded; `back` is logged if it ends an outage.
    pub fn succeeded(&self, back: &str) {
        if self.down.swap(false, Ordering::Relaxed) {
            log::warn!("{}: {back}", self.label);
        }
    }
}

/// How one turn of a consumer loop ended.
pub enum Turn {
    /// It read (and handed on) this many records.
    Read(usize),
    /// Asked to stop while downstream was failing: what is left goes at the next start.
    Stopped,
    /// Something of its own failed (reading the log, writing a quarantine file): the same
    /// records are read again after a pause.
    Failed(String),
}

/// A consumer thread: a turn reads a batch of records and hands it on until downstream took it.
pub trait ConsumerLoop {
    /// For log lines: `forwarder redis`, `database writer`.
    fn label(&self) -> String;
    fn consumer(&mut self) -> &mut Consumer;
    fn drain(&self) -> &Drain;
    fn beat(&self) -> &Heartbeat;
    /// One turn; `wait`: how long the read may wait for new records.
    fn turn(&mut self, wait: Duration) -> Turn;
    /// The exit summary, logged once the cursor is saved.
    fn summary(&self);
}

/// Runs `l` until it is stopped and drained: turns, the cursor saved at most every save
/// interval and at the end, a pause of `retry` after its own failures.
pub fn run_consumer(l: &mut impl ConsumerLoop, read_wait: Duration, retry: Duration) {
    let label = l.label();
    loop {
        l.beat().beat();
        if !l.drain().turn() {
            break;
        }
        match l.turn(l.drain().read_wait(read_wait)) {
            Turn::Read(0) if l.drain().draining() => break,
            Turn::Read(_) => {}
            Turn::Stopped => break,
            Turn::Failed(e) => {
                log::error!("{label}: {e}");
                l.consumer().rewind();
                l.drain().sleep(retry, l.beat());
            }
        }
        if let Err(e) = l.consumer().save_if_due() {
            log::error!("{label}: saving its cursor: {e}");
        }
    }
    if let Err(e) = l.consumer().save() {
        log::error!("{label}: saving its cursor at shutdown: {e}");
    }
    l.summary();
}

/// A consumer loop's view of shutdown: running, then draining for `time`, then done.
pub struct Drain {
    stop: Arc<AtomicBool>,
    time: Duration,
    until: std::cell::Cell<Option<Instant>>,
}

impl Drain {
    pub fn new(stop: Arc<AtomicBool>, time: Duration) -> Drain {
        Drain {
            stop,
            time,
            until: std::cell::Cell::new(None),
        }
    }

    /// Once per loop turn: starts the drain clock when a stop came; false once it ran out (the
    /// rest goes at the next start).
    pub fn turn(&self) -> bool {
        if self.until.get().is_none() && self.stop.load(Ordering::SeqCst) {
            self.until.set(Some(Instant::now() + self.time));
        }
        !self.expired()
    }

    pub fn draining(&self) -> bool {
        self.until.get().is_some()
    }

    /// How long a read may wait for new records: `normal`, or not at all while draining.
    pub fn read_wait(&self, normal: Duration) -> Duration {
        if self.draining() {
            Duration::ZERO
        } else {
            normal
        }
    }

    fn expired(&self) -> bool {
        self.until
            .get()
            .is_some_and(|until| Instant::now() >= until)
    }

    /// While downstream is failing: stop retrying now (the drain ran out, or a stop came
    /// before the drain began); what was not handed on stays in the log for the next start.
    pub fn give_up(&self) -> bool {
        self.expired() || (!self.draining() && self.stop.load(Ordering::SeqCst))
    }

    /// After a failed attempt: waits the backoff's next delay, beating; false when the caller
    /// must stop retrying instead (see [`Drain::give_up`]; the drain ran out while waiting).
    pub fn retry_after(&self, backoff: &mut Backoff, beat: &Heartbeat) -> bool {
        !(self.give_up() || self.sleep(backoff.next_delay(), beat))
    }

    /// Sleeps `delay` in short steps, beating; true when the drain ran out meanwhile. A stop
    /// that comes meanwhile ends the sleep: the drain's own deadline takes over.
    pub fn sleep(&self, delay: Duration, beat: &Heartbeat) -> bool {
        let until = Instant::now() + delay;
        loop {
            let now = Instant::now();
            if now >= until {
                return false;
            }
            if self.expired() {
                return true;
            }
            if !self.draining() && self.stop.load(Ordering::SeqCst) {
                return false;
            }
            beat.beat();
            std::thread::sleep((until - now).min(Duration::from_millis(50)));
        }
    }
}

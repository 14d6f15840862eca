//! The preparation pool: heavy per-request work off the workers' event loops.
//!
//! Enters: from a worker, a buffered request whose finishing is heavy (`routes::is_heavy`: a gzip
//! body to inflate, a multipart form, a start whose user agent the worker has not parsed), with
//! its body, over one bounded `crossbeam-channel` shared by the pool. Leaves: the same request
//! prepared (`routes::prepare`), into the submitting worker's mailbox, and a wake-up of that
//! worker's poll. Runs on the `prepare-N` threads.
//!
//! Only the heavy, pure part moves: the worker still stores the records and writes the answer, so
//! the log keeps one writer and a 200 still means the record is in it. While a request is being
//! prepared its connection takes no further input, so answers on a connection keep their order;
//! the worker serves its other connections meanwhile. When every preparation thread is busy and
//! the queue is full, the worker does the work itself, as it did before the pool: the pool sheds
//! load, it never refuses it.
//!
//! A request whose connection is gone by the time it comes back (a timeout, a reset) is dropped:
//! it was never answered, so nothing acknowledged is lost.

use std::cell::Cell;
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::Waker;

use crate::routes::{self, NodeState, Pending};

/// Requests queued per preparation thread before workers do the work themselves: a few
/// milliseconds of inflation each, so a queue this long is already a few tens of milliseconds.
const QUEUE_PER_THREAD: usize = 16;

/// A request on its way to or from a preparation thread.
pub struct Job {
    /// The connection's slab key in its worker, and the ticket that tells it from a later
    /// connection in the same slot.
    key: usize,
    ticket: u64,
    pending: Pending,
    body: Vec<u8>,
    mailbox: Arc<Mailbox>,
}

/// Where a worker receives its prepared requests.
struct Mailbox {
    done: Sender<Prepared>,
    waker: Arc<Waker>,
}

/// A prepared request, back on its worker.
pub struct Prepared {
    pub key: usize,
    pub ticket: u64,
    pub pending: Pending,
    pub body: Vec<u8>,
}

/// The preparation threads.
pub struct Pool {
    jobs: Sender<Job>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    pub fn start(node: &Arc<NodeState>, threads: usize) -> io::Result<Pool> {
        let (jobs, queue) = crossbeam_channel::bounded::<Job>(QUEUE_PER_THREAD * threads.max(1));
        let threads = (0..threads)
            .map(|n| {
                let queue = queue.clone();
                let node = Arc::clone(node);
                std::thread::Builder::new()
                    .name(format!("prepare-{n}"))
                    .spawn(move || serve(&node, &queue))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Pool { jobs, threads })
    }

    /// A worker's end of the pool; `waker` wakes that worker's poll.
    pub fn port(&self, waker: Arc<Waker>) -> Port {
        let (done, inbox) = crossbeam_channel::unbounded();
        Port {
            jobs: self.jobs.clone(),
            mailbox: Arc::new(Mailbox { done, waker }),
            inbox,
            tickets: Cell::new(0),
        }
    }

    /// Waits for the threads; call once every worker (every [`Port`]) is gone.
    pub fn stop(self) {
        drop(self.jobs);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

fn serve(node: &NodeState, queue: &Receiver<Job>) {
    // Ends when every sender is gone: the pool's and every worker's port.
    for job in queue {
        if let Some(gate) = &node.config.test_prepare_gate {
            while !gate.exists() {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        let (pending, body) = routes::prepare(node, job.pending, job.body);
        let done = Prepared {
            key: job.key,
            ticket: job.ticket,
            pending,
            body,
        };
        // A worker that has exited no longer receives: its connections are closed anyway.
        if job.mailbox.done.send(done).is_ok() {
            let _ = job.mailbox.waker.wake();
        }
    }
}

/// A worker's handle on the pool: submits requests, receives them prepared.
pub struct Port {
    jobs: Sender<Job>,
    mailbox: Arc<Mailbox>,
    inbox: Receiver<Prepared>,
    tickets: Cell<u64>,
}

impl Port {
    /// Hands a request to the pool; its ticket, or the request back when the queue is full.
    pub fn submit(
        &self,
        key: usize,
        pending: Pending,
        body: Vec<u8>,
    ) -> Result<u64, (Pending, Vec<u8>)> {
        let ticket = self.tickets.get() + 1;
        let job = Job {
            key,
            ticket,
            pending,
            body,
            mailbox: Arc::clone(&self.mailbox),
        };
        match self.jobs.try_send(job) {
            Ok(()) => {
                self.tickets.set(ticket);
                Ok(ticket)
            }
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                Err((job.pending, job.body))
            }
        }
    }

    /// The next prepared request, if one is back.
    pub fn receive(&self) -> Option<Prepared> {
        self.inbox.try_recv().ok()
    }
}

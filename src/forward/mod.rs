//! Forwarders: the log's consumers that hand every record on to OpenReplay's queues.
//!
//! In: records, read in order through the log's consumer API ([`Consumer::read`], live segments
//! included). Out: queue messages (`message`: the topic, the session id and the value
//! PROTOCOL.md's queue contract asks for), produced by a [`Producer`] (`redis`: Redis Streams;
//! `kafka`: Kafka), and the forwarder's durable cursor. Thread: one per forwarder,
//! `forward-<queue>`, started by [`Forwarder::start`]; nothing here runs on the request path.
//!
//! # At least once, in order
//!
//! A forwarder reads a batch of records (at most [`BATCH_RECORDS`], about [`BATCH_BYTES`]),
//! turns them into messages in log order, and hands the whole batch to its producer, which
//! returns only when the queue acknowledged every message (Redis answered every XADD of the
//! pipeline; Kafka's broker acknowledged every delivery). Only then is the cursor committed past
//! the batch; it is saved at most every second ([`Consumer::save_if_due`]) and at shutdown.
//! While the queue is down the producer's error comes back, the forwarder waits (backing off
//! from [`RETRY_MIN`] to [`RETRY_MAX`]) and sends the same batch again: nothing is skipped, and
//! the backlog waits in the log, which retention keeps for this consumer (only the disk budget
//! can force it out, loudly). So a record reaches the queue at least once; it is sent twice only
//! when a batch was partly accepted before an error, or when the node stopped (or crashed) after
//! sending and before the cursor's next save: duplicates come from the records after the last
//! saved cursor, at most about one second of traffic and one batch.
//!
//! Order: one session's records are appended by one worker (a token's session lives on the
//! node's worker that received it, but a session's requests may reach any worker), read back in
//! arrival order across workers, and sent in that order in one stream of batches, one at a time.
//!
//! # What is not sent
//!
//! A batch whose framing does not walk is not forwarded (OpenReplay's consumers would drop it
//! without trace): it is counted here and quarantined by the compactor, which reads the same
//! records. A message the queue refuses for its size (Kafka's `QUEUE_MESSAGE_SIZE_LIMIT`) is
//! counted and written to `quarantine/` with that reason. Not-started records go to no queue.

pub mod kafka;
pub mod message;
pub mod redis;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::admin::Heartbeat;
use crate::background::{run_consumer, Background, Backoff, ConsumerLoop, Drain, Outage, Turn};
use crate::compact::quarantine::{self, Quarantined};
use crate::log::{Consumer, LogError, LogRecord};
pub use message::{Message, MessageError, Messages, Topics};

/// Records one batch holds at most: one Redis pipeline, one round of Kafka deliveries.
pub const BATCH_RECORDS: usize = 1024;
/// Body bytes one batch holds about (the record that passes it is still taken).
pub const BATCH_BYTES: usize = 8 << 20;
/// How long one read waits for new records before the loop turns (beats, checks for stop).
pub const READ_WAIT: Duration = Duration::from_millis(200);
pub use crate::background::{RETRY_MAX, RETRY_MIN};
/// At shutdown, how long the forwarder keeps sending what is left in the log before it saves
/// its cursor and stops (the rest goes at the next start).
pub const DRAIN_TIME: Duration = Duration::from_secs(5);
/// Where refused messages go, beside the compactor's quarantine files.
pub const QUARANTINE_DIR: &str = crate::compact::compactor::QUARANTINE_DIR;

/// What a queue must do for a forwarder.
pub trait Producer: Send {
    /// The queue's name in logs and consumer names (`redis`, `kafka`).
    fn name(&self) -> &'static str;
    /// Sends `messages` in order and returns once the queue acknowledged every one; an error
    /// means some may not have been, and the same batch is sent again.
    fn send(&mut self, messages: &[Message]) -> Result<(), ProduceError>;
    /// The largest value the queue takes; larger ones are quarantined, not sent.
    fn max_value_len(&self) -> Option<usize> {
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// Cannot reach the queue, or it failed a request: try again later.
    #[error("{0}")]
    Unavailable(String),
}

/// Counters of one forwarder (its totals since this start; `ls` shows the saved totals).
#[derive(Debug, Default)]
pub struct ForwardStats {
    pub records: AtomicU64,
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    /// Batches whose framing does not walk (left to the compactor's quarantine).
    pub invalid: AtomicU64,
    /// Values over the queue's size limit (quarantined here).
    pub oversize: AtomicU64,
    /// Failed attempts to send a batch.
    pub errors: AtomicU64,
    /// The queue is down (the last attempt failed).
    pub down: AtomicBool,
}

pub struct Forwarder {
    thread: Background,
    /// The queue's name (`redis`, `kafka`).
    pub name: &'static str,
    pub stats: Arc<ForwardStats>,
}

impl Forwarder {
    /// Starts the forwarder's thread. `consumer` must have been registered before traffic
    /// flows (retention then keeps what it has not read).
    pub fn start(
        consumer: Consumer,
        producer: Box<dyn Producer>,
        topics: Topics,
        data_dir: PathBuf,
        beat: Arc<Heartbeat>,
    ) -> io::Result<Forwarder> {
        let stats = Arc::new(ForwardStats::default());
        let queue = producer.name();
        let name = format!("forward-{queue}");
        let shared = Arc::clone(&stats);
        let thread = Background::spawn(name, move |stop| {
            let mut forwarder = Loop {
                consumer,
                producer,
                topics,
                quarantine_dir: data_dir.join(QUARANTINE_DIR),
                beat,
                drain: Drain::new(stop, DRAIN_TIME),
                stats: shared,
                records: Vec::with_capacity(BATCH_RECORDS),
                messages: Messages::default(),
            };
            run_consumer(&mut forwarder, READ_WAIT, RETRY_MAX)
        })?;
        Ok(Forwarder {
            thread,
            name: queue,
            stats,
        })
    }

    /// Asks the forwarder to stop: it drains what is in the log for up to [`DRAIN_TIME`] while
    /// the queue takes it, saves its cursor and exits. Returns once it has.
    pub fn stop(self) {
        self.thread.stop();
    }
}

struct Loop {
    consumer: Consumer,
    producer: Box<dyn Producer>,
    topics: Topics,
    quarantine_dir: PathBuf,
    beat: Arc<Heartbeat>,
    drain: Drain,
    stats: Arc<ForwardStats>,
    records: Vec<LogRecord>,
    messages: Messages,
}

impl ConsumerLoop for Loop {
    fn label(&self) -> String {
        format!("forwarder {}", self.producer.name())
    }

    fn consumer(&mut self) -> &mut Consumer {
        &mut self.consumer
    }

    fn drain(&self) -> &Drain {
        &self.drain
    }

    fn beat(&self) -> &Heartbeat {
        &self.beat
    }

    fn turn(&mut self, wait: Duration) -> Turn {
        match self.send_batch(wait) {
            Ok(read) => Turn::Read(read),
            Err(TurnError::Stopped) => Turn::Stopped,
            Err(TurnError::Log(e)) => Turn::Failed(format!("reading the log: {e}")),
        }
    }

    fn summary(&self) {
        let name = self.producer.name();
        let s = &self.stats;
        log::info!(
            "forwarder {name}: {} records as {} messages ({} bytes) this run, {} invalid not \
             sent, {} over the size limit, {} failed attempts",
            s.records.load(Ordering::Relaxed),
            s.messages.load(Ordering::Relaxed),
            s.bytes.load(Ordering::Relaxed),
            s.invalid.load(Ordering::Relaxed),
            s.oversize.load(Ordering::Relaxed),
            s.errors.load(Ordering::Relaxed),
        );
    }
}

impl Loop {
    /// Reads one batch and sends it until the queue took it; returns how many records it read.
    fn send_batch(&mut self, wait: Duration) -> Result<usize, TurnError> {
        self.records.clear();
        let cursor = self
            .consumer
            .read(&mut self.records, BATCH_RECORDS, BATCH_BYTES, wait)
            .map_err(TurnError::Log)?;
        self.messages.clear();
        let limit = self.producer.max_value_len();
        let mut refused = Vec::new();
        for record in &self.records {
            match self.messages.push(record, &self.topics, limit) {
                Ok(()) => {}
                Err(MessageError::Invalid(reason)) => {
                    self.stats.invalid.fetch_add(1, Ordering::Relaxed);
                    log::debug!(
                        "not forwarding a record of session {}: {reason} (the compactor \
                         quarantines it)",
                        record.meta.session_id
                    );
                }
                Err(e @ MessageError::TooLarge { .. }) => {
                    self.stats.oversize.fetch_add(1, Ordering::Relaxed);
                    refused.push((record, e.to_string()));
                }
            }
        }
        if !refused.is_empty() {
            // Written before the cursor moves past them: a crash repeats it, never loses it.
            if let Err(e) = self.quarantine(&refused) {
                log::error!("forwarder: cannot write its quarantine file: {e}");
                self.consumer.rewind();
                self.drain.sleep(RETRY_MAX, &self.beat);
                return Ok(self.records.len());
            }
        }
        let label = self.label();
        let outage = Outage {
            label: &label,
            errors: &self.stats.errors,
            down: &self.stats.down,
        };
        let mut backoff = Backoff::default();
        while !self.messages.is_empty() {
            match self.producer.send(self.messages.as_slice()) {
                Ok(()) => {
                    outage.succeeded("the queue is back");
                    break;
                }
                Err(e) => {
                    outage.failed(&e.to_string(), "the log keeps the backlog, retrying");
                    // Stopping while the queue is down: what was not sent stays unacknowledged
                    // (the cursor does not move) and goes at the next start.
                    if !self.drain.retry_after(&mut backoff, &self.beat) {
                        self.consumer.rewind();
                        return Err(TurnError::Stopped);
                    }
                    // What was acknowledged before the outage is saved, so that retention
                    // frees it and `ls` shows the backlog from there.
                    if let Err(e) = self.consumer.save_if_due() {
                        log::error!("{label}: saving its cursor: {e}");
                    }
                }
            }
        }
        let bytes: u64 = self.records.iter().map(|r| r.body.len() as u64).sum();
        self.stats
            .records
            .fetch_add(self.records.len() as u64, Ordering::Relaxed);
        self.stats
            .messages
            .fetch_add(self.messages.len() as u64, Ordering::Relaxed);
        self.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.consumer
            .commit_delivered(&cursor, self.records.len() as u64, bytes);
        Ok(self.records.len())
    }

    /// Writes the refused records to `quarantine/q-<ms>-<queue>.jsonl` (`compact::quarantine`,
    /// with the reason), durably.
    fn quarantine(&self, refused: &[(&LogRecord, String)]) -> io::Result<()> {
        let entries: Vec<Quarantined<'_>> = refused
            .iter()
            .map(|(record, reason)| Quarantined::of(record, reason.clone()))
            .collect();
        let who = format!("forwarder {}", self.producer.name());
        quarantine::write(&self.quarantine_dir, &who, self.producer.name(), &entries)
    }
}

/// What [`redrive`] sent.
#[derive(Debug, Default)]
pub struct Redriven {
    pub messages: usize,
    /// Why each record that was not sent was refused.
    pub refused: Vec<String>,
}

/// Sends `records` (one session's, in its true order) again through `producer`, in batches,
/// waiting for each to be acknowledged; records that would not be forwarded are skipped and
/// said why. For `replay-ingest redrive`, on the CLI's thread.
pub fn redrive(
    records: &[LogRecord],
    producer: &mut dyn Producer,
    topics: &Topics,
) -> Result<Redriven, ProduceError> {
    let mut out = Redriven::default();
    let limit = producer.max_value_len();
    for chunk in records.chunks(BATCH_RECORDS) {
        let mut messages = Messages::default();
        for record in chunk {
            if let Err(e) = messages.push(record, topics, limit) {
                out.refused.push(e.to_string());
            }
        }
        if !messages.is_empty() {
            producer.send(messages.as_slice())?;
            out.messages += messages.len();
        }
    }
    Ok(out)
}

enum TurnError {
    Stopped,
    Log(LogError),
}

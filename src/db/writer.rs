//! The database writer: a consumer of the log that inserts every new session's `sessions` row.
//!
//! In: records, read in log order through the log's consumer API; only
//! [`RecordKind::SessionRow`] records matter here. Out: rows in OpenReplay's `sessions` table,
//! and the writer's durable cursor, which the forwarders read behind. Thread: `db-writer`,
//! started by [`DbWriter::start`].
//!
//! # At least once, and harmless when repeated
//!
//! A read of up to [`BATCH_RECORDS`] records becomes one `INSERT ... SELECT FROM unnest(...)`
//! of all the rows in it (one statement, prepared once, whatever the count), with
//! `ON CONFLICT (session_id) DO NOTHING`: a row inserted before a crash and inserted again after
//! it changes nothing. The cursor moves past the batch only once the statement committed, and is
//! saved at most every second and at shutdown, so after a crash the writer inserts again at most
//! the rows of about the last second, each a no-op.
//!
//! While the database is unreachable (or failing for any reason that is not the rows' own) the
//! writer keeps the batch, reconnects with backoff from 100 ms to 5 s and inserts it again; the
//! rows wait in the log, which retention keeps for this consumer, and the forwarders wait behind
//! it. A row the database refuses for its data (SQLSTATE classes 22 and 23: a project that no
//! longer exists, a value outside a column's type) cannot succeed by waiting: the batch is then
//! inserted row by row, and each refused row is written to `quarantine/` with the database's
//! reason and counted, so one bad row never holds up the others.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::row::{Columns, SessionRow};
use super::{connect, is_data_error, PostgresConfig};
use crate::admin::Heartbeat;
use crate::background::{
    run_consumer, Background, Backoff, ConsumerLoop, Drain, Outage, Turn, RETRY_MAX,
};
use crate::compact::quarantine::{self, Quarantined};
use crate::config::redact_url as redacted;
use crate::log::{Consumer, LogRecord, RecordKind};

/// Records one read takes at most (rows are a few of them, or all at a burst of starts).
pub const BATCH_RECORDS: usize = 4096;
/// Body bytes one read takes about.
pub const BATCH_BYTES: usize = 16 << 20;
/// How long one read waits for new records before the loop turns.
const READ_WAIT: Duration = Duration::from_millis(200);
/// At shutdown, how long the writer keeps inserting what is left before it stops.
const DRAIN_TIME: Duration = Duration::from_secs(5);

const INSERT: &str = "\
INSERT INTO sessions (session_id, project_id, start_ts, user_uuid, user_device, user_device_type, \
 user_country, user_os, user_os_version, rev_id, tracker_version, platform, user_browser, \
 user_browser_version, user_device_memory_size, user_device_heap_size, user_id, user_state, \
 user_city, timezone, screen_width, screen_height) \
SELECT s, p, t, u::uuid, d, dt::device_type, c::country, os, osv, rev, tv, pl::platform, b, bv, \
 mem, heap, uid, st, ci, tz, sw, sh \
FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::text[], $5::text[], $6::text[], \
 $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], \
 $14::text[], $15::int[], $16::bigint[], $17::text[], $18::text[], $19::text[], $20::text[], \
 $21::int[], $22::int[]) \
 AS r(s, p, t, u, d, dt, c, os, osv, rev, tv, pl, b, bv, mem, heap, uid, st, ci, tz, sw, sh) \
ON CONFLICT (session_id) DO NOTHING";

/// Counters of the database writer since this start.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Rows inserted.
    pub inserted: AtomicU64,
    /// Rows that were there already (written again after a crash).
    pub existing: AtomicU64,
    /// Insert statements that committed, and the most rows one of them held.
    pub statements: AtomicU64,
    pub max_rows_per_statement: AtomicU64,
    /// Rows the database refused for their data (quarantined), and records that were not rows.
    pub refused: AtomicU64,
    pub invalid: AtomicU64,
    /// Failed attempts (the database down or failing).
    pub errors: AtomicU64,
    pub down: AtomicBool,
}

pub struct DbWriter {
    thread: Background,
    pub stats: Arc<WriterStats>,
}

impl DbWriter {
    /// Starts the writer's thread. `consumer` must be registered before traffic flows.
    pub fn start(
        consumer: Consumer,
        config: PostgresConfig,
        data_dir: PathBuf,
        beat: Arc<Heartbeat>,
    ) -> io::Result<DbWriter> {
        let stats = Arc::new(WriterStats::default());
        let shared = Arc::clone(&stats);
        let thread = Background::spawn("db-writer".into(), move |stop| {
            let mut writer = Writer {
                consumer,
                config,
                quarantine_dir: data_dir.join(crate::compact::compactor::QUARANTINE_DIR),
                beat,
                drain: Drain::new(stop, DRAIN_TIME),
                stats: shared,
                client: None,
                records: Vec::with_capacity(BATCH_RECORDS),
            };
            run_consumer(&mut writer, READ_WAIT, RETRY_MAX)
        })?;
        Ok(DbWriter { thread, stats })
    }

    /// Asks the writer to stop: it inserts what is in the log for up to [`DRAIN_TIME`] while
    /// the database takes it, saves its cursor and exits. Returns once it has.
    pub fn stop(self) {
        self.thread.stop();
    }
}

struct Writer {
    consumer: Consumer,
    config: PostgresConfig,
    quarantine_dir: PathBuf,
    beat: Arc<Heartbeat>,
    drain: Drain,
    stats: Arc<WriterStats>,
    client: Option<(postgres::Client, postgres::Statement)>,
    records: Vec<LogRecord>,
}

/// Why a turn ended early.
enum Halt {
    /// Asked to stop while the database was down: the batch stays for the next start.
    Stopped,
    /// Reading the log or writing a quarantine file failed: try the same batch later.
    Local(String),
}

impl ConsumerLoop for Writer {
    fn label(&self) -> String {
        "database writer".into()
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
        match self.write_batch(wait) {
            Ok(read) => Turn::Read(read),
            Err(Halt::Stopped) => Turn::Stopped,
            Err(Halt::Local(e)) => Turn::Failed(e),
        }
    }

    fn summary(&self) {
        let s = &self.stats;
        log::info!(
            "database writer: {} rows inserted ({} were there already) in {} statements (at \
             most {} rows in one), {} refused, {} failed attempts this run",
            s.inserted.load(Ordering::Relaxed),
            s.existing.load(Ordering::Relaxed),
            s.statements.load(Ordering::Relaxed),
            s.max_rows_per_statement.load(Ordering::Relaxed),
            s.refused.load(Ordering::Relaxed),
            s.errors.load(Ordering::Relaxed),
        );
    }
}

impl Writer {
    /// Reads one batch of records and inserts its rows until the database took them; returns
    /// how many records it read.
    fn write_batch(&mut self, wait: Duration) -> Result<usize, Halt> {
        self.records.clear();
        let cursor = self
            .consumer
            .read(&mut self.records, BATCH_RECORDS, BATCH_BYTES, wait)
            .map_err(|e| Halt::Local(format!("reading the log: {e}")))?;
        let mut decoded = Vec::new();
        for (at, record) in self.records.iter().enumerate() {
            if record.meta.kind != RecordKind::SessionRow {
                continue;
            }
            match SessionRow::decode(&record.body) {
                Ok(row) => decoded.push((at, row)),
                Err(e) => {
                    // The compactor quarantines it with the same reason.
                    self.stats.invalid.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "database writer: a record of session {} is not a row: {e}",
                        record.meta.session_id
                    );
                }
            }
        }
        // Each row's column values, once for all the attempts.
        let mut rows = Vec::with_capacity(decoded.len());
        let mut unwritable = Vec::new();
        for (at, row) in &decoded {
            match row.columns() {
                Ok(columns) => rows.push((*at, columns)),
                Err(e) => unwritable.push((*at, e.to_string())),
            }
        }
        self.quarantine(&unwritable).map_err(Halt::Local)?;
        if !rows.is_empty() {
            self.insert_until_done(&rows)?;
        }
        let bytes: u64 = rows
            .iter()
            .map(|(at, _)| self.records[*at].body.len() as u64)
            .sum();
        self.consumer
            .commit_delivered(&cursor, rows.len() as u64, bytes);
        Ok(self.records.len())
    }

    /// Inserts `rows` (each with its record's index), retrying while the database is down.
    fn insert_until_done(&mut self, rows: &[(usize, Columns<'_>)]) -> Result<(), Halt> {
        let stats = Arc::clone(&self.stats);
        let outage = Outage {
            label: "database writer",
            errors: &stats.errors,
            down: &stats.down,
        };
        let mut backoff = Backoff::default();
        loop {
            match self.insert_batch(rows) {
                Ok(()) => {
                    outage.succeeded("PostgreSQL is back");
                    return Ok(());
                }
                Err(Failure::Local(e)) => return Err(Halt::Local(e)),
                Err(Failure::Database(e)) => {
                    outage.failed(
                        &format!("PostgreSQL at {}: {e}", redacted(&self.config.url)),
                        "the log keeps the rows (and the forwarders wait behind them), retrying",
                    );
                    self.client = None;
                    if !self.drain.retry_after(&mut backoff, &self.beat) {
                        self.consumer.rewind();
                        return Err(Halt::Stopped);
                    }
                    // What committed before the outage is saved, so that retention frees it.
                    if let Err(e) = self.consumer.save_if_due() {
                        log::error!("database writer: saving its cursor: {e}");
                    }
                }
            }
        }
    }

    /// One attempt: all rows in one statement; if the database refuses the data, row by row.
    fn insert_batch(&mut self, rows: &[(usize, Columns<'_>)]) -> Result<(), Failure> {
        let all: Vec<&Columns<'_>> = rows.iter().map(|(_, c)| c).collect();
        match self.execute(&all) {
            Ok(inserted) => {
                self.count(all.len(), inserted);
                Ok(())
            }
            Err(e) if is_data_error(&e) => {
                let mut refused = Vec::new();
                for (at, c) in rows {
                    match self.execute(&[c]) {
                        Ok(inserted) => self.count(1, inserted),
                        Err(e) if is_data_error(&e) => refused.push((*at, describe(&e))),
                        Err(e) => return Err(Failure::Database(describe(&e))),
                    }
                }
                self.quarantine(&refused).map_err(Failure::Local)
            }
            Err(e) => Err(Failure::Database(describe(&e))),
        }
    }

    fn count(&self, rows: usize, inserted: u64) {
        let s = &self.stats;
        s.inserted.fetch_add(inserted, Ordering::Relaxed);
        s.existing
            .fetch_add(rows as u64 - inserted.min(rows as u64), Ordering::Relaxed);
        s.statements.fetch_add(1, Ordering::Relaxed);
        s.max_rows_per_statement
            .fetch_max(rows as u64, Ordering::Relaxed);
    }

    /// Runs the insert of `rows` on the connection (made first if there is none); returns how
    /// many were new.
    fn execute(&mut self, rows: &[&Columns<'_>]) -> Result<u64, postgres::Error> {
        if self.client.is_none() {
            let mut client = connect(&self.config.url)?;
            let statement = client.prepare(INSERT)?;
            self.client = Some((client, statement));
        }
        let (client, statement) = self.client.as_mut().expect("connected above");
        let session_id: Vec<i64> = rows.iter().map(|r| r.session_id).collect();
        let project_id: Vec<i32> = rows.iter().map(|r| r.project_id).collect();
        let start_ts: Vec<i64> = rows.iter().map(|r| r.start_ts).collect();
        let user_uuid: Vec<&str> = rows.iter().map(|r| r.user_uuid).collect();
        let user_device: Vec<&str> = rows.iter().map(|r| r.user_device).collect();
        let device_type: Vec<&str> = rows.iter().map(|r| r.user_device_type).collect();
        let country: Vec<&str> = rows.iter().map(|r| r.user_country).collect();
        let user_os: Vec<&str> = rows.iter().map(|r| r.user_os).collect();
        let os_version: Vec<Option<&str>> = rows.iter().map(|r| r.user_os_version).collect();
        let rev_id: Vec<Option<&str>> = rows.iter().map(|r| r.rev_id).collect();
        let tracker_version: Vec<&str> = rows.iter().map(|r| r.tracker_version).collect();
        let platform: Vec<&str> = rows.iter().map(|r| r.platform).collect();
        let browser: Vec<Option<&str>> = rows.iter().map(|r| r.user_browser).collect();
        let browser_version: Vec<Option<&str>> =
            rows.iter().map(|r| r.user_browser_version).collect();
        let memory: Vec<Option<i32>> = rows.iter().map(|r| r.user_device_memory_size).collect();
        let heap: Vec<Option<i64>> = rows.iter().map(|r| r.user_device_heap_size).collect();
        let user_id: Vec<Option<&str>> = rows.iter().map(|r| r.user_id).collect();
        let state: Vec<Option<&str>> = rows.iter().map(|r| r.user_state).collect();
        let city: Vec<Option<&str>> = rows.iter().map(|r| r.user_city).collect();
        let timezone: Vec<&str> = rows.iter().map(|r| r.timezone).collect();
        let width: Vec<i32> = rows.iter().map(|r| r.screen_width).collect();
        let height: Vec<i32> = rows.iter().map(|r| r.screen_height).collect();
        client.execute(
            &*statement,
            &[
                &session_id,
                &project_id,
                &start_ts,
                &user_uuid,
                &user_device,
                &device_type,
                &country,
                &user_os,
                &os_version,
                &rev_id,
                &tracker_version,
                &platform,
                &browser,
                &browser_version,
                &memory,
                &heap,
                &user_id,
                &state,
                &city,
                &timezone,
                &width,
                &height,
            ],
        )
    }

    /// Writes refused rows (record index, reason) to `quarantine/q-<ms>-database.jsonl`,
    /// durably, before the cursor moves past them.
    fn quarantine(&self, refused: &[(usize, String)]) -> Result<(), String> {
        if refused.is_empty() {
            return Ok(());
        }
        self.stats
            .refused
            .fetch_add(refused.len() as u64, Ordering::Relaxed);
        let entries: Vec<Quarantined<'_>> = refused
            .iter()
            .map(|(at, reason)| Quarantined::of(&self.records[*at], reason.clone()))
            .collect();
        quarantine::write(
            &self.quarantine_dir,
            "database writer",
            "database",
            &entries,
        )
        .map_err(|e| format!("cannot write its quarantine file: {e}"))
    }
}

/// What one attempt met.
enum Failure {
    /// The database: down, or failing the statement for a reason that is not the rows'.
    Database(String),
    /// Here: a quarantine file that cannot be written.
    Local(String),
}

/// The database's own message when there is one (the `Display` of a database error is only
/// "db error").
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

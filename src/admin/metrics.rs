//! Metrics: what the node did, in Prometheus's text format, for `GET /metrics` on the admin
//! listener.
//!
//! In: per-worker counters ([`WorkerMetrics`], one per worker, written only by its own thread
//! with relaxed atomic adds on its own cache lines: the request path pays a few uncontended
//! adds and one clock read per request), and at scrape time the counters the other parts
//! already keep (the segment service, the compactor, the forwarders, the database writer, the
//! consumers' lags, the disk budget). Out: the text exposition, built on the admin thread at each
//! scrape by [`render`] with the `prometheus-client` crate's encoder; the workers' counters are
//! summed then, never on the request path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::compact::CompactorStats;
use crate::db::WriterStats;
use crate::forward::ForwardStats;
use crate::log::SegmentCounters;
use crate::routes::{NodeState, Route};

/// Route label values, by [`route_index`].
pub const ROUTES: [&str; 15] = [
    "health",
    "health_live",
    "health_ready",
    "web_start",
    "web_batch",
    "web_not_started",
    "web_feature_flags",
    "web_tags",
    "web_conditions",
    "web_images",
    "mobile_start",
    "mobile_batch",
    "mobile_late",
    "mobile_images",
    "other",
];

/// Status codes counted apart; any other is counted as `other`.
const STATUSES: [u16; 17] = [
    200, 204, 400, 401, 403, 404, 405, 408, 411, 413, 415, 417, 431, 500, 501, 503, 0,
];

/// Upper bounds of the latency histogram's buckets, microseconds (the last bucket is +Inf).
const BUCKETS_US: [u64; 13] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    5_000_000,
];

/// The label index of `route` (`None`: a path no route serves).
pub fn route_index(route: Option<Route>) -> u8 {
    match route {
        Some(Route::Health) => 0,
        Some(Route::HealthLive) => 1,
        Some(Route::HealthReady) => 2,
        Some(Route::WebStart) => 3,
        Some(Route::WebBatch) => 4,
        Some(Route::WebNotStarted) => 5,
        Some(Route::WebFeatureFlags) => 6,
        Some(Route::WebTags) => 7,
        Some(Route::WebConditions(_)) => 8,
        Some(Route::WebImages) => 9,
        Some(Route::MobileStart) => 10,
        Some(Route::MobileBatch) => 11,
        Some(Route::MobileLate) => 12,
        Some(Route::MobileImages) => 13,
        None => 14,
    }
}

/// One worker's counters. Aligned so that two workers' counters never share a cache line.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    requests: [[AtomicU64; STATUSES.len()]; ROUTES.len()],
    latency: [AtomicU64; BUCKETS_US.len() + 1],
    latency_sum_us: AtomicU64,
    answered: AtomicU64,
    /// Request body bytes as received (wire).
    pub body_bytes: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub connections_closed: AtomicU64,
    pub timeouts: AtomicU64,
    pub sessions_started: AtomicU64,
    pub sampled_out: AtomicU64,
    /// Heavy requests handed to the preparation pool, and those the worker did itself because
    /// the pool's queue was full.
    pub prepared_off_loop: AtomicU64,
    pub prepared_inline: AtomicU64,
    // Published by the worker once per turn from its segment writer's own counts.
    records_written: AtomicU64,
    bytes_written: AtomicU64,
    flushes: AtomicU64,
    flushed_records: AtomicU64,
}

impl WorkerMetrics {
    /// One answered request: its route index, status and time from its head to its answer.
    /// Returns how many this worker answered before it (for sampling request logs).
    pub fn request(&self, route: u8, status: u16, elapsed: Duration) -> u64 {
        let s = STATUSES
            .iter()
            .position(|c| *c == status)
            .unwrap_or(STATUSES.len() - 1);
        let r = usize::from(route).min(ROUTES.len() - 1);
        self.requests[r][s].fetch_add(1, Ordering::Relaxed);
        let us = elapsed.as_micros().min(u128::from(u64::MAX)) as u64;
        let b = BUCKETS_US
            .iter()
            .position(|bound| us <= *bound)
            .unwrap_or(BUCKETS_US.len());
        self.latency[b].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
        self.answered.fetch_add(1, Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The segment writer's totals (records and bytes committed, group commits and the records
    /// they covered), as of the end of a turn.
    pub fn publish_log(&self, written: (u64, u64), flushes: (u64, u64)) {
        self.records_written.store(written.0, Ordering::Relaxed);
        self.bytes_written.store(written.1, Ordering::Relaxed);
        self.flushes.store(flushes.0, Ordering::Relaxed);
        self.flushed_records.store(flushes.1, Ordering::Relaxed);
    }
}

/// Every worker's counters.
#[derive(Debug)]
pub struct Metrics {
    workers: Vec<Arc<WorkerMetrics>>,
}

impl Metrics {
    pub fn new(workers: usize) -> Metrics {
        Metrics {
            workers: (0..workers.max(1))
                .map(|_| Arc::new(WorkerMetrics::default()))
                .collect(),
        }
    }

    /// Worker `id`'s counters (ids past the count share the last: none in practice).
    pub fn worker(&self, id: usize) -> Arc<WorkerMetrics> {
        Arc::clone(&self.workers[id.min(self.workers.len() - 1)])
    }

    fn sum(&self, field: impl Fn(&WorkerMetrics) -> &AtomicU64) -> u64 {
        self.workers
            .iter()
            .map(|w| field(w).load(Ordering::Relaxed))
            .sum()
    }
}

/// What a scrape reads besides the workers' counters.
#[derive(Clone)]
pub struct Sources {
    pub node: Arc<NodeState>,
    pub segments: SegmentCounters,
    pub compactor: Arc<CompactorStats>,
    pub forwarders: Vec<(&'static str, Arc<ForwardStats>)>,
    pub database: Option<Arc<WriterStats>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("metrics sources")
    }
}

/// The text exposition of every metric, and its content type.
pub fn render(sources: &Sources) -> (String, &'static str) {
    let mut registry = Registry::with_prefix("replay_ingest");
    registry.register_collector(Box::new(sources.clone()));
    let mut text = String::with_capacity(16 << 10);
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
        let _ = writeln!(text, "# encoding failed: {e}");
    }
    (
        text,
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
    )
}

type Labels = Vec<(&'static str, String)>;

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(v).encode(m)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: &[(Labels, u64)],
) -> std::fmt::Result {
    if rows.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in rows {
        let e = m.encode_family(labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(*v).encode(e)?,
            _ => ConstGauge::new(*v as i64).encode(e)?,
        }
    }
    Ok(())
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Collector for Sources {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let m = &self.node.metrics;
        let e = &mut enc;

        let mut requests = Vec::new();
        for (r, route) in ROUTES.iter().enumerate() {
            for (s, status) in STATUSES.iter().enumerate() {
                let n: u64 = m.workers.iter().map(|w| load(&w.requests[r][s])).sum();
                if n > 0 {
                    let status = if *status == 0 {
                        "other".to_string()
                    } else {
                        status.to_string()
                    };
                    requests.push((vec![("route", route.to_string()), ("status", status)], n));
                }
            }
        }
        family(
            e,
            "requests",
            "Requests answered, by route and status",
            MetricType::Counter,
            &requests,
        )?;
        {
            // Each bucket's own count: the encoder writes them out cumulatively.
            let mut count = 0;
            let mut buckets = Vec::with_capacity(BUCKETS_US.len() + 1);
            for (i, bound) in BUCKETS_US
                .iter()
                .map(|us| *us as f64 / 1e6)
                .chain([f64::INFINITY])
                .enumerate()
            {
                let n = m.workers.iter().map(|w| load(&w.latency[i])).sum::<u64>();
                count += n;
                buckets.push((bound, n));
            }
            let sum = m.sum(|w| &w.latency_sum_us) as f64 / 1e6;
            let mut h = e.encode_descriptor(
                "request_duration_seconds",
                "Time from a request's head to its answer",
                None,
                MetricType::Histogram,
            )?;
            h.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                sum, count, &buckets, None,
            )?;
        }
        counter(
            e,
            "body_bytes",
            "Request body bytes received",
            m.sum(|w| &w.body_bytes),
        )?;
        gauge(
            e,
            "connections_open",
            "Client connections open",
            m.sum(|w| &w.connections_accepted)
                .saturating_sub(m.sum(|w| &w.connections_closed)) as i64,
        )?;
        counter(
            e,
            "connections_accepted",
            "Client connections accepted",
            m.sum(|w| &w.connections_accepted),
        )?;
        counter(
            e,
            "timeouts",
            "Connections closed for a head, body or idle timeout",
            m.sum(|w| &w.timeouts),
        )?;
        counter(
            e,
            "requests_prepared_off_loop",
            "Heavy requests (gzip, multipart, an agent not parsed before) prepared by the pool",
            m.sum(|w| &w.prepared_off_loop),
        )?;
        counter(
            e,
            "requests_prepared_inline",
            "Heavy requests a worker prepared itself because the pool's queue was full",
            m.sum(|w| &w.prepared_inline),
        )?;
        counter(
            e,
            "sessions_started",
            "New sessions started (web and mobile)",
            m.sum(|w| &w.sessions_started),
        )?;
        counter(
            e,
            "sessions_sampled_out",
            "New sessions refused by the project's sample rate",
            m.sum(|w| &w.sampled_out),
        )?;
        counter(
            e,
            "log_records_written",
            "Records committed to the segment log",
            m.sum(|w| &w.records_written),
        )?;
        counter(
            e,
            "log_bytes_written",
            "Record bytes committed to the segment log",
            m.sum(|w| &w.bytes_written),
        )?;
        counter(
            e,
            "log_flushes",
            "Group commits (fsync durability)",
            m.sum(|w| &w.flushes),
        )?;
        counter(
            e,
            "log_flushed_records",
            "Records covered by group commits",
            m.sum(|w| &w.flushed_records),
        )?;

        let segments = self.segments.get();
        counter(
            e,
            "segments_created",
            "Segment files created",
            segments.created,
        )?;
        counter(
            e,
            "segments_reused",
            "Segment files reused from spare/",
            segments.reused,
        )?;
        counter(
            e,
            "segments_retired",
            "Sealed segments retired after every consumer passed them",
            segments.retired,
        )?;
        counter(
            e,
            "segments_forced_out",
            "Sealed segments deleted unconsumed by the disk budget",
            segments.forced_out,
        )?;
        let budget = self.node.health.registry().budget();
        gauge(
            e,
            "disk_used_bytes",
            "What the data directory holds",
            budget.used() as i64,
        )?;
        gauge(
            e,
            "disk_budget_bytes",
            "What the data directory may hold (--disk-budget)",
            budget.limit() as i64,
        )?;

        let c = &self.compactor;
        counter(
            e,
            "compactor_records",
            "Records compacted",
            load(&c.records),
        )?;
        counter(
            e,
            "compactor_raw_bytes",
            "Record bytes compacted",
            load(&c.raw_bytes),
        )?;
        counter(
            e,
            "compactor_file_bytes",
            "Bytes of compacted files written",
            load(&c.file_bytes),
        )?;
        gauge(
            e,
            "compactor_yielding",
            "1 while the compactor runs at SCHED_IDLE, yielding the CPU to the request path",
            load(&c.yielding) as i64,
        )?;
        counter(
            e,
            "quarantined_batches",
            "Records set aside because their framing does not walk",
            load(&c.quarantined),
        )?;

        let mut lag_segments = Vec::new();
        let mut lag_bytes = Vec::new();
        let mut lag_age = Vec::new();
        for state in self.node.health.registry().consumers() {
            let lag = state.lag();
            let labels: Labels = vec![("consumer", state.name.clone())];
            lag_segments.push((labels.clone(), lag.segments));
            lag_bytes.push((labels.clone(), lag.bytes));
            lag_age.push((labels, lag.oldest_sealed_for.as_millis() as u64));
        }
        family(
            e,
            "consumer_lag_segments",
            "Sealed segments a consumer's saved cursor is not past",
            MetricType::Gauge,
            &lag_segments,
        )?;
        family(
            e,
            "consumer_lag_bytes",
            "Bytes of those segments",
            MetricType::Gauge,
            &lag_bytes,
        )?;
        family(
            e,
            "consumer_lag_oldest_ms",
            "How long ago the oldest of them was sealed, ms",
            MetricType::Gauge,
            &lag_age,
        )?;

        let mut fwd: [Vec<(Labels, u64)>; 5] = Default::default();
        for (name, s) in &self.forwarders {
            let l: Labels = vec![("queue", name.to_string())];
            fwd[0].push((l.clone(), load(&s.records)));
            fwd[1].push((l.clone(), load(&s.messages)));
            fwd[2].push((l.clone(), load(&s.errors)));
            fwd[3].push((l.clone(), load(&s.oversize)));
            fwd[4].push((l, u64::from(s.down.load(Ordering::Relaxed))));
        }
        let [records, messages, errors, oversize, down] = &fwd;
        let counter_kind = MetricType::Counter;
        family(
            e,
            "forward_records",
            "Records handed to a queue and acknowledged",
            counter_kind,
            records,
        )?;
        family(
            e,
            "forward_messages",
            "Queue messages acknowledged",
            counter_kind,
            messages,
        )?;
        family(
            e,
            "forward_errors",
            "Failed attempts to send a batch",
            counter_kind,
            errors,
        )?;
        family(
            e,
            "forward_oversize",
            "Values over the queue's size limit (quarantined)",
            counter_kind,
            oversize,
        )?;
        family(
            e,
            "forward_down",
            "1 while the queue is down",
            MetricType::Gauge,
            down,
        )?;

        if let Some(s) = &self.database {
            counter(
                e,
                "db_rows_inserted",
                "sessions rows inserted",
                load(&s.inserted),
            )?;
            counter(
                e,
                "db_rows_existing",
                "sessions rows that were there already (replays)",
                load(&s.existing),
            )?;
            counter(
                e,
                "db_statements",
                "Insert statements committed",
                load(&s.statements),
            )?;
            counter(
                e,
                "db_rows_refused",
                "Rows the database refused for their data (quarantined)",
                load(&s.refused),
            )?;
            counter(
                e,
                "db_errors",
                "Failed attempts (database down or failing)",
                load(&s.errors),
            )?;
            gauge(
                e,
                "db_down",
                "1 while the database is unreachable",
                i64::from(s.down.load(Ordering::Relaxed)),
            )?;
        }
        let projects = self.node.projects.snapshot().len();
        gauge(e, "projects", "Active projects served", projects as i64)?;
        Ok(())
    }
}

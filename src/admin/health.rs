//! Health: whether the node's loops run (`/health/live`) and whether it can take traffic now
//! (`/health/ready`), with the reasons, for load balancers, orchestrators and operators.
//!
//! In: heartbeats (each worker loop and the compactor beat once per turn; a turn comes at least
//! every quarter second for a worker, every second for the compactor), the disk budget's state
//! and each consumer's lag as the segment service last counted it. Out: a status and a JSON
//! body. Read on whichever worker thread serves the probe; nothing here takes a lock the request
//! path takes (the lag counts are behind their own small mutexes).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::log::ConsumerRegistry;
use crate::project::Catalog;

/// A loop that beats less often than this is taken for wedged. Far above the longest turn a
/// healthy loop takes (a compaction run of 256 MiB: about two seconds here).
pub const LIVE_WITHIN: Duration = Duration::from_secs(30);
/// A consumer whose oldest unread sealed segment was sealed longer ago than this makes the node
/// not ready: segments seal every 10 s by default and the compactor takes them within a
/// second, so a minute means a consumer is stuck or its downstream is down.
pub const DEFAULT_READY_MAX_LAG: Duration = Duration::from_secs(60);

/// One loop's last sign of life.
#[derive(Debug)]
pub struct Heartbeat {
    pub name: String,
    /// What `last_ms` counts from: the `Health`'s start.
    started: Instant,
    /// Milliseconds after `started` of the last beat.
    last_ms: AtomicU64,
}

impl Heartbeat {
    /// Once per loop turn: a clock read and a relaxed store.
    pub fn beat(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
}

/// What the health endpoints look at.
pub struct Health {
    started: Instant,
    heartbeats: Vec<Arc<Heartbeat>>,
    registry: Arc<ConsumerRegistry>,
    ready_max_lag: Duration,
    /// The projects served, and whether they come from the database.
    projects: Option<(Arc<Catalog>, bool)>,
}

impl Health {
    pub fn new(registry: Arc<ConsumerRegistry>, ready_max_lag: Duration) -> Self {
        Health {
            started: Instant::now(),
            heartbeats: Vec::new(),
            registry,
            ready_max_lag,
            projects: None,
        }
    }

    /// Readiness also says whether projects were read (a node whose database was down at
    /// start-up serves no start until then) and whether they are current.
    pub fn watch_projects(&mut self, catalog: Arc<Catalog>, from_database: bool) {
        self.projects = Some((catalog, from_database));
    }

    /// The log's consumers, whose lags readiness and the metrics report.
    pub fn registry(&self) -> &Arc<ConsumerRegistry> {
        &self.registry
    }

    /// A heartbeat for loop `name`, counted by liveness from now on.
    pub fn heartbeat(&mut self, name: &str) -> Arc<Heartbeat> {
        let beat = Arc::new(Heartbeat {
            name: name.to_string(),
            started: self.started,
            last_ms: AtomicU64::new(self.started.elapsed().as_millis() as u64),
        });
        self.heartbeats.push(Arc::clone(&beat));
        beat
    }

    /// The heartbeat registered as `name`.
    pub fn heartbeat_of(&self, name: &str) -> Option<Arc<Heartbeat>> {
        self.heartbeats.iter().find(|b| b.name == name).cloned()
    }

    /// Loops that have not beaten within [`LIVE_WITHIN`].
    fn silent_loops(&self) -> Vec<String> {
        self.silent_within(LIVE_WITHIN)
    }

    /// Loops that have not beaten within `bound` (the watchdog's test of progress).
    pub fn silent_within(&self, bound: Duration) -> Vec<String> {
        let now = self.started.elapsed().as_millis() as u64;
        self.heartbeats
            .iter()
            .filter(|b| {
                now.saturating_sub(b.last_ms.load(Ordering::Relaxed)) > bound.as_millis() as u64
            })
            .map(|b| b.name.clone())
            .collect()
    }

    /// `/health/live`: every loop beats.
    pub fn live(&self) -> (bool, Vec<u8>) {
        let silent = self.silent_loops();
        let reasons: Vec<String> = silent
            .iter()
            .map(|name| format!("{name} has not run for over {}s", LIVE_WITHIN.as_secs()))
            .collect();
        let ok = reasons.is_empty();
        let body = json!({
            "status": if ok { "ok" } else { "failing" },
            "reasons": reasons,
            "loops": self.heartbeats.len(),
        });
        (ok, body.to_string().into_bytes())
    }

    /// `/health/ready`: alive, storage writable, and every consumer's lag under its bound.
    pub fn ready(&self) -> (bool, Vec<u8>) {
        let mut reasons: Vec<String> = self
            .silent_loops()
            .into_iter()
            .map(|name| format!("{name} is not running"))
            .collect();
        let budget = self.registry.budget();
        if budget.is_full() {
            reasons.push(format!(
                "disk budget used up ({} of {} bytes) with nothing left to retire",
                budget.used(),
                budget.limit()
            ));
        }
        if budget.storage_error() {
            reasons.push("the last segment file could not be prepared (disk full?)".into());
        }
        let projects = self.projects.as_ref().map(|(catalog, from_database)| {
            if !catalog.is_loaded() {
                reasons.push("projects not read yet: PostgreSQL unreachable".into());
            }
            json!({
                "source": if *from_database { "postgres" } else { "file" },
                "count": catalog.snapshot().len(),
                "loaded": catalog.is_loaded(),
                // False while the database is unreachable: known keys are served, unknown
                // keys get 503.
                "current": catalog.is_current(),
            })
        });
        let mut consumers = Vec::new();
        for c in self.registry.consumers() {
            let lag = c.lag();
            if lag.segments > 0 && lag.oldest_sealed_for > self.ready_max_lag {
                reasons.push(format!(
                    "consumer {} has {} sealed segments ({} bytes) unread, the oldest sealed {}s \
                     ago",
                    c.name,
                    lag.segments,
                    lag.bytes,
                    lag.oldest_sealed_for.as_secs()
                ));
            }
            consumers.push(json!({
                "name": c.name,
                "lag_segments": lag.segments,
                "lag_bytes": lag.bytes,
                "oldest_unread_sealed_ms": lag.oldest_sealed_for.as_millis() as u64,
            }));
        }
        let ok = reasons.is_empty();
        let body = json!({
            "status": if ok { "ready" } else { "not ready" },
            "reasons": reasons,
            "storage": {
                "used_bytes": budget.used(),
                "budget_bytes": budget.limit(),
                "full": budget.is_full(),
            },
            "consumers": consumers,
            "projects": projects,
        });
        (ok, body.to_string().into_bytes())
    }
}

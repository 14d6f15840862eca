//! The projects loader: OpenReplay's `projects`, `tags` and `projects_conditions`, kept in memory.
//!
//! In: the database at `POSTGRES_STRING`. Out: a fresh [`Projects`] put into the workers'
//! [`Catalog`] after each read. Thread: `db-projects`, started by [`ProjectLoader::start`]; the
//! request path only ever reads the catalog.
//!
//! A read takes the active projects (`active = true`, the rows OpenReplay's own lookup accepts),
//! with the columns its start uses (platform, sample rate, maximum session duration, beacon size;
//! 0 means the node's limit), the tags that are not deleted and every recording condition. After
//! the first read the loader `LISTEN`s on `project`, the channel OpenReplay's schema notifies on
//! every insert or update of a project, and reads everything again when a notification comes (so
//! a project added while the node runs is served within moments) and every `projects_refresh`
//! (a notification missed while reconnecting; the cache time of tags and conditions).
//!
//! While the database is unreachable the catalog keeps the projects last read and is marked
//! stale: known keys keep working, an unknown key gets 503 rather than 404, because the table
//! could not be consulted. A node started while the database is down serves no start until the
//! first read (readiness says so) and reconnects by itself, backing off up to five seconds.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use postgres::fallible_iterator::FallibleIterator;
use serde_json::{json, Value};

use super::{connect, PostgresConfig};
use crate::admin::Heartbeat;
use crate::background::{nap, Background, Backoff, RETRY_MAX};
use crate::config::redact_url as redacted;
use crate::project::{Catalog, Platform, Project, Projects};

/// The channel OpenReplay's `notify_project()` trigger sends on.
pub const CHANNEL: &str = "project";
/// Longest the loader waits without beating or looking at its stop flag.
const TURN: Duration = Duration::from_millis(500);

pub struct ProjectLoader {
    thread: Background,
}

impl ProjectLoader {
    /// Starts the loader's thread; the catalog stays empty (and not ready) until its first read.
    pub fn start(
        config: PostgresConfig,
        catalog: Arc<Catalog>,
        beat: Arc<Heartbeat>,
    ) -> io::Result<ProjectLoader> {
        let thread = Background::spawn("db-projects".into(), move |stop| {
            Loader {
                config,
                catalog,
                beat,
                stop,
                conditions_table: true,
            }
            .run()
        })?;
        Ok(ProjectLoader { thread })
    }

    pub fn stop(self) {
        self.thread.stop();
    }
}

struct Loader {
    config: PostgresConfig,
    catalog: Arc<Catalog>,
    beat: Arc<Heartbeat>,
    stop: Arc<AtomicBool>,
    /// `projects_conditions` exists (OpenReplay's enterprise schema); cleared once it is found
    /// missing, so the community schema costs one failed query per connection, not per read.
    conditions_table: bool,
}

impl Loader {
    fn run(&mut self) {
        let mut backoff = Backoff::default();
        let mut down_since: Option<Instant> = None;
        while !self.stop.load(Ordering::SeqCst) {
            let connected = Instant::now();
            let error = match self.connected_session(&mut down_since) {
                Ok(()) => break,
                Err(e) => e,
            };
            self.catalog.mark_stale();
            if down_since.is_none() {
                down_since = Some(Instant::now());
                let known = self.catalog.snapshot().len();
                log::error!(
                    "projects: PostgreSQL at {} unreachable: {error:#}; serving the {known} \
                     projects known, unknown keys get 503 until it is back",
                    redacted(&self.config.url)
                );
            } else {
                log::debug!("projects: PostgreSQL still unreachable: {error:#}");
            }
            if connected.elapsed() > RETRY_MAX {
                backoff = Backoff::default();
            }
            nap(&self.stop, backoff.next_delay(), || self.beat.beat());
        }
    }

    /// One connection's life: read, listen, read again on notifications and on the refresh
    /// timer. Returns `Ok` only when asked to stop.
    fn connected_session(&mut self, down_since: &mut Option<Instant>) -> anyhow::Result<()> {
        let mut client = connect(&self.config.url).context("connecting")?;
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .context("LISTEN")?;
        // Read after LISTEN: a change committed in between is both read and notified.
        self.read(&mut client)?;
        match down_since.take() {
            Some(since) => log::warn!(
                "projects: PostgreSQL is back after {}s: {} active projects",
                since.elapsed().as_secs(),
                self.catalog.snapshot().len()
            ),
            None => log::info!(
                "projects: {} active projects from PostgreSQL at {}",
                self.catalog.snapshot().len(),
                redacted(&self.config.url)
            ),
        }
        let mut next_read = Instant::now() + self.config.projects_refresh;
        loop {
            self.beat.beat();
            if self.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            if client.is_closed() {
                bail!("the connection closed");
            }
            let wait = next_read
                .saturating_duration_since(Instant::now())
                .min(TURN);
            let mut changed = false;
            {
                let mut notifications = client.notifications();
                if notifications.timeout_iter(wait).next()?.is_some() {
                    changed = true;
                    // A burst of changes (a bulk update) is one read.
                    while notifications.iter().next()?.is_some() {}
                }
            }
            if changed || Instant::now() >= next_read {
                self.read(&mut client)?;
                if changed {
                    log::info!(
                        "projects: changed; {} active projects",
                        self.catalog.snapshot().len()
                    );
                }
                next_read = Instant::now() + self.config.projects_refresh;
            }
        }
    }

    /// Reads the projects, their tags and conditions, and replaces the catalog with them.
    fn read(&mut self, client: &mut postgres::Client) -> anyhow::Result<()> {
        let mut tags: HashMap<i32, Vec<Value>> = HashMap::new();
        for row in client
            .query(
                "SELECT project_id, tag_id, selector, ignore_click_rage, ignore_dead_click, \
                 location FROM tags WHERE deleted_at IS NULL ORDER BY tag_id",
                &[],
            )
            .context("reading tags")?
        {
            tags.entry(row.try_get(0)?).or_default().push(json!({
                "id": row.try_get::<_, i32>(1)?,
                "selector": row.try_get::<_, String>(2)?,
                "icr": row.try_get::<_, bool>(3)?,
                "idc": row.try_get::<_, bool>(4)?,
                "location": row.try_get::<_, Option<String>>(5)?,
            }));
        }
        let conditions = self.read_conditions(client)?;
        let mut list = Vec::new();
        for row in client
            .query(
                "SELECT project_id, project_key, max_session_duration, sample_rate, beacon_size, \
                 platform::text FROM projects WHERE active = true",
                &[],
            )
            .context("reading projects")?
        {
            let id: i32 = row.try_get(0)?;
            let key: String = row.try_get(1)?;
            let platform: String = row.try_get(5)?;
            let Some(platform) = Platform::from_label(&platform) else {
                log::warn!("projects: {key} has platform {platform:?}, which no route serves");
                continue;
            };
            let beacon_size: i32 = row.try_get(4)?;
            list.push(Project {
                project_key: key,
                project_id: u64::try_from(id).unwrap_or(0),
                sample_rate: f64::from(row.try_get::<_, i16>(3)?.clamp(0, 100)),
                max_session_duration: u64::try_from(row.try_get::<_, i32>(2)?).unwrap_or(0),
                beacon_size_limit: u64::try_from(beacon_size).ok().filter(|b| *b > 0),
                platform,
                protocol_version: 2,
                tags: tags.remove(&id).unwrap_or_default(),
                feature_flags: Vec::new(),
                conditions: conditions.get(&id).cloned().unwrap_or_default(),
            });
        }
        let projects = Projects::from_list(list).context("the projects table")?;
        self.catalog.replace(projects);
        Ok(())
    }

    fn read_conditions(
        &mut self,
        client: &mut postgres::Client,
    ) -> anyhow::Result<HashMap<i32, Vec<Value>>> {
        let mut conditions: HashMap<i32, Vec<Value>> = HashMap::new();
        if !self.conditions_table {
            return Ok(conditions);
        }
        let rows = match client.query(
            "SELECT project_id, condition_id, name, capture_rate, filters::text \
             FROM projects_conditions ORDER BY condition_id",
            &[],
        ) {
            Ok(rows) => rows,
            Err(e) if e.code() == Some(&postgres::error::SqlState::UNDEFINED_TABLE) => {
                log::info!(
                    "projects: no projects_conditions table (OpenReplay's community schema): \
                     conditions answer []"
                );
                self.conditions_table = false;
                return Ok(conditions);
            }
            Err(e) => return Err(e).context("reading projects_conditions"),
        };
        for row in rows {
            let filters: String = row.try_get(4)?;
            conditions.entry(row.try_get(0)?).or_default().push(json!({
                "conditionId": row.try_get::<_, i32>(1)?,
                "name": row.try_get::<_, String>(2)?,
                "filters": serde_json::from_str::<Value>(&filters).unwrap_or(Value::Null),
                "captureRate": row.try_get::<_, i32>(3)?,
            }));
        }
        Ok(conditions)
    }
}

//! The `replay-ingest` command: `serve` runs a node; `cat` and `ls` read what a node stored,
//! also while it runs. Main thread only: it starts the segment service and the workers, then
//! waits for SIGTERM/SIGINT (a second one exits at once).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use replay_ingest::admin::{AdminListener, Health};
use replay_ingest::compact::{self, CompactRecord, Compactor};
use replay_ingest::config::{self, Config, ServeArgs};
use replay_ingest::db::{self, DbWriter, ProjectLoader};
use replay_ingest::forward::redis::RedisProducer;
use replay_ingest::forward::{Forwarder, Producer};
use replay_ingest::geo::GeoDb;
use replay_ingest::log::{
    self as seglog, ConsumerRegistry, ConsumerState, Lag, RecordKind, SegmentEvent, SegmentService,
    Topic,
};
use replay_ingest::net::Server;
use replay_ingest::project::{Catalog, Projects};
use replay_ingest::routes::NodeState;

#[derive(Parser)]
#[command(version, about = "An ingestion node for OpenReplay session replay")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve(Box<ServeArgs>),
    /// Check the settings `serve` would run with (flags, environment, config file), the projects
    /// file, the GeoIP database and the data directory, without starting: exit code 0 and a
    /// summary, or 1 and what is wrong (systemd's ExecStartPre).
    CheckConfig(Box<ServeArgs>),
    /// Write the bytes OpenReplay's consumers would have read for one session on one topic.
    Cat {
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        #[arg(long)]
        session: u64,
        /// Default: raw for web sessions, raw-ios for mobile ones.
        #[arg(long)]
        topic: Option<TopicArg>,
    },
    /// Write one session's streams (one file per topic, in the session's true order) and its
    /// images under `OUT/<projectKey>/<sessionID>/`.
    Export {
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        #[arg(long)]
        session: u64,
        #[arg(long)]
        out: PathBuf,
        /// The node's projects file, to name the project directory by its key (without one:
        /// the key from the session's mobile image names, the demo project's key, or
        /// `project-<id>`).
        #[arg(long)]
        projects: Option<PathBuf>,
    },
    /// Send one session's records again, in its true order, to the queues the settings name
    /// (REDIS_STRING, KAFKA_SERVERS, the topics: as for `serve`), for a downstream that lost
    /// them. Reads segments and compacted files alike; the node may be running.
    Redrive {
        #[arg(long)]
        session: u64,
        #[command(flatten)]
        settings: Box<ServeArgs>,
    },
    /// List stored records: session, topic, kind, size, time (and name, for images).
    Ls {
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum TopicArg {
    Raw,
    RawAssets,
    RawIos,
}

impl From<TopicArg> for Topic {
    fn from(t: TopicArg) -> Topic {
        match t {
            TopicArg::Raw => Topic::Raw,
            TopicArg::RawAssets => Topic::RawAssets,
            TopicArg::RawIos => Topic::RawIos,
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let level = match &cli.command {
        Command::Serve(args) | Command::CheckConfig(args) => args.log_level.clone(),
        Command::Redrive { settings, .. } => settings.log_level.clone(),
        _ => None,
    };
    replay_ingest::admin::logs::init(level.as_deref());
    match cli.command {
        Command::Serve(args) => serve(&args),
        Command::CheckConfig(args) => check_config(&args),
        Command::Cat {
            data_dir,
            session,
            topic,
        } => cat(&data_dir, session, topic.map(Topic::from)),
        Command::Ls { data_dir, json } => ls(&data_dir, json),
        Command::Redrive { session, settings } => redrive(session, &settings),
        Command::Export {
            data_dir,
            session,
            out,
            projects,
        } => export(&data_dir, session, &out, projects.as_deref()),
    }
}

fn check_config(args: &ServeArgs) -> Result<()> {
    let config = Config::load(args)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let probe = config.data_dir.join(".check-config");
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .with_context(|| {
            format!(
                "data directory {} is not writable",
                config.data_dir.display()
            )
        })?;
    let projects = match (&config.projects_file, &config.postgres) {
        (Some(path), _) => format!(
            "{} projects from {}",
            Projects::load(path)?.len(),
            path.display()
        ),
        (None, Some(pg)) => {
            pg.url
                .parse::<postgres::Config>()
                .map_err(|e| anyhow::anyhow!("POSTGRES_STRING: {e}"))?;
            format!(
                "projects from PostgreSQL at {}",
                config::redact_url(&pg.url)
            )
        }
        (None, None) => "the demo project".to_string(),
    };
    if let Some(path) = &config.geoip_db {
        GeoDb::open(path).with_context(|| format!("GeoIP database {}", path.display()))?;
    }
    producers(&config)?;
    println!(
        "configuration OK: listen {}, data {}, {projects}, {} workers",
        config.listen,
        config.data_dir.display(),
        config.workers
    );
    Ok(())
}

fn serve(args: &ServeArgs) -> Result<()> {
    let config = Config::load(args)?;
    if args.log_level.is_none() && config.log_level.is_some() {
        // From the config file, which the logger could not read before the settings.
        replay_ingest::admin::logs::set_levels(config.log_level.as_deref())
            .map_err(anyhow::Error::msg)?;
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;

    let (secret, generated) =
        config::load_or_create_secret(&config).context("cannot read or create the token secret")?;
    if generated {
        log::warn!(
            "TOKEN_SECRET is not set: generated one and kept it in {} (nodes behind one load \
             balancer must share TOKEN_SECRET)",
            config.data_path("token-secret").display()
        );
    }
    let projects = Arc::new(match (&config.projects_file, &config.postgres) {
        (Some(path), _) => Catalog::fixed(Projects::load(path)?),
        // Filled by the loader once it has read the table.
        (None, Some(_)) => Catalog::pending(),
        (None, None) => {
            let key = demo_project_key(&config)?;
            println!("demo project key: {key}");
            Catalog::fixed(Projects::demo(key))
        }
    });
    let geo = match &config.geoip_db {
        Some(path) => {
            Some(GeoDb::open(path).with_context(|| format!("GeoIP database {}", path.display()))?)
        }
        None => None,
    };

    // Socket activation: the listener systemd holds across restarts (taken first, before any
    // thread could inherit it).
    let inherited = replay_ingest::ops::inherited_listener().context("LISTEN_FDS")?;
    let workers = config.workers;
    // Starting the service recovers what an earlier run left: torn tails cut, damaged records
    // counted, open segments sealed.
    replay_ingest::ops::status("recovering segments");
    let segments = SegmentService::start(config.log_config(), workers as u16)?;
    let summary = segments.recovery();
    log::info!(
        "recovered {} segments ({} were open): {} records, {} bytes; {} corrupt skipped, {} \
         incomplete, {} torn tails ({} bytes truncated)",
        summary.segments,
        summary.unsealed,
        summary.records,
        summary.bytes,
        summary.corrupt,
        summary.incomplete,
        summary.torn_tails,
        summary.truncated_bytes
    );

    // Every loop beats; liveness and readiness look at the beats, the budget and the lags.
    let registry = Arc::clone(segments.consumers());
    let mut health = Health::new(Arc::clone(&registry), config.ready_max_lag);
    for worker in 0..workers {
        health.heartbeat(&format!("worker-{worker}"));
    }
    health.watch_projects(Arc::clone(&projects), config.postgres.is_some());
    // Consumers register before traffic flows, so retention keeps what each has not read.
    let compactor_events = {
        let (tx, rx) = crossbeam_channel::bounded(compact::compactor::EVENT_QUEUE);
        registry.listen_for_seals(tx.clone());
        let consumer = registry.register(compact::compactor::CONSUMER_NAME)?;
        let beat = health.heartbeat("compactor");
        let compactor = Compactor::start(consumer, rx, config.compactor_config(), beat)
            .context("cannot start the compactor")?;
        (tx, compactor)
    };
    let database = start_database(&config, &registry, &projects, &mut health)?;
    let leader = database.as_ref().map(|d| Arc::clone(&d.leader));
    let forwarders = start_forwarders(&config, &registry, leader.as_ref(), &mut health)?;
    registry.registration_complete();

    let segments = Arc::new(segments);
    let node = NodeState::new(config, projects, &secret, geo, health);

    // A first signal asks for a graceful stop; a second one while stopping exits at once.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, stop.clone())?;
    }
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])?;

    let sources = replay_ingest::admin::metrics::Sources {
        node: Arc::clone(&node),
        segments: segments.counters(),
        compactor: Arc::clone(compactor_events.1.stats()),
        forwarders: forwarders
            .iter()
            .map(|f| (f.name, Arc::clone(&f.stats)))
            .collect(),
        database: database.as_ref().map(|d| Arc::clone(&d.writer.stats)),
    };
    let admin = AdminListener::start(node.config.admin_listen, sources).with_context(|| {
        format!(
            "cannot listen on {} for the admin listener (--admin-listen)",
            node.config.admin_listen
        )
    })?;
    println!("admin listening on http://{}", admin.local_addr());
    if inherited.is_some() {
        log::info!("socket activation: serving on the listener systemd passed");
    }
    let server = Server::start(Arc::clone(&node), segments.clone(), inherited)?;
    println!("listening on http://{}", server.local_addr());
    std::io::stdout().flush()?;
    replay_ingest::ops::ready(&format!("serving on {}", server.local_addr()));
    let watchdog = replay_ingest::ops::Watchdog::start(Arc::clone(&node))?;

    for signal in signals.forever() {
        if signal == signal_hook::consts::SIGHUP {
            reload(args, &node);
            continue;
        }
        stop.store(true, Ordering::SeqCst);
        log::info!("signal {signal}: finishing in-flight requests");
        break;
    }
    replay_ingest::ops::stopping();
    if let Some(watchdog) = &watchdog {
        watchdog.draining();
    }
    server.stop();
    match Arc::try_unwrap(segments) {
        Ok(segments) => segments.shutdown(),
        Err(_) => log::error!("segment service still shared at shutdown"),
    }
    // The database writer inserts the last rows first, so that the forwarders behind it can
    // send their sessions' messages; then the forwarders send what the last seals left (while
    // their queue takes it, for a few seconds at most), then save their cursors; the compactor
    // likewise.
    if let Some(database) = database {
        database.writer.stop();
        database.loader.stop();
    }
    for forwarder in forwarders {
        forwarder.stop();
    }
    let (events, compactor) = compactor_events;
    let _ = events.send(SegmentEvent::Shutdown);
    compactor.join();
    drop(admin);
    drop(watchdog);
    log::info!("stopped");
    Ok(())
}

/// SIGHUP: reads the settings (flags, environment, config file) and the projects file again and
/// applies what can change while the node runs (limits, CORS, log levels, the projects and
/// their sample rates); connections stay open. Anything invalid is refused whole, with a log
/// line, and the running configuration kept.
fn reload(args: &ServeArgs, node: &NodeState) {
    let config = match Config::load(args) {
        Ok(config) => config,
        Err(e) => {
            log::error!("SIGHUP: settings refused, keeping the running ones: {e}");
            return;
        }
    };
    let projects = match (&config.projects_file, node.config.postgres.is_some()) {
        (Some(path), false) => match Projects::load(path) {
            Ok(projects) => Some(projects),
            Err(e) => {
                log::error!("SIGHUP: projects refused, keeping the running ones: {e}");
                return;
            }
        },
        _ => None,
    };
    if let Err(e) = replay_ingest::admin::logs::set_levels(config.log_level.as_deref()) {
        log::error!("SIGHUP: log levels refused, keeping the running ones: {e}");
        return;
    }
    let restart_only = node.config.restart_only_changes(&config);
    if !restart_only.is_empty() {
        log::warn!(
            "SIGHUP: {} changed; those apply at the next restart",
            restart_only.join(", ")
        );
    }
    node.live.apply(&config);
    let count = projects.map(|projects| {
        let n = projects.len();
        node.projects.replace(projects);
        n
    });
    log::info!(
        "SIGHUP: settings reloaded (beacon limit {}, JSON limit {}, file limit {}, CORS {}){}",
        node.live.beacon_size_limit(),
        node.live.json_size_limit(),
        node.live.file_size_limit(),
        node.live.use_cors(),
        count.map_or(String::new(), |n| format!(", {n} projects"))
    );
}

/// The PostgreSQL side of a node: the projects loader and the database writer.
struct Database {
    loader: ProjectLoader,
    writer: DbWriter,
    /// The writer's consumer state, which the forwarders read behind.
    leader: Arc<ConsumerState>,
}

/// Starts the projects loader and registers and starts the database writer, when
/// `POSTGRES_STRING` is set.
fn start_database(
    config: &Config,
    registry: &Arc<ConsumerRegistry>,
    projects: &Arc<Catalog>,
    health: &mut Health,
) -> Result<Option<Database>> {
    let Some(postgres) = &config.postgres else {
        return Ok(None);
    };
    log::info!(
        "projects from PostgreSQL at {} (read every {}, and on each change); sessions rows \
         written there, the forwarders behind them",
        config::redact_url(&postgres.url),
        humantime::format_duration(postgres.projects_refresh)
    );
    let beat = health.heartbeat("db-projects");
    let loader = ProjectLoader::start(postgres.clone(), Arc::clone(projects), beat)
        .context("cannot start the projects loader")?;
    let consumer = registry.register(db::WRITER_CONSUMER)?;
    let leader = Arc::clone(consumer.state());
    let beat = health.heartbeat("db-writer");
    let writer = DbWriter::start(consumer, postgres.clone(), config.data_dir.clone(), beat)
        .context("cannot start the database writer")?;
    Ok(Some(Database {
        loader,
        writer,
        leader,
    }))
}

/// Registers and starts a forwarder for each queue configured (before traffic flows, so that
/// retention keeps what they have not sent); behind `leader` (the database writer) if given.
fn start_forwarders(
    config: &Config,
    registry: &Arc<ConsumerRegistry>,
    leader: Option<&Arc<ConsumerState>>,
    health: &mut Health,
) -> Result<Vec<Forwarder>> {
    let mut forwarders = Vec::new();
    for producer in producers(config)? {
        let name = format!("forward-{}", producer.name());
        let mut consumer = registry.register(&name)?;
        if let Some(leader) = leader {
            consumer.read_behind(leader);
        }
        let beat = health.heartbeat(&name);
        let forwarder = Forwarder::start(
            consumer,
            producer,
            config.topics.clone(),
            config.data_dir.clone(),
            beat,
        )
        .with_context(|| format!("cannot start {name}"))?;
        forwarders.push(forwarder);
    }
    Ok(forwarders)
}

/// A producer for each queue the settings name.
fn producers(config: &Config) -> Result<Vec<Box<dyn Producer>>> {
    let mut producers: Vec<Box<dyn Producer>> = Vec::new();
    if let Some(redis) = &config.redis {
        let producer =
            RedisProducer::new(redis.clone(), config.topics.clone()).map_err(anyhow::Error::msg)?;
        log::info!(
            "forwarding to Redis Streams at {} ({})",
            config::redact_url(&redis.url_with_scheme()),
            if redis.ttl.is_zero() {
                format!("streams trimmed to about {} entries", redis.max_len)
            } else {
                format!("entries kept {}", humantime::format_duration(redis.ttl))
            }
        );
        producers.push(Box::new(producer));
    }
    #[cfg(feature = "kafka")]
    if let Some(kafka) = &config.kafka {
        let producer =
            replay_ingest::forward::kafka::KafkaProducer::new(kafka.clone(), config.topics.clone())
                .map_err(anyhow::Error::msg)?;
        log::info!(
            "forwarding to Kafka at {} ({} partitions, {} compression)",
            kafka.servers,
            kafka.partitions,
            kafka.compression
        );
        producers.push(Box::new(producer));
    }
    Ok(producers)
}

fn redrive(session: u64, settings: &ServeArgs) -> Result<()> {
    let config = Config::load(settings)?;
    check_store(&config.data_dir)?;
    let producers = producers(&config)?;
    if producers.is_empty() {
        bail!(
            "no queue to redrive to: set REDIS_STRING (--redis) or KAFKA_SERVERS (--kafka-servers)"
        );
    }
    let records: Vec<seglog::LogRecord> = compact::store::read_session(&config.data_dir, session)?
        .into_iter()
        .map(Into::into)
        .collect();
    if records.is_empty() {
        bail!(
            "no records of session {session} in {}",
            config.data_dir.display()
        );
    }
    for mut producer in producers {
        let sent = replay_ingest::forward::redrive(&records, producer.as_mut(), &config.topics)
            .with_context(|| format!("redrive to {}", producer.name()))?;
        println!(
            "session {session}: {} records, {} messages sent to {} ({} not sent: {})",
            records.len(),
            sent.messages,
            producer.name(),
            sent.refused.len(),
            if sent.refused.is_empty() {
                "none".to_string()
            } else {
                sent.refused.join("; ")
            }
        );
    }
    Ok(())
}

/// The demo project's key: generated on the first run and kept, so restarts keep it.
fn demo_project_key(config: &Config) -> Result<String> {
    let path = config.data_path("demo-project-key");
    match std::fs::read_to_string(&path) {
        Ok(key) if !key.trim().is_empty() => return Ok(key.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let key = config::random_token(20);
    config::write_private(&path, key.as_bytes())?;
    Ok(key)
}

fn is_mobile(kind: RecordKind) -> bool {
    matches!(
        kind,
        RecordKind::MobileBatch | RecordKind::MobileSessionStart
    )
}

fn cat(data_dir: &Path, session: u64, topic: Option<Topic>) -> Result<()> {
    check_store(data_dir)?;
    let records = compact::store::read_session(data_dir, session)?;
    if records.is_empty() {
        bail!("no records of session {session} in {}", data_dir.display());
    }
    let topic = topic.unwrap_or_else(|| {
        if records.iter().any(|r| is_mobile(r.meta.kind)) {
            Topic::RawIos
        } else {
            Topic::Raw
        }
    });
    let mut out = std::io::stdout().lock();
    for record in records
        .iter()
        .filter(|r| r.meta.kind.topic() == Some(topic))
    {
        out.write_all(&record.body)?;
    }
    out.flush()?;
    Ok(())
}

fn export(data_dir: &Path, session: u64, out: &Path, projects: Option<&Path>) -> Result<()> {
    check_store(data_dir)?;
    let records = compact::store::read_session(data_dir, session)?;
    if records.is_empty() {
        bail!("no records of session {session} in {}", data_dir.display());
    }
    let key = project_key_of(data_dir, &records, projects)?;
    let dir = out.join(&key).join(session.to_string());
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut streams: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut images = 0;
    for r in &records {
        match r.meta.kind.topic() {
            Some(topic) => {
                let name = topic_name(Some(topic));
                match streams.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, bytes)) => bytes.extend_from_slice(&r.body),
                    None => streams.push((name, r.body.to_vec())),
                }
            }
            None if r.meta.kind == RecordKind::ImageUpload => {
                // Names were checked at upload (`safe_file_name`); checked again here.
                let Ok(upload) = replay_ingest::upload::decode(&r.body) else {
                    continue;
                };
                let images_dir = dir.join("images");
                std::fs::create_dir_all(&images_dir)?;
                for file in &upload.files {
                    if file.name.is_empty() || file.name.contains(['/', '\\']) || file.name == ".."
                    {
                        continue;
                    }
                    std::fs::write(images_dir.join(file.name), file.data)?;
                    images += 1;
                }
            }
            None if r.meta.kind == RecordKind::Image => {
                // Stored as `[<key>/]<session>/<file>`; the file name was checked at upload.
                let name = String::from_utf8_lossy(&r.name);
                let file = name.rsplit('/').next().unwrap_or_default();
                if file.is_empty() || file == "." || file == ".." {
                    continue;
                }
                let images_dir = dir.join("images");
                std::fs::create_dir_all(&images_dir)?;
                std::fs::write(images_dir.join(file), &r.body)?;
                images += 1;
            }
            None => {}
        }
    }
    for (name, bytes) in &streams {
        std::fs::write(dir.join(name), bytes)?;
    }
    println!(
        "{}: {} streams, {images} images",
        dir.display(),
        streams.len()
    );
    Ok(())
}

/// The key of the session's project: from a mobile image's stored name
/// (`<key>/<session>/<file>`), the projects file, the demo project, or `project-<id>`.
fn project_key_of(
    data_dir: &Path,
    records: &[CompactRecord],
    projects: Option<&Path>,
) -> Result<String> {
    let from_image = records.iter().find_map(|r| {
        let name = std::str::from_utf8(&r.name).ok()?;
        let mut parts = name.split('/');
        let (key, _, _) = (parts.next()?, parts.next()?, parts.next()?);
        Some(key.to_string())
    });
    if let Some(key) = from_image {
        return Ok(key);
    }
    let project_id = records.iter().find_map(|r| {
        let mut reader = replay_ingest::codec::Reader::new(&r.body);
        let start = matches!(
            r.meta.kind,
            RecordKind::SessionStart | RecordKind::MobileSessionStart
        );
        if !start {
            return None;
        }
        let _type = reader.uint().ok()?;
        let _timestamp = reader.uint().ok()?;
        reader.uint().ok()
    });
    let Some(id) = project_id else {
        return Ok("unknown-project".to_string());
    };
    if let Some(path) = projects {
        if let Some(p) = Projects::load(path)?.by_id(id) {
            return Ok(p.project_key.clone());
        }
    }
    match std::fs::read_to_string(data_dir.join("demo-project-key")) {
        Ok(key) if id == Projects::DEMO_PROJECT_ID && !key.trim().is_empty() => {
            Ok(key.trim().to_string())
        }
        _ => Ok(format!("project-{id}")),
    }
}

fn check_store(data_dir: &Path) -> Result<()> {
    let has = |d: &str| data_dir.join(d).is_dir();
    if !has(seglog::format::SEGMENTS_DIR) && !has(compact::format::COMPACTED_DIR) {
        bail!("{} holds no segments", data_dir.display());
    }
    Ok(())
}

fn topic_name(topic: Option<Topic>) -> &'static str {
    match topic {
        Some(Topic::Raw) => "raw",
        Some(Topic::RawAssets) => "raw-assets",
        Some(Topic::RawIos) => "raw-ios",
        None => "-",
    }
}

fn rfc3339(unix_ns: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(unix_ns)).to_string()
}

fn ls(data_dir: &Path, json: bool) -> Result<()> {
    check_store(data_dir)?;
    let records = compact::store::read_everything(data_dir)?;
    let mut out = std::io::stdout().lock();
    for r in &records {
        write_record_line(&mut out, r, json)?;
    }
    // Each consumer's saved cursor, and the stored records it has not passed (by where they
    // were written in the log, wherever they are kept now).
    for name in seglog::consumer::saved_consumers(data_dir)? {
        let Some((cursor, saved)) = seglog::consumer::load_cursor(data_dir, &name)? else {
            continue;
        };
        let lag = Lag::of(
            &cursor,
            records.iter().map(|r| {
                let segment = seglog::SegmentName {
                    worker: r.origin.worker,
                    seq: r.origin.segment_seq,
                };
                let at = r.origin.offset;
                (segment, at, r.body.len(), r.meta.arrival_unix_ns)
            }),
        );
        let saved = humantime::format_rfc3339_millis(saved).to_string();
        let delivered = seglog::consumer::load_delivered(data_dir, &name)?;
        let oldest_age = lag.oldest_unix_ns.map(|t| {
            let now = std::time::SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            Duration::from_millis(now.saturating_sub(t) / 1_000_000)
        });
        let positions: Vec<String> = cursor
            .positions
            .iter()
            .map(|(w, p)| format!("w{w:03}:{:016x}+{}", p.seq, p.offset))
            .collect();
        if json {
            let line = serde_json::json!({
                "consumer": name,
                "saved": saved,
                "cursor": cursor.positions.iter().map(|(w, p)| {
                    serde_json::json!({"worker": w, "seq": p.seq, "offset": p.offset})
                }).collect::<Vec<_>>(),
                "delivered_records": delivered.records,
                "delivered_bytes": delivered.bytes,
                "lag_records": lag.records,
                "lag_bytes": lag.bytes,
                "oldest_unconsumed_age_ms": oldest_age.map(|d| d.as_millis() as u64),
            });
            writeln!(out, "{line}")?;
        } else {
            let age = oldest_age.map_or("-".to_string(), |d| {
                humantime::format_duration(d).to_string()
            });
            writeln!(
                out,
                "# consumer {name}: cursor {} (saved {saved}); {}lag {} records, {} bytes, \
                 oldest unconsumed {age}",
                if positions.is_empty() {
                    "at the start".to_string()
                } else {
                    positions.join(" ")
                },
                if delivered.records > 0 {
                    format!(
                        "handed on {} records, {} bytes; ",
                        delivered.records, delivered.bytes
                    )
                } else {
                    String::new()
                },
                lag.records,
                lag.bytes,
            )?;
        }
    }
    let (forced, forced_bytes, last) = seglog::consumer::forced_out(data_dir)?;
    if forced > 0 {
        let last = last.map_or(String::new(), |ms| rfc3339(ms.saturating_mul(1_000_000)));
        if json {
            let line = serde_json::json!({
                "forced_out_segments": forced,
                "forced_out_bytes": forced_bytes,
                "last": last,
            });
            writeln!(out, "{line}")?;
        } else {
            writeln!(
                out,
                "# disk budget: {forced} segments ({forced_bytes} bytes) forced out before every \
                 consumer read them, the last at {last}"
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

fn write_record_line(out: &mut impl Write, r: &CompactRecord, json: bool) -> Result<()> {
    let time = rfc3339(r.meta.arrival_unix_ns);
    let topic = topic_name(r.meta.kind.topic());
    let name = String::from_utf8_lossy(&r.name);
    if json {
        let line = serde_json::json!({
            "session": r.meta.session_id.to_string(),
            "topic": topic,
            "kind": r.meta.kind.as_str(),
            "size": r.body.len(),
            "time": time,
            "name": name,
        });
        writeln!(out, "{line}")?;
    } else {
        write!(
            out,
            "{}\t{topic}\t{}\t{}\t{time}",
            r.meta.session_id,
            r.meta.kind.as_str(),
            r.body.len()
        )?;
        if !name.is_empty() {
            write!(out, "\t{name}")?;
        }
        writeln!(out)?;
    }
    Ok(())
}

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

use replay_ingest::config::{self, Config, ServeArgs};
use replay_ingest::geo::GeoDb;
use replay_ingest::log::{self as seglog, RecordKind, SegmentService, StoredRecord, Topic};
use replay_ingest::net::Server;
use replay_ingest::project::Projects;
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
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Serve(args) => serve(&args),
        Command::Cat {
            data_dir,
            session,
            topic,
        } => cat(&data_dir, session, topic.map(Topic::from)),
        Command::Ls { data_dir, json } => ls(&data_dir, json),
    }
}

fn serve(args: &ServeArgs) -> Result<()> {
    let config = Config::load(args)?;
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
    let projects = match &config.projects_file {
        Some(path) => Projects::load(path)?,
        None => {
            let key = demo_project_key(&config)?;
            println!("demo project key: {key}");
            Projects::demo(key)
        }
    };
    let geo = match &config.geoip_db {
        Some(path) => {
            Some(GeoDb::open(path).with_context(|| format!("GeoIP database {}", path.display()))?)
        }
        None => None,
    };

    let workers = config.workers;
    // Starting the service recovers what an earlier run left: torn tails cut, damaged records
    // counted, open segments sealed.
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

    let segments = Arc::new(segments);
    let node = NodeState::new(config, projects, &secret, geo);

    // A first signal asks for a graceful stop; a second one while stopping exits at once.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, stop.clone())?;
    }
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;

    let server = Server::start(node, segments.clone())?;
    println!("listening on http://{}", server.local_addr());
    std::io::stdout().flush()?;

    if let Some(signal) = signals.forever().next() {
        stop.store(true, Ordering::SeqCst);
        log::info!("signal {signal}: finishing in-flight requests");
    }
    server.stop();
    match Arc::try_unwrap(segments) {
        Ok(segments) => segments.shutdown(),
        Err(_) => log::error!("segment service still shared at shutdown"),
    }
    log::info!("stopped");
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
    let records = read_store(data_dir)?;
    let records: Vec<&StoredRecord> = records
        .iter()
        .filter(|r| r.meta.session_id == session)
        .collect();
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

fn read_store(data_dir: &Path) -> Result<Vec<StoredRecord>> {
    if !data_dir.join("segments").is_dir() {
        bail!("{} holds no segments", data_dir.display());
    }
    Ok(seglog::read_records(data_dir)?)
}

fn topic_name(topic: Option<Topic>) -> &'static str {
    match topic {
        Some(Topic::Raw) => "raw",
        Some(Topic::RawAssets) => "raw-assets",
        Some(Topic::RawIos) => "raw-ios",
        None => "-",
    }
}

fn ls(data_dir: &Path, json: bool) -> Result<()> {
    let records = read_store(data_dir)?;
    let mut out = std::io::stdout().lock();
    for r in &records {
        let time = humantime::format_rfc3339_millis(
            UNIX_EPOCH + Duration::from_nanos(r.meta.arrival_unix_ns),
        );
        let topic = topic_name(r.meta.kind.topic());
        let name = String::from_utf8_lossy(&r.name);
        if json {
            let line = serde_json::json!({
                "session": r.meta.session_id.to_string(),
                "topic": topic,
                "kind": r.meta.kind.as_str(),
                "size": r.body.len(),
                "time": time.to_string(),
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
    }
    out.flush()?;
    Ok(())
}

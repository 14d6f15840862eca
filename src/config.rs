//! Settings: command-line flags, OpenReplay's environment names, an optional TOML file, and
//! embedded defaults, merged into one validated [`Config`].
//!
//! Precedence, highest first: a flag, then its environment variable, then the config file, then
//! the default. The environment names are the ones OpenReplay operators already use
//! (`HTTP_PORT`, `TOKEN_SECRET`, `BEACON_SIZE_LIMIT`, ...), so a deployment can swap its Go ingest
//! pods for these nodes without rewriting its manifests. Runs once, on the main thread.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;

use crate::compact::CompactorConfig;
use crate::db::PostgresConfig;
use crate::forward::kafka::KafkaConfig;
use crate::forward::message::ImageFormat;
use crate::forward::redis::RedisConfig;
use crate::forward::Topics;
use crate::log::{BudgetSetting, Durability, LogConfig};

/// Everything a node needs to run, validated.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub workers: usize,
    /// Threads that inflate gzip bodies and do other heavy per-request work off the workers'
    /// loops (`net::prepare`).
    pub prepare_threads: usize,
    pub data_dir: PathBuf,
    pub projects_file: Option<PathBuf>,
    /// `None`: generate one and keep it in the data directory.
    pub token_secret: Option<String>,
    /// The session-id shard (0-255): distinct per node so that ids never collide.
    pub shard: u8,
    pub head_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub beacon_size_limit: u64,
    pub compression_threshold: u64,
    pub json_size_limit: u64,
    pub file_size_limit: u64,
    pub use_cors: bool,
    /// Queue topic names and the image message format.
    pub topics: Topics,
    /// The Redis Streams forwarder, when `REDIS_STRING` is set.
    pub redis: Option<RedisConfig>,
    /// The Kafka forwarder, when `KAFKA_SERVERS` is set.
    pub kafka: Option<KafkaConfig>,
    /// Projects from, and session rows into, OpenReplay's database, when `POSTGRES_STRING` is set.
    pub postgres: Option<PostgresConfig>,
    pub segment_size: u64,
    pub segment_max_age: Duration,
    pub prefault_window: usize,
    /// What the data directory may hold.
    pub disk_budget: BudgetSetting,
    pub durability: Durability,
    pub flush_interval: Duration,
    /// Compacted data older than this is deleted.
    pub retention: Duration,
    pub geoip_db: Option<PathBuf>,
    pub max_connections: usize,
    /// `/health/ready` fails once a consumer has a sealed segment unread for longer.
    pub ready_max_lag: Duration,
    /// Test-only: worker 0 stops making progress this long after it starts (the watchdog test).
    pub test_wedge_worker_after: Option<Duration>,
    /// Test-only: each preparation job waits for this file to exist (the off-loop tests).
    pub test_prepare_gate: Option<PathBuf>,
    /// The admin listener: `/metrics` and the health endpoints.
    pub admin_listen: SocketAddr,
    /// Log one request in this many (0: none).
    pub request_log_every: u64,
    /// Log levels from the flag or the config file (`None`: RUST_LOG, else info).
    pub log_level: Option<String>,
}

/// The admin listener's default: loopback only, OpenReplay's services' metrics port.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8888);

/// The flags of `replay-ingest serve`. Every field is optional so that "not given" falls through
/// to the environment, the file and the default, in that order.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// TOML config file (keys are the long flag names with `_`, e.g. `data_dir = "/var/lib/x"`).
    #[arg(long, env = "REPLAY_INGEST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (default 0.0.0.0:8080; `HTTP_HOST`/`HTTP_PORT` also set it).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    #[arg(long, env = "HTTP_HOST", hide_env_values = true)]
    pub http_host: Option<String>,
    #[arg(long, env = "HTTP_PORT")]
    pub http_port: Option<u16>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Threads that inflate gzip bodies, parse uploads and new user agents off the workers'
    /// loops (default: one per worker).
    #[arg(long)]
    pub prepare_threads: Option<usize>,
    /// Where segments, the generated token secret and the demo project live (default ./data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Projects JSON file; without one a demo project is created.
    #[arg(long)]
    pub projects: Option<PathBuf>,
    #[arg(long, env = "TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// Session-id shard, 0-255 (default 0).
    #[arg(long, env = "SHARD")]
    pub shard: Option<u8>,
    /// Time to receive a request head (default 10s).
    #[arg(long, value_parser = parse_duration)]
    pub head_timeout: Option<Duration>,
    /// Time to receive a request body (default 60s).
    #[arg(long, env = "HTTP_TIMEOUT", value_parser = parse_duration)]
    pub http_timeout: Option<Duration>,
    /// Idle keep-alive time (default 75s).
    #[arg(long, value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Time given to in-flight requests at shutdown (default 10s).
    #[arg(long, value_parser = parse_duration)]
    pub shutdown_timeout: Option<Duration>,
    #[arg(long, env = "BEACON_SIZE_LIMIT")]
    pub beacon_size_limit: Option<u64>,
    #[arg(long, env = "COMPRESSION_THRESHOLD")]
    pub compression_threshold: Option<u64>,
    #[arg(long, env = "JSON_SIZE_LIMIT")]
    pub json_size_limit: Option<u64>,
    #[arg(long, env = "FILE_SIZE_LIMIT")]
    pub file_size_limit: Option<u64>,
    #[arg(long, env = "USE_CORS", value_parser = parse_bool)]
    pub use_cors: Option<bool>,
    #[arg(long, env = "TOPIC_RAW_WEB")]
    pub topic_raw_web: Option<String>,
    #[arg(long, env = "TOPIC_RAW_IOS")]
    pub topic_raw_ios: Option<String>,
    #[arg(long, env = "TOPIC_RAW_ASSETS")]
    pub topic_raw_assets: Option<String>,
    #[arg(long, env = "TOPIC_RAW_IMAGES")]
    pub topic_raw_images: Option<String>,
    #[arg(long, env = "TOPIC_CANVAS_IMAGES")]
    pub topic_canvas_images: Option<String>,
    /// Image messages as the deployed image services read them: `frames` (default; OpenReplay
    /// since mid 2023) or `files` (each uploaded file as is, older releases).
    #[arg(long, value_parser = ImageFormat::parse)]
    pub image_format: Option<ImageFormat>,
    /// Forward to Redis Streams (a `redis://` or `rediss://` URL).
    #[arg(long, env = "REDIS_STRING", hide_env_values = true)]
    pub redis: Option<String>,
    /// Trim Redis streams by age, in seconds (0, the default: by length).
    #[arg(long, env = "REDIS_STREAMS_TTL_SEC")]
    pub redis_streams_ttl_sec: Option<u64>,
    /// Trim Redis streams to about this many entries (default 10000), when the TTL is 0.
    #[arg(long, env = "REDIS_STREAMS_MAX_LEN")]
    pub redis_streams_max_len: Option<u64>,
    /// Forward to Kafka: the bootstrap servers.
    #[arg(long, env = "KAFKA_SERVERS")]
    pub kafka_servers: Option<String>,
    #[arg(long, env = "KAFKA_USE_SSL", value_parser = parse_bool)]
    pub kafka_use_ssl: Option<bool>,
    #[arg(long, env = "KAFKA_SSL_CA")]
    pub kafka_ssl_ca: Option<String>,
    #[arg(long, env = "KAFKA_SSL_KEY")]
    pub kafka_ssl_key: Option<String>,
    #[arg(long, env = "KAFKA_SSL_CERT")]
    pub kafka_ssl_cert: Option<String>,
    /// Kafka compression (default zstd).
    #[arg(long, env = "COMPRESSION_TYPE")]
    pub compression_type: Option<String>,
    /// Largest Kafka message in bytes (default 1048576); larger values are quarantined.
    #[arg(long, env = "QUEUE_MESSAGE_SIZE_LIMIT")]
    pub queue_message_size_limit: Option<usize>,
    /// Partitions of each Kafka topic (default 16): a session goes to `sessionID % N`.
    #[arg(long)]
    pub kafka_partitions: Option<u32>,
    /// OpenReplay's PostgreSQL (a `postgres://` URL): projects are read from it (instead of a
    /// projects file) and every new session's `sessions` row is written into it.
    #[arg(long, env = "POSTGRES_STRING", hide_env_values = true)]
    pub postgres: Option<String>,
    /// How often the projects, tags and conditions are read again from PostgreSQL (default
    /// 30s; project changes also arrive at once through OpenReplay's `project` notification).
    #[arg(long, value_parser = parse_duration)]
    pub projects_refresh: Option<Duration>,
    /// Segment size in bytes (default 64 MiB).
    #[arg(long)]
    pub segment_size: Option<u64>,
    /// Age at which a non-empty segment is sealed (default 10s).
    #[arg(long, value_parser = parse_duration)]
    pub segment_max_age: Option<Duration>,
    /// What the data directory may hold: a size (`50GiB`) or a share of its file system
    /// (`80%`, the default). Over it, the oldest compacted data goes first, then unconsumed
    /// segments (loudly); with nothing left to retire, new records get 503.
    #[arg(long, value_parser = BudgetSetting::parse)]
    pub disk_budget: Option<BudgetSetting>,
    /// When a 200 is sent: `os` (default; the record is in the page cache, written back at
    /// least every --flush-interval) or `fsync` (written back to the disk first, by group
    /// commit: one flush for the requests of one event-loop turn).
    #[arg(long, value_parser = Durability::parse)]
    pub durability: Option<Durability>,
    /// "os" durability: how often open segments are written back (default 1s).
    #[arg(long, value_parser = parse_duration)]
    pub flush_interval: Option<Duration>,
    /// Older name of `--disk-budget N` (bytes).
    #[arg(long, hide = true)]
    pub retain_bytes: Option<u64>,
    /// How long compacted data is kept (default 72h).
    #[arg(long, value_parser = parse_duration)]
    pub retention: Option<Duration>,
    /// MaxMind GeoIP2/GeoLite2 database for userCountry/State/City.
    #[arg(long, env = "MAXMINDDB_FILE")]
    pub geoip_db: Option<PathBuf>,
    /// Connection cap per node (default: from RLIMIT_NOFILE).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// /health/ready fails once a consumer (the compactor, a forwarder) has had a sealed
    /// segment unread for longer than this (default 60s).
    #[arg(long, value_parser = parse_duration)]
    pub ready_max_lag: Option<Duration>,
    /// Log levels, in RUST_LOG's syntax (`info`, `warn,replay_ingest::request=info`); default
    /// RUST_LOG, else `info`.
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log one request in N (route, status, time; target `replay_ingest::request`, level info).
    /// 0, the default: none.
    #[arg(long)]
    pub request_log_every: Option<u64>,
    /// The admin listener, for `GET /metrics`, `/health/live` and `/health/ready` (default
    /// 127.0.0.1:8888; with port 0 the node picks one and prints `admin listening on
    /// http://ADDR`).
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Test-only: worker 0 wedges (stops turning) this long after it starts, so that a test
    /// sees the systemd watchdog pings stop. Never set it in a deployment.
    #[arg(long, hide = true, value_parser = parse_duration)]
    pub test_wedge_worker_after: Option<Duration>,
    /// Test-only: every preparation job (gzip inflation, ...) waits until this file exists, so
    /// that a test can see the workers keep serving meanwhile. Never set it in a deployment.
    #[arg(long, hide = true)]
    pub test_prepare_gate: Option<PathBuf>,
}

/// The config file: the same names as the flags.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    workers: Option<usize>,
    prepare_threads: Option<usize>,
    data_dir: Option<PathBuf>,
    projects: Option<PathBuf>,
    token_secret: Option<String>,
    shard: Option<u8>,
    #[serde(default, with = "humantime_opt")]
    head_timeout: Option<Duration>,
    #[serde(default, with = "humantime_opt")]
    http_timeout: Option<Duration>,
    #[serde(default, with = "humantime_opt")]
    idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_opt")]
    shutdown_timeout: Option<Duration>,
    beacon_size_limit: Option<u64>,
    compression_threshold: Option<u64>,
    json_size_limit: Option<u64>,
    file_size_limit: Option<u64>,
    use_cors: Option<bool>,
    topic_raw_web: Option<String>,
    topic_raw_ios: Option<String>,
    topic_raw_assets: Option<String>,
    topic_raw_images: Option<String>,
    topic_canvas_images: Option<String>,
    #[serde(default, deserialize_with = "image_format_opt")]
    image_format: Option<ImageFormat>,
    redis: Option<String>,
    redis_streams_ttl_sec: Option<u64>,
    redis_streams_max_len: Option<u64>,
    kafka_servers: Option<String>,
    kafka_use_ssl: Option<bool>,
    kafka_ssl_ca: Option<String>,
    kafka_ssl_key: Option<String>,
    kafka_ssl_cert: Option<String>,
    compression_type: Option<String>,
    queue_message_size_limit: Option<usize>,
    kafka_partitions: Option<u32>,
    postgres: Option<String>,
    #[serde(default, with = "humantime_opt")]
    projects_refresh: Option<Duration>,
    segment_size: Option<u64>,
    #[serde(default, with = "humantime_opt")]
    segment_max_age: Option<Duration>,
    #[serde(default, deserialize_with = "budget_opt")]
    disk_budget: Option<BudgetSetting>,
    #[serde(default, deserialize_with = "durability_opt")]
    durability: Option<Durability>,
    #[serde(default, with = "humantime_opt")]
    flush_interval: Option<Duration>,
    retain_bytes: Option<u64>,
    #[serde(default, with = "humantime_opt")]
    retention: Option<Duration>,
    geoip_db: Option<PathBuf>,
    max_connections: Option<usize>,
    #[serde(default, with = "humantime_opt")]
    ready_max_lag: Option<Duration>,
    admin_listen: Option<SocketAddr>,
    request_log_every: Option<u64>,
    log_level: Option<String>,
}

fn image_format_opt<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<ImageFormat>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|t| ImageFormat::parse(&t).map_err(serde::de::Error::custom))
        .transpose()
}

fn durability_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Durability>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|t| Durability::parse(&t).map_err(serde::de::Error::custom))
        .transpose()
}

fn budget_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<BudgetSetting>, D::Error> {
    // A number is bytes; a string is parsed like the flag.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Budget {
        Bytes(u64),
        Text(String),
    }
    Ok(match Option::<Budget>::deserialize(d)? {
        None => None,
        Some(Budget::Bytes(n)) => Some(BudgetSetting::Bytes(n)),
        Some(Budget::Text(t)) => Some(BudgetSetting::parse(&t).map_err(serde::de::Error::custom)?),
    })
}

mod humantime_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| super::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("HTTP_HOST {0:?} is not an IP address")]
    BadHost(String),
    #[error("{0}")]
    Invalid(&'static str),
}

impl Config {
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source,
                })?
            }
            None => FileConfig::default(),
        };
        Self::merge(args, file)
    }

    fn merge(a: &ServeArgs, f: FileConfig) -> Result<Config, ConfigError> {
        let listen = match (a.listen, &a.http_host, a.http_port) {
            (Some(addr), _, _) => addr,
            (None, None, None) => f
                .listen
                .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8080)),
            (None, host, port) => {
                let ip = match host.as_deref().map(str::trim) {
                    None | Some("") => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    Some(h) => h.parse().map_err(|_| ConfigError::BadHost(h.to_string()))?,
                };
                let port = port.or(f.listen.map(|l| l.port())).unwrap_or(8080);
                SocketAddr::new(ip, port)
            }
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = a.workers.or(f.workers).unwrap_or(cores);
        if workers == 0 || workers > 256 {
            return Err(ConfigError::Invalid("workers must be 1-256"));
        }
        let prepare_threads = a.prepare_threads.or(f.prepare_threads).unwrap_or(workers);
        if prepare_threads == 0 || prepare_threads > 256 {
            return Err(ConfigError::Invalid("prepare_threads must be 1-256"));
        }
        let segment_size = a
            .segment_size
            .or(f.segment_size)
            .unwrap_or(LogConfig::DEFAULT_SEGMENT_SIZE);
        if segment_size < (1 << 20) {
            return Err(ConfigError::Invalid("segment_size must be at least 1 MiB"));
        }
        let config = Config {
            listen,
            workers,
            prepare_threads,
            data_dir: a
                .data_dir
                .clone()
                .or(f.data_dir)
                .unwrap_or_else(|| PathBuf::from("data")),
            projects_file: a.projects.clone().or(f.projects),
            token_secret: a.token_secret.clone().or(f.token_secret),
            shard: a.shard.or(f.shard).unwrap_or(0),
            head_timeout: a
                .head_timeout
                .or(f.head_timeout)
                .unwrap_or(Duration::from_secs(10)),
            body_timeout: a
                .http_timeout
                .or(f.http_timeout)
                .unwrap_or(Duration::from_secs(60)),
            idle_timeout: a
                .idle_timeout
                .or(f.idle_timeout)
                .unwrap_or(Duration::from_secs(75)),
            shutdown_timeout: a
                .shutdown_timeout
                .or(f.shutdown_timeout)
                .unwrap_or(Duration::from_secs(10)),
            beacon_size_limit: a
                .beacon_size_limit
                .or(f.beacon_size_limit)
                .unwrap_or(1_000_000),
            compression_threshold: a
                .compression_threshold
                .or(f.compression_threshold)
                .unwrap_or(20_000),
            json_size_limit: a.json_size_limit.or(f.json_size_limit).unwrap_or(1000),
            file_size_limit: a
                .file_size_limit
                .or(f.file_size_limit)
                .unwrap_or(10_000_000),
            use_cors: a.use_cors.or(f.use_cors).unwrap_or(true),
            topics: Topics {
                raw_web: pick(&a.topic_raw_web, f.topic_raw_web, "raw"),
                raw_ios: pick(&a.topic_raw_ios, f.topic_raw_ios, "raw-ios"),
                raw_assets: pick(&a.topic_raw_assets, f.topic_raw_assets, "raw-assets"),
                raw_images: pick(&a.topic_raw_images, f.topic_raw_images, "raw-images"),
                canvas_images: pick(
                    &a.topic_canvas_images,
                    f.topic_canvas_images,
                    "canvas-images",
                ),
                image_format: a.image_format.or(f.image_format).unwrap_or_default(),
            },
            redis: a
                .redis
                .clone()
                .or(f.redis)
                .filter(|url| !url.trim().is_empty())
                .map(|url| RedisConfig {
                    url: url.trim().to_string(),
                    ttl: Duration::from_secs(
                        a.redis_streams_ttl_sec
                            .or(f.redis_streams_ttl_sec)
                            .unwrap_or(0),
                    ),
                    max_len: a
                        .redis_streams_max_len
                        .or(f.redis_streams_max_len)
                        .unwrap_or(RedisConfig::DEFAULT_MAX_LEN),
                }),
            kafka: a
                .kafka_servers
                .clone()
                .or(f.kafka_servers)
                .filter(|servers| !servers.trim().is_empty())
                .map(|servers| KafkaConfig {
                    servers: servers.trim().to_string(),
                    use_ssl: a.kafka_use_ssl.or(f.kafka_use_ssl).unwrap_or(false),
                    ssl_ca: a.kafka_ssl_ca.clone().or(f.kafka_ssl_ca),
                    ssl_key: a.kafka_ssl_key.clone().or(f.kafka_ssl_key),
                    ssl_cert: a.kafka_ssl_cert.clone().or(f.kafka_ssl_cert),
                    compression: pick(
                        &a.compression_type,
                        f.compression_type,
                        KafkaConfig::DEFAULT_COMPRESSION,
                    ),
                    message_size_limit: a
                        .queue_message_size_limit
                        .or(f.queue_message_size_limit)
                        .unwrap_or(KafkaConfig::DEFAULT_MESSAGE_SIZE_LIMIT),
                    partitions: a
                        .kafka_partitions
                        .or(f.kafka_partitions)
                        .unwrap_or(KafkaConfig::DEFAULT_PARTITIONS),
                }),
            postgres: a
                .postgres
                .clone()
                .or(f.postgres)
                .filter(|url| !url.trim().is_empty())
                .map(|url| PostgresConfig {
                    url: url.trim().to_string(),
                    projects_refresh: a
                        .projects_refresh
                        .or(f.projects_refresh)
                        .unwrap_or(PostgresConfig::DEFAULT_PROJECTS_REFRESH),
                }),
            segment_size,
            segment_max_age: a
                .segment_max_age
                .or(f.segment_max_age)
                .unwrap_or(LogConfig::DEFAULT_SEGMENT_MAX_AGE),
            prefault_window: LogConfig::DEFAULT_PREFAULT_WINDOW,
            disk_budget: a
                .disk_budget
                .or(a.retain_bytes.map(BudgetSetting::Bytes))
                .or(f.disk_budget)
                .or(f.retain_bytes.map(BudgetSetting::Bytes))
                .unwrap_or(BudgetSetting::DEFAULT),
            durability: a.durability.or(f.durability).unwrap_or_default(),
            flush_interval: a
                .flush_interval
                .or(f.flush_interval)
                .unwrap_or(LogConfig::DEFAULT_FLUSH_INTERVAL),
            retention: a
                .retention
                .or(f.retention)
                .unwrap_or(CompactorConfig::DEFAULT_RETENTION),
            geoip_db: a.geoip_db.clone().or(f.geoip_db),
            max_connections: a
                .max_connections
                .or(f.max_connections)
                .unwrap_or_else(default_max_connections),
            ready_max_lag: a
                .ready_max_lag
                .or(f.ready_max_lag)
                .unwrap_or(crate::admin::health::DEFAULT_READY_MAX_LAG),
            test_wedge_worker_after: a.test_wedge_worker_after,
            test_prepare_gate: a.test_prepare_gate.clone(),
            admin_listen: a
                .admin_listen
                .or(f.admin_listen)
                .unwrap_or(DEFAULT_ADMIN_LISTEN),
            request_log_every: a.request_log_every.or(f.request_log_every).unwrap_or(0),
            log_level: a.log_level.clone().or(f.log_level),
        };
        if let Some(kafka) = &config.kafka {
            if !cfg!(feature = "kafka") {
                return Err(ConfigError::Invalid(
                    "KAFKA_SERVERS is set but this build has no Kafka (the `kafka` feature)",
                ));
            }
            if kafka.partitions == 0 {
                return Err(ConfigError::Invalid("kafka_partitions must be at least 1"));
            }
            if kafka.message_size_limit < 1000 {
                return Err(ConfigError::Invalid(
                    "QUEUE_MESSAGE_SIZE_LIMIT must be at least 1000 bytes",
                ));
            }
        }
        if config.postgres.is_some() && config.projects_file.is_some() {
            return Err(ConfigError::Invalid(
                "POSTGRES_STRING and a projects file are both set: projects come from one of them",
            ));
        }
        if config.json_size_limit == 0 || config.beacon_size_limit == 0 {
            return Err(ConfigError::Invalid("size limits must be positive"));
        }
        // A batch must fit a segment with room to spare, or it could never be stored.
        if config.batch_size_limit() > config.segment_size / 2
            || config.file_size_limit > config.segment_size / 2
        {
            return Err(ConfigError::Invalid(
                "segment_size must be at least twice the largest body limit",
            ));
        }
        Ok(config)
    }

    /// Decoded bytes accepted on the batch routes (see [`batch_size_limit`]).
    pub fn batch_size_limit(&self) -> u64 {
        batch_size_limit(self.beacon_size_limit)
    }

    /// The segment log's part of the settings.
    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            dir: self.data_dir.clone(),
            segment_size: self.segment_size,
            segment_max_age: self.segment_max_age,
            prefault_window: self.prefault_window,
            disk_budget: Some(self.disk_budget),
            durability: self.durability,
            flush_interval: self.flush_interval,
        }
    }

    /// The compactor's part of the settings.
    pub fn compactor_config(&self) -> CompactorConfig {
        CompactorConfig {
            retention: self.retention,
            ..CompactorConfig::new(&self.data_dir)
        }
    }

    pub fn data_path(&self, name: &str) -> PathBuf {
        self.data_dir.join(name)
    }
}

/// A string setting: the flag (or its environment variable), the file, the default.
fn pick(arg: &Option<String>, file: Option<String>, default: &str) -> String {
    arg.clone().or(file).unwrap_or_else(|| default.to_string())
}

/// Leaves room under the descriptor limit for segment files and the listeners.
fn default_max_connections() -> usize {
    let soft = rlimit::Resource::NOFILE.get_soft().unwrap_or(1024);
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    soft.saturating_sub(64).max(64)
}

/// Go-style durations as OpenReplay's settings use them (`60s`, `500ms`, `2m`); a bare number is
/// seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text).map_err(|e| format!("bad duration {text:?}: {e}"))
}

/// `USE_CORS` accepts what Go's strconv.ParseBool does.
pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(format!("not a boolean: {other:?}")),
    }
}

/// Reads `TOKEN_SECRET` or the secret kept in the data directory, generating it on first use.
/// Returns the secret and whether it was generated now.
pub fn load_or_create_secret(config: &Config) -> std::io::Result<(Vec<u8>, bool)> {
    if let Some(secret) = &config.token_secret {
        return Ok((secret.as_bytes().to_vec(), false));
    }
    let path = config.data_path("token-secret");
    match std::fs::read(&path) {
        Ok(bytes) if !bytes.is_empty() => return Ok((trim_newline(bytes), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let secret = random_token(48);
    write_private(&path, secret.as_bytes())?;
    Ok((secret.into_bytes(), true))
}

fn trim_newline(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    bytes
}

/// Random alphanumeric text from the OS generator.
pub fn random_token(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Writes a file readable by its owner only, atomically (temp file + rename).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The settings a running node takes again on SIGHUP: read on the request path with relaxed
/// loads, replaced field by field by [`LiveSettings::apply`] on the main thread.
#[derive(Debug)]
pub struct LiveSettings {
    beacon_size_limit: AtomicU64,
    compression_threshold: AtomicU64,
    json_size_limit: AtomicU64,
    file_size_limit: AtomicU64,
    use_cors: AtomicBool,
}

impl LiveSettings {
    pub fn new(config: &Config) -> LiveSettings {
        let live = LiveSettings {
            beacon_size_limit: AtomicU64::new(0),
            compression_threshold: AtomicU64::new(0),
            json_size_limit: AtomicU64::new(0),
            file_size_limit: AtomicU64::new(0),
            use_cors: AtomicBool::new(false),
        };
        live.apply(config);
        live
    }

    /// Takes `config`'s live settings (it was validated as a whole by [`Config::load`]).
    pub fn apply(&self, config: &Config) {
        let set = |a: &AtomicU64, v| a.store(v, Ordering::Relaxed);
        set(&self.beacon_size_limit, config.beacon_size_limit);
        set(&self.compression_threshold, config.compression_threshold);
        set(&self.json_size_limit, config.json_size_limit);
        set(&self.file_size_limit, config.file_size_limit);
        self.use_cors.store(config.use_cors, Ordering::Relaxed);
    }

    pub fn beacon_size_limit(&self) -> u64 {
        self.beacon_size_limit.load(Ordering::Relaxed)
    }
    pub fn compression_threshold(&self) -> u64 {
        self.compression_threshold.load(Ordering::Relaxed)
    }
    pub fn json_size_limit(&self) -> u64 {
        self.json_size_limit.load(Ordering::Relaxed)
    }
    pub fn file_size_limit(&self) -> u64 {
        self.file_size_limit.load(Ordering::Relaxed)
    }
    pub fn use_cors(&self) -> bool {
        self.use_cors.load(Ordering::Relaxed)
    }
    /// Decoded bytes the batch routes accept (see [`batch_size_limit`]).
    pub fn batch_size_limit(&self) -> u64 {
        batch_size_limit(self.beacon_size_limit())
    }
}

/// Decoded bytes accepted on the batch routes with `BEACON_SIZE_LIMIT` `beacon`. The tracker
/// fills batches up to 200,000 bytes and sends one larger message in a batch of up to
/// `beaconSizeLimit` (PROTOCOL.md).
fn batch_size_limit(beacon: u64) -> u64 {
    beacon.max(200_000)
}

impl Config {
    /// What changed from `self` that only a restart applies (named for the log line).
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut check = |name, differs: bool| {
            if differs {
                changed.push(name);
            }
        };
        check("listen", self.listen != new.listen);
        check("workers", self.workers != new.workers);
        check(
            "prepare_threads",
            self.prepare_threads != new.prepare_threads,
        );
        check("data_dir", self.data_dir != new.data_dir);
        check("token_secret", self.token_secret != new.token_secret);
        check("shard", self.shard != new.shard);
        check("segment_size", self.segment_size != new.segment_size);
        check("durability", self.durability != new.durability);
        check(
            "redis",
            self.redis.as_ref().map(|r| &r.url) != new.redis.as_ref().map(|r| &r.url),
        );
        check(
            "kafka",
            self.kafka.as_ref().map(|k| &k.servers) != new.kafka.as_ref().map(|k| &k.servers),
        );
        check(
            "postgres",
            self.postgres.as_ref().map(|p| &p.url) != new.postgres.as_ref().map(|p| &p.url),
        );
        check("admin_listen", self.admin_listen != new.admin_listen);
        check(
            "request_log_every",
            self.request_log_every != new.request_log_every,
        );
        check(
            "projects",
            self.projects_file.is_some() != new.projects_file.is_some(),
        );
        changed
    }
}

/// A URL without its password, for the logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let file: FileConfig = toml::from_str(
            "workers = 3\njson_size_limit = 2000\nhttp_timeout = \"5s\"\nuse_cors = false\n\
             retain_bytes = 1073741824",
        )
        .unwrap();
        let args = ServeArgs {
            workers: Some(2),
            ..ServeArgs::default()
        };
        let c = Config::merge(&args, file).unwrap();
        assert_eq!(c.workers, 2);
        assert_eq!(c.json_size_limit, 2000);
        assert_eq!(c.body_timeout, Duration::from_secs(5));
        assert!(!c.use_cors);
        assert_eq!(c.beacon_size_limit, 1_000_000);
        assert_eq!(c.listen.port(), 8080);
        // The older retain_bytes is a disk budget in bytes.
        assert_eq!(
            c.log_config().disk_budget,
            Some(BudgetSetting::Bytes(1 << 30))
        );
        assert_eq!(
            Config::merge(&args, FileConfig::default())
                .unwrap()
                .disk_budget,
            BudgetSetting::DEFAULT
        );
        let file: FileConfig = toml::from_str("disk_budget = \"60%\"").unwrap();
        assert_eq!(
            Config::merge(&args, file).unwrap().disk_budget,
            BudgetSetting::Percent(60.0)
        );
    }

    #[test]
    fn http_host_and_port_make_the_listen_address() {
        let args = ServeArgs {
            http_host: Some("127.0.0.1".into()),
            http_port: Some(9000),
            ..ServeArgs::default()
        };
        let c = Config::merge(&args, FileConfig::default()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:9000".parse().unwrap());
        let args = ServeArgs {
            http_port: Some(9001),
            ..ServeArgs::default()
        };
        let c = Config::merge(&args, FileConfig::default()).unwrap();
        assert_eq!(c.listen, "0.0.0.0:9001".parse().unwrap());
    }

    #[test]
    fn postgres_settings_and_their_conflict_with_a_projects_file() {
        let args = ServeArgs {
            postgres: Some(" postgres://u@db/openreplay ".into()),
            ..ServeArgs::default()
        };
        let c = Config::merge(&args, FileConfig::default()).unwrap();
        let pg = c.postgres.unwrap();
        assert_eq!(pg.url, "postgres://u@db/openreplay");
        assert_eq!(
            pg.projects_refresh,
            PostgresConfig::DEFAULT_PROJECTS_REFRESH
        );
        let empty = ServeArgs {
            postgres: Some(String::new()),
            ..ServeArgs::default()
        };
        assert!(Config::merge(&empty, FileConfig::default())
            .unwrap()
            .postgres
            .is_none());
        let both = ServeArgs {
            projects: Some("projects.json".into()),
            ..args
        };
        assert!(Config::merge(&both, FileConfig::default()).is_err());
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        assert!(toml::from_str::<FileConfig>("wokers = 3").is_err());
    }

    #[test]
    fn tiny_segments_are_refused() {
        let args = ServeArgs {
            segment_size: Some(1 << 20),
            ..ServeArgs::default()
        };
        assert!(Config::merge(&args, FileConfig::default()).is_err());
    }
}

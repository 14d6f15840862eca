//! OpenReplay's PostgreSQL: the projects a node serves and the `sessions` row of every new session.
//!
//! Two parts, each on its own thread, neither on the request path:
//!
//! * `projects`, the loader (thread `db-projects`): reads the active projects, their tags and
//!   their recording conditions, puts them into the workers' [`Catalog`](crate::project::Catalog),
//!   and reads them again on OpenReplay's `project` notification and every `projects_refresh`.
//! * `writer`, the database writer (thread `db-writer`): a consumer of the log that inserts each
//!   [`SessionRow`](row::SessionRow) record, in batches, and commits its cursor after the
//!   database committed. The forwarders never read past its cursor, so a session's messages
//!   reach the queue only after its row exists (PROTOCOL.md: OpenReplay's `db` service drops the
//!   messages of a session it cannot find).
//!
//! `row` says what a row holds and the column rules; `schema.sql` is the part of OpenReplay's
//! schema these read and write (the tests create their database from it).

pub mod projects;
pub mod row;
pub mod writer;

use std::time::Duration;

pub use projects::ProjectLoader;
pub use writer::{DbWriter, WriterStats};

/// The enums and tables of OpenReplay's schema that the node reads and writes.
pub const SCHEMA: &str = include_str!("schema.sql");

/// The name of the database writer's cursor (`consumers/database.cursor`).
pub const WRITER_CONSUMER: &str = "database";

/// How long a connection attempt may take before the database counts as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `POSTGRES_STRING` and what goes with it.
#[derive(Clone, Debug)]
pub struct PostgresConfig {
    /// A `postgres://` URL (libpq's key=value form works too).
    pub url: String,
    pub projects_refresh: Duration,
}

impl PostgresConfig {
    /// Changes arrive by notification at once; the full read is the safety net for a missed
    /// one (a reconnect) and the cache time of tags and conditions, which have no notification.
    pub const DEFAULT_PROJECTS_REFRESH: Duration = Duration::from_secs(30);
}

/// Connects to `url`. TLS as libpq's `sslmode`: `disable`, `prefer` (the default: TLS when the
/// server offers it) and `require` encrypt without checking the certificate; `verify-ca` and
/// `verify-full` check it against the system's roots (and the host name).
pub fn connect(url: &str) -> Result<postgres::Client, postgres::Error> {
    let (url, verify) = match ["verify-full", "verify-ca"]
        .into_iter()
        .find(|mode| url.contains(&format!("sslmode={mode}")))
    {
        Some(mode) => (
            url.replace(&format!("sslmode={mode}"), "sslmode=require"),
            Some(mode),
        ),
        None => (url.to_string(), None),
    };
    let mut config: postgres::Config = url.parse()?;
    config
        .connect_timeout(CONNECT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .application_name("replay-ingest");
    let tls = native_tls::TlsConnector::builder()
        .danger_accept_invalid_certs(verify.is_none())
        .danger_accept_invalid_hostnames(verify != Some("verify-full"))
        .build();
    match tls {
        Ok(tls) => config.connect(postgres_native_tls::MakeTlsConnector::new(tls)),
        // No TLS library to be had: plain connections still work where the server allows them.
        Err(e) => {
            log::warn!("PostgreSQL: TLS unavailable ({e}); connecting without it");
            config.connect(postgres::NoTls)
        }
    }
}

/// Whether `e` is about the data (a row the database refuses) rather than about reaching the
/// database: SQLSTATE classes 22 (data exception) and 23 (integrity constraint violation).
pub fn is_data_error(e: &postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
}

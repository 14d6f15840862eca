//! Logs: one line per event on stderr, for journald or a terminal, and errors that would repeat
//! per request logged once per interval with a count.
//!
//! In: the `log` macros used across the crate (bridged by `tracing-log`) and `tracing` events
//! (the sampled request lines, target `replay_ingest::request`, with fields). Out: lines through
//! `tracing-subscriber`'s formatter; levels from `--log-level` or `RUST_LOG` (`info` when
//! neither is set), in `EnvFilter` syntax (`warn,replay_ingest::request=info`). Under systemd
//! (`JOURNAL_STREAM` set) lines carry no timestamp and no colour: journald adds its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// The filter SIGHUP replaces.
static LEVELS: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// The filter for `level` (a flag), else `RUST_LOG`, else `info`.
fn filter(level: Option<&str>) -> Result<EnvFilter, String> {
    match level {
        Some(level) => EnvFilter::try_new(level).map_err(|e| format!("log level {level:?}: {e}")),
        None => Ok(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))),
    }
}

/// Installs the subscriber; `level` (a flag) wins over `RUST_LOG`.
pub fn init(level: Option<&str>) {
    let filter = filter(level).unwrap_or_else(|e| {
        eprintln!("{e}; logging at info");
        EnvFilter::new("info")
    });
    let (filter, handle) = reload::Layer::new(filter);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let format = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(true);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = if journald {
        registry.with(format.without_time()).try_init()
    } else {
        registry.with(format).try_init()
    };
    match installed {
        Ok(()) => {
            let _ = LEVELS.set(handle);
        }
        Err(e) => eprintln!("cannot install the logger: {e}"),
    }
}

/// Replaces the levels (SIGHUP), as `init` reads them.
pub fn set_levels(level: Option<&str>) -> Result<(), String> {
    let filter = filter(level)?;
    // The `log` macros stop at their own maximum, set at start: move it with the filter.
    let most = match filter.max_level_hint() {
        Some(hint) if hint == tracing_subscriber::filter::LevelFilter::OFF => log::LevelFilter::Off,
        Some(hint) => match hint.into_level() {
            Some(tracing::Level::ERROR) => log::LevelFilter::Error,
            Some(tracing::Level::WARN) => log::LevelFilter::Warn,
            Some(tracing::Level::INFO) => log::LevelFilter::Info,
            Some(tracing::Level::DEBUG) => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        },
        None => log::LevelFilter::Trace,
    };
    log::set_max_level(most);
    match LEVELS.get() {
        Some(handle) => handle.reload(filter).map_err(|e| e.to_string()),
        None => Err("no logger installed".into()),
    }
}

/// A message that may come once per request (a full disk refuses every one): logged at most
/// once per `interval_s`, saying how many were not logged since.
#[derive(Debug)]
pub struct Repeated {
    interval_s: u64,
    /// Seconds since the epoch of the last line, plus one (0: never logged).
    last_s: AtomicU64,
    since: AtomicU64,
}

impl Repeated {
    pub const fn new(interval_s: u64) -> Repeated {
        Repeated {
            interval_s,
            last_s: AtomicU64::new(0),
            since: AtomicU64::new(0),
        }
    }

    /// One occurrence. `Some(n)`: log it now; `n` occurrences went unlogged before it.
    pub fn hit(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 1;
        let last = self.last_s.load(Ordering::Relaxed);
        if last != 0 && now < last + self.interval_s {
            self.since.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        // One thread wins the interval's line; the others count.
        if self
            .last_s
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.since.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.since.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_message_is_logged_once_per_interval_with_its_count() {
        let r = Repeated::new(3600);
        assert_eq!(r.hit(), Some(0));
        for _ in 0..3233 {
            assert_eq!(r.hit(), None);
        }
        // The next interval's line says how many were not logged.
        r.last_s.store(1, Ordering::Relaxed);
        assert_eq!(r.hit(), Some(3233));
        assert_eq!(r.hit(), None);
    }
}

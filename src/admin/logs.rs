//! Logs: one line per event on stderr, for journald or a terminal, and errors that would repeat
//! per request logged once per interval with a count.
//!
//! In: the `log` macros used across the crate (bridged by `tracing-log`) and `tracing` events
//! (the sampled request lines, target `replay_ingest::request`, with fields). Out: lines through
//! `tracing-subscriber`'s formatter; levels from `--log-level` or `RUST_LOG` (`info` when
//! neither is set), in `EnvFilter` syntax (`warn,replay_ingest::request=info`). Under systemd
//! (`JOURNAL_STREAM` set) lines carry no timestamp and no colour: journald adds its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_subscriber::EnvFilter;

/// Installs the subscriber; `level` (a flag) wins over `RUST_LOG`.
pub fn init(level: Option<&str>) {
    let filter = match level {
        Some(level) => EnvFilter::try_new(level).ok(),
        None => EnvFilter::try_from_default_env().ok(),
    }
    .unwrap_or_else(|| EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(true);
    let installed = if journald {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
    if let Err(e) = installed {
        eprintln!("cannot install the logger: {e}");
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

//! Running under systemd: readiness and status notifications, the watchdog, socket activation.
//!
//! In: the environment systemd sets (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `LISTEN_FDS`,
//! `LISTEN_PID`) and the loops' heartbeats. Out: `READY=1`, `STATUS=...`, `STOPPING=1` and
//! `WATCHDOG=1` datagrams (through the `sd-notify` crate; nothing happens without
//! `NOTIFY_SOCKET`), and the listening socket systemd passed, if any (through `listenfd`).
//! Threads: main's, and `watchdog`, which pings only while every loop makes progress.

use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::background::{nap, Background};
use crate::routes::NodeState;

/// Tells systemd (when it is listening) what the node does now: one `STATUS=` line.
pub fn status(text: &str) {
    notify(&[NotifyState::Status(text)]);
}

/// `READY=1`, with a status line: listeners bound, segments recovered, consumers started.
pub fn ready(text: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(text)]);
}

/// `STOPPING=1`: the node drains and stops.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        log::warn!("systemd notification failed: {e}");
    }
}

/// The TCP listener systemd passed (socket activation), when `LISTEN_FDS` names one for this
/// process; `None` when the node should bind its own.
pub fn inherited_listener() -> io::Result<Option<TcpListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    let listener = fds.take_tcp_listener(0)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "LISTEN_FDS: the first socket passed is not a TCP listener",
        )
    })?;
    Ok(Some(listener))
}

/// Pings systemd's watchdog (`WATCHDOG=1`) at half of `WATCHDOG_USEC` while every loop (each
/// worker, the compactor, each forwarder, the database threads) beat within that half; a loop
/// that stops beating stops the pings, and systemd restarts the node after `WatchdogSec=`.
pub struct Watchdog {
    draining: Arc<AtomicBool>,
    _thread: Background,
}

impl Watchdog {
    /// Starts the pings when systemd asked for them (`WATCHDOG_USEC`); `None` otherwise.
    pub fn start(node: Arc<NodeState>) -> io::Result<Option<Watchdog>> {
        let Some(interval) = sd_notify::watchdog_enabled() else {
            return Ok(None);
        };
        let every = (interval / 2).max(Duration::from_millis(10));
        log::info!(
            "systemd watchdog: {} ms; pinging every {} ms while every loop makes progress",
            interval.as_millis(),
            every.as_millis()
        );
        let draining = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&draining);
        let thread = Background::spawn("watchdog".into(), move |stop| {
            let mut wedged = false;
            while !stop.load(Ordering::SeqCst) {
                // While stopping, the loops end one by one: TimeoutStopSec= bounds the drain.
                let silent = if stopping.load(Ordering::SeqCst) {
                    Vec::new()
                } else {
                    node.health.silent_within(every)
                };
                if silent.is_empty() {
                    notify(&[NotifyState::Watchdog]);
                    wedged = false;
                } else if !wedged {
                    wedged = true;
                    log::error!(
                        "watchdog: {} made no progress for {} ms; not pinging systemd",
                        silent.join(", "),
                        every.as_millis()
                    );
                }
                nap(&stop, every, || {});
            }
        })?;
        Ok(Some(Watchdog {
            draining,
            _thread: thread,
        }))
    }

    /// The node is stopping: from now on the pings go on whatever the loops do.
    pub fn draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
}

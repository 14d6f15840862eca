//! The compactor's CPU priority: it gives way to the request path while it is not far behind.
//!
//! In: how long the compactor has had work without a pause ([`Busy`], which it keeps) and its
//! lag in bytes (as the segment service last counted it) against the disk budget. Out: the
//! compactor thread's scheduling policy, `SCHED_IDLE` or `SCHED_OTHER`. Thread: its own,
//! `compactor-priority`, which looks five times a second and sets the policy of the compactor
//! thread from outside (a compactor starved in the middle of a run could not promote itself);
//! at start, a short-lived probe thread.
//!
//! # Why
//!
//! The log is there to absorb what the consumers have not taken yet. On a node whose cores the
//! workers need, a compactor at the workers' priority takes a fair share of them (and, once
//! running, keeps its core until its slice ends while a worker that woke waits: the open-loop
//! tail of bench/RESULTS.md run 12), so every burst is ingested at the speed of ingest and
//! compaction together. At `SCHED_IDLE` it runs only on a core no one else wants: a burst is
//! taken at the request path's speed, and compacted in the gaps or after it.
//!
//! A compactor that stays there starves under sustained saturation, and what it cannot compact
//! the disk budget forces out. So it yields only while it is close behind: busy without a pause
//! for less than [`YIELD_FOR`], and its lag under a quarter of the disk budget. Beyond either it
//! takes back its share at normal priority, and it yields again only once it has caught up (a
//! run that found nothing to do): a hysteresis, so that it switches twice per burst.
//!
//! # Privilege
//!
//! Any thread may lower a priority, but leaving `SCHED_IDLE` for `SCHED_OTHER` needs
//! `CAP_SYS_NICE` or an `RLIMIT_NICE` that allows the thread's nice value (20 or more for nice 0;
//! systemd: `LimitNICE=+0`, which the shipped unit sets). A compactor that could not come back
//! would starve, so at start a probe thread tries both switches; if the second fails, the
//! compactor stays at normal priority all along, and says so once.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use thread_priority::unix::{set_thread_priority_and_policy, thread_native_id, ThreadId};
use thread_priority::{
    NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
};

use super::CompactorStats;
use crate::log::ConsumerState;
use crate::log::DiskBudget;

/// Busy this long without catching up, the compactor stops yielding: the length of a burst taken
/// at the request path's full speed. Well under the readiness bound (`--ready-max-lag`, 60 s by
/// default), so that a node absorbing a burst stays ready.
pub const YIELD_FOR: Duration = Duration::from_secs(10);
/// How often the keeper looks.
pub const LOOK_EVERY: Duration = Duration::from_millis(200);

/// Since when the compactor has had work without a pause; kept by the compactor thread, read by
/// the keeper.
#[derive(Debug)]
pub struct Busy {
    epoch: Instant,
    /// Milliseconds after `epoch` plus one when the current stretch of work began; 0 while
    /// caught up.
    since: AtomicU64,
}

impl Default for Busy {
    fn default() -> Self {
        Busy {
            epoch: Instant::now(),
            since: AtomicU64::new(0),
        }
    }
}

impl Busy {
    /// A run begins at `started` (the stretch it belongs to began earlier if one is running).
    pub fn working(&self, started: Instant) {
        let ms = started.saturating_duration_since(self.epoch).as_millis() as u64 + 1;
        let _ = self
            .since
            .compare_exchange(0, ms, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// A run found nothing to do.
    pub fn caught_up(&self) {
        self.since.store(0, Ordering::Relaxed);
    }

    /// How long the current stretch of work has lasted (zero: caught up).
    pub fn behind_for(&self) -> Duration {
        match self.since.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            ms => self
                .epoch
                .elapsed()
                .saturating_sub(Duration::from_millis(ms - 1)),
        }
    }
}

/// The policy for the compactor, yielding now or not: whether it should yield.
pub fn should_yield(yielding: bool, behind_for: Duration, lag_bytes: u64, budget: u64) -> bool {
    let far_behind = behind_for > YIELD_FOR || lag_bytes > budget / 4;
    if yielding {
        !far_behind
    } else {
        !far_behind && behind_for.is_zero()
    }
}

/// What the keeper reads.
pub struct Inputs {
    pub busy: Arc<Busy>,
    pub lag: Arc<ConsumerState>,
    pub budget: Arc<DiskBudget>,
    pub stats: Arc<CompactorStats>,
}

/// The running keeper; dropping it puts the compactor back at normal priority and stops it.
pub struct Keeper {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Keeper {
    /// Starts keeping `compactor`'s priority, if this process may bring a thread back from
    /// `SCHED_IDLE`; otherwise `None` (logged), and the compactor stays at normal priority.
    pub fn start<T>(compactor: &JoinHandle<T>, inputs: Inputs) -> Option<Keeper> {
        if let Err(e) = probe() {
            log::info!(
                "compactor: runs at normal priority, without yielding to the request path: \
                 coming back from SCHED_IDLE was refused ({e}); it needs CAP_SYS_NICE or \
                 RLIMIT_NICE 20 (systemd: LimitNICE=+0)"
            );
            return None;
        }
        let target = compactor.as_pthread_t();
        let (stop, stopped) = crossbeam_channel::bounded(0);
        let thread = std::thread::Builder::new()
            .name("compactor-priority".into())
            .spawn(move || keep(target, &inputs, &stopped));
        match thread {
            Ok(thread) => Some(Keeper {
                stop: Some(stop),
                thread: Some(thread),
            }),
            Err(e) => {
                log::error!("compactor: its priority keeper did not start: {e}");
                None
            }
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("compactor-priority thread panicked");
            }
        }
    }
}

fn keep(target: ThreadId, inputs: &Inputs, stopped: &Receiver<()>) {
    let mut yielding = false;
    loop {
        let behind_for = inputs.busy.behind_for();
        let lag_bytes = inputs.lag.lag().bytes;
        let want = should_yield(yielding, behind_for, lag_bytes, inputs.budget.limit());
        if want != yielding {
            match set_policy(target, want) {
                Ok(()) => {
                    yielding = want;
                    inputs
                        .stats
                        .yielding
                        .store(u64::from(yielding), Ordering::Relaxed);
                    if yielding {
                        log::info!("compactor: caught up; yields the CPU to the request path");
                    } else {
                        log::info!(
                            "compactor: {} MiB behind, busy for {} s; takes its share of the CPU",
                            lag_bytes >> 20,
                            behind_for.as_secs()
                        );
                    }
                }
                // Refused although the probe passed (a limit lowered since): tried again at the
                // next look, so a yielding compactor is never left behind at SCHED_IDLE.
                Err(e) => log::error!("compactor: changing its priority: {e}"),
            }
        }
        match stopped.recv_timeout(LOOK_EVERY) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    // The compactor's last run at shutdown must not wait for idle cores.
    if yielding {
        match set_policy(target, false) {
            Ok(()) => inputs.stats.yielding.store(0, Ordering::Relaxed),
            Err(e) => log::error!("compactor: back to normal priority: {e}"),
        }
    }
}

/// Whether a thread of this process may go to `SCHED_IDLE` and come back: tried on a thread
/// of its own.
fn probe() -> Result<(), String> {
    std::thread::Builder::new()
        .name("priority-probe".into())
        .spawn(|| {
            let me = thread_native_id();
            set_policy(me, true).and_then(|()| set_policy(me, false))
        })
        .map_err(|e| e.to_string())?
        .join()
        .map_err(|_| "the probe thread panicked".to_string())?
}

/// `SCHED_IDLE` (`idle`) or `SCHED_OTHER` for `target`, at the nice value it has.
///
/// The crate sets a thread's policy with `pthread_setschedparam(target)` and then, for a normal
/// policy, the calling thread's nice value (`setpriority(PRIO_PROCESS, 0)`) from a priority of
/// 0 to 99 of its own. The priority passed is the one its mapping turns into the calling
/// thread's nice value, so that call changes nothing; the compactor and the keeper were both
/// started by the main thread and have its nice value (an operator's `Nice=`).
fn set_policy(target: ThreadId, idle: bool) -> Result<(), String> {
    let policy = ThreadSchedulePolicy::Normal(if idle {
        NormalThreadSchedulePolicy::Idle
    } else {
        NormalThreadSchedulePolicy::Other
    });
    // On Linux, the calling thread's nice value (not the process's).
    let nice = rustix::process::getpriority_process(None).map_err(|e| e.to_string())?;
    let priority = (0..=u8::MAX)
        .filter_map(|p| ThreadPriorityValue::try_from(p).ok())
        .map(ThreadPriority::Crossplatform)
        .find(|p| p.to_posix(policy).ok() == Some(nice))
        .ok_or_else(|| format!("no priority of the thread-priority crate maps to nice {nice}"))?;
    set_thread_priority_and_policy(target, priority, policy).map_err(|e| format!("{e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: u64 = 100 << 30;
    const GIB: u64 = 1 << 30;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn yields_while_close_behind_and_stops_far_behind() {
        assert!(should_yield(false, Duration::ZERO, 0, BUDGET));
        assert!(should_yield(true, secs(5), GIB, BUDGET));
        assert!(!should_yield(true, secs(11), GIB, BUDGET), "busy too long");
        assert!(
            !should_yield(true, secs(1), 26 * GIB, BUDGET),
            "over a quarter of the budget"
        );
    }

    #[test]
    fn yields_again_only_once_caught_up() {
        assert!(!should_yield(false, secs(1), GIB, BUDGET));
        assert!(!should_yield(false, Duration::from_millis(1), 0, BUDGET));
        assert!(should_yield(false, Duration::ZERO, 0, BUDGET));
    }

    #[test]
    fn busy_counts_from_the_first_run_of_a_stretch() {
        let busy = Busy {
            epoch: Instant::now() - secs(1),
            since: AtomicU64::new(0),
        };
        assert_eq!(busy.behind_for(), Duration::ZERO);
        let first = Instant::now() - Duration::from_millis(500);
        busy.working(first);
        busy.working(Instant::now());
        assert!(busy.behind_for() >= Duration::from_millis(500));
        busy.caught_up();
        assert_eq!(busy.behind_for(), Duration::ZERO);
    }

    fn policy_of(thread: ThreadId) -> ThreadSchedulePolicy {
        thread_priority::unix::thread_schedule_policy_param(thread)
            .unwrap()
            .0
    }

    #[test]
    fn another_thread_is_put_at_sched_idle_and_back() {
        if let Err(e) = probe() {
            // Unprivileged (no CAP_SYS_NICE, RLIMIT_NICE under 20): the keeper does not start,
            // and set_policy must refuse the way back, as the probe says.
            let refused = std::thread::spawn(move || {
                let me = thread_native_id();
                set_policy(me, true).unwrap();
                set_policy(me, false)
            });
            assert!(refused.join().unwrap().is_err(), "probe said: {e}");
            return;
        }
        let (done, wait) = crossbeam_channel::bounded::<()>(0);
        let sleeper = std::thread::spawn(move || {
            let _ = wait.recv();
        });
        let target = sleeper.as_pthread_t();
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        let other = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other);
        assert_eq!(policy_of(target), other);
        set_policy(target, true).unwrap();
        assert_eq!(policy_of(target), idle);
        assert_eq!(
            policy_of(thread_native_id()),
            other,
            "the caller is unchanged"
        );
        set_policy(target, false).unwrap();
        assert_eq!(policy_of(target), other);
        drop(done);
        sleeper.join().unwrap();
    }
}

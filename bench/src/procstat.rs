//! What a server process costs, read from /proc: CPU time (utime + stime) and memory (VmRSS,
//! VmHWM), summed over the process and its descendants, because nginx does its work in worker
//! processes whose time the master's /proc/PID/stat never shows.
//!
//! Also CPU time per thread of one process, grouped by the thread's name (`comm`): a
//! multi-threaded server's request path and its background threads, told apart.
//!
//! In: a pid. Out: a [`ProcSample`], or [`ThreadGroups`]. Called on the main thread before and
//! after a run.

use std::fs;

use anyhow::{bail, Context};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcSample {
    /// user + system CPU time, in clock ticks (see [`ticks_per_second`]).
    pub cpu_ticks: u64,
    /// Resident set size now, KiB.
    pub rss_kib: u64,
    /// Peak resident set size since each process started, KiB.
    pub hwm_kib: u64,
    /// How many processes were summed.
    pub processes: u32,
}

pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a constant of the system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// Parses /proc/PID/stat: (ppid, utime + stime). The command name may hold spaces and
/// parentheses, so fields are counted from the last ')'.
fn parse_stat(stat: &str) -> anyhow::Result<(u32, u64)> {
    let after = stat.rfind(')').context("no ')' in stat")?;
    let fields: Vec<&str> = stat[after + 1..].split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12), i.e. fields 14 and 15 of proc(5).
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .context("short stat line")?
            .parse::<u64>()
            .context("stat field is not a number")
    };
    Ok((u32::try_from(field(1)?)?, field(11)? + field(12)?))
}

fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The pid and every live descendant of it.
fn process_tree(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
                if let Ok((ppid, _)) = parse_stat(&stat) {
                    parents.push((pid, ppid));
                }
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

pub fn sample(pid: u32) -> anyhow::Result<ProcSample> {
    let mut s = ProcSample::default();
    for p in process_tree(pid) {
        let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
            if p == pid {
                bail!("process {pid} is gone");
            }
            continue; // a child that exited between the scan and now
        };
        let (_, ticks) = parse_stat(&stat)?;
        let status = fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        s.cpu_ticks += ticks;
        s.rss_kib += status_kib(&status, "VmRSS:");
        s.hwm_kib += status_kib(&status, "VmHWM:");
        s.processes += 1;
    }
    Ok(s)
}

/// CPU time of one process's threads, grouped by name. A name ending in `-<digits>` counts in
/// the group of its prefix (`worker-0`, `worker-1` → `worker`); any other name is its own group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThreadGroups {
    /// utime + stime of the whole process, in clock ticks: its live threads plus those that have
    /// exited (the kernel adds a thread's time to the process when it exits).
    pub total_ticks: u64,
    /// (group, ticks, live threads), sorted by group name.
    pub groups: Vec<(String, u64, u32)>,
}

/// The group a thread named `comm` counts in.
pub fn thread_group(comm: &str) -> &str {
    match comm.rsplit_once('-') {
        Some((prefix, n))
            if !prefix.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) =>
        {
            prefix
        }
        _ => comm,
    }
}

/// Reads /proc/PID/stat (the process) and /proc/PID/task/*/stat (each thread).
pub fn thread_groups(pid: u32) -> anyhow::Result<ThreadGroups> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    let (_, total_ticks) = parse_stat(&stat)?;
    let mut groups: Vec<(String, u64, u32)> = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        let dir = entry.path();
        // A thread that exits between the listing and the read is skipped: its time is in the
        // process's total from then on.
        let (Ok(stat), Ok(comm)) = (
            fs::read_to_string(dir.join("stat")),
            fs::read_to_string(dir.join("comm")),
        ) else {
            continue;
        };
        let (_, ticks) = parse_stat(&stat)?;
        let group = thread_group(comm.trim_end_matches('\n'));
        match groups.iter_mut().find(|(g, _, _)| g == group) {
            Some(g) => {
                g.1 += ticks;
                g.2 += 1;
            }
            None => groups.push((group.to_string(), ticks, 1)),
        }
    }
    groups.sort();
    Ok(ThreadGroups {
        total_ticks,
        groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_from_the_last_parenthesis() {
        let line = "1234 (a b) c)) S 77 1 1 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_stat(line).unwrap(), (77, 281));
        assert!(parse_stat("1 (x) S 2").is_err());
    }

    #[test]
    fn status_values_in_kib() {
        let status = "Name:\tx\nVmHWM:\t   5120 kB\nVmRSS:\t    4096 kB\n";
        assert_eq!(status_kib(status, "VmHWM:"), 5120);
        assert_eq!(status_kib(status, "VmRSS:"), 4096);
        assert_eq!(status_kib(status, "VmSwap:"), 0);
    }

    #[test]
    fn threads_group_by_name_without_their_number() {
        assert_eq!(thread_group("worker-0"), "worker");
        assert_eq!(thread_group("worker-17"), "worker");
        assert_eq!(thread_group("segment-service"), "segment-service");
        assert_eq!(thread_group("compactor"), "compactor");
        assert_eq!(thread_group("-3"), "-3");
        assert_eq!(thread_group("x-"), "x-");
    }

    #[test]
    fn own_threads_are_sampled() {
        // The new thread names itself once it runs: sample after it says so, before it ends.
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::Builder::new()
            .name("probe-1".into())
            .spawn(move || {
                started_tx.send(()).unwrap();
                let _ = done_rx.recv();
            })
            .unwrap();
        started_rx.recv().unwrap();
        let g = thread_groups(std::process::id()).unwrap();
        done_tx.send(()).unwrap();
        t.join().unwrap();
        assert!(g
            .groups
            .iter()
            .any(|(name, _, n)| name == "probe" && *n == 1));
        assert!(g.groups.iter().map(|(_, t, _)| t).sum::<u64>() <= g.total_ticks);
    }

    #[test]
    fn own_process_is_sampled() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib && s.processes >= 1);
    }
}

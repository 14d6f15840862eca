//! replay-bench: load generator for replay-ingest and its peers (nginx, the Go reference).
//!
//! In: command-line options naming a loopback target and a workload. Out: a human summary on
//! stderr and one machine-readable `BENCHSTAT key=value ...` line on stdout (like
//! `wrk/post.lua`'s `WRKSTAT`), which `compare.sh` parses.
//!
//! Subcommands: `mix` (tracker sessions, realistic batch sizes), `fixed` (one body of 1, 8 or
//! 64 KiB, like wrk), `idle` (hold N keep-alive connections, report the server's RSS), `body`
//! (write a fixed body to a file for wrk), `proc` (print a server's CPU time and RSS), `threads`
//! (a server's CPU time per thread name), `forward-latency` (a batch's time from the node's 200
//! to its Redis stream entry).
//! The main thread parses options, generates bodies and samples /proc; `client` runs the load.

mod client;
mod latency;
mod procstat;
mod traffic;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use client::{MixWorkload, Plan, Stats, Workload};
use procstat::ProcSample;
use traffic::Corpus;

#[derive(Parser)]
#[command(
    version,
    about = "Load generator for replay-ingest and its peers (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tracker sessions: start, a visual batch with split, then player/devtools/analytics/assets
    /// batches of realistic sizes (gzip above the compression threshold).
    Mix {
        #[command(flatten)]
        load: LoadArgs,
        /// Project key for the start requests (replay-ingest: DATA/demo-project-key).
        #[arg(long, default_value = "bench")]
        project_key: String,
        /// Skip start and send every batch with this token (for a server without a start route).
        #[arg(long)]
        token: Option<String>,
        #[arg(long, default_value_t = 30)]
        batches_per_session: u32,
        /// Batches generated up front (plus 1/16 as many first, visual, batches).
        #[arg(long, default_value_t = 512)]
        corpus: usize,
        /// Batches above this many decoded bytes are sent gzip, as the tracker does.
        #[arg(long, default_value_t = 20_000)]
        compression_threshold: usize,
        /// Route prefix: "" or "/ingest".
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// One fixed body (a valid player batch of exactly SIZE bytes) to one path, like wrk.
    Fixed {
        #[command(flatten)]
        load: LoadArgs,
        /// Body size: bytes, or with a k suffix (KiB): 1k, 8k, 64k.
        #[arg(long, default_value = "1k", value_parser = parse_size)]
        size: usize,
        #[arg(long)]
        token: Option<String>,
        #[arg(long, default_value = "/v1/web/i")]
        path: String,
    },
    /// Web starts only: the tracker's start request, again and again (every one a new session).
    Starts {
        #[command(flatten)]
        load: LoadArgs,
        #[arg(long, default_value = "bench")]
        project_key: String,
    },
    /// Opens N keep-alive connections (one request each), holds them, reports the server's RSS.
    Idle {
        #[arg(long)]
        url: String,
        #[arg(long, short = 'c', default_value_t = 10_000)]
        connections: usize,
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        hold: Duration,
        #[arg(long)]
        server_pid: Option<u32>,
        #[arg(long)]
        token: Option<String>,
        #[arg(long, default_value = "/v1/web/i")]
        path: String,
    },
    /// Writes a fixed body to a file (for wrk's BODY_FILE).
    Body {
        #[arg(long, value_parser = parse_size)]
        size: usize,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Edge-to-queue latency: batches at `rate` (open loop), each one's time from the node's
    /// 200 to its entry in a Redis stream (read with XREAD BLOCK from the end).
    ForwardLatency {
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "bench")]
        project_key: String,
        /// The Redis the node forwards to (loopback).
        #[arg(long)]
        redis: String,
        #[arg(long, default_value = "raw")]
        stream: String,
        #[arg(long, short = 'R', default_value_t = 2000.0)]
        rate: f64,
        #[arg(long, short = 'c', default_value_t = 8)]
        connections: usize,
        #[arg(long, short = 'd', default_value = "20s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "8k", value_parser = parse_size)]
        size: usize,
    },
    /// Prints a process tree's CPU time and memory as one PROCSTAT line.
    Proc {
        #[arg(long)]
        pid: u32,
    },
    /// Prints one process's CPU time per thread name as one THREADSTAT line: `total_us`, then
    /// `<group>_us` and `<group>_threads` for each group (`worker-0`, `worker-1` → `worker`).
    Threads {
        #[arg(long)]
        pid: u32,
    },
}

#[derive(Args)]
struct LoadArgs {
    /// Target, e.g. http://127.0.0.1:8080 (loopback only).
    #[arg(long)]
    url: String,
    #[arg(long, short = 'c', default_value_t = 64)]
    connections: usize,
    #[arg(long, short = 't', default_value_t = 1)]
    threads: usize,
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Open loop at this many requests per second in total; closed loop when absent.
    #[arg(long, short = 'R')]
    rate: Option<f64>,
    /// Server process whose CPU time and peak RSS to report (its children are included).
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mult) = match s.strip_suffix(['k', 'K']) {
        Some(n) => (n, 1024),
        None => (s, 1),
    };
    num.parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("not a size: {s}"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("not a duration: {s}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit in {s} (ms, s, m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("not a duration: {s}"))
}

/// `http://127.0.0.1:PORT` -> the address and the Host header. Only loopback targets: the
/// generator can saturate a link, and it is meant for this machine.
fn loopback_target(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("http://")
        .context("the URL must start with http://")?;
    let host = rest.split('/').next().unwrap_or(rest);
    let host = host.replace("localhost", "127.0.0.1");
    let addr: SocketAddr = host
        .parse()
        .with_context(|| format!("{host}: expected IP:PORT"))?;
    if !addr.ip().is_loopback() {
        bail!("{}: only loopback targets are allowed", addr.ip());
    }
    Ok((addr, host))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Mix {
            load,
            project_key,
            token,
            batches_per_session,
            corpus,
            compression_threshold,
            prefix,
        } => {
            let (addr, host) = loopback_target(&load.url)?;
            let corpus = Corpus::generate(corpus.max(1), compression_threshold, load.seed)?;
            eprintln!("{}", corpus.describe());
            let workload = Workload::Mix(MixWorkload {
                corpus,
                project_key,
                token,
                batches_per_session: batches_per_session.max(1),
                prefix,
                host,
            });
            run_load(&load, addr, workload)
        }
        Command::Fixed {
            load,
            size,
            token,
            path,
        } => {
            let (addr, host) = loopback_target(&load.url)?;
            let body = traffic::fixed_batch(size, load.seed)?;
            let workload = Workload::Fixed {
                request: fixed_request(&path, &host, token.as_deref(), &body),
                body_len: body.len(),
            };
            run_load(&load, addr, workload)
        }
        Command::Starts { load, project_key } => {
            let (addr, host) = loopback_target(&load.url)?;
            let body = traffic::start_body(&project_key, client::now_unix_ms());
            let request = format!(
                "POST /v1/web/start HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                traffic::BROWSER_USER_AGENT,
                body.len()
            );
            let workload = Workload::Fixed {
                request: request.into_bytes(),
                body_len: body.len(),
            };
            run_load(&load, addr, workload)
        }
        Command::Idle {
            url,
            connections,
            hold,
            server_pid,
            token,
            path,
        } => idle(&url, connections, hold, server_pid, token.as_deref(), &path),
        Command::ForwardLatency {
            url,
            project_key,
            redis,
            stream,
            rate,
            connections,
            duration,
            size,
        } => {
            let (addr, host) = loopback_target(&url)?;
            if !(redis.contains("127.0.0.1") || redis.contains("localhost")) {
                bail!("{redis}: only a loopback Redis");
            }
            let probe = latency::Probe {
                addr,
                host,
                project_key,
                redis,
                stream,
                rate,
                connections: connections.max(1),
                duration,
                body: size,
            };
            let out = latency::run(&probe)?;
            let h = &out.latencies_us;
            let (p50, p99, p999, max) = (
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max(),
            );
            eprintln!(
                "forward latency: {} batches sent, {} seen in Redis; p50 {p50} us, p99 {p99} us, \
                 p99.9 {p999} us, max {max} us",
                out.sent, out.seen
            );
            println!(
                "FWDLATSTAT sent={} seen={} p50_us={p50} p99_us={p99} p999_us={p999} max_us={max}",
                out.sent, out.seen
            );
            Ok(())
        }
        Command::Body { size, out } => {
            let body = traffic::fixed_batch(size, 1)?;
            std::fs::write(&out, body).with_context(|| format!("writing {}", out.display()))
        }
        Command::Proc { pid } => {
            let s = procstat::sample(pid)?;
            println!(
                "PROCSTAT cpu_us={} rss_kib={} hwm_kib={} processes={}",
                s.cpu_ticks * 1_000_000 / procstat::ticks_per_second(),
                s.rss_kib,
                s.hwm_kib,
                s.processes
            );
            Ok(())
        }
        Command::Threads { pid } => {
            let g = procstat::thread_groups(pid)?;
            let us = |ticks: u64| ticks * 1_000_000 / procstat::ticks_per_second();
            let mut line = format!("THREADSTAT total_us={}", us(g.total_ticks));
            for (name, ticks, n) in &g.groups {
                line += &format!(" {name}_us={} {name}_threads={n}", us(*ticks));
            }
            println!("{line}");
            Ok(())
        }
    }
}

/// The same request wrk's post.lua sends, plus the tracker's DataType header.
fn fixed_request(path: &str, host: &str, token: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n\
         DataType: player\r\n"
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut req = req.into_bytes();
    req.extend_from_slice(body);
    req
}

fn client_cpu_us() -> u64 {
    // SAFETY: getrusage writes one rusage struct into the zeroed one we pass.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

fn run_load(load: &LoadArgs, addr: SocketAddr, workload: Workload) -> anyhow::Result<()> {
    raise_fd_limit();
    let plan = Plan {
        addr,
        connections: load.connections.max(1),
        threads: load.threads.max(1),
        duration: load.duration,
        rate: load.rate,
        workload,
        seed: load.seed,
    };
    let before = load.server_pid.map(procstat::sample).transpose()?;
    let client_before = client_cpu_us();
    let started = Instant::now();
    let stats = client::run(&plan);
    let elapsed = started.elapsed();
    let client_cpu = client_cpu_us() - client_before;
    let after = load.server_pid.map(procstat::sample).transpose()?;
    let server = before.zip(after);
    report(load, &stats, elapsed, client_cpu, server);
    Ok(())
}

fn report(
    load: &LoadArgs,
    stats: &Stats,
    elapsed: Duration,
    client_cpu_us: u64,
    server: Option<(ProcSample, ProcSample)>,
) {
    let secs = elapsed.as_secs_f64();
    let answered = stats.answered();
    let h = &stats.latency;
    let q = |p: f64| {
        if answered == 0 {
            0
        } else {
            h.value_at_quantile(p)
        }
    };
    let errors_by_status: u64 = stats
        .by_status
        .iter()
        .filter(|(s, _)| !(200..300).contains(*s))
        .map(|(_, n)| n)
        .sum();
    let io_errors: u64 = stats.io_errors.values().sum();
    let mode = match load.rate {
        Some(r) => format!("open loop at {r} req/s"),
        None => "closed loop".to_owned(),
    };
    eprintln!(
        "{mode}, {} connections, {} threads, {:.1} s: {answered} answers ({} ok), {:.0} req/s, \
         {:.1} MB/s of bodies",
        load.connections,
        load.threads,
        secs,
        stats.ok(),
        answered as f64 / secs,
        stats.body_bytes as f64 / secs / 1e6,
    );
    eprintln!(
        "latency µs: p50 {} p90 {} p99 {} p99.9 {} max {}   (starts {}, batches {})",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        h.max(),
        stats.starts,
        stats.batches
    );
    let late = &stats.lateness;
    let late_q = |p: f64| late.value_at_quantile(p);
    if load.rate.is_some() {
        eprintln!(
            "send lateness µs (intended send to the client's send, part of the latency): p50 {} \
             p90 {} p99 {} p99.9 {}",
            late_q(0.5),
            late_q(0.9),
            late_q(0.99),
            late_q(0.999)
        );
    }
    if !stats.by_status.is_empty() {
        let by: Vec<String> = stats
            .by_status
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        eprintln!("answers by status: {}", by.join(", "));
    }
    if !stats.io_errors.is_empty() {
        let by: Vec<String> = stats
            .io_errors
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        eprintln!("I/O errors: {}", by.join(", "));
    }
    if stats.backlog_at_end > 0 {
        eprintln!(
            "open loop: {} requests were still waiting for a connection at the end (the rate \
             is above what the server sustains)",
            stats.backlog_at_end
        );
    }
    let tps = procstat::ticks_per_second();
    let (server_cpu_us, hwm, rss) = match server {
        Some((b, a)) => {
            let us = a.cpu_ticks.saturating_sub(b.cpu_ticks) * 1_000_000 / tps;
            eprintln!(
                "server: {:.2} s CPU ({:.1} µs per answer), RSS {} KiB, peak RSS {} KiB",
                us as f64 / 1e6,
                us as f64 / answered.max(1) as f64,
                a.rss_kib,
                a.hwm_kib
            );
            (us, a.hwm_kib, a.rss_kib)
        }
        None => (0, 0, 0),
    };
    eprintln!(
        "client: {:.2} s CPU ({:.1} µs per answer)",
        client_cpu_us as f64 / 1e6,
        client_cpu_us as f64 / answered.max(1) as f64
    );
    println!(
        "BENCHSTAT requests={answered} ok={} duration_us={} body_bytes={} p50_us={} p90_us={} \
         p99_us={} p999_us={} max_us={} err_status={errors_by_status} err_io={io_errors} \
         starts={} batches={} backlog={} server_cpu_us={server_cpu_us} server_hwm_kib={hwm} \
         server_rss_kib={rss} client_cpu_us={client_cpu_us} late_p50_us={} late_p99_us={} \
         late_p999_us={}",
        stats.ok(),
        elapsed.as_micros(),
        stats.body_bytes,
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        h.max(),
        stats.starts,
        stats.batches,
        stats.backlog_at_end,
        late_q(0.5),
        late_q(0.99),
        late_q(0.999),
    );
}

/// Many connections need many descriptors: take the hard limit.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit read and write one rlimit struct on our stack.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Blocking and sequential on purpose: connection set-up speed is not what is measured, the
/// server's memory with all of them open is.
fn idle(
    url: &str,
    connections: usize,
    hold: Duration,
    server_pid: Option<u32>,
    token: Option<&str>,
    path: &str,
) -> anyhow::Result<()> {
    raise_fd_limit();
    let (addr, host) = loopback_target(url)?;
    let body = traffic::fixed_batch(1024, 1)?;
    let request = fixed_request(path, &host, token, &body);
    let before = server_pid.map(procstat::sample).transpose()?;
    let mut held = Vec::with_capacity(connections);
    let mut statuses = std::collections::BTreeMap::<String, u64>::new();
    let mut buf = vec![0u8; 4096];
    for n in 0..connections {
        let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "connection {n}: {e}; holding the {} open so far",
                    held.len()
                );
                break;
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_nodelay(true)?;
        s.write_all(&request)?;
        // One small answer; the status line is all we need.
        let got = s.read(&mut buf)?;
        let status = String::from_utf8_lossy(&buf[..got.min(12)]).into_owned();
        *statuses.entry(status).or_default() += 1;
        held.push(s);
    }
    let opened = held.len();
    eprintln!("holding {opened} keep-alive connections for {hold:?}");
    std::thread::sleep(hold);
    let after = server_pid.map(procstat::sample).transpose()?;
    // Still open at the end? A server that closed idle connections early would free memory.
    let mut alive = 0usize;
    for s in &held {
        s.set_nonblocking(true)?;
        let mut one = [0u8; 1];
        match (&*s).read(&mut one) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => alive += 1,
            _ => {}
        }
    }
    for (status, n) in &statuses {
        eprintln!("answers {status:?}: {n}");
    }
    let (rss, hwm, base) = match (before, after) {
        (Some(b), Some(a)) => (a.rss_kib, a.hwm_kib, b.rss_kib),
        _ => (0, 0, 0),
    };
    if server_pid.is_some() {
        eprintln!(
            "server RSS {} KiB with {alive} of {opened} connections open (before: {} KiB, \
             {:.2} KiB per connection), peak {} KiB",
            rss,
            base,
            (rss as f64 - base as f64) / opened.max(1) as f64,
            hwm
        );
    }
    println!(
        "BENCHSTAT idle_opened={opened} idle_alive={alive} server_rss_kib={rss} \
         server_rss_before_kib={base} server_hwm_kib={hwm}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("300"), Ok(300));
        assert!(parse_size("x").is_err());
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn only_loopback_targets() {
        let (addr, host) = loopback_target("http://127.0.0.1:8080/x").unwrap();
        assert_eq!(addr.port(), 8080);
        assert_eq!(host, "127.0.0.1:8080");
        assert!(loopback_target("http://localhost:1").is_ok());
        assert!(loopback_target("http://10.0.0.1:80").is_err());
        assert!(loopback_target("https://127.0.0.1:80").is_err());
        let _: std::net::IpAddr = addr.ip();
    }

    #[test]
    fn fixed_request_is_one_valid_http_request() {
        let req = fixed_request("/v1/web/i", "127.0.0.1:1", Some("t"), b"abc");
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut r = httparse::Request::new(&mut headers);
        let n = match r.parse(&req).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("partial"),
        };
        assert_eq!(&req[n..], b"abc");
        assert!(r
            .headers
            .iter()
            .any(|h| h.name == "Authorization" && h.value == b"Bearer t"));
    }
}

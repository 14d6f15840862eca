//! The load engine: keep-alive HTTP/1.1 connections driven by one mio event loop per thread.
//!
//! In: a [`Plan`] (target, connections, threads, duration, optional rate, workload).
//! Out: [`Stats`] merged from every thread: latencies in an HDR histogram, answers by status,
//! I/O errors by kind, body bytes sent.
//!
//! Closed loop: each connection sends its next request as soon as the answer to the last one is
//! complete; latency is measured from the real send. Open loop: each thread owns a schedule of
//! intended send times at its share of the rate; a due request waits for a free connection if
//! there is none, and its latency is measured from the intended time, so a server that stalls
//! is charged for every request it delayed (no coordinated omission). A timerfd wakes the loop
//! with microsecond precision, since poll's millisecond timeout would add up to 1 ms of our own
//! lateness to every measured latency.
//!
//! Runs on the threads [`run`] spawns; each owns its connections, nothing is shared but the
//! read-only workload.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::traffic::{start_body, Batch, Corpus, BROWSER_USER_AGENT};

/// Answers bigger than this are not expected from an ingest server (the start answer is the
/// largest, well under 1 KiB); it bounds the read buffer.
const MAX_ANSWER: usize = 64 * 1024;
const TIMER: Token = Token(usize::MAX);
/// A connection that failed waits this long before it reconnects, so a server that is down
/// does not turn the client into a busy loop.
const RECONNECT_DELAY: Duration = Duration::from_millis(20);

pub enum Workload {
    /// One prepared request, sent as is (head and body in one buffer), like wrk's.
    Fixed { request: Vec<u8>, body_len: usize },
    /// Tracker sessions: start, a `visual` batch, then batches from the corpus.
    Mix(MixWorkload),
}

pub struct MixWorkload {
    pub corpus: Corpus,
    pub project_key: String,
    /// When set, sessions skip start and use this token (a server without a start route).
    pub token: Option<String>,
    pub batches_per_session: u32,
    /// Route prefix, "" or "/ingest".
    pub prefix: String,
    pub host: String,
}

pub struct Plan {
    pub addr: SocketAddr,
    pub connections: usize,
    pub threads: usize,
    pub duration: Duration,
    /// Requests per second in total; None for closed loop.
    pub rate: Option<f64>,
    pub workload: Workload,
    pub seed: u64,
}

pub struct Stats {
    /// Microseconds, from the send (closed loop) or the intended send (open loop).
    pub latency: Histogram<u64>,
    pub by_status: BTreeMap<u16, u64>,
    pub io_errors: BTreeMap<&'static str, u64>,
    /// Request bodies of answered requests, as sent on the wire.
    pub body_bytes: u64,
    pub starts: u64,
    pub batches: u64,
    /// Open loop: requests still waiting for a connection when the run ended.
    pub backlog_at_end: u64,
    /// Open loop: microseconds from each request's intended send to the moment this client
    /// began sending it. Part of every latency above; what the client's own delays (its
    /// thread not running, or busy with other connections) add before the server sees a byte.
    pub lateness: Histogram<u64>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            latency: Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds"),
            by_status: BTreeMap::new(),
            io_errors: BTreeMap::new(),
            body_bytes: 0,
            starts: 0,
            batches: 0,
            backlog_at_end: 0,
            lateness: Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds"),
        }
    }

    fn merge(&mut self, other: Stats) {
        self.latency.add(&other.latency).expect("same bounds");
        for (k, v) in other.by_status {
            *self.by_status.entry(k).or_default() += v;
        }
        for (k, v) in other.io_errors {
            *self.io_errors.entry(k).or_default() += v;
        }
        self.body_bytes += other.body_bytes;
        self.starts += other.starts;
        self.batches += other.batches;
        self.backlog_at_end += other.backlog_at_end;
        self.lateness.add(&other.lateness).expect("same bounds");
    }

    pub fn answered(&self) -> u64 {
        self.by_status.values().sum()
    }

    pub fn ok(&self) -> u64 {
        self.by_status.range(200..300).map(|(_, v)| v).sum()
    }

    fn io_error(&mut self, kind: &'static str) {
        *self.io_errors.entry(kind).or_default() += 1;
    }
}

/// Runs the plan on its threads and merges what they measured.
pub fn run(plan: &Plan) -> Stats {
    let start = Instant::now();
    let deadline = start + plan.duration;
    let threads = plan.threads.clamp(1, plan.connections.max(1));
    let mut total = Stats::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let conns =
                    plan.connections / threads + usize::from(t < plan.connections % threads);
                let rate = plan.rate.map(|r| r / threads as f64);
                let seed = plan.seed.wrapping_add(t as u64 * 0x9e37_79b9);
                s.spawn(move || ThreadLoop::new(plan, conns, rate, seed, start, deadline).run())
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(Ok(stats)) => total.merge(stats),
                Ok(Err(e)) => eprintln!("load thread failed: {e}"),
                Err(_) => eprintln!("load thread panicked"),
            }
        }
    });
    total
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    /// Connected, no request outstanding.
    Idle,
    Sending,
    Receiving,
    /// Failed; reconnects at `retry_at`.
    Down,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    None,
    Visual(usize),
    Rest(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Fixed,
    Start,
    Batch,
}

/// A tracker session as far as the client needs it.
#[derive(Default)]
struct Session {
    token: Option<String>,
    sent: u32,
}

struct Conn {
    stream: Option<TcpStream>,
    phase: Phase,
    /// Head (and for start, the JSON body) of the request being sent.
    head: Vec<u8>,
    body: Body,
    kind: Kind,
    written: usize,
    inbuf: Vec<u8>,
    filled: usize,
    /// Latency is measured from here.
    since: Instant,
    retry_at: Instant,
    session: Session,
}

enum Answer {
    Partial,
    Complete {
        status: u16,
        end: usize,
        body: (usize, usize),
        close: bool,
    },
}

/// Finds a complete answer at the front of `buf`.
fn parse_answer(buf: &[u8]) -> Result<Answer, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 24];
    let mut res = httparse::Response::new(&mut headers);
    let head_len = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Answer::Partial),
        Err(_) => return Err("bad-answer"),
    };
    let status = res.code.unwrap_or(0);
    let mut length = None;
    let mut chunked = false;
    let mut close = res.version == Some(0);
    for h in res.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
            if length.is_none() {
                return Err("bad-answer");
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h.value.eq_ignore_ascii_case(b"chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h.value.eq_ignore_ascii_case(b"close");
        }
    }
    if chunked {
        return Ok(match chunked_end(&buf[head_len..])? {
            Some((end, (data_start, data_end))) => Answer::Complete {
                status,
                end: head_len + end,
                body: (head_len + data_start, head_len + data_end),
                close,
            },
            None => Answer::Partial,
        });
    }
    let length: usize = length.unwrap_or(0);
    let end = head_len.checked_add(length).ok_or("bad-answer")?;
    if end > MAX_ANSWER {
        return Err("answer-too-large");
    }
    Ok(if buf.len() >= end {
        Answer::Complete {
            status,
            end,
            body: (head_len, end),
            close,
        }
    } else {
        Answer::Partial
    })
}

/// A range of a buffer: start, end.
type Span = (usize, usize);

/// End of a chunked body (after the last chunk and an empty trailer), and where its first
/// chunk's data lies: our servers answer in at most one data chunk.
fn chunked_end(buf: &[u8]) -> Result<Option<(usize, Span)>, &'static str> {
    let mut at = 0;
    let mut first_data = None;
    loop {
        let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = &buf[at..at + eol];
        let hex = line.split(|&b| b == b';').next().unwrap_or(line);
        let size = std::str::from_utf8(hex)
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .ok_or("bad-chunk")?;
        at += eol + 2;
        if size == 0 {
            // Trailers are not expected; the empty line ends the body.
            return Ok((buf.len() >= at + 2).then_some((at + 2, first_data.unwrap_or((0, 0)))));
        }
        if size > MAX_ANSWER {
            return Err("answer-too-large");
        }
        first_data.get_or_insert((at, at + size));
        at += size + 2;
        if at > buf.len() {
            return Ok(None);
        }
    }
}

fn token_of(start_answer: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(start_answer).ok()?;
    Some(v.get("token")?.as_str()?.to_owned())
}

pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct ThreadLoop<'p> {
    plan: &'p Plan,
    poll: Poll,
    conns: Vec<Conn>,
    stats: Stats,
    rng: StdRng,
    deadline: Instant,
    /// Open loop: interval between intended sends, the next one, and the ones waiting.
    interval: Option<Duration>,
    next_intended: Instant,
    backlog: VecDeque<Instant>,
    idle: Vec<usize>,
    timer: Option<OwnedFd>,
}

impl<'p> ThreadLoop<'p> {
    fn new(
        plan: &'p Plan,
        conns: usize,
        rate: Option<f64>,
        seed: u64,
        start: Instant,
        deadline: Instant,
    ) -> ThreadLoop<'p> {
        let interval = rate
            .filter(|r| *r > 0.0)
            .map(|r| Duration::from_secs_f64(1.0 / r));
        ThreadLoop {
            plan,
            poll: Poll::new().expect("epoll"),
            conns: (0..conns)
                .map(|_| Conn {
                    stream: None,
                    phase: Phase::Down,
                    head: Vec::with_capacity(1024),
                    body: Body::None,
                    kind: Kind::Fixed,
                    written: 0,
                    inbuf: vec![0; MAX_ANSWER],
                    filled: 0,
                    since: start,
                    retry_at: start,
                    session: Session::default(),
                })
                .collect(),
            stats: Stats::new(),
            rng: StdRng::seed_from_u64(seed),
            deadline,
            interval,
            next_intended: start,
            backlog: VecDeque::new(),
            idle: Vec::new(),
            timer: None,
        }
    }

    fn run(mut self) -> anyhow::Result<Stats> {
        if self.interval.is_some() {
            self.timer = Some(make_timerfd()?);
            let fd = self.timer.as_ref().map_or(-1, |t| t.as_raw_fd());
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), TIMER, Interest::READABLE)?;
        }
        for i in 0..self.conns.len() {
            self.connect(i);
        }
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            if now >= self.deadline {
                break;
            }
            self.schedule(now);
            let wake = self.next_wake(now);
            if let (Some(timer), true) = (&self.timer, wake < self.deadline) {
                arm_timerfd(timer, wake.saturating_duration_since(now));
            }
            // The millisecond timeout is a backstop; the timerfd gives the precise wake-up.
            let timeout = wake
                .saturating_duration_since(now)
                .min(Duration::from_millis(100));
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e.into());
                }
            }
            for ev in events.iter() {
                if ev.token() == TIMER {
                    if let Some(t) = &self.timer {
                        drain_timerfd(t);
                    }
                    continue;
                }
                self.drive(ev.token().0);
            }
        }
        self.stats.backlog_at_end = self.backlog.len() as u64;
        Ok(self.stats)
    }

    /// Open loop: moves due intended sends into the backlog and hands them to idle connections.
    /// Closed loop: restarts connections that came back from being down.
    fn schedule(&mut self, now: Instant) {
        for i in 0..self.conns.len() {
            if self.conns[i].phase == Phase::Down && self.conns[i].retry_at <= now {
                self.connect(i);
            }
        }
        let Some(interval) = self.interval else {
            return;
        };
        while self.next_intended <= now {
            self.backlog.push_back(self.next_intended);
            self.next_intended += interval;
        }
        while !self.backlog.is_empty() {
            let Some(i) = self.idle.pop() else { break };
            if self.conns[i].phase != Phase::Idle {
                continue; // went down since it became idle
            }
            let intended = self.backlog.pop_front().unwrap_or(now);
            self.begin_request(i, intended);
            self.drive(i);
        }
    }

    fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = self.deadline;
        if self.interval.is_some() {
            wake = wake.min(self.next_intended);
        }
        for c in &self.conns {
            if c.phase == Phase::Down {
                wake = wake.min(c.retry_at);
            }
        }
        wake.max(now)
    }

    fn connect(&mut self, i: usize) {
        let c = &mut self.conns[i];
        c.filled = 0;
        match TcpStream::connect(self.plan.addr) {
            Ok(mut stream) => {
                let _ = stream.set_nodelay(true);
                match self.poll.registry().register(
                    &mut stream,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    Ok(()) => {
                        c.stream = Some(stream);
                        c.phase = Phase::Connecting;
                    }
                    Err(_) => self.fail(i, "connect"),
                }
            }
            Err(_) => self.fail(i, "connect"),
        }
    }

    fn fail(&mut self, i: usize, kind: &'static str) {
        self.stats.io_error(kind);
        let c = &mut self.conns[i];
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        // A request lost with its connection is an error, not a latency sample; its session
        // starts again, as a tracker's would after a network error on a new page.
        c.phase = Phase::Down;
        c.retry_at = Instant::now() + RECONNECT_DELAY;
        c.session = Session::default();
    }

    /// A connection is ready for its next request: send it now (closed loop) or wait for the
    /// schedule (open loop).
    fn ready(&mut self, i: usize) {
        self.conns[i].phase = Phase::Idle;
        if self.interval.is_some() {
            if let Some(intended) = self.backlog.pop_front() {
                self.begin_request(i, intended);
            } else {
                self.idle.push(i);
            }
        } else {
            self.begin_request(i, Instant::now());
        }
    }

    fn begin_request(&mut self, i: usize, since: Instant) {
        let plan = self.plan;
        if self.interval.is_some() {
            let late = since.elapsed().as_micros() as u64;
            self.stats.lateness.saturating_record(late.max(1));
        }
        let c = &mut self.conns[i];
        c.since = since;
        c.written = 0;
        c.phase = Phase::Sending;
        c.head.clear();
        c.body = Body::None;
        let mix = match &plan.workload {
            Workload::Fixed { .. } => {
                c.kind = Kind::Fixed;
                return;
            }
            Workload::Mix(mix) => mix,
        };
        if c.session.token.is_none() {
            if let Some(t) = &mix.token {
                c.session.token = Some(t.clone());
            }
        }
        let Some(token) = &c.session.token else {
            c.kind = Kind::Start;
            let body = start_body(&mix.project_key, now_unix_ms());
            let _ = write!(
                c.head,
                "POST {}/v1/web/start HTTP/1.1\r\nHost: {}\r\nUser-Agent: {}\r\n\
                 Origin: https://shop.example.test\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{}",
                mix.prefix,
                mix.host,
                BROWSER_USER_AGENT,
                body.len(),
                body
            );
            return;
        };
        c.kind = Kind::Batch;
        let (body, batch): (Body, &Batch) = if c.session.sent == 0 {
            let n = self.rng.random_range(0..mix.corpus.visual.len());
            (Body::Visual(n), &mix.corpus.visual[n])
        } else {
            let n = self.rng.random_range(0..mix.corpus.rest.len());
            (Body::Rest(n), &mix.corpus.rest[n])
        };
        c.body = body;
        let seq = c.session.sent + 1;
        let _ = write!(
            c.head,
            "POST {}/v1/web/i?batch=0_{}_{}_kyes",
            mix.prefix,
            seq,
            batch.wire.len()
        );
        if let Some(split) = batch.split {
            let _ = write!(c.head, "&split={split}");
        }
        let _ = write!(
            c.head,
            " HTTP/1.1\r\nHost: {}\r\nUser-Agent: {}\r\nOrigin: https://shop.example.test\r\n\
             Authorization: Bearer {}\r\nDataType: {}\r\n{}Content-Length: {}\r\n\r\n",
            mix.host,
            BROWSER_USER_AGENT,
            token,
            batch.data_type.header_value(),
            if batch.gzip {
                "Content-Encoding: gzip\r\n"
            } else {
                ""
            },
            batch.wire.len()
        );
        c.session.sent = seq;
        if c.session.sent >= mix.batches_per_session {
            c.session = Session::default();
        }
    }

    /// Runs connection `i` until the socket would block (the registration is edge-triggered).
    fn drive(&mut self, i: usize) {
        loop {
            match self.conns[i].phase {
                Phase::Down | Phase::Idle => return,
                Phase::Connecting => {
                    let Some(stream) = self.conns[i].stream.as_ref() else {
                        return;
                    };
                    match (stream.take_error(), stream.peer_addr()) {
                        (Ok(None), Ok(_)) => self.ready(i),
                        (Ok(None), Err(e)) if e.kind() == io::ErrorKind::NotConnected => return,
                        _ => return self.fail(i, "connect"),
                    }
                }
                Phase::Sending => match self.send(i) {
                    Ok(true) => self.conns[i].phase = Phase::Receiving,
                    Ok(false) => return,
                    Err(kind) => return self.fail(i, kind),
                },
                Phase::Receiving => match self.receive(i) {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(kind) => return self.fail(i, kind),
                },
            }
        }
    }

    /// Writes what it can; true once the whole request is out.
    fn send(&mut self, i: usize) -> Result<bool, &'static str> {
        let plan = self.plan;
        let c = &mut self.conns[i];
        let (head, body): (&[u8], &[u8]) = match (&plan.workload, c.body) {
            (Workload::Fixed { request, .. }, _) => (request, &[]),
            (Workload::Mix(m), Body::Visual(n)) => (&c.head, &m.corpus.visual[n].wire),
            (Workload::Mix(m), Body::Rest(n)) => (&c.head, &m.corpus.rest[n].wire),
            (Workload::Mix(_), Body::None) => (&c.head, &[]),
        };
        let total = head.len() + body.len();
        let Some(stream) = c.stream.as_mut() else {
            return Err("write");
        };
        while c.written < total {
            let res = if c.written < head.len() {
                stream.write_vectored(&[IoSlice::new(&head[c.written..]), IoSlice::new(body)])
            } else {
                stream.write(&body[c.written - head.len()..])
            };
            match res {
                Ok(0) => return Err("write"),
                Ok(n) => c.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err("write"),
            }
        }
        Ok(true)
    }

    /// Reads what it can; true once an answer was complete and handled (the connection then
    /// has moved on to its next phase).
    fn receive(&mut self, i: usize) -> Result<bool, &'static str> {
        loop {
            let c = &mut self.conns[i];
            match parse_answer(&c.inbuf[..c.filled])? {
                Answer::Complete {
                    status,
                    end,
                    body,
                    close,
                } => {
                    let token = (c.kind == Kind::Start && (200..300).contains(&status))
                        .then(|| token_of(&c.inbuf[body.0..body.1]));
                    c.inbuf.copy_within(end..c.filled, 0);
                    c.filled -= end;
                    self.answered(i, status, token);
                    if close {
                        self.reconnect(i);
                    } else if self.conns[i].phase == Phase::Receiving {
                        self.ready(i);
                    }
                    return Ok(true);
                }
                Answer::Partial => {}
            }
            let Some(stream) = c.stream.as_mut() else {
                return Err("read");
            };
            if c.filled == c.inbuf.len() {
                return Err("answer-too-large");
            }
            match stream.read(&mut c.inbuf[c.filled..]) {
                Ok(0) => return Err("closed"),
                Ok(n) => c.filled += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err("read"),
            }
        }
    }

    fn answered(&mut self, i: usize, status: u16, token: Option<Option<String>>) {
        let now = Instant::now();
        let plan = self.plan;
        let c = &mut self.conns[i];
        let micros = now.saturating_duration_since(c.since).as_micros();
        self.stats
            .latency
            .saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
        *self.stats.by_status.entry(status).or_default() += 1;
        match c.kind {
            Kind::Fixed => {
                if let Workload::Fixed { body_len, .. } = plan.workload {
                    self.stats.body_bytes += body_len as u64;
                }
            }
            Kind::Start => {
                self.stats.starts += 1;
                match token {
                    Some(Some(t)) => c.session.token = Some(t),
                    Some(None) => self.stats.io_error("start-answer-without-token"),
                    None => {}
                }
            }
            Kind::Batch => {
                self.stats.batches += 1;
                if let (Workload::Mix(m), Body::Visual(n) | Body::Rest(n)) =
                    (&plan.workload, c.body)
                {
                    let batch = match c.body {
                        Body::Visual(_) => &m.corpus.visual[n],
                        _ => &m.corpus.rest[n],
                    };
                    self.stats.body_bytes += batch.wire.len() as u64;
                }
                // The tracker's answer to a 401: drop the batch, start again.
                if status == 401 {
                    c.session = Session::default();
                }
            }
        }
    }

    fn reconnect(&mut self, i: usize) {
        if let Some(mut s) = self.conns[i].stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        self.connect(i);
    }
}

fn make_timerfd() -> io::Result<OwnedFd> {
    // SAFETY: timerfd_create takes no pointers; a negative result is checked below.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created by timerfd_create and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn arm_timerfd(timer: &OwnedFd, after: Duration) {
    // A zero it_value disarms a timerfd; a due wake-up gets the shortest non-zero delay.
    let after = after.max(Duration::from_nanos(1));
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: after.as_secs() as libc::time_t,
            tv_nsec: after.subsec_nanos() as libc::c_long,
        },
    };
    // SAFETY: the fd is a live timerfd we own; spec is a valid itimerspec on our stack and the
    // old-value pointer may be null.
    unsafe { libc::timerfd_settime(timer.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
}

fn drain_timerfd(timer: &OwnedFd) {
    let mut expirations = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a buffer of 8 bytes; the fd is a live timerfd.
    unsafe { libc::read(timer.as_raw_fd(), expirations.as_mut_ptr().cast(), 8) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Status, end, body, close.
    type Framed<'a> = Option<(u16, usize, &'a [u8], bool)>;

    #[test]
    fn answers_by_framing() {
        let cases: &[(&[u8], Framed)] = &[
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                Some((200, 38, b"", false)),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}X",
                Some((200, 40, b"{}", false)),
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{", None),
            (b"HTTP/1.1 200 OK\r\nContent-Le", None),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                Some((200, 52, b"", false)),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
                None,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                Some((200, 60, b"abc", false)),
            ),
            (
                b"HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                Some((401, 67, b"", true)),
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
                Some((200, 38, b"", true)),
            ),
        ];
        for (input, want) in cases {
            let got = match parse_answer(input).unwrap() {
                Answer::Partial => None,
                Answer::Complete {
                    status,
                    end,
                    body,
                    close,
                } => Some((status, end, &input[body.0..body.1], close)),
            };
            assert_eq!(got, *want, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn bad_answers_are_errors() {
        for input in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
        ] {
            assert!(
                parse_answer(input).is_err(),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn start_answer_token() {
        assert_eq!(
            token_of(br#"{"token":"a.b.c.d","sessionID":"1"}"#).as_deref(),
            Some("a.b.c.d")
        );
        assert_eq!(token_of(br#"{"sessionID":"1"}"#), None);
        assert_eq!(token_of(b"not json"), None);
    }
}

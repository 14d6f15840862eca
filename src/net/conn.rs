//! One client connection: bytes in, HTTP/1.1 requests out to the routes, answers back.
//!
//! Owned by its worker thread, driven when mio reports readiness (edge-triggered: every drive
//! reads and writes until the socket would block, or until a fairness budget runs out). The state
//! enum says what the next input bytes are: a request head, a body streamed into the log, a body
//! buffered for a handler, a body being dropped, none until a request handed to the preparation
//! pool comes back (`super::prepare`), or nothing (closing). Answers are appended to
//! `out` in request order, so pipelined requests are answered in order, and written with as few
//! `write` calls as the socket allows.

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use super::prepare::Port;
use crate::admin::metrics::{route_index, ROUTES};
use crate::admin::WorkerMetrics;
use crate::http::{
    parse_head, write_error, BodyFraming, ChunkError, ChunkedDecoder, HeadError, ResponseOptions,
    Status, CONTINUE_100, MAX_HEAD_BYTES,
};
use crate::log::{Durability, Reservation};
use crate::routes::{self, Begin, Pending, Route, TokenMemo, WorkerCtx};

/// Size of a connection's input buffer: a whole head (at most 16 KiB) always fits after the
/// unread bytes are moved to the front, and a read takes up to this much at once.
pub const INBUF_SIZE: usize = 32 * 1024;

/// Stop taking requests from a client that does not read its answers once this much is queued:
/// about a hundred answers, and a bound on what a thousand such clients can make a worker hold.
const OUT_HIGH_WATER: usize = 16 * 1024;

/// Reads per drive before other connections get their turn.
const READ_BUDGET: usize = 16;

/// A streamed body at least this large makes the connection read its next head in a short read
/// of [`HEAD_READ`] bytes, so that most of a large body goes from the socket straight into the
/// log rather than through the input buffer and a second copy (32 KiB of a 64 KiB body
/// otherwise: ~9% of the server's CPU at 64 KiB in `bench/RESULTS.md`). Small bodies keep full
/// reads: a head and its body, or many pipelined requests, in one syscall.
const LARGE_BODY: usize = 16 * 1024;
const HEAD_READ: usize = 4096;

/// Requests per drive before other connections get their turn: a client pipelining thousands
/// of requests gets served in slices, not ahead of everyone else.
const REQUEST_BUDGET: u32 = 64;

/// The worker's read buffer, lent to one connection at a time for the length of a drive. A
/// connection keeps only what it has not consumed yet (at most a partial head) in a buffer of
/// its own, so ten thousand idle or trickling connections hold bytes, not buffers.
pub struct ReadBuffer {
    buf: Vec<u8>,
}

impl Default for ReadBuffer {
    fn default() -> Self {
        ReadBuffer {
            buf: vec![0; INBUF_SIZE],
        }
    }
}

/// A connection's remainder or output buffer larger than this is freed once empty: one long
/// head or one burst of pipelined answers must not pin memory for the life of a keep-alive
/// connection.
const REMAINDER_KEEP: usize = 4096;
/// A lingering close (see [`HalfClose`]) reads and drops what the client still sends for at
/// most this long and this much, as nginx's `lingering_time` does, then closes.
const LINGER_TIME: Duration = Duration::from_secs(5);
const LINGER_BYTES: usize = 16 << 20;

/// A socket whose sending side can be shut while its receiving side stays open.
///
/// An answer that closes the connection while the client is still sending (a 413 decided from
/// `Content-Length`, a 400 on a bad head) would be lost if the socket were closed at once: the
/// kernel answers the client's next bytes with a reset, and a client that sends its whole body
/// before reading gets `ECONNRESET` instead of the answer. So the node closes as nginx does: it
/// shuts its sending side once the answer is out (the client sees the end of the answer), then
/// reads and drops what arrives until the client closes, or for [`LINGER_TIME`] and
/// [`LINGER_BYTES`] at most.
pub trait HalfClose {
    /// Sends the end of the stream (FIN); reading stays possible.
    fn shutdown_write(&self) -> io::Result<()>;
}

impl HalfClose for mio::net::TcpStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub head: Duration,
    pub body: Duration,
    pub idle: Duration,
}

/// What a drive lends the connection.
pub struct Env<'a, 'w> {
    pub ctx: &'a mut WorkerCtx<'w>,
    pub rbuf: &'a mut ReadBuffer,
    pub now: Instant,
    pub stopping: bool,
    pub timeouts: Timeouts,
    /// The preparation pool, and this connection's key in the worker's slab (what a prepared
    /// request comes back to). Without a pool (the fuzz target) heavy requests finish inline.
    pub pool: Option<&'a Port>,
    pub key: usize,
}

/// The outcome of a drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Wait for the next readiness event.
    Wait,
    /// The read budget ran out with input possibly left: drive again this turn.
    Again,
    /// Close the connection now.
    Close,
}

/// Where the connection is in the request cycle, for its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Head,
    Body,
    Closing,
    /// The answer is out and the sending side shut: what the client still sends is dropped.
    Lingering,
}

enum BufferFraming {
    Length(u64),
    Chunked(ChunkedDecoder),
}

enum State {
    Head,
    Stream {
        reservation: Reservation,
        pending: Pending,
        keep: bool,
    },
    Buffer {
        pending: Pending,
        body: Vec<u8>,
        framing: BufferFraming,
        keep: bool,
    },
    Discard {
        framing: BufferFraming,
        keep: bool,
    },
    /// The request is with the preparation pool (`ticket` tells its return from a later
    /// connection's in the same slot); no input is taken until it is back.
    Preparing {
        ticket: u64,
        keep: bool,
    },
    /// Back from the pool: the next drive stores and answers it.
    Prepared {
        pending: Pending,
        body: Vec<u8>,
        keep: bool,
    },
    Closing,
}

/// A connection over any byte stream: a mio `TcpStream` in the workers, an in-memory script in
/// the fuzz target.
pub struct Conn<S = TcpStream> {
    socket: S,
    peer: IpAddr,
    state: State,
    /// During a drive, the worker's read buffer; `inbuf[start..end]` holds bytes read and not
    /// yet consumed. Between drives, empty (no allocation).
    inbuf: Vec<u8>,
    /// Unconsumed bytes kept between drives.
    remainder: Vec<u8>,
    start: usize,
    end: usize,
    out: Vec<u8>,
    out_pos: usize,
    phase: Phase,
    deadline: Instant,
    close_after_flush: bool,
    /// Requests begun in the current drive (see REQUEST_BUDGET).
    begun: u32,
    tokens: TokenMemo,
    /// The last streamed body was large (see LARGE_BODY).
    large_bodies: bool,
    /// "fsync" durability: `out[hold..]` answers records that the worker writes back at the
    /// end of this turn; nothing from there on is sent before (answers keep their order).
    sync_hold: Option<usize>,
    /// The request being served: its route's metrics index and when its head was parsed.
    req_route: u8,
    req_started: Instant,
    /// The client closed its sending side (a read returned 0).
    peer_done: bool,
    /// Bytes a lingering close may still drop.
    linger_left: usize,
}

impl<S: Read + Write + HalfClose> Conn<S> {
    pub fn new(socket: S, peer: IpAddr, now: Instant, idle: Duration) -> Conn<S> {
        Conn {
            socket,
            peer,
            state: State::Head,
            inbuf: Vec::new(),
            remainder: Vec::new(),
            start: 0,
            end: 0,
            out: Vec::new(),
            out_pos: 0,
            phase: Phase::Idle,
            deadline: now + idle,
            close_after_flush: false,
            begun: 0,
            tokens: TokenMemo::default(),
            large_bodies: false,
            sync_hold: None,
            req_route: route_index(None),
            req_started: now,
            peer_done: false,
            linger_left: 0,
        }
    }

    /// A request came back from the preparation pool; false when it is not this connection's
    /// (the connection it was for is gone and the slot reused). The next drive finishes it.
    pub fn prepared(&mut self, ticket: u64, pending: Pending, body: Vec<u8>) -> bool {
        let State::Preparing { ticket: ours, keep } = self.state else {
            return false;
        };
        if ticket != ours {
            return false;
        }
        self.state = State::Prepared {
            pending,
            body,
            keep,
        };
        true
    }

    /// Counts the answer written into `out` from `at` on (its status is in its first line).
    fn count_answer(&self, env: &Env<'_, '_>, at: usize) {
        let code = self
            .out
            .get(at + 9..at + 12)
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| digits.parse().ok())
            .unwrap_or(0);
        let elapsed = self.req_started.elapsed();
        let seq = env.ctx.metrics.request(self.req_route, code, elapsed);
        let every = env.ctx.node.config.request_log_every;
        if every != 0 && seq % every == 0 {
            tracing::info!(
                target: "replay_ingest::request",
                route = ROUTES[usize::from(self.req_route)],
                status = code,
                micros = elapsed.as_micros() as u64,
                peer = %self.peer,
                "request"
            );
        }
    }

    /// Answers wait for the worker's flush at the end of this turn ("fsync" durability).
    pub fn awaits_sync(&self) -> bool {
        self.sync_hold.is_some()
    }

    /// The worker's flush is done: the held answers may go (the next drive writes them).
    pub fn synced(&mut self) {
        self.sync_hold = None;
    }

    /// The worker's flush failed: the held answers must not go, since their records may not
    /// be on the device. In their place one 500 that closes the connection; what was pipelined
    /// behind them is dropped unanswered. The client sends it all again, and the records it had
    /// sent stay in the log (at least once). The request metrics keep the 200s they counted
    /// when the answers were written; the writer's error log line is what reports the failure.
    pub fn sync_failed(&mut self, cors: bool) {
        let Some(at) = self.sync_hold.take() else {
            return;
        };
        self.out.truncate(at);
        write_error(
            &mut self.out,
            Status::InternalServerError,
            ResponseOptions::closing(cors),
            "cannot store the request",
        );
        self.start = self.end;
        self.close_after_flush = true;
        self.state = State::Closing;
    }

    /// After a request finished: if it committed records (the log's epoch moved) and they are
    /// to be written back before the answer, hold the answer written from `at` on.
    fn hold_if_stored(&mut self, env: &Env<'_, '_>, epoch: u64, at: usize) {
        let log = &env.ctx.log;
        if log.durability() == Durability::Fsync
            && log.commit_epoch() != epoch
            && self.sync_hold.is_none()
        {
            self.sync_hold = Some(at);
        }
    }

    pub fn socket(&mut self) -> &mut S {
        &mut self.socket
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Idle between requests, nothing buffered: safe to close at shutdown.
    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Idle && self.remainder.is_empty() && self.out_pos == self.out.len()
    }

    /// Which connection to close to make room at the connection cap, lowest first: idle
    /// keep-alive connections, least recently used first, then connections still sending a head,
    /// slowest first. A connection mid-body or answering is never chosen: it is doing real work.
    pub fn eviction_rank(&self) -> Option<(u8, Instant)> {
        match self.phase {
            Phase::Idle if self.out_pos == self.out.len() => Some((0, self.deadline)),
            // Its answer is out: nothing of value is lost by closing it now.
            Phase::Lingering => Some((0, self.deadline)),
            Phase::Head => Some((1, self.deadline)),
            _ => None,
        }
    }

    pub fn drive(&mut self, env: &mut Env<'_, '_>) -> Step {
        // Borrow the worker's read buffer, with what was left unconsumed last time in front.
        self.inbuf = std::mem::take(&mut env.rbuf.buf);
        self.start = 0;
        self.end = self.remainder.len();
        self.inbuf[..self.end].copy_from_slice(&self.remainder);
        self.remainder.clear();
        self.begun = 0;
        let step = self.drive_reads(env);
        self.remainder
            .extend_from_slice(&self.inbuf[self.start..self.end]);
        if self.remainder.is_empty() && self.remainder.capacity() > REMAINDER_KEEP {
            self.remainder = Vec::new();
        }
        if self.out.is_empty() && self.out.capacity() > REMAINDER_KEEP {
            self.out = Vec::new();
        }
        env.rbuf.buf = std::mem::take(&mut self.inbuf);
        step
    }

    fn drive_reads(&mut self, env: &mut Env<'_, '_>) -> Step {
        if self.phase == Phase::Lingering {
            return self.drop_input();
        }
        let mut reads = 0;
        loop {
            // Whatever was read is processed before the budget can end the drive, so that
            // between drives a connection keeps at most a partial head.
            let held_back = self.process(env);
            if self.flush().is_err() {
                return Step::Close;
            }
            let queued = self.out.len() - self.out_pos;
            if self.close_after_flush {
                return if queued == 0 {
                    self.linger(env)
                } else {
                    Step::Wait
                };
            }
            if queued > OUT_HIGH_WATER || matches!(self.state, State::Preparing { .. }) {
                return Step::Wait;
            }
            if self.begun >= REQUEST_BUDGET || reads == READ_BUDGET {
                return Step::Again;
            }
            if held_back {
                // Requests waited for answers to drain, and they have: take them first.
                continue;
            }
            reads += 1;
            match self.fill() {
                Ok(0) => {
                    // The peer is done sending. Answer what it asked, then close; a request
                    // cut short can never complete.
                    self.peer_done = true;
                    self.close_after_flush = true;
                    if !matches!(self.state, State::Head) || self.start != self.end {
                        self.state = State::Closing;
                        return Step::Close;
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Step::Close,
            }
        }
    }

    /// The answer is out and the connection must close: at once if the client has stopped
    /// sending, else after a lingering close (see [`HalfClose`]).
    fn linger(&mut self, env: &Env<'_, '_>) -> Step {
        if self.peer_done || self.socket.shutdown_write().is_err() {
            return Step::Close;
        }
        self.phase = Phase::Lingering;
        self.deadline = env.now + LINGER_TIME;
        self.linger_left = LINGER_BYTES;
        self.drop_input()
    }

    /// Lingering: reads and drops input until the client closes, the byte allowance is spent,
    /// or (the worker's sweep) the deadline passes.
    fn drop_input(&mut self) -> Step {
        self.start = self.end;
        loop {
            match self.socket.read(&mut self.inbuf[..]) {
                Ok(0) => return Step::Close,
                Ok(n) if n >= self.linger_left => return Step::Close,
                Ok(n) => self.linger_left -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Step::Close,
            }
        }
    }

    /// Reads what the socket has: straight into the log when a streamed body is waiting for
    /// bytes and none are buffered, else into the input buffer.
    fn fill(&mut self) -> io::Result<usize> {
        if let State::Stream { reservation, .. } = &mut self.state {
            if self.start == self.end {
                let n = self.socket.read(reservation.unfilled())?;
                reservation.advance(n);
                return Ok(n);
            }
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.inbuf.len() || self.start > INBUF_SIZE / 2 {
            self.inbuf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.inbuf.len() {
            // Cannot happen: heads are at most half the buffer and bodies are drained before
            // reading again. A read of zero bytes would look like EOF, so refuse loudly.
            return Err(io::Error::other("input buffer full"));
        }
        let room = if self.large_bodies && self.start == self.end {
            HEAD_READ
        } else {
            self.inbuf.len() - self.end
        };
        let n = self
            .socket
            .read(&mut self.inbuf[self.end..self.end + room])?;
        self.end += n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        let limit = self.sync_hold.unwrap_or(self.out.len());
        while self.out_pos < limit {
            match self.socket.write(&self.out[self.out_pos..limit]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.out_pos == self.out.len() && self.sync_hold.is_none() {
            self.out.clear();
            self.out_pos = 0;
        }
        Ok(())
    }

    /// Consumes buffered input: heads, then bodies, request after request.
    /// Returns true when it stopped with requests left: too many answers queued, or this
    /// drive's request budget spent.
    fn process(&mut self, env: &mut Env<'_, '_>) -> bool {
        loop {
            if self.out.len() - self.out_pos > OUT_HIGH_WATER || self.begun >= REQUEST_BUDGET {
                return self.start != self.end;
            }
            let state = std::mem::replace(&mut self.state, State::Closing);
            self.state = match state {
                State::Head => {
                    if self.start == self.end {
                        self.state = State::Head;
                        return false;
                    }
                    match self.start_request(env) {
                        Some(next) => next,
                        None => {
                            if self.phase == Phase::Idle {
                                self.enter(Phase::Head, env);
                            }
                            self.state = State::Head;
                            return false;
                        }
                    }
                }
                State::Stream {
                    mut reservation,
                    mut pending,
                    keep,
                } => {
                    let buffered = &self.inbuf[self.start..self.end];
                    let dst = reservation.unfilled();
                    let n = buffered.len().min(dst.len());
                    dst[..n].copy_from_slice(&buffered[..n]);
                    reservation.advance(n);
                    self.start += n;
                    if !reservation.is_complete() {
                        self.state = State::Stream {
                            reservation,
                            pending,
                            keep,
                        };
                        return false;
                    }
                    let keep = keep && !env.stopping;
                    if !keep {
                        pending.close_after();
                    }
                    let (epoch, at) = (env.ctx.log.commit_epoch(), self.out.len());
                    WorkerMetrics::add(&env.ctx.metrics.body_bytes, reservation.len() as u64);
                    routes::finish_stream(reservation, pending, &mut self.out);
                    self.count_answer(env, at);
                    self.hold_if_stored(env, epoch, at);
                    self.request_done(keep, env)
                }
                State::Buffer {
                    pending,
                    mut body,
                    mut framing,
                    keep,
                } => match self.take_body(&mut framing, &mut body) {
                    Ok(true) => {
                        WorkerMetrics::add(&env.ctx.metrics.body_bytes, body.len() as u64);
                        match env.pool.filter(|_| routes::is_heavy(env.ctx, &pending)) {
                            Some(pool) => match pool.submit(env.key, pending, body) {
                                Ok(ticket) => {
                                    WorkerMetrics::add(&env.ctx.metrics.prepared_off_loop, 1);
                                    self.state = State::Preparing { ticket, keep };
                                    return false;
                                }
                                Err((pending, body)) => {
                                    WorkerMetrics::add(&env.ctx.metrics.prepared_inline, 1);
                                    self.finish_buffered(env, pending, &body, keep)
                                }
                            },
                            None => self.finish_buffered(env, pending, &body, keep),
                        }
                    }
                    Ok(false) => {
                        self.state = State::Buffer {
                            pending,
                            body,
                            framing,
                            keep,
                        };
                        return false;
                    }
                    Err(e) => self.refuse_body(e, pending.opts(), env),
                },
                State::Discard { mut framing, keep } => {
                    let mut sink = std::mem::take(env.ctx.scratch);
                    let taken = self.take_body(&mut framing, &mut sink);
                    sink.clear();
                    *env.ctx.scratch = sink;
                    match taken {
                        Ok(true) => self.request_done(keep, env),
                        Ok(false) => {
                            self.state = State::Discard { framing, keep };
                            return false;
                        }
                        Err(_) => {
                            self.close_after_flush = true;
                            State::Closing
                        }
                    }
                }
                State::Preparing { ticket, keep } => {
                    self.state = State::Preparing { ticket, keep };
                    return false;
                }
                State::Prepared {
                    pending,
                    body,
                    keep,
                } => self.finish_buffered(env, pending, &body, keep),
                State::Closing => {
                    self.start = self.end;
                    self.state = State::Closing;
                    return false;
                }
            };
        }
    }

    /// A buffered request is complete (and prepared, if it went to the pool): store, answer.
    fn finish_buffered(
        &mut self,
        env: &mut Env<'_, '_>,
        mut pending: Pending,
        body: &[u8],
        keep: bool,
    ) -> State {
        let keep = keep && !env.stopping;
        if !keep {
            pending.close_after();
        }
        let (epoch, at) = (env.ctx.log.commit_epoch(), self.out.len());
        routes::finish_buffered(env.ctx, pending, body, &mut self.out);
        self.count_answer(env, at);
        self.hold_if_stored(env, epoch, at);
        self.request_done(keep, env)
    }

    /// Parses a head from the buffer and begins its request. None: the head is incomplete.
    fn start_request(&mut self, env: &mut Env<'_, '_>) -> Option<State> {
        let buffered = &self.inbuf[self.start..self.end];
        let head = match parse_head(buffered) {
            Ok(Some(head)) => head,
            Ok(None) => return None,
            Err(e) => return Some(self.refuse_head(e, env)),
        };
        self.begun += 1;
        self.req_route = route_index(Route::resolve(head.path.get(buffered)));
        self.req_started = Instant::now();
        let answer_at = self.out.len();
        let keep = head.keep_alive && !env.stopping;
        let begin = routes::begin(
            env.ctx,
            &head,
            buffered,
            self.peer,
            keep,
            &mut self.tokens,
            &mut self.out,
        );
        self.start += head.head_len;
        let framing = match head.framing {
            BodyFraming::None | BodyFraming::Length(0) => None,
            BodyFraming::Length(n) => Some(BufferFraming::Length(n)),
            BodyFraming::Chunked => Some(BufferFraming::Chunked(ChunkedDecoder::new(u64::MAX))),
        };
        let continue_body = |out: &mut Vec<u8>| {
            if head.expect_continue {
                out.extend_from_slice(CONTINUE_100);
            }
        };
        if matches!(
            begin,
            Begin::Answered | Begin::AnsweredClose | Begin::AnsweredSkipBody
        ) {
            self.count_answer(env, answer_at);
        }
        let next = match begin {
            Begin::Answered => return Some(self.request_done(keep, env)),
            Begin::AnsweredClose => {
                self.close_after_flush = true;
                State::Closing
            }
            Begin::AnsweredSkipBody => match framing {
                None => return Some(self.request_done(keep, env)),
                // The client waits for a 100 it will not get: it may or may not send the
                // body, so the connection cannot be reused.
                Some(_) if head.expect_continue => {
                    self.close_after_flush = true;
                    State::Closing
                }
                Some(framing) => State::Discard { framing, keep },
            },
            Begin::Stream(reservation, pending) => {
                continue_body(&mut self.out);
                self.large_bodies = reservation.len() >= LARGE_BODY;
                State::Stream {
                    reservation,
                    pending,
                    keep,
                }
            }
            Begin::Buffer { pending, limit } => {
                continue_body(&mut self.out);
                let framing = match head.framing {
                    BodyFraming::Chunked => BufferFraming::Chunked(ChunkedDecoder::new(limit)),
                    BodyFraming::Length(n) => BufferFraming::Length(n),
                    BodyFraming::None => BufferFraming::Length(0),
                };
                State::Buffer {
                    pending,
                    body: Vec::new(),
                    framing,
                    keep,
                }
            }
        };
        self.enter(Phase::Body, env);
        Some(next)
    }

    /// Moves buffered input into `body` per its framing; true when the body is complete.
    fn take_body(
        &mut self,
        framing: &mut BufferFraming,
        body: &mut Vec<u8>,
    ) -> Result<bool, ChunkError> {
        let buffered = &self.inbuf[self.start..self.end];
        match framing {
            BufferFraming::Length(remaining) => {
                let n = buffered
                    .len()
                    .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                body.extend_from_slice(&buffered[..n]);
                self.start += n;
                *remaining -= n as u64;
                Ok(*remaining == 0)
            }
            BufferFraming::Chunked(decoder) => {
                let consumed = decoder.decode(buffered, body)?;
                self.start += consumed;
                Ok(decoder.is_done())
            }
        }
    }

    fn refuse_head(&mut self, e: HeadError, env: &Env<'_, '_>) -> State {
        let opts = ResponseOptions::closing(env.ctx.node.live.use_cors());
        let at = self.out.len();
        write_error(&mut self.out, e.status(), opts, e.message());
        self.req_route = route_index(None);
        self.count_answer(env, at);
        self.start = self.end;
        self.close_after_flush = true;
        State::Closing
    }

    fn refuse_body(&mut self, e: ChunkError, opts: ResponseOptions, env: &Env<'_, '_>) -> State {
        let opts = ResponseOptions {
            keep_alive: false,
            ..opts
        };
        let at = self.out.len();
        match e {
            ChunkError::TooLarge => write_error(
                &mut self.out,
                Status::PayloadTooLarge,
                opts,
                "request body too large",
            ),
            ChunkError::Malformed | ChunkError::Overflow => write_error(
                &mut self.out,
                Status::BadRequest,
                opts,
                "malformed chunked body",
            ),
        }
        self.count_answer(env, at);
        self.start = self.end;
        self.close_after_flush = true;
        State::Closing
    }

    fn request_done(&mut self, keep: bool, env: &Env<'_, '_>) -> State {
        if keep {
            self.enter(Phase::Idle, env);
            State::Head
        } else {
            self.close_after_flush = true;
            self.enter(Phase::Closing, env);
            State::Closing
        }
    }

    fn enter(&mut self, phase: Phase, env: &Env<'_, '_>) {
        self.phase = phase;
        let t = env.timeouts;
        self.deadline = env.now
            + match phase {
                Phase::Idle => t.idle,
                Phase::Head => t.head,
                Phase::Body | Phase::Closing => t.body,
                Phase::Lingering => LINGER_TIME,
            };
    }

    /// The deadline passed: a client that was mid-request is told so (best effort), then closed.
    pub fn time_out(&mut self, cors: bool) {
        if matches!(self.phase, Phase::Head | Phase::Body) && self.out_pos == self.out.len() {
            let opts = ResponseOptions::closing(cors);
            write_error(
                &mut self.out,
                Status::RequestTimeout,
                opts,
                "request timed out",
            );
            let _ = self.flush();
        }
    }
}

#[allow(dead_code)]
const _: () = assert!(MAX_HEAD_BYTES <= INBUF_SIZE / 2);

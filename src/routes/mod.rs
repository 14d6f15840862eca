//! Routes: what each endpoint of the OpenReplay ingest protocol does with a request.
//!
//! A worker's connection parses a request head and calls [`begin`], which resolves the route,
//! checks method, size limits and the session token, and decides how the body is taken in:
//! straight into the log (a plain `Content-Length` batch), into a buffer (JSON, gzip, chunked,
//! `visual` and multipart bodies), dropped, or not at all. When the body is complete the
//! connection calls [`finish_stream`] or [`finish_buffered`], which stores records and writes the
//! answer. Runs on the worker threads; [`NodeState`] is shared read-only between them.
//!
//! The batch path (`/i`, `late`) allocates nothing: the head is a `Copy` struct of offsets, the
//! token is verified in place, and the answer is a canned byte string.

mod images;
mod mobile;
mod web;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::admin::logs::Repeated;
use crate::admin::{Health, Metrics, WorkerMetrics};
use crate::config::{Config, LiveSettings};
use crate::flake::SessionIdGenerator;
use crate::geo::GeoDb;
use crate::http::{
    inflate_capped, inflate_to_vec, parse_form, write_empty, write_error, write_json,
    write_preflight, BodyFraming, InflateError, Method, MultipartError, Part, RequestHead,
    ResponseOptions, Status,
};
use crate::log::{RecordKind, RecordMeta, Reservation, SegmentWriter};
use crate::project::{Catalog, Lookup, Project};
use crate::token::{SessionToken, TokenError, TokenSigner};
use crate::useragent::{AgentCache, UserAgentInfo, UserAgentParser};

pub use web::SessionTable;

/// Everything the routes share, read-only but for the session table.
pub struct NodeState {
    pub config: Config,
    /// The settings SIGHUP changes (limits, CORS); `config` keeps the values at start.
    pub live: LiveSettings,
    pub projects: Arc<Catalog>,
    pub signer: TokenSigner,
    pub ids: SessionIdGenerator,
    pub user_agents: UserAgentParser,
    pub geo: Option<GeoDb>,
    pub sessions: SessionTable,
    pub health: Health,
    /// The workers' counters, summed at each scrape.
    pub metrics: Metrics,
}

impl NodeState {
    pub fn new(
        config: Config,
        projects: Arc<Catalog>,
        secret: &[u8],
        geo: Option<GeoDb>,
        health: Health,
    ) -> Arc<NodeState> {
        Arc::new(NodeState {
            live: LiveSettings::new(&config),
            metrics: Metrics::new(config.workers),
            ids: SessionIdGenerator::new(config.shard),
            signer: TokenSigner::new(secret),
            user_agents: UserAgentParser::new(),
            sessions: SessionTable::default(),
            config,
            projects,
            geo,
            health,
        })
    }
}

impl NodeState {
    /// Decoded bytes accepted on the batch routes: what any start answer allowed.
    pub fn batch_limit(&self) -> u64 {
        self.live
            .batch_size_limit()
            .max(self.projects.max_beacon_size_limit())
    }

    /// The beacon size limit a project's trackers are told.
    pub fn beacon_size_limit(&self, project: &Project) -> u64 {
        project
            .beacon_size_limit
            .unwrap_or(self.live.beacon_size_limit())
    }
}

/// What a worker lends a request: its log and reusable buffers.
pub struct WorkerCtx<'a> {
    pub node: &'a NodeState,
    /// This worker's counters.
    pub metrics: &'a WorkerMetrics,
    pub log: &'a mut SegmentWriter,
    /// Scratch for gzip-decoded bodies that must be split or parsed.
    pub scratch: &'a mut Vec<u8>,
    /// The user agents this worker has parsed.
    pub agents: &'a mut AgentCache,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Health,
    HealthLive,
    HealthReady,
    WebStart,
    WebBatch,
    WebNotStarted,
    WebFeatureFlags,
    WebTags,
    WebConditions(u64),
    WebImages,
    MobileStart,
    MobileBatch,
    MobileLate,
    MobileImages,
}

impl Route {
    /// Maps a request path to its route; every route is also served under `/ingest`.
    pub fn resolve(path: &[u8]) -> Option<Route> {
        let path = path.strip_prefix(b"/ingest").unwrap_or(path);
        let route = match path {
            b"/" | b"" => Route::Health,
            b"/health/live" => Route::HealthLive,
            b"/health/ready" => Route::HealthReady,
            b"/v1/web/start" => Route::WebStart,
            b"/v1/web/i" => Route::WebBatch,
            b"/v1/web/not-started" => Route::WebNotStarted,
            b"/v1/web/feature-flags" => Route::WebFeatureFlags,
            b"/v1/web/tags" => Route::WebTags,
            b"/v1/web/images" => Route::WebImages,
            b"/v1/ios/start" | b"/v1/mobile/start" => Route::MobileStart,
            b"/v1/ios/i" | b"/v1/ios/append" | b"/v1/mobile/i" => Route::MobileBatch,
            b"/v1/ios/late" | b"/v1/mobile/late" => Route::MobileLate,
            b"/v1/ios/images" | b"/v1/mobile/images" => Route::MobileImages,
            other => {
                let id = other.strip_prefix(b"/v1/web/conditions/")?;
                Route::WebConditions(parse_decimal(id)?)
            }
        };
        Some(route)
    }

    fn method(self) -> Method {
        match self {
            Route::Health
            | Route::HealthLive
            | Route::HealthReady
            | Route::WebTags
            | Route::WebConditions(_) => Method::Get,
            _ => Method::Post,
        }
    }

    /// Wire bytes accepted in a body.
    fn body_limit(self, node: &NodeState) -> u64 {
        let c = &node.live;
        match self {
            Route::WebBatch | Route::MobileBatch | Route::MobileLate => node.batch_limit(),
            Route::WebImages | Route::MobileImages => c.file_size_limit(),
            Route::Health
            | Route::HealthLive
            | Route::HealthReady
            | Route::WebTags
            | Route::WebConditions(_) => 0,
            Route::WebStart
            | Route::MobileStart
            | Route::WebNotStarted
            | Route::WebFeatureFlags => c.json_size_limit(),
        }
    }

    fn needs_token(self) -> bool {
        !matches!(
            self,
            Route::Health
                | Route::HealthLive
                | Route::HealthReady
                | Route::WebStart
                | Route::MobileStart
                | Route::WebNotStarted
        )
    }
}

fn parse_decimal(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 20 {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// How the tracker labelled a web batch (`DataType` header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    /// player, devtools, analytics, or no header (protocol version 1): the `raw` topic.
    Raw,
    /// assets: the `raw-assets` topic.
    Assets,
    /// a player batch and an assets batch concatenated, split at `split`.
    Visual,
}

impl DataType {
    fn from_header(value: Option<&[u8]>) -> DataType {
        match value.map(|v| v.trim_ascii()) {
            Some(v) if v.eq_ignore_ascii_case(b"assets") => DataType::Assets,
            Some(v) if v.eq_ignore_ascii_case(b"visual") => DataType::Visual,
            _ => DataType::Raw,
        }
    }
}

/// Owned copies of the head fields the start, images and not-started routes use after the
/// body has arrived (the head's bytes may be gone by then). Rare routes: an allocation is fine.
#[derive(Debug, Default)]
pub struct ClientInfo {
    pub user_agent: String,
    pub ip: Option<IpAddr>,
    pub content_type: Vec<u8>,
}

/// What a request needs once its body is complete.
#[derive(Debug)]
pub struct Pending {
    route: Route,
    opts: ResponseOptions,
    token: Option<SessionToken>,
    /// The token expired less than 30 s ago: store, then answer 401.
    just_expired: bool,
    gzip: bool,
    data_type: DataType,
    split: Option<usize>,
    client: Option<Box<ClientInfo>>,
    /// What [`prepare`] did off the worker's loop, when it ran.
    prepared: Option<Box<Prepared>>,
}

/// The heavy part of finishing a request, done by [`prepare`] on a preparation thread. The
/// handlers take each piece from here when it is present and do it themselves when not, so a
/// request finishes the same whether or not it was prepared.
#[derive(Debug, Default)]
struct Prepared {
    /// The body did not decode: the answer.
    refused: Option<Reject>,
    /// The start's user agent, parsed.
    agent: Option<Option<UserAgentInfo>>,
    /// The upload's form, parsed.
    form: Option<Result<Vec<Part<'static>>, MultipartError>>,
}

impl Pending {
    pub fn opts(&self) -> ResponseOptions {
        self.opts
    }

    /// The node began shutting down while the body arrived: the answer says the connection closes.
    pub fn close_after(&mut self) {
        self.opts.keep_alive = false;
    }

    fn user_agent(&self) -> &str {
        self.client.as_ref().map_or("", |c| c.user_agent.as_str())
    }

    fn content_type(&self) -> &[u8] {
        self.client
            .as_ref()
            .map_or(&[][..], |c| &c.content_type[..])
    }
}

/// True when finishing this buffered request takes heavy work that should not hold up the
/// worker's other connections: a gzip body to inflate (0.5-1.5 ms for the tracker's large
/// batches), a multipart form to parse, or a start whose user agent this worker has not parsed
/// before (see [`AgentCache`]). Such a request goes to [`prepare`] on a preparation thread.
pub fn is_heavy(ctx: &WorkerCtx<'_>, pending: &Pending) -> bool {
    pending.gzip
        || match pending.route {
            Route::WebImages | Route::MobileImages => true,
            Route::WebStart | Route::WebNotStarted => {
                ctx.agents.get(pending.user_agent()).is_none()
            }
            _ => false,
        }
}

/// The decoded bytes a gzip body of `route` may inflate to; None where the route keeps the body
/// as sent.
fn decoded_limit(node: &NodeState, route: Route) -> Option<u64> {
    match route {
        Route::WebBatch | Route::MobileBatch | Route::MobileLate => Some(node.batch_limit()),
        Route::WebStart | Route::MobileStart | Route::WebNotStarted | Route::WebFeatureFlags => {
            Some(node.live.json_size_limit())
        }
        _ => None,
    }
}

/// Does the heavy part of a buffered request (see [`is_heavy`]) without the worker: inflates a
/// gzip body under the same decoded cap as the worker would (a gzip bomb is still refused, 413,
/// and nothing is stored), parses the start's user agent or the upload's form. Returns the
/// request as [`finish_buffered`] takes it: the body decoded and no longer marked gzip. Touches
/// neither the log nor the session table; runs on a preparation thread.
pub fn prepare(node: &NodeState, mut pending: Pending, mut body: Vec<u8>) -> (Pending, Vec<u8>) {
    let mut prepared = Prepared::default();
    if let (true, Some(limit)) = (pending.gzip, decoded_limit(node, pending.route)) {
        match inflate_to_vec(&body, limit as usize) {
            Ok(decoded) => {
                body = decoded;
                pending.gzip = false;
            }
            Err(e) => prepared.refused = Some(Reject::from(e)),
        }
    }
    if prepared.refused.is_none() {
        match pending.route {
            Route::WebStart | Route::WebNotStarted => {
                prepared.agent = Some(node.user_agents.parse(pending.user_agent()));
            }
            Route::WebImages | Route::MobileImages => {
                prepared.form = Some(parse_form(pending.content_type(), &body));
            }
            _ => {}
        }
    }
    pending.prepared = Some(Box::new(prepared));
    (pending, body)
}

/// The start's user agent, parsed: by [`prepare`], or from this worker's cache, or now.
fn user_agent_info(ctx: &mut WorkerCtx<'_>, p: &Pending) -> Option<UserAgentInfo> {
    let agent = p.user_agent();
    match p.prepared.as_ref().and_then(|x| x.agent.as_ref()) {
        Some(info) => {
            ctx.agents.insert(agent, info.clone());
            info.clone()
        }
        None => ctx.agents.parse(&ctx.node.user_agents, agent),
    }
}

/// How the connection is to take in the body, decided from the head.
pub enum Begin {
    /// An answer is written and no body follows.
    Answered,
    /// An answer is written; a body may follow, which must be dropped (or the connection closed).
    AnsweredSkipBody,
    /// An answer is written and the connection must close after it.
    AnsweredClose,
    /// Read exactly `len` body bytes straight into the log, then call [`finish_stream`].
    Stream(Reservation, Pending),
    /// Read the whole body into a buffer (at most `limit` decoded bytes), then call [`finish_buffered`].
    Buffer { pending: Pending, limit: u64 },
}

/// The client's address as OpenReplay takes it (first X-Forwarded-For entry, X-Real-IP, peer).
fn client_ip(head: &RequestHead, buf: &[u8], peer: IpAddr) -> IpAddr {
    crate::geo::client_ip(
        head.forwarded_for.map(|s| s.get(buf)),
        head.real_ip.map(|s| s.get(buf)),
        peer,
    )
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn error(out: &mut Vec<u8>, status: Status, opts: ResponseOptions, message: &str) -> Begin {
    write_error(out, status, opts, message);
    Begin::AnsweredSkipBody
}

/// Decides what to do with a request from its head. `buf` is the buffer the head's spans point
/// into; `keep_alive` is false when the connection is going to close anyway (shutdown); `memo`
/// is the connection's last verified token.
pub fn begin(
    ctx: &mut WorkerCtx<'_>,
    head: &RequestHead,
    buf: &[u8],
    peer: IpAddr,
    keep_alive: bool,
    memo: &mut TokenMemo,
    out: &mut Vec<u8>,
) -> Begin {
    let node = ctx.node;
    let route = Route::resolve(head.path.get(buf));
    // Answers sent once the body is in.
    let allow_get = route.is_some_and(|r| r.method() == Method::Get);
    let mut opts = ResponseOptions::for_request(head, node.live.use_cors(), allow_get);
    opts.keep_alive &= keep_alive;
    // Answers sent before the body: a client waiting for `100 Continue` may or may not send the
    // body now, so the connection cannot be reused, and the answer says so.
    let early = ResponseOptions {
        keep_alive: opts.keep_alive && !head.expect_continue,
        ..opts
    };
    let Some(route) = route else {
        return error(out, Status::NotFound, early, "not found");
    };
    let probe = matches!(
        route,
        Route::Health | Route::HealthLive | Route::HealthReady
    );
    if head.method == Method::Options && !probe {
        write_preflight(out, early);
        return Begin::AnsweredSkipBody;
    }
    // Load balancers probe health with HEAD as often as with GET.
    let health_head = probe && head.method == Method::Head;
    if head.method != route.method() && !health_head {
        return error(out, Status::MethodNotAllowed, early, "method not allowed");
    }
    if probe {
        let answer = match route {
            Route::HealthLive => Some(node.health.live()),
            Route::HealthReady => Some(node.health.ready()),
            _ => None,
        };
        match answer {
            Some((ok, body)) => {
                let status = if ok {
                    Status::Ok
                } else {
                    Status::ServiceUnavailable
                };
                write_json(out, status, early, &body);
            }
            None => write_empty(out, Status::Ok, early),
        }
        return Begin::AnsweredSkipBody;
    }

    let limit = route.body_limit(node);
    if let BodyFraming::Length(len) = head.framing {
        if len > limit && limit > 0 {
            opts.keep_alive = false;
            write_error(out, Status::PayloadTooLarge, opts, "request body too large");
            return Begin::AnsweredClose;
        }
    }

    let mut token = None;
    let mut just_expired = false;
    if route.needs_token() {
        let now = now_ms();
        match verify_bearer(&node.signer, memo, head.authorization.map(|s| s.get(buf))) {
            Ok(t) if !t.is_expired(now) => token = Some(t),
            Ok(t) if route == Route::MobileLate => token = Some(t),
            Ok(t) if t.is_just_expired(now) && is_batch(route) => {
                token = Some(t);
                just_expired = true;
            }
            Ok(_) => return error(out, Status::Unauthorized, early, "token expired"),
            Err(e) => return error(out, Status::Unauthorized, early, e.message()),
        }
    }

    match route {
        Route::WebTags => {
            web::tags(ctx, token, early, out);
            return Begin::AnsweredSkipBody;
        }
        Route::WebConditions(project_id) => {
            web::conditions(ctx, project_id, early, out);
            return Begin::AnsweredSkipBody;
        }
        _ => {}
    }

    let data_type = if route == Route::WebBatch {
        DataType::from_header(head.data_type.map(|s| s.get(buf)))
    } else {
        DataType::Raw
    };
    let split = if data_type == DataType::Visual {
        match query_param(head.query.map(|s| s.get(buf)), b"split").and_then(parse_decimal) {
            Some(split) if split > 0 => Some(split as usize),
            _ => return error(out, Status::BadRequest, early, "bad split"),
        }
    } else {
        None
    };
    let client = match route {
        Route::WebStart
        | Route::MobileStart
        | Route::WebNotStarted
        | Route::WebImages
        | Route::MobileImages
        | Route::WebFeatureFlags => Some(Box::new(ClientInfo {
            user_agent: head
                .user_agent
                .map(|s| String::from_utf8_lossy(s.get(buf)).into_owned())
                .unwrap_or_default(),
            ip: Some(client_ip(head, buf, peer)),
            content_type: head
                .content_type
                .map(|s| s.get(buf).to_vec())
                .unwrap_or_default(),
        })),
        _ => None,
    };
    let pending = Pending {
        route,
        opts,
        token,
        just_expired,
        gzip: head.gzip,
        data_type,
        split,
        client,
        prepared: None,
    };

    match head.framing {
        BodyFraming::None | BodyFraming::Length(0) => {
            write_error(out, Status::BadRequest, opts, "empty request body");
            Begin::Answered
        }
        // The hot path: a plain batch of known length goes from the socket into the log.
        BodyFraming::Length(len)
            if is_batch(route) && !head.gzip && data_type != DataType::Visual =>
        {
            let meta = batch_meta(route, data_type, token);
            match ctx.log.reserve(meta, b"", len as usize) {
                Ok(reservation) => Begin::Stream(reservation, pending),
                Err(e) => {
                    let Reject(status, message) = Reject::from(e);
                    opts.keep_alive = false;
                    write_error(out, status, opts, message);
                    Begin::AnsweredClose
                }
            }
        }
        BodyFraming::Length(_) | BodyFraming::Chunked => Begin::Buffer { pending, limit },
    }
}

fn is_batch(route: Route) -> bool {
    matches!(
        route,
        Route::WebBatch | Route::MobileBatch | Route::MobileLate
    )
}

fn batch_meta(route: Route, data_type: DataType, token: Option<SessionToken>) -> RecordMeta {
    let kind = match (route, data_type) {
        (Route::WebBatch, DataType::Assets) => RecordKind::WebAssetsBatch,
        (Route::WebBatch, _) => RecordKind::WebBatch,
        _ => RecordKind::MobileBatch,
    };
    RecordMeta {
        session_id: token.map_or(0, |t| t.session_id),
        arrival_unix_ns: now_ns(),
        kind,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BearerError {
    Missing,
    Token(TokenError),
}

impl BearerError {
    fn message(self) -> &'static str {
        match self {
            BearerError::Missing => "missing authorization token",
            BearerError::Token(TokenError::Malformed) => "malformed token",
            BearerError::Token(TokenError::BadSignature) => "bad token signature",
        }
    }
}

fn verify_bearer(
    signer: &TokenSigner,
    memo: &mut TokenMemo,
    value: Option<&[u8]>,
) -> Result<SessionToken, BearerError> {
    let value = value.ok_or(BearerError::Missing)?.trim_ascii();
    let token = match value.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => value[7..].trim_ascii(),
        _ => return Err(BearerError::Missing),
    };
    memo.verify(signer, token).map_err(BearerError::Token)
}

/// The last token whose signature verified on a connection. A tracker sends the same token with
/// every batch of a session, and its HMAC costs about 2 µs, a fifth of handling a 1 KiB batch.
/// Only the signature is remembered: expiry is checked on every request. A match is the exact
/// bytes that verified before on this same connection, so the comparison reveals nothing that
/// its own client did not send.
#[derive(Default)]
pub struct TokenMemo {
    bytes: Vec<u8>,
    token: Option<SessionToken>,
}

/// Real tokens are about 70 bytes; longer ones are verified every time rather than kept.
const TOKEN_MEMO_MAX: usize = 128;

impl TokenMemo {
    fn verify(
        &mut self,
        signer: &TokenSigner,
        presented: &[u8],
    ) -> Result<SessionToken, TokenError> {
        if let Some(token) = self.token {
            if self.bytes == presented {
                return Ok(token);
            }
        }
        let token = signer.verify(presented)?;
        if presented.len() <= TOKEN_MEMO_MAX {
            self.bytes.clear();
            self.bytes.extend_from_slice(presented);
            self.token = Some(token);
        }
        Ok(token)
    }
}

/// The value of `name` in a query string (`a=1&b=2`); no percent-decoding (the tracker's
/// parameters are plain digits).
fn query_param<'a>(query: Option<&'a [u8]>, name: &[u8]) -> Option<&'a [u8]> {
    query?.split(|&b| b == b'&').find_map(|pair| {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        (key == name).then_some(value)
    })
}

/// A streamed batch is complete in the log: commit it and answer.
pub fn finish_stream(reservation: Reservation, pending: Pending, out: &mut Vec<u8>) {
    reservation.commit();
    answer_stored(&pending, out);
}

fn answer_stored(pending: &Pending, out: &mut Vec<u8>) {
    if pending.just_expired {
        write_error(out, Status::Unauthorized, pending.opts, "token expired");
    } else {
        write_empty(out, Status::Ok, pending.opts);
    }
}

/// A buffered body is complete (chunked framing already removed; gzip not yet, unless
/// [`prepare`] ran).
pub fn finish_buffered(
    ctx: &mut WorkerCtx<'_>,
    mut pending: Pending,
    body: &[u8],
    out: &mut Vec<u8>,
) {
    let opts = pending.opts;
    if let Some(Reject(status, message)) = pending.prepared.as_ref().and_then(|p| p.refused) {
        write_error(out, status, opts, message);
        return;
    }
    let result = match pending.route {
        Route::WebBatch | Route::MobileBatch | Route::MobileLate => {
            store_batch(ctx, &pending, body)
        }
        Route::WebStart => web::start(ctx, &pending, body, out),
        Route::MobileStart => mobile::start(ctx, &pending, body, out),
        Route::WebNotStarted => web::not_started(ctx, &pending, body),
        Route::WebFeatureFlags => web::feature_flags(ctx, &pending, body, out),
        Route::WebImages | Route::MobileImages => images::upload(ctx, &mut pending, body),
        Route::Health
        | Route::HealthLive
        | Route::HealthReady
        | Route::WebTags
        | Route::WebConditions(_) => Ok(Answer::Ok),
    };
    match result {
        Ok(Answer::Ok) => answer_stored(&pending, out),
        Ok(Answer::Written) => {}
        Err(Reject(status, message)) => write_error(out, status, opts, message),
    }
}

/// How a buffered handler answered.
enum Answer {
    /// Answer 200 empty (401 for a just-expired batch).
    Ok,
    /// The handler wrote its own answer.
    Written,
}

/// A refusal: status and the text of the JSON error.
#[derive(Clone, Copy, Debug)]
struct Reject(Status, &'static str);

/// A full disk or a used-up disk budget is a 503 with `Retry-After` (the tracker retries, and
/// the operator's alerting knows the kind); any other storage failure a 500. Either way nothing
/// was acknowledged. Each is logged at most once every ten seconds, with the count of the
/// refusals since: a full disk refuses every request.
impl From<crate::log::LogError> for Reject {
    fn from(e: crate::log::LogError) -> Reject {
        static FULL: Repeated = Repeated::new(10);
        static FAILED: Repeated = Repeated::new(10);
        let full = match &e {
            crate::log::LogError::Full => true,
            crate::log::LogError::Io(io) => {
                io.kind() == std::io::ErrorKind::StorageFull
                    || matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
            }
            _ => false,
        };
        if !full {
            if let Some(unlogged) = FAILED.hit() {
                log::error!("cannot store a record: {e} ({unlogged} more such failures since the last line)");
            }
            return Reject(Status::InternalServerError, "cannot store the request");
        }
        if let Some(unlogged) = FULL.hit() {
            log::error!(
                "cannot store a record: {e} (answering 503 until there is room; {unlogged} \
                 requests refused since the last line)"
            );
        }
        Reject(Status::ServiceUnavailable, "storage full")
    }
}

impl From<InflateError> for Reject {
    fn from(e: InflateError) -> Reject {
        match e {
            InflateError::TooLarge => Reject(Status::PayloadTooLarge, "decoded body too large"),
            InflateError::Corrupt => Reject(Status::BadRequest, "malformed gzip body"),
        }
    }
}

/// Gunzips `body` into the worker's scratch buffer (capped at `limit`) and returns it. The
/// buffer only grows: zeroing a megabyte for every gzip visual batch was a visible cost.
fn gunzip_to_scratch<'s>(
    scratch: &'s mut Vec<u8>,
    body: &[u8],
    limit: u64,
) -> Result<&'s [u8], Reject> {
    let limit = limit as usize;
    if scratch.len() < limit {
        scratch.resize(limit, 0);
    }
    let len = inflate_capped(body, &mut scratch[..limit])?;
    Ok(&scratch[..len])
}

/// Stores a buffered batch: gzip is inflated straight into the log; a visual batch is stored as
/// its player part and its assets part.
fn store_batch(ctx: &mut WorkerCtx<'_>, p: &Pending, body: &[u8]) -> Result<Answer, Reject> {
    let limit = ctx.node.batch_limit();
    let meta = batch_meta(p.route, p.data_type, p.token);
    if p.data_type == DataType::Visual {
        let body = if p.gzip {
            gunzip_to_scratch(ctx.scratch, body, limit)?
        } else {
            body
        };
        let split = p.split.unwrap_or(0);
        if split == 0 || split >= body.len() {
            return Err(Reject(Status::BadRequest, "split outside the batch"));
        }
        let (player, assets) = body.split_at(split);
        ctx.log.append(meta, b"", &[player])?;
        let assets_meta = RecordMeta {
            kind: RecordKind::WebAssetsBatch,
            ..meta
        };
        ctx.log.append(assets_meta, b"", &[assets])?;
        return Ok(Answer::Ok);
    }
    if p.gzip {
        // An empty decoded batch is refused as an empty plain one is, and as `prepare` does.
        ctx.log.append_with(meta, b"", limit as usize, |dst| {
            match inflate_capped(body, dst)? {
                0 => Err(Reject(Status::BadRequest, "empty request body")),
                n => Ok(n),
            }
        })??;
        return Ok(Answer::Ok);
    }
    if body.is_empty() {
        return Err(Reject(Status::BadRequest, "empty request body"));
    }
    ctx.log.append(meta, b"", &[body])?;
    Ok(Answer::Ok)
}

/// A JSON body, gunzipped when the request said so (capped at the JSON limit).
fn json_body<'s>(
    ctx: &'s mut WorkerCtx<'_>,
    p: &Pending,
    body: &'s [u8],
) -> Result<&'s [u8], Reject> {
    if p.gzip {
        let limit = ctx.node.live.json_size_limit();
        return gunzip_to_scratch(ctx.scratch, body, limit);
    }
    Ok(body)
}

/// The project of a start or upload request, or the answer OpenReplay gives.
/// The project of `key`: 404 only when the projects' source says it has no such active project;
/// 503 (the tracker does not retry a start, but the next page load does) when the source could
/// not be consulted.
fn project_by_key(node: &NodeState, key: Option<&str>) -> Result<Arc<Project>, Reject> {
    match key {
        None | Some("") => Err(Reject(Status::Forbidden, "projectKey value required")),
        Some(key) => match node.projects.by_key(key) {
            Lookup::Found(project) => Ok(project),
            Lookup::Unknown => Err(Reject(Status::NotFound, "project doesn't exist")),
            Lookup::Unavailable => Err(Reject(
                Status::ServiceUnavailable,
                "projects database unavailable",
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_resolve_with_and_without_prefix() {
        for (path, route) in [
            (&b"/"[..], Some(Route::Health)),
            (b"/ingest", Some(Route::Health)),
            (b"/v1/web/i", Some(Route::WebBatch)),
            (b"/ingest/v1/web/i", Some(Route::WebBatch)),
            (b"/ingest/v1/web/start", Some(Route::WebStart)),
            (b"/v1/ios/append", Some(Route::MobileBatch)),
            (b"/v1/mobile/i", Some(Route::MobileBatch)),
            (b"/ingest/v1/mobile/late", Some(Route::MobileLate)),
            (b"/v1/mobile/images", Some(Route::MobileImages)),
            (b"/v1/web/conditions/42", Some(Route::WebConditions(42))),
            (b"/v1/web/conditions/", None),
            (b"/v1/web/conditions/x", None),
            (b"/v1/web/i/", None),
            (b"/v2/web/i", None),
            (b"/ingestv1/web/i", None),
        ] {
            assert_eq!(
                Route::resolve(path),
                route,
                "{}",
                String::from_utf8_lossy(path)
            );
        }
    }

    #[test]
    fn the_token_memo_remembers_only_what_verified() {
        let signer = TokenSigner::new(b"s");
        let good = signer.compose(&SessionToken {
            session_id: 9,
            delay: 0,
            expires_at_ms: 1,
        });
        let mut memo = TokenMemo::default();
        assert_eq!(memo.verify(&signer, good.as_bytes()).unwrap().session_id, 9);
        assert_eq!(memo.verify(&signer, good.as_bytes()).unwrap().session_id, 9);
        let mut forged = good.clone().into_bytes();
        *forged.last_mut().unwrap() ^= 1;
        assert!(memo.verify(&signer, &forged).is_err());
        assert!(memo
            .verify(&signer, &good.as_bytes()[..good.len() - 1])
            .is_err());
        // A failure does not evict the good token.
        assert!(memo.verify(&signer, good.as_bytes()).is_ok());
        // Another signer's memo is not consulted: a new memo verifies from scratch.
        let other = TokenSigner::new(b"t");
        assert!(TokenMemo::default()
            .verify(&other, good.as_bytes())
            .is_err());
    }

    #[test]
    fn query_params() {
        let q = Some(&b"batch=0_1_1129_kyes&split=855"[..]);
        assert_eq!(query_param(q, b"split"), Some(&b"855"[..]));
        assert_eq!(query_param(q, b"batch"), Some(&b"0_1_1129_kyes"[..]));
        assert_eq!(query_param(q, b"spl"), None);
        assert_eq!(query_param(None, b"split"), None);
        assert_eq!(query_param(Some(b"split"), b"split"), Some(&b""[..]));
    }

    #[test]
    fn data_types() {
        assert_eq!(DataType::from_header(None), DataType::Raw);
        assert_eq!(DataType::from_header(Some(b"player")), DataType::Raw);
        assert_eq!(DataType::from_header(Some(b"Assets")), DataType::Assets);
        assert_eq!(DataType::from_header(Some(b"visual")), DataType::Visual);
    }
}

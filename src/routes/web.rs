//! The web tracker's routes besides the batch itself: `start`, `not-started`, `feature-flags`,
//! `tags` and `conditions`. Worker threads; the session table is the one piece of shared
//! mutable state (which project a session started here belongs to, for `tags`).

use std::collections::HashMap;

use parking_lot::Mutex;
use serde_json::{json, Value};

use super::{
    json_body, now_ms, now_ns, project_by_key, user_agent_info, Answer, Pending, Reject, WorkerCtx,
};
use crate::admin::WorkerMetrics;
use crate::codec::SessionStart;
use crate::db::row::SessionRow;
use crate::flake::start_timestamp_ms;
use crate::geo::GeoInfo;
use crate::http::{write_json, ResponseOptions, Status};
use crate::log::{RecordKind, RecordMeta};
use crate::project::Project;
use crate::token::SessionToken;

/// Sessions started on this node: id -> (project id, token expiry), for the routes that only
/// carry a token. Entries are pruned once expired, when the table grows.
#[derive(Default)]
pub struct SessionTable {
    inner: Mutex<HashMap<u64, (u64, i64)>>,
}

/// Pruning is amortised: it runs when the table has doubled since the last prune.
const SESSION_TABLE_MIN_PRUNE: usize = 4096;

impl SessionTable {
    pub fn insert(&self, session_id: u64, project_id: u64, expires_at_ms: i64) {
        let mut map = self.inner.lock();
        if map.len() >= SESSION_TABLE_MIN_PRUNE && map.len().is_power_of_two() {
            let now = now_ms();
            map.retain(|_, (_, expires)| *expires > now);
        }
        map.insert(session_id, (project_id, expires_at_ms));
    }

    pub fn project_of(&self, session_id: u64) -> Option<u64> {
        self.inner.lock().get(&session_id).map(|(p, _)| *p)
    }
}

/// The start request of the web tracker. Unknown fields are ignored, and so are fields of the
/// wrong JSON type (a tracker bug must not cost a session), hence no derived `Deserialize`.
#[derive(Default, Debug)]
struct StartRequest {
    project_key: Option<String>,
    token: Option<String>,
    user_uuid: Option<String>,
    rev_id: Option<String>,
    timestamp: Option<i64>,
    tracker_version: Option<String>,
    device_memory: Option<u64>,
    js_heap_size_limit: Option<u64>,
    reset: bool,
    user_id: Option<String>,
    buffer_diff: Option<i64>,
    is_offline: bool,
    do_not_record: bool,
    timezone: Option<String>,
    width: Option<i64>,
    height: Option<i64>,
}

impl StartRequest {
    fn from_json(v: &JsonObject) -> StartRequest {
        StartRequest {
            project_key: v.string("projectKey"),
            token: v.string("token"),
            user_uuid: v.string("userUUID"),
            rev_id: v.string("revID"),
            timestamp: v.int("timestamp"),
            tracker_version: v.string("trackerVersion"),
            device_memory: v.uint("deviceMemory"),
            js_heap_size_limit: v.uint("jsHeapSizeLimit"),
            reset: v.boolean("reset"),
            user_id: v.string("userID"),
            buffer_diff: v.int("bufferDiff"),
            is_offline: v.boolean("isOffline"),
            do_not_record: v.boolean("doNotRecord"),
            timezone: v.string("timezone"),
            width: v.int("width"),
            height: v.int("height"),
        }
    }
}

/// A request's JSON object, read leniently: a field of the wrong type reads as absent.
pub(super) struct JsonObject(serde_json::Map<String, Value>);

impl JsonObject {
    pub(super) fn parse(body: &[u8]) -> Result<JsonObject, Reject> {
        match serde_json::from_slice(body) {
            Ok(Value::Object(map)) => Ok(JsonObject(map)),
            _ => Err(Reject(Status::BadRequest, "malformed JSON body")),
        }
    }

    pub(super) fn string(&self, key: &str) -> Option<String> {
        self.0.get(key)?.as_str().map(str::to_owned)
    }

    pub(super) fn uint(&self, key: &str) -> Option<u64> {
        let v = self.0.get(key)?;
        v.as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
    }

    pub(super) fn int(&self, key: &str) -> Option<i64> {
        let v = self.0.get(key)?;
        v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
    }

    pub(super) fn boolean(&self, key: &str) -> bool {
        self.0.get(key).and_then(Value::as_bool).unwrap_or(false)
    }

    pub(super) fn value(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }
}

/// `userUUID` is the client's when it is a valid UUID, else a new v4.
pub(super) fn user_uuid(client: Option<&str>) -> String {
    client
        .and_then(|s| uuid::Uuid::parse_str(s).ok())
        .unwrap_or_else(uuid::Uuid::new_v4)
        .hyphenated()
        .to_string()
}

/// Draws whether a new session of this project is recorded.
pub(super) fn sampled_in(project: &Project) -> bool {
    use rand::Rng;
    rand::rng().random_range(0.0..100.0) < project.sample_rate
}

/// A previous token continues its session when it verifies, has not expired, and the tracker
/// did not ask for a reset.
pub(super) fn continued_session(
    ctx: &WorkerCtx<'_>,
    token: Option<&str>,
    reset: bool,
    now: i64,
) -> Option<SessionToken> {
    if reset {
        return None;
    }
    let t = ctx.node.signer.verify(token?.as_bytes()).ok()?;
    (!t.is_expired(now)).then_some(t)
}

/// The SessionStart timestamp as OpenReplay computes it: trackers from 4.1.6 on are timed by the
/// server (less the tracker's buffered time, when plausible); offline and older ones by the client.
fn session_timestamp(req: &StartRequest, start_ms: i64) -> u64 {
    let client = req.timestamp.unwrap_or(start_ms).max(0) as u64;
    if req.is_offline || !tracker_at_least(req.tracker_version.as_deref(), (4, 1, 6)) {
        return client;
    }
    let mut ts = start_ms.max(0) as u64;
    if let Some(diff) = req.buffer_diff.filter(|d| (1..5 * 60 * 1000).contains(d)) {
        ts = ts.saturating_sub(diff as u64);
    }
    ts
}

fn tracker_at_least(version: Option<&str>, min: (u64, u64, u64)) -> bool {
    let Some(version) = version else { return false };
    let mut parts = version
        .trim()
        .split(['.', '-', '+'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let v = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    v >= min
}

/// How a new session is recorded: its start message and its `sessions` row.
pub(super) struct NewSession<E, R> {
    /// `doNotRecord`: the session gets a token but no start message and no row (as OpenReplay).
    pub record: bool,
    pub kind: RecordKind,
    /// Writes the start message.
    pub encode: E,
    /// The row, when the database writer is on (its ids are filled in here).
    pub row: R,
}

/// Opens a new session of `project`: draws the sample, takes an id, signs its token, and stores
/// its row and its start message before any batch of it can arrive. The row goes first: a
/// consumer that finds a start finds its row before it (the database writer orders the queue
/// behind its commits); if the start then cannot be stored, the answer is 503 and the tracker
/// sends nothing, leaving a row of a session without messages, as OpenReplay's own insert does
/// when its queue fails.
pub(super) fn open_session(
    ctx: &mut WorkerCtx<'_>,
    project: &Project,
    now: i64,
    delay: i64,
    new: NewSession<impl FnOnce(&mut Vec<u8>), impl FnOnce() -> SessionRow>,
) -> Result<SessionToken, Reject> {
    if !sampled_in(project) {
        WorkerMetrics::add(&ctx.metrics.sampled_out, 1);
        return Err(Reject(Status::Forbidden, "cancel"));
    }
    let session_id = ctx.node.ids.next_id(now.max(0) as u64);
    let token = SessionToken {
        session_id,
        delay,
        expires_at_ms: start_timestamp_ms(session_id) as i64 + project.max_session_duration as i64,
    };
    if new.record {
        let arrival_unix_ns = now_ns();
        if ctx.node.config.postgres.is_some() {
            let row = SessionRow {
                session_id,
                project_id: project.project_id,
                ..(new.row)()
            };
            let meta = RecordMeta {
                session_id,
                arrival_unix_ns,
                kind: RecordKind::SessionRow,
            };
            ctx.log.append(meta, b"", &[&row.encode()])?;
        }
        let mut message = Vec::with_capacity(512);
        (new.encode)(&mut message);
        let meta = RecordMeta {
            session_id,
            arrival_unix_ns,
            kind: new.kind,
        };
        ctx.log.append(meta, b"", &[&message])?;
    }
    ctx.node
        .sessions
        .insert(session_id, project.project_id, token.expires_at_ms);
    WorkerMetrics::add(&ctx.metrics.sessions_started, 1);
    Ok(token)
}

pub(super) fn lookup_geo(ctx: &WorkerCtx<'_>, p: &Pending) -> GeoInfo {
    match (&ctx.node.geo, p.client.as_ref().and_then(|c| c.ip)) {
        (Some(db), Some(ip)) => db.lookup(ip),
        _ => GeoInfo::default(),
    }
}

pub(super) fn start(
    ctx: &mut WorkerCtx<'_>,
    p: &Pending,
    body: &[u8],
    out: &mut Vec<u8>,
) -> Result<Answer, Reject> {
    let req = StartRequest::from_json(&JsonObject::parse(json_body(ctx, p, body)?)?);
    let node = ctx.node;
    let user_agent = p.client.as_ref().map_or("", |c| c.user_agent.as_str());
    let Some(key) = req.project_key.as_deref().filter(|k| !k.is_empty()) else {
        return Err(Reject(Status::Forbidden, "projectKey value required"));
    };
    let Some(ua) = user_agent_info(ctx, p) else {
        return Err(Reject(Status::Forbidden, "browser not recognized"));
    };
    let project = project_by_key(node, Some(key))?;
    if !project.platform.accepts_web() {
        return Err(Reject(Status::Forbidden, "project is not a web project"));
    }
    let geo = lookup_geo(ctx, p);
    let uuid = user_uuid(req.user_uuid.as_deref());
    let now = now_ms();

    let token = match continued_session(ctx, req.token.as_deref(), req.reset, now) {
        Some(token) => token,
        None => {
            let delay = req.timestamp.map_or(0, |ts| now.saturating_sub(ts));
            let timestamp = session_timestamp(&req, now);
            let encode = |message: &mut Vec<u8>| {
                SessionStart {
                    timestamp,
                    project_id: project.project_id,
                    tracker_version: req.tracker_version.as_deref().unwrap_or(""),
                    rev_id: req.rev_id.as_deref().unwrap_or(""),
                    user_uuid: &uuid,
                    user_agent,
                    user_os: &ua.os,
                    user_os_version: &ua.os_version,
                    user_browser: &ua.browser,
                    user_browser_version: &ua.browser_version,
                    user_device: &ua.device,
                    user_device_type: &ua.device_type,
                    user_device_memory_size: req.device_memory.unwrap_or(0),
                    user_device_heap_size: req.js_heap_size_limit.unwrap_or(0),
                    user_country: &geo.packed(),
                    user_id: req.user_id.as_deref().unwrap_or(""),
                }
                .encode(message)
            };
            let row = || SessionRow {
                start_ts: timestamp,
                platform: "web".into(),
                user_uuid: uuid.clone(),
                user_os: ua.os.clone(),
                user_os_version: ua.os_version.clone(),
                user_browser: ua.browser.clone(),
                user_browser_version: ua.browser_version.clone(),
                user_device: ua.device.clone(),
                user_device_type: ua.device_type.clone(),
                user_device_memory_size: req.device_memory.unwrap_or(0),
                user_device_heap_size: req.js_heap_size_limit.unwrap_or(0),
                user_country: geo.country.clone(),
                user_state: geo.state.clone(),
                user_city: geo.city.clone(),
                rev_id: req.rev_id.clone().unwrap_or_default(),
                tracker_version: req.tracker_version.clone().unwrap_or_default(),
                user_id: req.user_id.clone().unwrap_or_default(),
                timezone: req.timezone.clone().unwrap_or_default(),
                screen_width: req.width.unwrap_or(0),
                screen_height: req.height.unwrap_or(0),
                ..SessionRow::default()
            };
            let new = NewSession {
                record: !req.do_not_record,
                kind: RecordKind::SessionStart,
                encode,
                row,
            };
            open_session(ctx, &project, now, delay, new)?
        }
    };

    let answer = json!({
        "token": node.signer.compose(&token),
        "sessionID": token.session_id.to_string(),
        "projectID": project.project_id.to_string(),
        "userUUID": uuid,
        "timestamp": now,
        "startTimestamp": start_timestamp_ms(token.session_id),
        "delay": token.delay,
        "beaconSizeLimit": node.beacon_size_limit(&project),
        "compressionThreshold": node.live.compression_threshold(),
        "assistOnly": false,
        "userOS": ua.os,
        "userDevice": ua.device,
        "userBrowser": ua.browser,
        "userCountry": geo.country,
        "userState": geo.state,
        "userCity": geo.city,
        "canvasEnabled": false,
        "canvasQuality": "low",
        "canvasFPS": 1,
        "framesSupport": false,
        "protocolVersion": project.protocol_version,
    });
    write_json_value(out, Status::Ok, p.opts, &answer);
    Ok(Answer::Written)
}

pub(super) fn write_json_value(
    out: &mut Vec<u8>,
    status: Status,
    opts: ResponseOptions,
    v: &Value,
) {
    let body = serde_json::to_vec(v).expect("JSON values always serialise");
    write_json(out, status, opts, &body);
}

/// An old tracker reports a session it did not record (do-not-track, sampling, errors). Kept as a
/// record of its own, session 0, with the request as sent.
pub(super) fn not_started(
    ctx: &mut WorkerCtx<'_>,
    p: &Pending,
    body: &[u8],
) -> Result<Answer, Reject> {
    let body = json_body(ctx, p, body)?.to_vec();
    let req = JsonObject::parse(&body)?;
    if user_agent_info(ctx, p).is_none() {
        return Err(Reject(Status::Forbidden, "browser not recognized"));
    }
    project_by_key(ctx.node, req.string("projectKey").as_deref())?;
    let meta = RecordMeta {
        session_id: 0,
        arrival_unix_ns: now_ns(),
        kind: RecordKind::NotStarted,
    };
    ctx.log.append(meta, b"", &[&body])?;
    Ok(Answer::Ok)
}

/// Feature flags of older trackers: the project's configured flags.
pub(super) fn feature_flags(
    ctx: &mut WorkerCtx<'_>,
    p: &Pending,
    body: &[u8],
    out: &mut Vec<u8>,
) -> Result<Answer, Reject> {
    let req = JsonObject::parse(json_body(ctx, p, body)?)?;
    let project_id = match req.value("projectID") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .or_else(|| {
        p.token
            .and_then(|t| ctx.node.sessions.project_of(t.session_id))
    });
    let project = project_id.and_then(|id| ctx.node.projects.by_id(id));
    let flags = project.as_ref().map_or(&[][..], |p| &p.feature_flags[..]);
    write_json_value(out, Status::Ok, p.opts, &json!({ "flags": flags }));
    Ok(Answer::Written)
}

/// Tags of the session's project; `[]` for a session this node did not start.
pub(super) fn tags(
    ctx: &mut WorkerCtx<'_>,
    token: Option<SessionToken>,
    opts: ResponseOptions,
    out: &mut Vec<u8>,
) {
    let project = token
        .and_then(|t| ctx.node.sessions.project_of(t.session_id))
        .and_then(|id| ctx.node.projects.by_id(id));
    let tags = project.as_ref().map_or(&[][..], |p| &p.tags[..]);
    write_json_value(out, Status::Ok, opts, &json!({ "tags": tags }));
}

/// Recording conditions of a project (conditional recording).
pub(super) fn conditions(
    ctx: &mut WorkerCtx<'_>,
    project_id: u64,
    opts: ResponseOptions,
    out: &mut Vec<u8>,
) {
    match ctx.node.projects.by_id(project_id) {
        Some(project) => write_json_value(
            out,
            Status::Ok,
            opts,
            &json!({ "conditions": project.conditions }),
        ),
        None => crate::http::write_error(out, Status::NotFound, opts, "project doesn't exist"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_versions_compare() {
        assert!(tracker_at_least(Some("19.0.1"), (4, 1, 6)));
        assert!(tracker_at_least(Some("4.1.6"), (4, 1, 6)));
        assert!(!tracker_at_least(Some("4.1.5"), (4, 1, 6)));
        assert!(!tracker_at_least(Some("3.9.0-beta"), (4, 1, 6)));
        assert!(!tracker_at_least(None, (4, 1, 6)));
    }

    #[test]
    fn session_timestamps() {
        let mut req = StartRequest {
            timestamp: Some(1000),
            tracker_version: Some("19.0.1".into()),
            ..Default::default()
        };
        assert_eq!(session_timestamp(&req, 5000), 5000);
        req.buffer_diff = Some(300);
        assert_eq!(session_timestamp(&req, 5000), 4700);
        req.buffer_diff = Some(10 * 60 * 1000);
        assert_eq!(session_timestamp(&req, 5000), 5000);
        req.is_offline = true;
        assert_eq!(session_timestamp(&req, 5000), 1000);
        req.is_offline = false;
        req.tracker_version = Some("3.0.0".into());
        assert_eq!(session_timestamp(&req, 5000), 1000);
    }

    #[test]
    fn user_uuids() {
        let mine = "00000000-0000-4000-8000-000000000001";
        assert_eq!(user_uuid(Some(mine)), mine);
        let fresh = user_uuid(Some("not-a-uuid"));
        assert_ne!(fresh, "not-a-uuid");
        assert!(uuid::Uuid::parse_str(&fresh).is_ok());
        assert!(uuid::Uuid::parse_str(&user_uuid(None)).is_ok());
    }
}

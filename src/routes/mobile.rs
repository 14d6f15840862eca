//! The mobile trackers' start route (`/v1/ios/start`, `/v1/mobile/start`). Their batches, late
//! batches and images go through the shared batch and upload paths. Worker threads.

use serde_json::json;

use super::web::{
    continued_session, lookup_geo, open_session, user_uuid, write_json_value, JsonObject,
    NewSession,
};
use super::{json_body, now_ms, project_by_key, Answer, Pending, Reject, WorkerCtx};
use crate::codec::MobileSessionStart;
use crate::db::row::SessionRow;
use crate::device::mobile_device;
use crate::http::Status;
use crate::log::RecordKind;

pub(super) fn start(
    ctx: &mut WorkerCtx<'_>,
    p: &Pending,
    body: &[u8],
    out: &mut Vec<u8>,
) -> Result<Answer, Reject> {
    let req = JsonObject::parse(json_body(ctx, p, body)?)?;
    let node = ctx.node;
    let project = project_by_key(node, req.string("projectKey").as_deref())?;
    if !project.platform.accepts_mobile() {
        return Err(Reject(Status::Forbidden, "project is not a mobile project"));
    }
    let uuid = user_uuid(req.string("userUUID").as_deref());
    let now = now_ms();
    let token = match continued_session(ctx, req.string("token").as_deref(), false, now) {
        Some(token) => token,
        None => {
            let geo = lookup_geo(ctx, p);
            let identifier = req.string("userDevice").unwrap_or_default();
            let hint = req.string("userDeviceType").unwrap_or_default();
            let (device, device_type) = mobile_device(&identifier, &hint);
            // As OpenReplay: `ios` unless the tracker says otherwise.
            let (os, platform) = match req.string("platform") {
                Some(platform) if platform.eq_ignore_ascii_case("android") => {
                    ("Android", "android")
                }
                _ => ("IOS", "ios"),
            };
            let timestamp = req.uint("timestamp").unwrap_or(now as u64);
            let tracker_version = req.string("trackerVersion").unwrap_or_default();
            let rev_id = req.string("revID").unwrap_or_default();
            let os_version = req.string("userOSVersion").unwrap_or_default();
            let encode = |message: &mut Vec<u8>| {
                MobileSessionStart {
                    timestamp,
                    project_id: project.project_id,
                    tracker_version: &tracker_version,
                    rev_id: &rev_id,
                    user_uuid: &uuid,
                    user_os: os,
                    user_os_version: &os_version,
                    user_device: &device,
                    user_device_type: device_type.as_str(),
                    user_country: &geo.packed(),
                }
                .encode(message)
            };
            let memory = req.uint("deviceMemory").unwrap_or(0);
            let row = || SessionRow {
                start_ts: timestamp,
                platform: platform.into(),
                user_uuid: uuid.clone(),
                user_os: os.into(),
                user_os_version: os_version.clone(),
                user_device: device.to_string(),
                user_device_type: device_type.as_str().into(),
                // OpenReplay's mobile start writes the device memory into both columns.
                user_device_memory_size: memory,
                user_device_heap_size: memory,
                user_country: geo.country.clone(),
                user_state: geo.state.clone(),
                user_city: geo.city.clone(),
                rev_id: rev_id.clone(),
                tracker_version: tracker_version.clone(),
                timezone: req.string("timezone").unwrap_or_default(),
                screen_width: req.int("width").unwrap_or(0),
                screen_height: req.int("height").unwrap_or(0),
                ..SessionRow::default()
            };
            let new = NewSession {
                record: !req.boolean("doNotRecord"),
                kind: RecordKind::MobileSessionStart,
                encode,
                row,
            };
            open_session(ctx, &project, now, 0, new)?
        }
    };
    let answer = json!({
        "token": node.signer.compose(&token),
        "imagesHashList": [],
        "userUUID": uuid,
        "beaconSizeLimit": node.beacon_size_limit(&project),
        "sessionID": token.session_id.to_string(),
        "projectID": project.project_id.to_string(),
        "quality": "standard",
        "fps": 1,
        "framesSupport": false,
    });
    write_json_value(out, Status::Ok, p.opts, &answer);
    Ok(Answer::Written)
}

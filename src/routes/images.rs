//! Image uploads: mobile screenshots (`/v1/ios/images`, `/v1/mobile/images`) and web canvas
//! frames (`/v1/web/images`), multipart/form-data. An upload becomes one `ImageUpload` record
//! (`crate::upload`: its files and the form's `type`) named by its storage prefix,
//! `<projectKey>/<sessionID>/` as OpenReplay keys the files (web canvas frames:
//! `<sessionID>/`). Worker threads.

use super::{now_ns, Answer, Pending, Reject, Route, WorkerCtx};
use crate::http::{parse_form, MultipartError, Status};
use crate::log::{RecordKind, RecordMeta};
use crate::upload::{self, Source};

impl From<MultipartError> for Reject {
    fn from(e: MultipartError) -> Reject {
        match e {
            MultipartError::NotMultipart => Reject(
                Status::UnsupportedMediaType,
                "request is not multipart/form-data",
            ),
            _ => Reject(Status::BadRequest, "malformed multipart body"),
        }
    }
}

/// The last path component of a client's file name, or None when nothing safe is left
/// (a key must never climb out of its session's folder).
fn safe_file_name(name: &str) -> Option<&str> {
    let base = name.rsplit(['/', '\\']).next()?;
    let unsafe_name = base.is_empty()
        || base == "."
        || base == ".."
        || base.len() > 255
        || base.bytes().any(|b| b < 0x20 || b == 0x7f);
    (!unsafe_name).then_some(base)
}

pub(super) fn upload(
    ctx: &mut WorkerCtx<'_>,
    p: &mut Pending,
    body: &[u8],
) -> Result<Answer, Reject> {
    let parts = match p.prepared.as_mut().and_then(|x| x.form.take()) {
        Some(parsed) => parsed?,
        None => parse_form(p.content_type(), body)?,
    };
    let session_id = p.token.map_or(0, |t| t.session_id);
    let prefix = if p.route == Route::MobileImages {
        let key = parts
            .iter()
            .find(|part| part.file_name.is_none() && part.name == "projectKey")
            .map(|part| String::from_utf8_lossy(&part.data).into_owned());
        match key {
            Some(key) if !key.is_empty() && !key.contains(['/', '\\']) => {
                format!("{key}/{session_id}/")
            }
            _ => return Err(Reject(Status::BadRequest, "projectKey parameter missing")),
        }
    } else {
        format!("{session_id}/")
    };
    let files: Vec<_> = parts
        .iter()
        .filter(|part| part.file_name.is_some())
        .collect();
    if files.is_empty() {
        return Err(Reject(Status::BadRequest, "no files in the upload"));
    }
    // One record for the whole upload, as it came: the forwarders build OpenReplay's image
    // message from every file of it and the form's `type` (`crate::upload`).
    let frames = parts
        .iter()
        .any(|part| part.file_name.is_none() && part.name == "type" && &part.data[..] == b"frames");
    let source = if p.route == Route::MobileImages {
        Source::Mobile
    } else {
        Source::Canvas
    };
    let head = upload::head(source, frames);
    let mut file_heads = Vec::with_capacity(files.len());
    for file in &files {
        let name = file.file_name.as_deref().and_then(safe_file_name);
        let Some(name) = name else {
            return Err(Reject(Status::BadRequest, "bad file name"));
        };
        let Some(file_head) = upload::file_head(name, file.data.len()) else {
            return Err(Reject(Status::PayloadTooLarge, "file too large"));
        };
        file_heads.push(file_head);
    }
    let mut body: Vec<&[u8]> = Vec::with_capacity(1 + 2 * files.len());
    body.push(&head);
    for (file, file_head) in files.iter().zip(&file_heads) {
        body.push(file_head);
        body.push(&file.data);
    }
    let meta = RecordMeta {
        session_id,
        arrival_unix_ns: now_ns(),
        kind: RecordKind::ImageUpload,
    };
    ctx.log.append(meta, prefix.as_bytes(), &body)?;
    Ok(Answer::Ok)
}

#[cfg(test)]
mod tests {
    use super::safe_file_name;

    #[test]
    fn file_names_stay_in_their_folder() {
        assert_eq!(safe_file_name("abc123.jpeg"), Some("abc123.jpeg"));
        assert_eq!(safe_file_name("../../etc/passwd"), Some("passwd"));
        assert_eq!(safe_file_name("dir\\x.png"), Some("x.png"));
        assert_eq!(safe_file_name(".."), None);
        assert_eq!(safe_file_name("a/"), None);
        assert_eq!(safe_file_name("a\nb"), None);
    }
}

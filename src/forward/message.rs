//! From log records to queue messages, as PROTOCOL.md's queue contract has them.
//!
//! In: a record read from the log (forwarder thread). Out: zero or more [`Message`]s (topic,
//! session id, value), appended to a batch in log order. Kinds and their topics:
//!
//! | record | topic | value |
//! | --- | --- | --- |
//! | session start (web) | `TOPIC_RAW_WEB` | the bare SessionStart message, as stored |
//! | web batch (player, devtools, analytics, the player half of `visual`) | `TOPIC_RAW_WEB` | the decoded body |
//! | web assets batch (`assets`, the assets half of `visual`) | `TOPIC_RAW_ASSETS` | the decoded body |
//! | mobile start, mobile batch | `TOPIC_RAW_IOS` | as stored |
//! | mobile image upload | `TOPIC_RAW_IMAGES` | `{"Name", "Data"}` JSON (below), or the files |
//! | canvas image upload | `TOPIC_CANVAS_IMAGES` | the same |
//! | not-started | none | |
//!
//! Batches are checked with the compactor's check (`compact::validate`): one whose framing
//! does not walk is refused here ([`MessageError::Invalid`]) and quarantined there.
//!
//! # Image messages ([`ImageFormat::Frames`], the default)
//!
//! `{"Name": <string>, "Data": <standard base64 of frame records>}`, a frame record being
//! `u64 LE timestamp, u32 LE length, bytes`:
//! - mobile: the first file only, gunzipped. With `type=frames`, `Data` is that file as is and
//!   `Name` is `""`; otherwise the file is a tar whose regular entries named
//!   `<base>_<ts>.<ext>` become one frame record each, and `Name` is the first one's
//!   `<base>.<ext>`.
//! - canvas: with `type=frames`, the first file, `{"Name": <its name>, "Data": <its bytes>}`;
//!   otherwise every file named `<base>_<ts>.<ext>` becomes a frame record of one message whose
//!   `Name` is the first one's `<base>.<ext>`.
//!
//! [`ImageFormat::Files`] (older image services): one message per uploaded file, its bytes as
//! the value.

use std::io::Read;

use base64::Engine;
use bytes::Bytes;

use crate::compact::validate::check_record;
use crate::log::{LogRecord, RecordKind};
use crate::upload::{self, Source, Upload};

/// The topic names (OpenReplay's `TOPIC_*` settings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    pub raw_web: String,
    pub raw_assets: String,
    pub raw_ios: String,
    pub raw_images: String,
    pub canvas_images: String,
    pub image_format: ImageFormat,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            raw_web: "raw".into(),
            raw_assets: "raw-assets".into(),
            raw_ios: "raw-ios".into(),
            raw_images: "raw-images".into(),
            canvas_images: "canvas-images".into(),
            image_format: ImageFormat::Frames,
        }
    }
}

/// The image message format the deployed image services read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImageFormat {
    /// `{"Name", "Data"}` with frame records (OpenReplay since mid 2023).
    #[default]
    Frames,
    /// Each uploaded file as is, one message a file (older releases).
    Files,
}

impl ImageFormat {
    pub fn parse(text: &str) -> Result<ImageFormat, String> {
        match text.trim() {
            "frames" => Ok(ImageFormat::Frames),
            "files" => Ok(ImageFormat::Files),
            other => Err(format!("unknown image format {other:?} (frames or files)")),
        }
    }
}

/// Which of [`Topics`] a message goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TopicId {
    RawWeb,
    RawAssets,
    RawIos,
    RawImages,
    CanvasImages,
}

impl Topics {
    pub fn name(&self, topic: TopicId) -> &str {
        match topic {
            TopicId::RawWeb => &self.raw_web,
            TopicId::RawAssets => &self.raw_assets,
            TopicId::RawIos => &self.raw_ios,
            TopicId::RawImages => &self.raw_images,
            TopicId::CanvasImages => &self.canvas_images,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub topic: TopicId,
    pub session_id: u64,
    pub value: Bytes,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Not well-formed: never sent (the compactor quarantines it).
    #[error("{0}")]
    Invalid(String),
    /// Over the queue's limit for one value.
    #[error("a {len}-byte value is over the queue's limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
}

/// One batch's messages, in log order.
#[derive(Default)]
pub struct Messages {
    list: Vec<Message>,
}

impl Messages {
    pub fn clear(&mut self) {
        self.list.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn as_slice(&self) -> &[Message] {
        &self.list
    }

    /// Appends what `record` becomes; nothing when it is refused (and why), or goes to no
    /// queue. `limit`: the largest value the queue takes.
    pub fn push(
        &mut self,
        record: &LogRecord,
        topics: &Topics,
        limit: Option<usize>,
    ) -> Result<(), MessageError> {
        let session_id = record.meta.session_id;
        let start = self.list.len();
        let topic = match record.meta.kind {
            RecordKind::SessionStart | RecordKind::WebBatch => Some(TopicId::RawWeb),
            RecordKind::WebAssetsBatch => Some(TopicId::RawAssets),
            RecordKind::MobileSessionStart | RecordKind::MobileBatch => Some(TopicId::RawIos),
            RecordKind::ImageUpload
            | RecordKind::Image
            | RecordKind::NotStarted
            | RecordKind::SessionRow => None,
        };
        if let Some(topic) = topic {
            check_record(record.meta.kind, &record.body)
                .map_err(|e| MessageError::Invalid(e.to_string()))?;
            self.list.push(Message {
                topic,
                session_id,
                value: record.body.clone(),
            });
        } else if let Some(upload) = image_upload(record)? {
            for (topic, value) in image_messages(&upload, topics.image_format)? {
                self.list.push(Message {
                    topic,
                    session_id,
                    value: Bytes::from(value),
                });
            }
        }
        if let Some(limit) = limit {
            if let Some(m) = self.list[start..].iter().find(|m| m.value.len() > limit) {
                let len = m.value.len();
                self.list.truncate(start);
                return Err(MessageError::TooLarge { len, limit });
            }
        }
        Ok(())
    }
}

/// The upload an image record holds; `None` for other kinds.
fn image_upload(record: &LogRecord) -> Result<Option<Upload<'_>>, MessageError> {
    match record.meta.kind {
        RecordKind::ImageUpload => upload::decode(&record.body)
            .map(Some)
            .map_err(|e| MessageError::Invalid(e.to_string())),
        RecordKind::Image => {
            // One file of an upload, as nodes before upload records stored them: a one-file
            // upload of the route its name says (mobile names carry the project).
            let name = std::str::from_utf8(&record.name).unwrap_or_default();
            let source = if name.matches('/').count() >= 2 {
                Source::Mobile
            } else {
                Source::Canvas
            };
            let file = name.rsplit('/').next().unwrap_or_default();
            Ok(Some(Upload {
                source,
                frames: file.ends_with(".frames"),
                files: vec![upload::UploadFile {
                    name: file,
                    data: &record.body,
                }],
            }))
        }
        _ => Ok(None),
    }
}

/// The image messages of one upload (see the module doc).
pub fn image_messages(
    upload: &Upload<'_>,
    format: ImageFormat,
) -> Result<Vec<(TopicId, Vec<u8>)>, MessageError> {
    let topic = match upload.source {
        Source::Mobile => TopicId::RawImages,
        Source::Canvas => TopicId::CanvasImages,
    };
    if format == ImageFormat::Files {
        return Ok(upload
            .files
            .iter()
            .map(|f| (topic, f.data.to_vec()))
            .collect());
    }
    let first = upload.files[0];
    let (name, data) = match (upload.source, upload.frames) {
        (Source::Mobile, true) => (String::new(), gunzip(first.data)?),
        (Source::Mobile, false) => {
            let tar = gunzip(first.data)?;
            frames_of_tar(&tar)?
        }
        (Source::Canvas, true) => (first.name.to_string(), first.data.to_vec()),
        (Source::Canvas, false) => {
            let mut name = None;
            let mut data = Vec::new();
            for file in &upload.files {
                let Some((base, ts)) = frame_name(file.name) else {
                    continue;
                };
                name.get_or_insert(base);
                push_frame(&mut data, ts, file.data);
            }
            let name = name.ok_or_else(|| {
                MessageError::Invalid("canvas upload: no file named <base>_<ts>.<ext>".into())
            })?;
            (name, data)
        }
    };
    Ok(vec![(topic, image_json(&name, &data))])
}

/// `{"Name": name, "Data": base64(data)}`.
fn image_json(name: &str, data: &[u8]) -> Vec<u8> {
    let value = serde_json::json!({
        "Name": name,
        "Data": base64::engine::general_purpose::STANDARD.encode(data),
    });
    serde_json::to_vec(&value).expect("a JSON value serialises")
}

/// `u64 LE ts, u32 LE length, bytes`.
fn push_frame(out: &mut Vec<u8>, ts: u64, bytes: &[u8]) {
    out.extend_from_slice(&ts.to_le_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// `<base>_<ts>.<ext>` -> (`<base>.<ext>`, ts).
fn frame_name(name: &str) -> Option<(String, u64)> {
    let (stem, ext) = name.rsplit_once('.')?;
    let (base, ts) = stem.rsplit_once('_')?;
    let ts = ts.parse().ok()?;
    Some((format!("{base}.{ext}"), ts))
}

/// The frame records of a tar's regular entries, and the first one's name.
fn frames_of_tar(tar: &[u8]) -> Result<(String, Vec<u8>), MessageError> {
    let bad = |e: std::io::Error| MessageError::Invalid(format!("mobile images: bad tar: {e}"));
    let mut archive = tar::Archive::new(tar);
    let mut name = None;
    let mut data = Vec::new();
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(bad)?;
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        let Some((base, ts)) = frame_name(file) else {
            continue;
        };
        name.get_or_insert(base);
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).map_err(bad)?;
        push_frame(&mut data, ts, &bytes);
    }
    let name = name.ok_or_else(|| {
        MessageError::Invalid("mobile images: no tar entry named <base>_<ts>.<ext>".into())
    })?;
    Ok((name, data))
}

/// Inflates a gzip file (every member).
fn gunzip(data: &[u8]) -> Result<Vec<u8>, MessageError> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .read_to_end(&mut out)
        .map_err(|e| MessageError::Invalid(format!("mobile images: not gzip: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use crate::log::RecordMeta;
    use std::io::Write;

    fn record(kind: RecordKind, name: &[u8], body: Vec<u8>) -> LogRecord {
        LogRecord {
            meta: RecordMeta {
                session_id: 77,
                arrival_unix_ns: 1,
                kind,
            },
            worker: 0,
            segment_seq: 0,
            offset: 64,
            name: name.to_vec(),
            body: Bytes::from(body),
        }
    }

    fn upload_body(source: Source, frames: bool, files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = upload::head(source, frames).to_vec();
        for (name, data) in files {
            out.extend(upload::file_head(name, data.len()).unwrap());
            out.extend_from_slice(data);
        }
        out
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn json(value: &[u8]) -> (String, Vec<u8>) {
        let v: serde_json::Value = serde_json::from_slice(value).unwrap();
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 2, "only Name and Data: {v}");
        let data = base64::engine::general_purpose::STANDARD
            .decode(obj["Data"].as_str().unwrap())
            .unwrap();
        (obj["Name"].as_str().unwrap().to_string(), data)
    }

    /// BatchMetadata (version 1) and sized messages.
    fn web_batch(messages: &[(u64, &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        codec::put_uint(&mut b, codec::MSG_BATCH_METADATA);
        for field in [1, 0, 0] {
            codec::put_uint(&mut b, field);
        }
        codec::put_int(&mut b, 0);
        codec::put_str(&mut b, "");
        for (t, body) in messages {
            codec::put_uint(&mut b, *t);
            b.extend_from_slice(&(body.len() as u32).to_le_bytes()[..3]);
            b.extend_from_slice(body);
        }
        b
    }

    fn frame(ts: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        push_frame(&mut out, ts, bytes);
        out
    }

    fn one(record: &LogRecord, topics: &Topics) -> Vec<Message> {
        let mut m = Messages::default();
        m.push(record, topics, None).unwrap();
        m.as_slice().to_vec()
    }

    #[test]
    fn batches_and_starts_go_to_their_topics_as_stored() {
        let topics = Topics::default();
        let web = web_batch(&[(4, b"abc")]);
        let mut start = Vec::new();
        codec::put_uint(&mut start, codec::MSG_SESSION_START);
        start.extend_from_slice(b"\x01\x02");
        let cases = [
            (RecordKind::WebBatch, web.clone(), TopicId::RawWeb),
            (RecordKind::WebAssetsBatch, web.clone(), TopicId::RawAssets),
            (RecordKind::SessionStart, start.clone(), TopicId::RawWeb),
        ];
        for (kind, body, topic) in cases {
            let got = one(&record(kind, b"", body.clone()), &topics);
            assert_eq!(
                got,
                [Message {
                    topic,
                    session_id: 77,
                    value: Bytes::from(body)
                }],
                "{kind:?}"
            );
        }
        assert!(one(&record(RecordKind::NotStarted, b"", vec![1]), &topics).is_empty());
    }

    #[test]
    fn a_batch_that_does_not_walk_is_refused() {
        let mut m = Messages::default();
        let bad = record(
            RecordKind::WebBatch,
            b"",
            vec![81, 1, 0, 0, 0, 0, 4, 9, 0, 0],
        );
        let got = m.push(&bad, &Topics::default(), None);
        assert!(matches!(got, Err(MessageError::Invalid(_))), "{got:?}");
        assert!(m.is_empty());
    }

    #[test]
    fn values_over_the_limit_are_refused() {
        let web = web_batch(&[(4, &[7u8; 100])]);
        let mut m = Messages::default();
        let got = m.push(
            &record(RecordKind::WebBatch, b"", web.clone()),
            &Topics::default(),
            Some(web.len() - 1),
        );
        assert_eq!(
            got,
            Err(MessageError::TooLarge {
                len: web.len(),
                limit: web.len() - 1
            })
        );
        assert!(m.is_empty());
    }

    #[test]
    fn canvas_frames_are_one_message_of_every_file() {
        let body = upload_body(
            Source::Canvas,
            false,
            &[
                ("c1_100.jpeg", b"first"),
                ("c1_250.jpeg", b"second"),
                ("notes.txt", b"no timestamp"),
            ],
        );
        let got = one(
            &record(RecordKind::ImageUpload, b"77/", body),
            &Topics::default(),
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].topic, TopicId::CanvasImages);
        let (name, data) = json(&got[0].value);
        assert_eq!(name, "c1.jpeg");
        assert_eq!(data, [frame(100, b"first"), frame(250, b"second")].concat());
    }

    #[test]
    fn typed_frames_uploads_are_sent_as_they_came() {
        let canvas = upload_body(Source::Canvas, true, &[("c1.frames", b"FRAMES")]);
        let got = one(
            &record(RecordKind::ImageUpload, b"77/", canvas),
            &Topics::default(),
        );
        assert_eq!(
            json(&got[0].value),
            ("c1.frames".into(), b"FRAMES".to_vec())
        );
        let mobile = upload_body(Source::Mobile, true, &[("f.gz", &gzip(b"RAW FRAMES"))]);
        let got = one(
            &record(RecordKind::ImageUpload, b"k/77/", mobile),
            &Topics::default(),
        );
        assert_eq!(got[0].topic, TopicId::RawImages);
        assert_eq!(json(&got[0].value), (String::new(), b"RAW FRAMES".to_vec()));
    }

    #[test]
    fn mobile_screenshots_come_from_the_first_files_tar() {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, data) in [
            ("screen_1700000000001.jpeg", &b"one"[..]),
            ("screen_1700000000002.jpeg", b"two!"),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, name, data).unwrap();
        }
        let tar = tar.into_inner().unwrap();
        let body = upload_body(
            Source::Mobile,
            false,
            &[
                ("a.tar.gz", &gzip(&tar)),
                ("ignored.tar.gz", b"not even gzip"),
            ],
        );
        let got = one(
            &record(RecordKind::ImageUpload, b"k/77/", body.clone()),
            &Topics::default(),
        );
        assert_eq!(got.len(), 1);
        let (name, data) = json(&got[0].value);
        assert_eq!(name, "screen.jpeg");
        assert_eq!(
            data,
            [frame(1700000000001, b"one"), frame(1700000000002, b"two!")].concat()
        );
        // The older format: each file as is.
        let topics = Topics {
            image_format: ImageFormat::Files,
            ..Topics::default()
        };
        let got = one(&record(RecordKind::ImageUpload, b"k/77/", body), &topics);
        assert_eq!(got.len(), 2);
        assert_eq!(&got[1].value[..], b"not even gzip");
    }

    #[test]
    fn frame_names() {
        assert_eq!(frame_name("a_b_12.png"), Some(("a_b.png".into(), 12)));
        assert_eq!(frame_name("a_12"), None);
        assert_eq!(frame_name("a_x.png"), None);
        assert_eq!(frame_name("a.png"), None);
    }
}

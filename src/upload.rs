//! The body of an image-upload record: every file of one multipart upload to an images route,
//! with the form's `type` and the route it came by.
//!
//! In: written by `routes::images` (worker threads, one record per upload, the files' bytes
//! copied once into the log as the parts of the record). Out: read by the forwarders
//! (`forward::message` builds the queue's image message from the whole upload: OpenReplay's
//! message for canvas frames holds every file of it), by `export` and by the compactor's check.
//!
//! ```text
//! 0  version (1)
//! 1  source: b'm' mobile screenshots, b'c' web canvas
//! 2  1 if the form said type=frames, else 0
//! 3  per file: name length (u16 LE), name (UTF-8), data length (u32 LE), data
//! ```
//!
//! The record's name is the upload's storage prefix, `<projectKey>/<sessionID>/` (mobile) or
//! `<sessionID>/` (canvas), as OpenReplay keys the files.

use std::fmt;

pub const VERSION: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Mobile,
    Canvas,
}

impl Source {
    fn byte(self) -> u8 {
        match self {
            Source::Mobile => b'm',
            Source::Canvas => b'c',
        }
    }
}

/// One file of an upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadFile<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
}

/// A decoded upload record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upload<'a> {
    pub source: Source,
    pub frames: bool,
    pub files: Vec<UploadFile<'a>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadError {
    Version(u8),
    Source(u8),
    Truncated,
    NameNotUtf8,
    NoFiles,
}

impl fmt::Display for UploadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UploadError::Version(v) => write!(f, "image upload: unknown version {v}"),
            UploadError::Source(s) => write!(f, "image upload: unknown source byte {s}"),
            UploadError::Truncated => f.write_str("image upload: truncated"),
            UploadError::NameNotUtf8 => f.write_str("image upload: a file name is not UTF-8"),
            UploadError::NoFiles => f.write_str("image upload: no files"),
        }
    }
}

impl std::error::Error for UploadError {}

/// The bytes that go before the files.
pub fn head(source: Source, frames: bool) -> [u8; 3] {
    [VERSION, source.byte(), u8::from(frames)]
}

/// The bytes that go before one file's data: its name and the data's length. `None` when the
/// name is over 64 KiB or the data over 4 GiB (the routes' limits are far below either).
pub fn file_head(name: &str, data_len: usize) -> Option<Vec<u8>> {
    let name_len = u16::try_from(name.len()).ok()?;
    let data_len = u32::try_from(data_len).ok()?;
    let mut out = Vec::with_capacity(6 + name.len());
    out.extend_from_slice(&name_len.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&data_len.to_le_bytes());
    Some(out)
}

/// Decodes an upload record's body; the files borrow from it.
pub fn decode(body: &[u8]) -> Result<Upload<'_>, UploadError> {
    let [version, source, frames, rest @ ..] = body else {
        return Err(UploadError::Truncated);
    };
    if *version != VERSION {
        return Err(UploadError::Version(*version));
    }
    let source = match *source {
        b'm' => Source::Mobile,
        b'c' => Source::Canvas,
        other => return Err(UploadError::Source(other)),
    };
    let mut files = Vec::new();
    let mut rest = rest;
    while !rest.is_empty() {
        let (name, after) = take(rest, 2)?;
        let name_len = usize::from(u16::from_le_bytes([name[0], name[1]]));
        let (name, after) = take(after, name_len)?;
        let name = std::str::from_utf8(name).map_err(|_| UploadError::NameNotUtf8)?;
        let (len, after) = take(after, 4)?;
        let data_len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let (data, after) = take(after, data_len)?;
        files.push(UploadFile { name, data });
        rest = after;
    }
    if files.is_empty() {
        return Err(UploadError::NoFiles);
    }
    Ok(Upload {
        source,
        frames: *frames != 0,
        files,
    })
}

fn take(bytes: &[u8], n: usize) -> Result<(&[u8], &[u8]), UploadError> {
    if bytes.len() < n {
        return Err(UploadError::Truncated);
    }
    Ok(bytes.split_at(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(source: Source, frames: bool, files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = head(source, frames).to_vec();
        for (name, data) in files {
            out.extend(file_head(name, data.len()).unwrap());
            out.extend_from_slice(data);
        }
        out
    }

    #[test]
    fn round_trips() {
        let body = encode(
            Source::Canvas,
            false,
            &[("a_1.jpeg", b"one"), ("a_2.jpeg", b""), ("b", b"three")],
        );
        let up = decode(&body).unwrap();
        assert_eq!((up.source, up.frames), (Source::Canvas, false));
        let names: Vec<_> = up.files.iter().map(|f| (f.name, f.data)).collect();
        assert_eq!(
            names,
            [
                ("a_1.jpeg", &b"one"[..]),
                ("a_2.jpeg", &b""[..]),
                ("b", &b"three"[..])
            ]
        );
        let body = encode(Source::Mobile, true, &[("x", b"y")]);
        let up = decode(&body).unwrap();
        assert_eq!((up.source, up.frames), (Source::Mobile, true));
    }

    #[test]
    fn every_cut_is_an_error_not_a_panic() {
        let body = encode(
            Source::Mobile,
            false,
            &[("a_1.png", b"abcdef"), ("c", b"d")],
        );
        for cut in 0..body.len() {
            let got = decode(&body[..cut]);
            assert!(
                got.is_err() || cut == 3 + 2 + 7 + 4 + 6,
                "cut at {cut}: {got:?}"
            );
        }
        assert_eq!(decode(&body[..3]), Err(UploadError::NoFiles));
        assert_eq!(decode(&[2, b'm', 0]), Err(UploadError::Version(2)));
        assert_eq!(decode(&[1, b'x', 0]), Err(UploadError::Source(b'x')));
    }
}

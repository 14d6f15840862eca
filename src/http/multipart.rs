//! `multipart/form-data` bodies: the image uploads (mobile `/v1/ios/images`, web
//! `/v1/web/images`).
//!
//! Enters: the request's Content-Type value and its complete body, already buffered and bounded
//! by FILE_SIZE_LIMIT. Leaves: the named parts (the `projectKey` field, the files), in body order.
//! Runs on the `net` worker that handles the request; uploads are rare next to batches.
//!
//! Parsing is `multer`'s, the maintained multipart parser of the Rust HTTP ecosystem. It is
//! async-only, but over a body that is already in memory its stream never waits, so a single
//! poll with a no-op waker runs it to completion: no runtime is involved.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    /// Not `multipart/form-data`, or no boundary parameter: 415.
    #[error("not multipart/form-data")]
    NotMultipart,
    /// Truncated, badly delimited, or with unreadable part headers: 400.
    #[error("malformed multipart body")]
    Malformed,
}

/// One named part of a form. Files carry a `file_name`, taken as sent: path components and all
/// (`../x`); the route sanitises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part<'a> {
    pub name: Cow<'a, str>,
    pub file_name: Option<Cow<'a, str>>,
    pub data: Cow<'a, [u8]>,
}

/// Parses a complete `multipart/form-data` body. `content_type` is the Content-Type header value
/// (boundary parameter, quoted or not). Parts without a name are skipped, as Go's
/// `Request.ParseMultipartForm` does.
pub fn parse_form(content_type: &[u8], body: &[u8]) -> Result<Vec<Part<'static>>, MultipartError> {
    let content_type =
        std::str::from_utf8(content_type).map_err(|_| MultipartError::NotMultipart)?;
    let boundary =
        multer::parse_boundary(content_type).map_err(|_| MultipartError::NotMultipart)?;
    // multer reads owned `Bytes`: one copy of the body, made once.
    let body = Bytes::copy_from_slice(body);
    let stream = futures_util::stream::once(std::future::ready(Ok::<_, Infallible>(body)));
    let mut form = multer::Multipart::new(stream, boundary);
    run_to_completion(async move {
        let mut parts = Vec::new();
        while let Some(field) = form.next_field().await.map_err(malformed)? {
            let Some(name) = field.name().map(str::to_owned) else {
                continue;
            };
            let file_name = field.file_name().map(|f| Cow::Owned(f.to_owned()));
            let data = field.bytes().await.map_err(malformed)?;
            parts.push(Part {
                name: Cow::Owned(name),
                file_name,
                data: Cow::Owned(Vec::from(data)),
            });
        }
        Ok(parts)
    })
    .unwrap_or(Err(MultipartError::Malformed))
}

fn malformed(_: multer::Error) -> MultipartError {
    MultipartError::Malformed
}

/// Polls `future` once. Everything it awaits is already in memory, so it is ready at the first
/// poll; `None` if it ever is not, rather than spinning.
fn run_to_completion<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut context) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Binary file contents that contain what a naive parser trips on: CRLF, `--`, a near-miss
    /// of the boundary, and bytes that are not UTF-8.
    fn file_contents(seed: u8) -> Vec<u8> {
        let mut data = vec![0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n', seed];
        data.extend_from_slice(b"\r\n--\r\n--boundar\r\n\r\n--");
        data.extend((0..=255u8).map(|b| b.wrapping_add(seed)));
        data.extend_from_slice(b"\r\n");
        data
    }

    /// A body as OkHttp / URLSession / a browser's FormData write it: CRLF everywhere, the
    /// projectKey field first, then the files, each with a Content-Type.
    fn upload_body(boundary: &str, files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"projectKey\"\r\n\
                 Content-Length: 20\r\n\r\nhJ4sWmZzvEXcrQZ3UBP8\r\n"
            )
            .as_bytes(),
        );
        for (file_name, data) in files {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{file_name}\"; \
                     filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        body
    }

    fn three_files() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("1700000000000_a1b2c3.jpeg", file_contents(1)),
            ("1700000000001_d4e5f6.jpeg", file_contents(2)),
            ("1700000000002_0789ab.jpeg", Vec::new()),
        ]
    }

    fn check_upload(parts: &[Part<'_>], files: &[(&str, Vec<u8>)]) {
        assert_eq!(parts.len(), files.len() + 1);
        assert_eq!(parts[0].name, "projectKey");
        assert_eq!(parts[0].file_name, None);
        assert_eq!(parts[0].data.as_ref(), b"hJ4sWmZzvEXcrQZ3UBP8");
        for (part, (file_name, data)) in parts[1..].iter().zip(files) {
            assert_eq!(part.name, *file_name);
            assert_eq!(part.file_name.as_deref(), Some(*file_name));
            assert_eq!(part.data.as_ref(), data.as_slice(), "{file_name}");
        }
    }

    #[test]
    fn mobile_upload_with_binary_files() {
        let boundary = "boundary.1d6f4a3e-5c8b-4a77-9f2e-0c9a1b2d3e4f";
        let files = three_files();
        let body = upload_body(boundary, &files);
        let content_type = format!("multipart/form-data; boundary={boundary}");
        let parts = parse_form(content_type.as_bytes(), &body).expect("valid form");
        check_upload(&parts, &files);
    }

    #[test]
    fn quoted_boundary_and_header_variants() {
        // URLSession quotes boundaries; browsers use `----WebKitFormBoundary...`.
        let cases = [
            (
                "Boundary+17A0B1C2",
                "multipart/form-data; boundary=\"Boundary+17A0B1C2\"",
            ),
            (
                "----WebKitFormBoundaryx5B2",
                "multipart/form-data; boundary=----WebKitFormBoundaryx5B2",
            ),
            ("abc", "Multipart/Form-Data;boundary=abc"),
            (
                "abc",
                "multipart/form-data; charset=utf-8; boundary=\"abc\"",
            ),
        ];
        let files = three_files();
        for (boundary, content_type) in cases {
            let body = upload_body(boundary, &files);
            let parts = parse_form(content_type.as_bytes(), &body)
                .unwrap_or_else(|e| panic!("{content_type}: {e}"));
            check_upload(&parts, &files);
        }
    }

    #[test]
    fn not_multipart() {
        let body = upload_body("abc", &three_files());
        for content_type in [
            &b"multipart/form-data"[..],
            b"multipart/form-data; charset=utf-8",
            b"multipart/mixed; boundary=abc",
            b"application/octet-stream",
            b"application/x-www-form-urlencoded",
            b"",
            b"multipart/form-data; boundary=\xff\xfe",
        ] {
            assert_eq!(
                parse_form(content_type, &body),
                Err(MultipartError::NotMultipart),
                "{}",
                String::from_utf8_lossy(content_type)
            );
        }
    }

    #[test]
    fn truncated_body_is_malformed_at_every_length() {
        let files = vec![("f.jpeg", file_contents(7))];
        let body = upload_body("abc", &files);
        // Without its closing delimiter, no prefix of the body is a form.
        let closing = b"--abc--\r\n".len();
        for cut in 0..body.len() - closing {
            assert_eq!(
                parse_form(b"multipart/form-data; boundary=abc", &body[..cut]),
                Err(MultipartError::Malformed),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn malformed_bodies() {
        let cases: &[&[u8]] = &[
            b"",
            b"no delimiter at all",
            b"--abc\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue",
            b"--abc\r\nBroken Header\r\n\r\nvalue\r\n--abc--\r\n",
        ];
        for body in cases {
            assert_eq!(
                parse_form(b"multipart/form-data; boundary=abc", body),
                Err(MultipartError::Malformed),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn file_names_are_returned_as_sent() {
        let body = b"--abc\r\nContent-Disposition: form-data; name=\"f\"; filename=\"../x\"\r\n\r\n\
            data\r\n--abc\r\nContent-Disposition: form-data; name=\"g\"; filename=\"/etc/passwd\"\r\n\r\n\
            more\r\n--abc--\r\n";
        let parts = parse_form(b"multipart/form-data; boundary=abc", body).expect("valid form");
        let names: Vec<_> = parts.iter().map(|p| p.file_name.as_deref()).collect();
        assert_eq!(names, [Some("../x"), Some("/etc/passwd")]);
        assert_eq!(parts[0].data.as_ref(), b"data");
    }

    #[test]
    fn nameless_parts_are_skipped_and_empty_form_is_empty() {
        let body = b"--abc\r\nContent-Type: text/plain\r\n\r\nanonymous\r\n\
            --abc\r\nContent-Disposition: form-data; name=\"projectKey\"\r\n\r\nkey\r\n--abc--\r\n";
        let parts = parse_form(b"multipart/form-data; boundary=abc", body).expect("valid form");
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].name, "projectKey");

        let empty = parse_form(b"multipart/form-data; boundary=abc", b"--abc--\r\n");
        assert_eq!(empty, Ok(Vec::new()));
    }

    #[test]
    fn preamble_and_epilogue_are_ignored() {
        let body = b"preamble text\r\n--abc\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n\
            v\r\n--abc--\r\nepilogue";
        let parts = parse_form(b"multipart/form-data; boundary=abc", body).expect("valid form");
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].data.as_ref(), b"v");
    }
}

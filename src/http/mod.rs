//! HTTP/1.1 for the ingest: pure functions over byte buffers, no I/O and no per-request heap.
//!
//! Enters: bytes read from a socket by a `net` worker (its connection buffer), and the answer a
//! route decided on. Leaves: a [`RequestHead`] of offsets into that buffer, a decoded chunked body,
//! the parts of a multipart upload, and response bytes appended to the connection's output buffer.
//! Runs on whichever `net` worker thread owns the connection; nothing here is shared or locked.
//!
//! - [`head`]: the request line and headers, with RFC 9112 body-framing rules (the smuggling checks).
//! - [`chunked`]: an incremental `Transfer-Encoding: chunked` decoder that may be fed byte by byte.
//! - [`response`]: the single catalogue of answers this server ever writes.
//! - [`multipart`]: `multipart/form-data` bodies of the image uploads.
//! - [`gzip`]: gzip bodies inflated with a hard cap.

pub mod chunked;
pub mod gzip;
pub mod head;
pub mod multipart;
pub mod response;

pub use chunked::{ChunkError, ChunkedDecoder};
pub use gzip::{inflate_capped, inflate_to_vec, InflateError};
pub use head::{
    parse_head, BodyFraming, HeadError, Method, RequestHead, Span, MAX_HEADERS, MAX_HEAD_BYTES,
};
pub use multipart::{parse_form, MultipartError, Part};
pub use response::{
    write_empty, write_error, write_json, write_preflight, ResponseOptions, Status, CONTINUE_100,
};

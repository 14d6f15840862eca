//! replay-ingest: a drop-in ingestion node for OpenReplay session replay.
//!
//! Data flows one way:
//!
//! ```text
//! socket bytes -> net (mio worker loop, one per core) -> http (httparse head, body framing, limits)
//!   -> routes (one handler per endpoint; token check; start/batch/images)
//!   -> log (this worker's memory-mapped segment; one copy of the body, framed and checksummed)
//!   == 200 ==  (the request path ends here; everything below reads the log as a consumer)
//!   -> log consumers (named, durable cursors; retention waits for all of them)
//!        -> compact (its own thread: validate, quarantine, group by session, zstd + index)
//!        -> forward (a thread per queue: record -> OpenReplay's message; Redis Streams, Kafka;
//!           the cursor moves once the queue acknowledged)
//!        -> db (the database writer: a `sessions` row per new session, in batches; the
//!           forwarders never pass its cursor, so a row is committed before its messages go)
//! projects <- file, or PostgreSQL (db::projects, its own thread, swapped into project::Catalog)
//! admin: health (heartbeats, disk budget, consumer lags, projects), read by the routes
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
// Every `unsafe` block of the crate lives in `log::mmap`, the one module allowed it.
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod admin;
pub mod background;
pub mod codec;
pub mod compact;
pub mod config;
pub mod db;
pub mod device;
pub mod flake;
pub mod forward;
pub mod geo;
pub mod http;
pub mod log;
pub mod net;
pub mod ops;
pub mod project;
pub mod routes;
pub mod token;
pub mod upload;
pub mod useragent;

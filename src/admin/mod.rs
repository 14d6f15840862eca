//! Operations: what the node tells its operators and their machines about itself.
//!
//! In: heartbeats of the worker loops and consumer threads, the log's disk budget and consumer
//! lags. Out: the health answers (`/health/live`, `/health/ready`), served by the routes on the
//! main listener. Read on the worker thread that serves the probe.

pub mod health;

pub use health::{Health, Heartbeat};

//! Operations: what the node tells its operators and their machines about itself.
//!
//! In: heartbeats of the worker loops and consumer threads, the log's disk budget and consumer
//! lags, the workers' counters and those the consumers keep. Out: the health answers
//! (`/health/live`, `/health/ready`; served by the routes on the main listener, on the worker
//! that takes the probe, and by the admin listener) and the metrics (`/metrics`, on the admin
//! listener's own thread).

pub mod health;
pub mod listener;
pub mod logs;
pub mod metrics;

pub use health::{Health, Heartbeat};
pub use listener::AdminListener;
pub use metrics::{Metrics, WorkerMetrics};

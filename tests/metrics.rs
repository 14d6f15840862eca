//! The admin listener through the binary: `/metrics` in Prometheus's text format, with counters
//! that move with the traffic, and the health endpoints beside it.

mod common;

use common::{batch_request, metric_sample as sample, walkable_batch, Node};

#[test]
fn metrics_move_with_the_traffic() {
    let node = Node::start();
    let (status, before) = node.admin_get("/metrics");
    assert_eq!(status, 200, "{before}");
    assert!(
        before.contains("# TYPE replay_ingest_request_duration_seconds histogram"),
        "{before}"
    );
    assert!(
        before.contains("replay_ingest_disk_budget_bytes"),
        "{before}"
    );
    assert!(before.contains("replay_ingest_consumer_lag_segments{consumer=\"compactor\"}"));

    let start = node.start_web("web-key");
    let token = Node::token(&start);
    let batch = walkable_batch(0, 0, &[0u8; 1000]);
    for _ in 0..5 {
        let r = node.request(&batch_request(&token, "player", "", &batch));
        assert_eq!(r.status, 200);
    }
    let r = node.request(b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 404);

    let (_, after) = node.admin_get("/metrics");
    let delta = |name: &str| sample(&after, name) - sample(&before, name);
    assert_eq!(
        delta("replay_ingest_requests_total{route=\"web_batch\",status=\"200\"}"),
        5.0,
        "{after}"
    );
    assert_eq!(
        delta("replay_ingest_requests_total{route=\"web_start\",status=\"200\"}"),
        1.0
    );
    assert_eq!(
        delta("replay_ingest_requests_total{route=\"other\",status=\"404\"}"),
        1.0
    );
    assert_eq!(delta("replay_ingest_sessions_started_total"), 1.0);
    assert!(delta("replay_ingest_body_bytes_total") >= 5.0 * batch.len() as f64);
    // The start message and five batches; their bytes include headers and padding.
    assert_eq!(delta("replay_ingest_log_records_written_total"), 6.0);
    assert!(delta("replay_ingest_log_bytes_written_total") > 5.0 * batch.len() as f64);
    assert!(delta("replay_ingest_request_duration_seconds_count") >= 7.0);
    // Prometheus buckets are cumulative: never decreasing, and `+Inf` is the count.
    let buckets: Vec<f64> = after
        .lines()
        .filter(|l| l.starts_with("replay_ingest_request_duration_seconds_bucket{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(buckets.len(), 14, "{after}");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{after}");
    assert_eq!(
        buckets.last().copied(),
        Some(sample(
            &after,
            "replay_ingest_request_duration_seconds_count"
        )),
        "{after}"
    );
    assert!(delta("replay_ingest_connections_accepted_total") >= 7.0);
    assert_eq!(sample(&after, "replay_ingest_projects"), 6.0);

    let (status, live) = node.admin_get("/health/live");
    assert_eq!(status, 200, "{live}");
    let (status, ready) = node.admin_get("/health/ready");
    assert_eq!(status, 200, "{ready}");
    assert_eq!(node.admin_get("/elsewhere").0, 404);
    node.stop();
}

#[test]
fn request_logs_are_off_by_default_and_sampled_when_on() {
    let quiet = Node::start();
    let sampled = Node::builder().arg("--request-log-every").arg("2").start();
    for node in [&quiet, &sampled] {
        for _ in 0..10 {
            assert_eq!(
                node.request(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").status,
                200
            );
        }
    }
    let count = |node: &Node| {
        node.stderr()
            .lines()
            .filter(|l| l.contains("replay_ingest::request") && l.contains("status=200"))
            .count()
    };
    assert_eq!(count(&quiet), 0);
    // One in two, per worker: 10 requests over two workers log 5 or 6 lines.
    let logged = count(&sampled);
    assert!((5..=6).contains(&logged), "{logged}:\n{}", sampled.stderr());
    assert!(sampled.stderr().contains("route=\"health\" status=200"));
    quiet.stop();
    sampled.stop();
}

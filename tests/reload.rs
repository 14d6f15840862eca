//! SIGHUP through the binary: the projects file and the live settings (limits, CORS, log levels)
//! are read again without a restart and without closing a connection; an invalid file is refused
//! with a log line and the running configuration kept.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::{now_ms, post_request, read_response, signal, wait_for, Node, UA};

const SIGHUP: i32 = 1;

fn start_body(key: &str, pad: usize) -> Vec<u8> {
    serde_json::json!({
        "projectKey": key, "trackerVersion": "19.0.1", "timestamp": now_ms(),
        "userID": "x".repeat(pad),
    })
    .to_string()
    .into_bytes()
}

/// A start on an open keep-alive connection; its status.
fn start_on(conn: &mut TcpStream, key: &str, pad: usize) -> u16 {
    let request = post_request(
        "/v1/web/start",
        &[("Content-Type", "application/json"), ("User-Agent", UA)],
        &start_body(key, pad),
    );
    conn.write_all(&request).unwrap();
    read_response(conn)
        .expect("an answer on the same connection")
        .status
}

fn sighup_and_wait(node: &Node, line: &str, before: usize) {
    signal(&node.child, SIGHUP);
    wait_for(line, Duration::from_secs(10), || {
        node.stderr().matches(line).count() > before
    });
}

#[test]
fn sighup_reloads_projects_and_limits_and_keeps_connections() {
    // The config file named at start is read again on SIGHUP.
    let settings = tempfile::tempdir().unwrap();
    let config = settings.path().join("live.toml");
    std::fs::write(&config, "json_size_limit = 1000\n").unwrap();
    let node = Node::builder()
        .projects(r#"[{"projectKey":"k1","projectID":1,"platform":"web"}]"#)
        .arg("--config")
        .arg(config.to_str().unwrap())
        .start();
    let mut conn = node.connect();
    assert_eq!(start_on(&mut conn, "k1", 0), 200);
    assert_eq!(start_on(&mut conn, "k2", 0), 404);
    assert_eq!(start_on(&mut conn, "k1", 600), 200);

    std::fs::write(
        node.dir.join("projects.json"),
        r#"[{"projectKey":"k1","projectID":1,"platform":"web","sampleRate":0},
            {"projectKey":"k2","projectID":2,"platform":"web"}]"#,
    )
    .unwrap();
    std::fs::write(
        &config,
        "json_size_limit = 300\nlog_level = \"info,replay_ingest::request=info\"\n\
         request_log_every = 1\n",
    )
    .unwrap();
    sighup_and_wait(&node, "SIGHUP: settings reloaded", 0);
    // The same connection, the new configuration.
    assert_eq!(start_on(&mut conn, "k1", 0), 403, "k1 is sampled out now");
    assert_eq!(start_on(&mut conn, "k2", 0), 200, "k2 is served now");
    assert_eq!(
        start_on(&mut conn, "k2", 600),
        413,
        "the JSON limit is 300 now"
    );
    assert!(node.stderr().contains("2 projects"));
    // request_log_every needs a restart: it is named as such.
    assert!(
        node.stderr().contains("request_log_every"),
        "{}",
        node.stderr()
    );
    node.stop();
}

#[test]
fn an_invalid_file_is_refused_and_the_running_configuration_kept() {
    let node = Node::builder()
        .projects(r#"[{"projectKey":"k1","projectID":1,"platform":"web"}]"#)
        .start();
    let mut conn = node.connect();
    assert_eq!(start_on(&mut conn, "k1", 0), 200);
    std::fs::write(node.dir.join("projects.json"), "[{\"projectKey\": ").unwrap();
    sighup_and_wait(&node, "SIGHUP: projects refused", 0);
    assert_eq!(
        start_on(&mut conn, "k1", 0),
        200,
        "the running projects are kept"
    );
    // A valid file again is taken.
    std::fs::write(
        node.dir.join("projects.json"),
        r#"[{"projectKey":"k3","projectID":3,"platform":"web"}]"#,
    )
    .unwrap();
    sighup_and_wait(&node, "SIGHUP: settings reloaded", 0);
    assert_eq!(start_on(&mut conn, "k1", 0), 404);
    assert_eq!(start_on(&mut conn, "k3", 0), 200);
    node.stop();
}

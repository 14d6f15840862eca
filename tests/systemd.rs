//! Running under systemd, through the binary: the shipped units pass `systemd-analyze verify`;
//! the notifications (`READY=1`, `STATUS=`, `WATCHDOG=1`, `STOPPING=1`) reach a datagram socket
//! named by `NOTIFY_SOCKET`; a wedged worker stops the watchdog pings; the node serves on a
//! socket passed through `LISTEN_FDS` (by systemd's own `systemd-socket-activate`);
//! `check-config` says what is wrong. Needs Debian's `systemd` package (./test.sh installs it).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{signal, wait_timeout, Node, BIN, SECRET};

fn require_systemd_tools() {
    for tool in ["systemd-analyze", "systemd-socket-activate"] {
        common::queues::require_from(tool, "--version", "systemd");
    }
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    require_systemd_tools();
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    // As shipped, but with the binary where this build put it (verify checks that it exists).
    for unit in ["replay-ingest.service", "replay-ingest.socket"] {
        let text = std::fs::read_to_string(root.join(unit)).unwrap();
        std::fs::write(
            dir.path().join(unit),
            text.replace("/usr/local/bin/replay-ingest", BIN),
        )
        .unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("replay-ingest.service"))
        .arg(dir.path().join("replay-ingest.socket"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on settings it ignores, with a line saying so: none may be printed.
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {:?}\n{stderr}",
        out.status
    );
    assert!(root.join("replay-ingest.env").exists());
}

/// Datagrams received on `socket` within `limit`, until `until` holds for one.
fn receive_until(
    socket: &UnixDatagram,
    limit: Duration,
    until: impl Fn(&str) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        socket
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
            .unwrap();
        let Ok(n) = socket.recv(&mut buf) else { break };
        let message = String::from_utf8_lossy(&buf[..n]).trim_end().to_string();
        let done = until(&message);
        got.push(message);
        if done {
            break;
        }
    }
    got
}

#[test]
fn notifications_say_ready_ping_the_watchdog_and_say_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    // WatchdogSec=4s: a ping every 2 s while every loop beats within 2 s.
    let mut node = Node::builder()
        .env("NOTIFY_SOCKET", path.to_str().unwrap())
        .env("WATCHDOG_USEC", "4000000")
        .start();
    let first = receive_until(&socket, Duration::from_secs(10), |m| m.contains("READY=1"));
    assert!(
        first
            .iter()
            .any(|m| m.contains("STATUS=recovering segments")),
        "{first:?}"
    );
    let ready = first.last().unwrap();
    assert!(ready.contains("READY=1"), "{first:?}");
    assert!(
        ready.contains(&format!("STATUS=serving on {}", node.addr)),
        "{ready}"
    );
    let mut pings = 0;
    let start = Instant::now();
    while pings < 2 {
        let got = receive_until(&socket, Duration::from_secs(6), |m| m == "WATCHDOG=1");
        assert!(
            got.last().is_some_and(|m| m == "WATCHDOG=1"),
            "no ping within 6 s: {got:?}"
        );
        pings += 1;
    }
    assert!(start.elapsed() < Duration::from_secs(12));
    signal(&node.child, common::libc_sigterm());
    let last = receive_until(&socket, Duration::from_secs(20), |m| {
        m.contains("STOPPING=1")
    });
    assert!(
        last.last().is_some_and(|m| m.contains("STOPPING=1")),
        "{last:?}"
    );
    let status = wait_timeout(&mut node.child, Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

#[test]
fn a_wedged_worker_stops_the_watchdog_pings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let node = Node::builder()
        .env("NOTIFY_SOCKET", path.to_str().unwrap())
        .env("WATCHDOG_USEC", "4000000")
        .arg("--test-wedge-worker-after")
        .arg("3s")
        .start();
    let before = receive_until(&socket, Duration::from_secs(10), |m| m == "WATCHDOG=1");
    assert!(
        before.last().is_some_and(|m| m == "WATCHDOG=1"),
        "{before:?}"
    );
    // Worker 0 wedges 3 s after it started; its last beat is then at most 2 s old at the next
    // check, so at most one more ping may come; after that, none.
    std::thread::sleep(Duration::from_secs(6));
    let mut buf = [0u8; 4096];
    socket.set_nonblocking(true).unwrap();
    while socket.recv(&mut buf).is_ok() {}
    socket.set_nonblocking(false).unwrap();
    let after = receive_until(&socket, Duration::from_secs(5), |_| false);
    assert!(
        !after.iter().any(|m| m == "WATCHDOG=1"),
        "pings went on with a wedged worker: {after:?}"
    );
    wait_for_log(&node, "worker-0 made no progress");
    node.crash();
}

fn wait_for_log(node: &Node, needle: &str) {
    common::wait_for(needle, Duration::from_secs(10), || {
        node.stderr().contains(needle)
    });
}

#[test]
fn the_node_serves_on_a_socket_passed_through_listen_fds() {
    require_systemd_tools();
    let dir = tempfile::tempdir().unwrap();
    let port = common::queues::free_port();
    let mut child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .args([
            "-E",
            &format!("TOKEN_SECRET={SECRET}"),
            "-E",
            "RUST_LOG=info",
        ])
        .arg(BIN)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "--workers",
            "2",
            "--listen",
            "127.0.0.1:1",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .expect("systemd-socket-activate");
    // systemd-socket-activate holds the socket and starts the node on the first connection,
    // which waits in the backlog meanwhile: nothing is refused.
    let wait_listening = Instant::now();
    let mut conn = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(c) => break c,
            Err(_) if wait_listening.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("systemd-socket-activate does not listen: {e}"),
        }
    };
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let answer = common::read_response(&mut conn).expect("an answer");
    assert_eq!(answer.status, 200);
    let stdout = child.stdout.take().unwrap();
    let line = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("listening on"))
        .unwrap();
    // The passed socket, not `--listen`.
    assert_eq!(line, format!("listening on http://127.0.0.1:{port}"));
    // Every worker serves it: many connections, all answered.
    for _ in 0..50 {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(common::read_response(&mut c).map(|r| r.status), Some(200));
    }
    signal(&child, common::libc_sigterm());
    let status = wait_timeout(&mut child, Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(log.contains("socket activation"), "{log}");
}

#[test]
fn check_config_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .arg("check-config")
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .env_remove("POSTGRES_STRING")
            .output()
            .unwrap()
    };
    let ok = run(&[]);
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("configuration OK"));

    let projects = dir.path().join("projects.json");
    std::fs::write(
        &projects,
        r#"[{"projectKey":"k","projectID":1,"sampleRate":300}]"#,
    )
    .unwrap();
    let bad = run(&["--projects", projects.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(1));
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(said.contains("sampleRate must be 0-100"), "{said}");

    let bad = run(&["--postgres", "postgres://x:5432/db?sslmode=sometimes"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("POSTGRES_STRING"));

    let bad = run(&["--segment-size", "1000"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("segment_size"));
}

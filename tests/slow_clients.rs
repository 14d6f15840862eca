//! Slow and greedy clients must not stop a well-behaved one: thousands of connections trickling
//! bytes, a thousand that send requests and never read, silent ones, and the connection cap. Each
//! attack runs a few seconds (bounded) while a good client measures its success rate and latency;
//! the node's RSS is read from /proc and must stay under a bound (README: "Hostile clients").

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;

/// The node's resident memory must stay under this during every attack (documented in the
/// README): a few hundred bytes per hostile connection over a ~50 MiB idle node.
const RSS_BOUND_KIB: u64 = 128 * 1024;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// What the good client saw.
#[derive(Debug)]
struct Service {
    ok: usize,
    failed: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

/// Posts batches for `how_long`, each on a fresh connection every tenth request (so accepting
/// is measured too), and times each from send to answer.
fn good_client(node: &Node, token: &str, how_long: Duration) -> Service {
    let body = [81u8, 2, 0, 0, 0, 0, 0, 3, 0, 0, 1, 2, 3];
    let request = batch_request(token, "player", "", &body);
    let mut times = Vec::new();
    let mut failed = 0;
    let mut conn: Option<TcpStream> = None;
    let end = Instant::now() + how_long;
    let mut i = 0u32;
    while Instant::now() < end {
        if i % 10 == 0 {
            conn = None;
        }
        i += 1;
        let t = Instant::now();
        let c = conn.get_or_insert_with(|| node.connect());
        let answered = c
            .write_all(&request)
            .ok()
            .and_then(|_| read_response(c))
            .map(|r| r.status);
        if answered == Some(200) {
            times.push(t.elapsed());
        } else {
            failed += 1;
            conn = None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    times.sort();
    let at = |q: f64| times[((times.len() as f64 - 1.0) * q) as usize];
    Service {
        ok: times.len(),
        failed,
        p50: at(0.5),
        p99: at(0.99),
        max: *times.last().unwrap(),
    }
}

/// Runs `attack` on its own thread until the good client is done; returns what the good client
/// saw and the node's peak RSS meanwhile.
fn under_attack(
    node: &Node,
    name: &str,
    attack: impl FnOnce(Arc<AtomicBool>) + Send + 'static,
) -> (Service, u64) {
    let s = node.start_web("web-key");
    let token = Node::token(&s);
    let stop = Arc::new(AtomicBool::new(false));
    let attacker: JoinHandle<()> = {
        let stop = stop.clone();
        std::thread::spawn(move || attack(stop))
    };
    std::thread::sleep(Duration::from_secs(2)); // let the attack build up
    let pid = node.child.id();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let service = good_client(node, &token, Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    attacker.join().unwrap();
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "{name}: good client {service:?}; node peak RSS {} MiB",
        peak / 1024
    );
    (service, peak)
}

fn assert_served(name: &str, s: &Service, peak_kib: u64) {
    assert_eq!(s.failed, 0, "{name}: every good request served: {s:?}");
    assert!(s.ok > 100, "{name}: {s:?}");
    assert!(s.p50 < Duration::from_millis(20), "{name}: p50 {s:?}");
    assert!(s.p99 < Duration::from_millis(100), "{name}: p99 {s:?}");
    assert!(s.max < Duration::from_secs(1), "{name}: max {s:?}");
    assert!(peak_kib < RSS_BOUND_KIB, "{name}: RSS {peak_kib} KiB");
}

fn open_many(node: &Node, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let s = TcpStream::connect(node.addr).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect()
}

#[test]
fn trickling_slow_and_silent_clients_do_not_stop_a_good_one() {
    let node = Node::start();

    // 5,000 connections, each sending its head one byte every two seconds.
    let conns = open_many(&node, 5000);
    let (s, rss) = under_attack(&node, "5000 trickling", move |stop| {
        let head = b"POST /v1/web/i HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n";
        let mut conns = conns;
        let mut at = 0;
        while !stop.load(Ordering::Relaxed) {
            for c in &mut conns {
                let _ = c.write(&head[at % head.len()..at % head.len() + 1]);
            }
            at += 1;
            for _ in 0..20 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    assert_served("5000 trickling", &s, rss);

    // 1,000 connections that send requests and never read the answers: twenty pipelined
    // requests each, every second (20,000 requests/s offered).
    let conns = open_many(&node, 1000);
    let (s, rss) = under_attack(&node, "1000 never reading", move |stop| {
        let burst: Vec<u8> = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(20);
        while !stop.load(Ordering::Relaxed) {
            for c in &conns {
                let mut c = c;
                let _ = c.write(&burst);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    assert_served("1000 never reading", &s, rss);

    // A few connections that flood pipelined requests as fast as they can with a tiny receive
    // window, never reading: the node must stop taking their requests once their answers back
    // up, not buffer without bound, and keep serving others.
    let flooders: Vec<TcpStream> = (0..8)
        .map(|_| {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            socket.connect(&node.addr.into()).unwrap();
            let s: TcpStream = socket.into();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let (s, rss) = under_attack(&node, "8 flooding, never reading", move |stop| {
        let many: Vec<u8> = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(1000);
        while !stop.load(Ordering::Relaxed) {
            let mut wrote = false;
            for c in &flooders {
                let mut c = c;
                if let Ok(n) = c.write(&many) {
                    wrote |= n > 0;
                }
            }
            if !wrote {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    assert_served("8 flooding, never reading", &s, rss);

    // 2,000 connections that open and say nothing.
    let conns = open_many(&node, 2000);
    let (s, rss) = under_attack(&node, "2000 silent", move |stop| {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(conns);
    });
    assert_served("2000 silent", &s, rss);
}

#[test]
fn at_the_connection_cap_idle_connections_make_room_and_busy_ones_are_kept() {
    let node = Node::builder()
        .arg("--max-connections")
        .arg("40")
        .workers(1)
        .start();
    let s = node.start_web("web-key");
    let token = Node::token(&s);

    // Forty idle keep-alive connections fill the cap; a new client still gets in.
    let mut idle: Vec<TcpStream> = (0..40).map(|_| node.connect()).collect();
    for c in &mut idle {
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(read_response(c).unwrap().status, 200);
    }
    let r = node.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200, "an idle connection made room");
    let closed = idle
        .iter_mut()
        .filter(|c| {
            let mut c: &TcpStream = c;
            c.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut b = [0u8; 1];
            match c.read(&mut b) {
                Ok(0) => true,
                Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                Ok(_) => false,
            }
        })
        .count();
    assert!(
        closed >= 1,
        "the least recently used idle connection was closed"
    );
    drop(idle);
    std::thread::sleep(Duration::from_millis(300));

    // Forty connections in the middle of a body are doing real work: a newcomer is refused,
    // and every one of them completes.
    let body = [81u8, 2, 0, 0, 0, 0, 0, 3, 0, 0, 1, 2, 3];
    let request = batch_request(&token, "player", "", &body);
    let split = request.len() - 5;
    let mut busy: Vec<TcpStream> = (0..40).map(|_| node.connect()).collect();
    for c in &mut busy {
        c.write_all(&request[..split]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut newcomer = node.connect();
    let _ = newcomer.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(read_response(&mut newcomer).is_none(), "refused at the cap");
    for c in &mut busy {
        c.write_all(&request[split..]).unwrap();
        assert_eq!(read_response(c).unwrap().status, 200);
    }
}

//! `forward-latency`: how long a batch takes from the node's 200 to a Redis reader.
//!
//! In: a node's URL and project key, the Redis URL it forwards to. Out: a summary on stderr and
//! one `FWDLATSTAT key=value ...` line on stdout. Threads: `connections` senders (blocking
//! keep-alive connections, each paced at its share of `rate`, so the load is an open loop) and
//! one reader that `XREAD BLOCK`s the `raw` stream from its end (`$`). Each batch is a valid
//! player batch whose one message carries a marker and the batch's number; a sender notes when
//! the 200 arrived, the reader when the entry appeared; the latency is the difference, on one
//! monotonic clock.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// One stream of an `XREAD` reply: its name, and its entries' ids and fields.
type XreadStream = (String, Vec<(String, Vec<(String, Vec<u8>)>)>);

const MARK: &[u8; 8] = b"FWDLAT01";

pub struct Probe {
    pub addr: SocketAddr,
    pub host: String,
    pub project_key: String,
    pub redis: String,
    pub stream: String,
    pub rate: f64,
    pub connections: usize,
    pub duration: Duration,
    pub body: usize,
}

/// A player batch (BatchMetadata version 2, one sized message of type 100) of about `size`
/// bytes whose message starts with the marker and `n`.
fn batch(n: u64, size: usize) -> Vec<u8> {
    let mut inner = MARK.to_vec();
    inner.extend_from_slice(&n.to_le_bytes());
    inner.resize(size.saturating_sub(16).max(16), b'.');
    let mut b = vec![81, 2, 1];
    let mut v = n;
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
    b.extend_from_slice(&[0, 0, 100]);
    b.extend_from_slice(&(inner.len() as u32).to_le_bytes()[..3]);
    b.extend_from_slice(&inner);
    b
}

fn marked(value: &[u8]) -> Option<u64> {
    let at = value.windows(MARK.len()).position(|w| w == MARK)?;
    let n = value.get(at + 8..at + 16)?;
    Some(u64::from_le_bytes(n.try_into().ok()?))
}

/// One request on a keep-alive connection; the status.
fn exchange(conn: &mut TcpStream, request: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    conn.write_all(request)?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head) = resp.parse(&buf)? {
            let len = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(0usize);
            if buf.len() >= head + len {
                return Ok((resp.code.unwrap_or(0), buf[head..head + len].to_vec()));
            }
        }
    }
}

fn start_token(p: &Probe) -> anyhow::Result<String> {
    let body = crate::traffic::start_body(&p.project_key, now_ms());
    let req = format!(
        "POST /v1/web/start HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nUser-Agent: \
         Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\n\
         Content-Length: {}\r\n\r\n{body}",
        p.host,
        body.len()
    );
    let mut conn = TcpStream::connect(p.addr)?;
    let (status, answer) = exchange(&mut conn, req.as_bytes())?;
    if status != 200 {
        bail!("start: {status} {}", String::from_utf8_lossy(&answer));
    }
    let v: serde_json::Value = serde_json::from_slice(&answer)?;
    Ok(v["token"].as_str().context("no token")?.to_string())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub struct Outcome {
    pub sent: u64,
    pub seen: u64,
    pub latencies_us: hdrhistogram::Histogram<u64>,
}

pub fn run(p: &Probe) -> anyhow::Result<Outcome> {
    let token = start_token(p)?;
    let acked: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let seen: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let stop_reader = Arc::new(AtomicBool::new(false));

    let mut conn = redis::Client::open(p.redis.as_str())?.get_connection()?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let reader = {
        let seen = Arc::clone(&seen);
        let stop = Arc::clone(&stop_reader);
        let stream = p.stream.clone();
        std::thread::spawn(move || -> anyhow::Result<()> {
            let mut last = "$".to_string();
            while !stop.load(Ordering::Relaxed) {
                let reply: redis::Value = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(1000)
                    .arg("BLOCK")
                    .arg(100)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(&last)
                    .query(&mut conn)?;
                let now = Instant::now();
                let entries: Vec<XreadStream> = match reply {
                    redis::Value::Nil => continue,
                    other => redis::from_redis_value(other)?,
                };
                let mut seen = seen.lock().unwrap();
                for (_, items) in entries {
                    for (id, fields) in items {
                        for (name, value) in &fields {
                            if name == "value" {
                                if let Some(n) = marked(value) {
                                    seen.entry(n).or_insert(now);
                                }
                            }
                        }
                        last = id;
                    }
                }
            }
            Ok(())
        })
    };
    // Let the reader block at the stream's end before the first batch.
    std::thread::sleep(Duration::from_millis(300));

    let per_conn = p.rate / p.connections as f64;
    let started = Instant::now();
    let mut senders = Vec::new();
    for c in 0..p.connections {
        let acked = Arc::clone(&acked);
        let (addr, host, token, duration, body) =
            (p.addr, p.host.clone(), token.clone(), p.duration, p.body);
        let connections = p.connections as u64;
        senders.push(std::thread::spawn(move || -> anyhow::Result<u64> {
            let mut conn = TcpStream::connect(addr)?;
            conn.set_nodelay(true)?;
            let interval = Duration::from_secs_f64(1.0 / per_conn);
            let mut next = started + interval.mul_f64(c as f64 / connections as f64);
            let mut i = 0u64;
            while next < started + duration {
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                }
                let n = i * connections + c as u64;
                let b = batch(n, body);
                let mut req = format!(
                    "POST /v1/web/i HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
                     DataType: player\r\nContent-Length: {}\r\n\r\n",
                    b.len()
                )
                .into_bytes();
                req.extend_from_slice(&b);
                let (status, answer) = exchange(&mut conn, &req)?;
                let at = Instant::now();
                if status != 200 {
                    bail!("batch {n}: {status} {}", String::from_utf8_lossy(&answer));
                }
                acked.lock().unwrap().insert(n, at);
                i += 1;
                next += interval;
            }
            Ok(i)
        }));
    }
    let mut sent = 0;
    for s in senders {
        sent += s.join().expect("sender thread")?;
    }
    // Give the last batches time to arrive.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && (seen.lock().unwrap().len() as u64) < sent {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop_reader.store(true, Ordering::Relaxed);
    reader.join().expect("reader thread")?;

    let acked = acked.lock().unwrap();
    let seen = seen.lock().unwrap();
    let mut latencies_us = hdrhistogram::Histogram::new(3)?;
    for (n, at) in acked.iter() {
        if let Some(seen_at) = seen.get(n) {
            // The reader may see an entry before the sender reads its 200.
            let us = seen_at.saturating_duration_since(*at).as_micros() as u64;
            latencies_us.record(us.max(1))?;
        }
    }
    Ok(Outcome {
        sent,
        seen: latencies_us.len(),
        latencies_us,
    })
}

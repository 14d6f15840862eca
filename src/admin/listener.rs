//! The admin listener (`--admin-listen`, loopback by default): `GET /metrics`, `/health/live`
//! and `/health/ready`, apart from the client traffic.
//!
//! In: a scraper's or an operator's requests, one at a time. Out: the metrics text or a health
//! body, then the connection closes. Thread: `admin`, its own small blocking loop (a scrape every
//! few seconds needs no event loop); it reads counters and lags, never a lock the request path
//! takes.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::metrics::{render, Sources};
use crate::background::Background;

/// A request head larger than this is refused; admin requests are a line and a few headers.
const MAX_HEAD: usize = 8 << 10;
/// How long one admin client may take to send its head or read its answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the accept loop looks at its stop flag.
const POLL: Duration = Duration::from_millis(100);

pub struct AdminListener {
    addr: SocketAddr,
    _thread: Background,
}

impl AdminListener {
    /// Binds `addr` and serves it until dropped.
    pub fn start(addr: SocketAddr, sources: Sources) -> io::Result<AdminListener> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let thread = Background::spawn("admin".into(), move |stop| {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Err(e) = serve(stream, &sources) {
                            log::debug!("admin: {e}");
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
                    Err(e) => {
                        log::warn!("admin: accept failed: {e}");
                        std::thread::sleep(POLL);
                    }
                }
            }
        })?;
        Ok(AdminListener {
            addr,
            _thread: thread,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

fn serve(mut stream: TcpStream, sources: &Sources) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let path = loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                let method = request.method.unwrap_or_default();
                let path = request.path.unwrap_or_default();
                let path = path.split('?').next().unwrap_or_default().to_string();
                if method != "GET" && method != "HEAD" {
                    return answer(
                        &mut stream,
                        405,
                        "application/json",
                        br#"{"error":"method not allowed"}"#,
                    );
                }
                break path;
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => {}
            _ => {
                return answer(
                    &mut stream,
                    400,
                    "application/json",
                    br#"{"error":"bad request"}"#,
                )
            }
        }
    };
    let health = &sources.node.health;
    match path.as_str() {
        "/metrics" => {
            let (text, content_type) = render(sources);
            answer(&mut stream, 200, content_type, text.as_bytes())
        }
        "/health/live" => {
            let (ok, body) = health.live();
            answer(
                &mut stream,
                if ok { 200 } else { 503 },
                "application/json",
                &body,
            )
        }
        "/health/ready" => {
            let (ok, body) = health.ready();
            answer(
                &mut stream,
                if ok { 200 } else { 503 },
                "application/json",
                &body,
            )
        }
        _ => answer(
            &mut stream,
            404,
            "application/json",
            br#"{"error":"not found"}"#,
        ),
    }
}

fn answer(stream: &mut TcpStream, status: u16, content_type: &str, body: &[u8]) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

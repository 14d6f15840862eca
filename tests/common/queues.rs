//! Real servers for tests: Debian's `redis-server` and `haproxy`, each started on a free
//! loopback port in a temporary directory and stopped by its pid.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// Serves TLS only (`rediss://`), with a self-signed certificate.
    tls: bool,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

/// An XADD entry as OpenReplay's consumers see it: its id and its fields in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub fields: Vec<(String, Vec<u8>)>,
}

impl Entry {
    pub fn session(&self) -> u64 {
        let (name, value) = &self.fields[0];
        assert_eq!(name, "sessionID");
        std::str::from_utf8(value).unwrap().parse().unwrap()
    }

    pub fn value(&self) -> &[u8] {
        let (name, value) = &self.fields[1];
        assert_eq!(name, "value");
        value
    }
}

/// Fails the test, saying how to install it, when `tool` does not run (`tool version_arg`).
pub fn require(tool: &str, version_arg: &str) {
    require_from(tool, version_arg, tool);
}

/// [`require`] for a tool that Debian's `package` installs.
pub fn require_from(tool: &str, version_arg: &str, package: &str) {
    let found = Command::new(tool)
        .arg(version_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "these tests need a real {tool}: apt-get install {package} (./test.sh installs it when \
         run as root)"
    );
}

fn redis_binary() -> &'static str {
    require("redis-server", "--version");
    "redis-server"
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// A server on a free port, with append-only persistence (so a restart keeps its data).
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// A server that speaks TLS only, with a self-signed certificate (made by `openssl`).
    pub fn start_tls() -> RedisServer {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> RedisServer {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        if tls {
            let made = Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args(["-subj", "/CN=127.0.0.1", "-keyout"])
                .arg(dir.join("key.pem"))
                .arg("-out")
                .arg(dir.join("cert.pem"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl (apt-get install openssl) makes the test certificate");
            assert!(made.success(), "openssl req failed");
        }
        let mut server = RedisServer {
            child: None,
            port: 0,
            tls,
            dir,
            _tmp: tmp,
        };
        // A port found free may be taken before the server binds it: try another.
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start: {}", server.log());
    }

    /// The URL a node is given.
    pub fn url(&self) -> String {
        if self.tls {
            // `#insecure`: the test's certificate is self-signed.
            format!("rediss://127.0.0.1:{}/#insecure", self.port)
        } else {
            format!("redis://127.0.0.1:{}", self.port)
        }
    }

    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new(redis_binary());
        if self.tls {
            cmd.args(["--port", "0", "--tls-port"])
                .arg(self.port.to_string())
                .arg("--tls-cert-file")
                .arg(self.dir.join("cert.pem"))
                .arg("--tls-key-file")
                .arg(self.dir.join("key.pem"))
                .args(["--tls-auth-clients", "no"]);
        } else {
            cmd.arg("--port").arg(self.port.to_string());
        }
        let child = cmd
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--logfile", "redis.log"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                eprintln!("redis-server exited: {status}");
                return false;
            }
            if self.ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
            return false;
        };
        redis::cmd("PING").query::<String>(&mut conn).is_ok()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// Stops the server (SIGTERM: it writes its append-only file and exits) and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            super::signal(&child, super::libc_sigterm());
            if super::wait_timeout(&mut child, Duration::from_secs(10)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Starts it again on the same port and directory (its data comes back).
    pub fn restart(&mut self) {
        self.stop();
        assert!(self.spawn(), "redis-server did not restart: {}", self.log());
    }

    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap()
    }

    /// Every entry of `stream`, oldest first (none if it does not exist).
    pub fn entries(&self, stream: &str) -> Vec<Entry> {
        let mut conn = self.connection();
        let raw: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
            .arg(stream)
            .arg("-")
            .arg("+")
            .query(&mut conn)
            .unwrap();
        raw.into_iter()
            .map(|(id, flat)| Entry {
                id,
                fields: flat
                    .chunks(2)
                    .map(|pair| (String::from_utf8(pair[0].clone()).unwrap(), pair[1].clone()))
                    .collect(),
            })
            .collect()
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Debian's haproxy in front of some nodes: HTTP mode, round robin, no affinity.
pub struct Haproxy {
    child: Child,
    pub addr: std::net::SocketAddr,
    _tmp: tempfile::TempDir,
}

impl Haproxy {
    pub fn start(backends: &[std::net::SocketAddr]) -> Haproxy {
        require("haproxy", "-v");
        let tmp = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = free_port();
            let mut cfg = format!(
                "global\n  maxconn 512\ndefaults\n  mode http\n  timeout connect 5s\n  \
                 timeout client 30s\n  timeout server 30s\n  option http-server-close\n\
                 frontend edge\n  bind 127.0.0.1:{port}\n  default_backend nodes\n\
                 backend nodes\n  balance roundrobin\n"
            );
            for (i, b) in backends.iter().enumerate() {
                cfg += &format!("  server node{i} {b}\n");
            }
            let path = tmp.path().join("haproxy.cfg");
            std::fs::write(&path, cfg).unwrap();
            let mut child = Command::new("haproxy")
                .arg("-db")
                .arg("-f")
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(
                    std::fs::File::create(tmp.path().join("haproxy.log")).unwrap(),
                ))
                .spawn()
                .expect("start haproxy");
            let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if std::net::TcpStream::connect(addr).is_ok() {
                    return Haproxy {
                        child,
                        addr,
                        _tmp: tmp,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "haproxy did not start: {}",
            std::fs::read_to_string(tmp.path().join("haproxy.log")).unwrap_or_default()
        );
    }

    /// One request on a new connection (so round robin picks the next node).
    pub fn request(&self, raw: &[u8]) -> super::Response {
        use std::io::Write;
        let mut conn = std::net::TcpStream::connect(self.addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.write_all(raw).unwrap();
        super::read_response(&mut conn).expect("an answer through haproxy")
    }

    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> serde_json::Value {
        let r = self.request(&super::post_request(
            path,
            &[
                ("Content-Type", "application/json"),
                ("User-Agent", super::UA),
            ],
            body.to_string().as_bytes(),
        ));
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r.json()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

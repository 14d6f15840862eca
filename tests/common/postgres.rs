//! A real PostgreSQL for tests: Debian's `postgresql` binaries, `initdb` and `pg_ctl` in a
//! temporary directory (as `nobody` when the tests run as root: PostgreSQL refuses to run as
//! root), on a free loopback port, with the tables of the node's own `schema.sql`; stopped by
//! the postmaster's pid.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::queues::free_port;

/// The unprivileged user a root test runs PostgreSQL as.
const NOBODY: u32 = 65534;

pub struct PgServer {
    pub port: u16,
    /// Offers TLS (a self-signed certificate, made by `openssl`) besides plain connections.
    tls: bool,
    bin: PathBuf,
    data: PathBuf,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

/// The directory of `initdb`, `pg_ctl` and `postgres`: on PATH, or Debian's
/// `/usr/lib/postgresql/<version>/bin` (the newest).
fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(bin) = found.pop() {
        return bin;
    }
    let on_path = Command::new("initdb")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        on_path,
        "these tests need a real PostgreSQL server: apt-get install postgresql (./test.sh \
         installs it when run as root)"
    );
    PathBuf::new()
}

fn is_root() -> bool {
    effective_uid() == 0
}

/// From `/proc/self/status` (its `Uid:` line: real, effective, saved, fs), without `unsafe`.
fn effective_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|uid| uid.parse().ok())
        .unwrap_or(u32::MAX)
}

impl PgServer {
    /// A fresh cluster, started, with the schema created in database `postgres`.
    pub fn start() -> PgServer {
        Self::start_with(false)
    }

    /// As [`PgServer::start`], and the server also speaks TLS.
    pub fn start_tls() -> PgServer {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> PgServer {
        let bin = bin_dir();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        if is_root() {
            std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        let data = dir.join("data");
        let out = pg_command(&bin, "initdb", &dir)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if tls {
            let made = Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args(["-subj", "/CN=127.0.0.1", "-keyout"])
                .arg(dir.join("server.key"))
                .arg("-out")
                .arg(dir.join("server.crt"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl (apt-get install openssl) makes the test certificate");
            assert!(made.success(), "openssl req failed");
            for file in ["server.key", "server.crt"] {
                let path = dir.join(file);
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )
                .unwrap();
                if is_root() {
                    std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).unwrap();
                }
            }
        }
        let mut server = PgServer {
            port: 0,
            tls,
            bin,
            data,
            dir,
            _tmp: tmp,
        };
        // A port found free may be taken before the server binds it: try another.
        let mut started = false;
        for _ in 0..5 {
            server.port = free_port();
            if server.try_start() {
                started = true;
                break;
            }
        }
        assert!(started, "PostgreSQL did not start: {}", server.log());
        server
            .client()
            .batch_execute(replay_ingest::db::SCHEMA)
            .expect("the node's schema.sql creates");
        server
    }

    fn try_start(&self) -> bool {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off \
             -c max_connections=200",
            self.port,
            self.dir.display()
        );
        if self.tls {
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key",
                self.dir.display()
            ));
        }
        pg_command(&self.bin, "pg_ctl", &self.dir)
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts the stopped server again, on the same port and data.
    pub fn restart(&self) {
        assert!(
            self.try_start(),
            "PostgreSQL did not restart: {}",
            self.log()
        );
    }

    /// The postmaster's pid while it runs (first line of `postmaster.pid`).
    pub fn pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Stops the server: SIGINT to the postmaster (a fast shutdown: clients are cut off), and
    /// waits until it is gone.
    pub fn stop(&self) {
        self.signal_and_wait(SIGINT);
    }

    fn signal_and_wait(&self, sig: i32) {
        let Some(pid) = self.pid() else { return };
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(self.data.join("postmaster.pid"));
    }

    /// The URL a node is given (plain).
    pub fn url(&self) -> String {
        self.url_with("disable")
    }

    /// The URL with libpq's `sslmode` set to `mode`.
    pub fn url_with(&self, mode: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode={mode}",
            self.port
        )
    }

    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls).expect("connect to the test db")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // SIGQUIT: an immediate shutdown; the data is thrown away with the directory.
        self.signal_and_wait(SIGQUIT);
    }
}

const SIGINT: i32 = 2;
const SIGQUIT: i32 = 3;

/// `tool` from `bin`, run in `dir`, as `nobody` when the tests run as root.
fn pg_command(bin: &Path, tool: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(if bin.as_os_str().is_empty() {
        PathBuf::from(tool)
    } else {
        bin.join(tool)
    });
    cmd.current_dir(dir).env("LC_ALL", "C");
    if is_root() {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    cmd
}

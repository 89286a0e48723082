//! A real ClickHouse server for tests (the Debian `clickhouse-server` package, which
//! `scripts/test.sh` installs): one per test, with its own config file and data in a temporary
//! directory, killed on drop (its log printed when the test failed). Shared by
//! `logger/tests/clickhouse.rs` and the end-to-end tests through `#[path]`.
//!
//! No port is guessed. ClickHouse 18.16 takes `<http_port>0</http_port>` (the system picks a
//! port) but logs `Listening http://127.0.0.1:0` and writes no file saying which port it got, so
//! the fixture reads it from the kernel: the TCP socket in LISTEN state among the server's own
//! file descriptors (`/proc/<pid>/fd` and `/proc/<pid>/net/tcp`). The native protocol port is
//! left out (nothing here uses it), so the HTTP port is the only one. Clients get the address
//! of a [`relay::Relay`] the fixture owns, so that [`ClickHouse::restart`] can bind a new port
//! while `url` stays the same.

// Test support: failing loudly is the point here.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// `tests/common/relay.rs`, which the including crate declares beside this module.
use super::relay;

/// The TCP ports process `pid` listens on, from its socket file descriptors and the kernel's
/// TCP table (IPv4).
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .map(str::to_owned)
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
            let cols: Vec<&str> = line.split_whitespace().collect();
            let listening = cols.get(3) == Some(&"0A");
            let ours = cols
                .get(9)
                .is_some_and(|inode| inodes.iter().any(|i| i == inode));
            let port = cols.get(1)?.rsplit_once(':')?.1;
            (listening && ours).then(|| u16::from_str_radix(port, 16).ok())?
        })
        .collect()
}

fn server_bin() -> PathBuf {
    ["/usr/bin/clickhouse-server", "/usr/sbin/clickhouse-server", "/usr/bin/clickhouse"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("ClickHouse is needed for these tests: run scripts/test.sh, which installs it (apt-get install clickhouse-server)")
}

pub struct ClickHouse {
    child: Child,
    dir: tempfile::TempDir,
    /// The relay in front of the server; its address is `url`'s.
    relay: relay::Relay,
    /// `http://127.0.0.1:PORT`: stays the same across [`ClickHouse::restart`].
    pub url: String,
}

impl ClickHouse {
    pub fn start() -> ClickHouse {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let config = dir.path().join("config.xml");
        std::fs::write(
            &config,
            format!(
                r#"<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/server.err.log</errorlog></logger>
    <http_port>0</http_port>
    <listen_host>127.0.0.1</listen_host>
    <path>{d}/data/</path>
    <tmp_path>{d}/tmp/</tmp_path>
    <user_files_path>{d}/user_files/</user_files_path>
    <format_schema_path>{d}/format_schemas/</format_schema_path>
    <users_config>{d}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>268435456</mark_cache_size>
</yandex>
"#
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("users.xml"),
            r#"<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>2000000000</max_memory_usage></default></profiles>
    <users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
"#,
        )
        .unwrap();
        let child = Self::spawn(dir.path());
        let relay = relay::Relay::start("127.0.0.1:0", None);
        let mut ch = ClickHouse {
            child,
            dir,
            url: format!("http://{}", relay.addr()),
            relay,
        };
        ch.wait_ready();
        ch
    }

    fn spawn(dir: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("stdout.log"))
            .unwrap();
        let bin = server_bin();
        let mut cmd = Command::new(&bin);
        if bin.ends_with("clickhouse") {
            cmd.arg("server");
        }
        cmd.arg(format!(
            "--config-file={}",
            dir.join("config.xml").display()
        ))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
    }

    /// Kills the server (`kill -9`), keeping its data.
    pub fn kill(&mut self) {
        self.relay.set_target(None);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on its data, on a port of its own, behind the same `url`.
    pub fn restart(&mut self) {
        self.child = Self::spawn(self.dir.path());
        self.wait_ready();
    }

    pub fn logs(&self) -> String {
        ["stdout.log", "server.err.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until the server listens (on the port the system gave it) and answers
    /// `SELECT 1` there; then points the relay at it.
    fn wait_ready(&mut self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "ClickHouse exited during start-up ({status}):\n{}",
                    self.logs()
                );
            }
            let ports = listening_ports(self.child.id());
            if let [port] = ports[..] {
                let bound = SocketAddr::from(([127, 0, 0, 1], port));
                if query_at(bound, "SELECT 1").is_some_and(|r| r.trim() == "1") {
                    self.relay.set_target(Some(bound));
                    return;
                }
            }
            assert!(
                ports.len() <= 1,
                "ClickHouse listens on several ports ({ports:?}): which is HTTP?"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("ClickHouse did not answer:\n{}", self.logs());
    }

    /// A query over plain HTTP/1.0 (no client library: the test checks what is really
    /// stored); `None` unless ClickHouse answers 200.
    pub fn query(&self, sql: &str) -> Option<String> {
        query_at(self.relay.addr(), sql)
    }
}

/// [`ClickHouse::query`] at `addr`.
fn query_at(addr: SocketAddr, sql: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "POST / HTTP/1.0\r\nContent-Length: {}\r\n\r\n{sql}",
        sql.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200").then(|| body.to_owned())
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("===== ClickHouse log =====\n{}", self.logs());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

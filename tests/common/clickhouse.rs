//! A real ClickHouse server for tests (the Debian `clickhouse-server` package, which
//! `scripts/test.sh` installs): one per test, with its own config file, data in a temporary
//! directory and free ports, killed on drop (its log printed when the test failed). Shared by
//! `logger/tests/clickhouse.rs` and the end-to-end tests through `#[path]`.

// Test support: failing loudly is the point here.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    pub url: String,
}

impl ClickHouse {
    pub fn start() -> ClickHouse {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let (http, tcp) = (free_port(), free_port());
        let config = dir.path().join("config.xml");
        std::fs::write(
            &config,
            format!(
                r#"<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/server.err.log</errorlog></logger>
    <http_port>{http}</http_port>
    <tcp_port>{tcp}</tcp_port>
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
        let mut ch = ClickHouse {
            child,
            dir,
            url: format!("http://127.0.0.1:{http}"),
        };
        ch.wait_ready();
        ch
    }

    fn spawn(dir: &std::path::Path) -> Child {
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same ports and data.
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

    /// Polls `/?query=SELECT 1` until it answers.
    fn wait_ready(&mut self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "ClickHouse exited during start-up ({status}):\n{}",
                    self.logs()
                );
            }
            if self.query("SELECT 1").is_some_and(|r| r.trim() == "1") {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("ClickHouse did not answer:\n{}", self.logs());
    }

    /// A query over plain HTTP/1.0 (no client library: the test checks what is really
    /// stored); `None` unless ClickHouse answers 200.
    pub fn query(&self, sql: &str) -> Option<String> {
        use std::io::{Read, Write};
        let host = self.url.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(host).ok()?;
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

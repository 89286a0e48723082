//! A real Prometheus for tests (the Debian `prometheus` package, 2.42, which `scripts/test.sh`
//! installs): its own config (1 s scrape and rule evaluation), data in a temporary directory,
//! a free port (2.42 cannot listen on port 0 and report it), killed on drop, its log printed
//! when the test failed. Queried through its HTTP API.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{free_port, Proc};

/// One scrape job: a name, a `host:port` and the metrics path.
pub struct Target<'a> {
    pub job: &'a str,
    pub address: &'a str,
    pub path: &'a str,
}

pub struct Prometheus {
    pub url: String,
    pub proc: Proc,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

fn prometheus_bin() -> PathBuf {
    ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("Prometheus is needed for this test: run scripts/test.sh, which installs it (apt-get install prometheus)")
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` every second, with the rule files `rules`, and
    /// waits until it is ready.
    pub fn start(targets: &[Target<'_>], rules: &[&Path]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\nrule_files:\n",
        );
        for r in rules {
            config.push_str(&format!("  - \"{}\"\n", r.display()));
        }
        config.push_str("scrape_configs:\n");
        for t in targets {
            config.push_str(&format!(
                "  - job_name: {}\n    metrics_path: {}\n    static_configs: [{{ targets: [\"{}\"] }}]\n",
                t.job, t.path, t.address
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        let mut proc = Proc::spawn(
            "prometheus",
            Command::new(prometheus_bin())
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={address}"))
                .arg("--log.level=warn"),
            dir.path(),
        );
        super::wait_http_ok(&format!("http://{address}/-/ready"), &mut [&mut proc]);
        Prometheus {
            url: format!("http://{address}"),
            proc,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// `GET /api/v1/<path>` with `query`; the `data` of a successful answer.
    pub async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let v: Value = self
            .http
            .get(format!("{}/api/v1/{path}", self.url))
            .query(query)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["status"], "success", "{path} {query:?}: {v}");
        v["data"].clone()
    }

    /// The result vector of an instant query.
    pub async fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.api("query", &[("query", expr)]).await;
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until every scrape target is up (or panics after 30 s).
    pub async fn wait_targets_up(&self, n: usize) {
        let start = Instant::now();
        loop {
            let up = self.query("up == 1").await.len();
            if up >= n {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "only {up} of {n} targets up: {}",
                self.api("targets", &[]).await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("===== prometheus log =====\n{}", self.proc.log());
        }
    }
}

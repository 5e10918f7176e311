//! A real service binary started as its own process, for what only a
//! whole process shows: the metrics it exports. The Prometheus recorder is
//! global per process, so the in-process services of [`crate::TestApp`]
//! cannot show what a freshly started binary exports.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a binary may take to connect its store and broker and listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running service process, stopped with SIGTERM by [`Binary::stop`]
/// (killed if dropped).
pub struct Binary {
    child: Child,
    /// `127.0.0.1:port` of its `/metrics` listener.
    pub metrics_addr: String,
    /// `127.0.0.1:port` of its main listener (`PARLEY_LISTEN`).
    pub listen_addr: String,
    data_dir: PathBuf,
}

impl Binary {
    /// Starts `exe` listening on a free loopback port, serving metrics on
    /// another, with `env` added (logs as JSON on stderr), and waits until
    /// the log line `ready_message` says the service is serving: by then it
    /// has built everything it registers at start-up.
    pub async fn start(exe: &Path, env: &[(&str, String)], ready_message: &str) -> Binary {
        let data_dir =
            std::env::temp_dir().join(format!("parley-bin-{}", uuid::Uuid::new_v4().simple()));
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let listen_addr = format!("127.0.0.1:{}", free_port());
        let mut command = Command::new(exe);
        command
            .env("PARLEY_LISTEN", &listen_addr)
            .env("PARLEY_METRICS_ADDR", &metrics_addr)
            .env("PARLEY_DATA_DIR", &data_dir)
            .env("PARLEY_LOG", "info")
            .env("PARLEY_LOG_FORMAT", "json")
            // Stopped at once unless a test asks for a drain (`env` below).
            .env("PARLEY_DRAIN_DELAY", "0s")
            .env("PARLEY_DRAIN_PERIOD", "0s")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", exe.display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        let started = tokio::time::timeout(START_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                let ready = line.contains(ready_message);
                seen.push(line);
                if ready {
                    return true;
                }
            }
            false
        })
        .await;
        if started != Ok(true) {
            panic!(
                "{} did not log {ready_message:?}; its log:\n{}",
                exe.display(),
                seen.join("\n")
            );
        }
        // Keep draining its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Binary {
            child,
            metrics_addr,
            listen_addr,
            data_dir,
        }
    }

    /// The body of `GET /metrics`.
    pub async fn scrape(&self) -> String {
        let response = reqwest::get(format!("http://{}/metrics", self.metrics_addr))
            .await
            .expect("scraping /metrics");
        assert!(response.status().is_success(), "{}", response.status());
        response.text().await.expect("a metrics body")
    }

    /// Sends `signal` (a name `kill` knows: TERM, KILL, STOP, CONT).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// SIGKILL (no goodbye of any kind), and waits until the process is gone.
    pub async fn kill(mut self) {
        self.signal("KILL");
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("gone after SIGKILL");
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }

    /// SIGTERM, and a clean exit within 30 s.
    pub async fn stop(self) {
        self.signal("TERM");
        self.exited().await;
    }

    /// Waits (up to 30 s) for the process to exit after a signal; asserts a clean exit.
    pub async fn exited(mut self) {
        let exit = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits after SIGTERM")
            .expect("exit status");
        let _ = std::fs::remove_dir_all(&self.data_dir);
        assert!(exit.success(), "exited with {exit}");
    }
}

/// The dashboards' metric names that a service owns (those starting with
/// one of `prefixes`) and that `body`, its `/metrics`, lacks. Panics if
/// the dashboards name none of them: the check would prove nothing.
pub fn missing_dashboard_metrics(body: &str, prefixes: &[&str]) -> Vec<String> {
    let owned: Vec<String> = dashboard_metric_names()
        .into_iter()
        .filter(|name| prefixes.iter().any(|p| name.starts_with(p)))
        .collect();
    assert!(
        !owned.is_empty(),
        "the dashboards use no metric starting with {prefixes:?}"
    );
    let exported = exported_names(body);
    owned
        .into_iter()
        .filter(|name| !exported.contains(name))
        .collect()
}

/// A Redis key prefix no other test uses.
pub fn unique_redis_prefix() -> String {
    format!("test:{}:", uuid::Uuid::new_v4().simple())
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Every metric name the Grafana dashboards query (`grafana/dashboards/*.json`).
pub fn dashboard_metric_names() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../grafana/dashboards");
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("grafana/dashboards") {
        let path = entry.expect("a dashboard").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("a readable dashboard");
            let json: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
            let mut exprs = Vec::new();
            collect_exprs(&json, &mut exprs);
            for expr in exprs {
                names.extend(metric_names_in(&expr));
            }
        }
    }
    names
}

fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match value {
                    serde_json::Value::String(expr) if key == "expr" => out.push(expr.clone()),
                    other => collect_exprs(other, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The metric names in a PromQL expression: identifiers that are not
/// function calls, keywords, label names (in `by (...)`, `{...}`) or
/// Grafana variables.
pub fn metric_names_in(expr: &str) -> Vec<String> {
    // Aggregations are calls too, but may be followed by `by (...)` first.
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    let mut skip_label_list = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '{' || c == '"' {
            // Label matchers and strings: skip to the closing character.
            let close = if c == '{' { '}' } else { '"' };
            i += 1;
            while i < chars.len() && chars[i] != close {
                i += 1;
            }
            i += 1;
        } else if c == '[' {
            // A range ([$__rate_interval], [5m]).
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '(' && skip_label_list {
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            skip_label_list = false;
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let is_call = chars.get(next) == Some(&'(');
            if LABEL_LISTS.contains(&word.as_str()) {
                skip_label_list = true;
            } else if !is_call && !KEYWORDS.contains(&word.as_str()) {
                names.push(word);
            }
        } else {
            if c == '$' {
                // A Grafana variable: skip its name.
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                continue;
            }
            i += 1;
        }
    }
    names
}

/// The names of the samples in a Prometheus text exposition (histograms
/// appear as `name_bucket`, `name_sum` and `name_count`).
pub fn exported_names(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_found_in_promql() {
        assert_eq!(
            metric_names_in(
                "histogram_quantile(0.99, sum by (le, route) (rate(http_request_duration_seconds_bucket[$__rate_interval])))"
            ),
            vec!["http_request_duration_seconds_bucket"]
        );
        assert_eq!(
            metric_names_in(
                "sum by (instance) (process_resident_memory_bytes) / sum by (instance) (gateway_connections > 0)"
            ),
            vec!["process_resident_memory_bytes", "gateway_connections"]
        );
        assert_eq!(
            metric_names_in(r#"sum(rate(api_errors_total{code="internal"}[5m])) or vector(0)"#),
            vec!["api_errors_total"]
        );
    }

    #[test]
    fn sample_names_are_read_from_an_exposition() {
        let body = "# TYPE a counter\na{x=\"1\"} 0\nb_bucket{le=\"0.1\"} 0\nc 1\n";
        assert_eq!(
            exported_names(body),
            BTreeSet::from(["a".to_owned(), "b_bucket".to_owned(), "c".to_owned()])
        );
    }
}

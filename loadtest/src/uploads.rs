//! `uploads`: attachment upload throughput. One user signs up, creates a
//! room, and `concurrency` workers upload `count` files of `size` bytes
//! through `POST /v1/rooms/{room}/attachments` (each body streamed from a
//! buffer shared by every request, so the generator's memory does not grow
//! with the file size). Reports uploads/s, MiB/s, the latency of each
//! upload (first byte sent to the 201), failures by status, and, given the
//! server's pid, its CPU time per GiB and its peak resident memory (a
//! server that buffered whole uploads would show it there).

use crate::cli::UploadsArgs;
use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes per chunk of a request body as it is handed to the socket.
const CHUNK: usize = 256 * 1024;

pub struct UploadsReport {
    pub uploads: u64,
    pub size: u64,
    pub concurrency: u32,
    pub seconds: f64,
    pub failures: BTreeMap<String, u64>,
    pub latency: Histogram<u64>,
    /// The server's CPU seconds during the run (user + system), if its pid was given.
    pub server_cpu_seconds: Option<f64>,
    /// The server's peak resident memory (VmHWM) after the run, in MiB.
    pub server_peak_rss_mib: Option<f64>,
    pub server_rss_before_mib: Option<f64>,
}

impl UploadsReport {
    pub fn text(&self) -> String {
        let mib = (self.uploads * self.size) as f64 / (1024.0 * 1024.0);
        let ms = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        let mut out = format!(
            "uploads: {} of {:.1} MiB with {} at a time in {:.1} s: {:.1} uploads/s, {:.1} MiB/s\n  \
             latency ms: p50 {:.0}, p90 {:.0}, p99 {:.0}, max {:.0}\n",
            self.uploads,
            self.size as f64 / (1024.0 * 1024.0),
            self.concurrency,
            self.seconds,
            self.uploads as f64 / self.seconds,
            mib / self.seconds,
            ms(0.5),
            ms(0.9),
            ms(0.99),
            self.latency.max() as f64 / 1000.0,
        );
        if let Some(cpu) = self.server_cpu_seconds {
            out += &format!(
                "  server CPU: {cpu:.1} s, {:.2} s per GiB ({:.0} % of one core)\n",
                cpu / (mib / 1024.0).max(f64::MIN_POSITIVE),
                100.0 * cpu / self.seconds
            );
        }
        if let (Some(before), Some(peak)) = (self.server_rss_before_mib, self.server_peak_rss_mib) {
            out += &format!(
                "  server memory: {before:.0} MiB resident before, {peak:.0} MiB at peak\n"
            );
        }
        for (why, n) in &self.failures {
            out += &format!("  failed: {n} x {why}\n");
        }
        out
    }
}

/// Latencies in µs, from 1 µs to an hour (saturating beyond).
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// CPU seconds (user + system) of process `pid` so far.
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks)
}

/// A `/proc/<pid>/status` memory line (`VmRSS`, `VmHWM`) in MiB.
fn process_memory_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

async fn json_of(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{status}: {body}");
    }
    Ok(body)
}

pub async fn run(args: &UploadsArgs) -> anyhow::Result<UploadsReport> {
    let http = reqwest::Client::new();
    let api = args.api.trim_end_matches('/').to_owned();
    let name = format!("up_{:08x}", rand::random::<u32>());
    let password = format!("{name}-load-test-password");
    json_of(
        http.post(format!("{api}/v1/auth/signup"))
            .json(&json!({"username": name, "email": format!("{name}@example.com"), "password": password}))
            .send()
            .await?,
    )
    .await
    .context("signing up")?;
    let login = json_of(
        http.post(format!("{api}/v1/auth/login"))
            .json(&json!({"login": name, "password": password}))
            .send()
            .await?,
    )
    .await
    .context("logging in")?;
    let token = login["access_token"]
        .as_str()
        .context("an access token")?
        .to_owned();
    let room = json_of(
        http.post(format!("{api}/v1/rooms"))
            .bearer_auth(&token)
            .json(&json!({"name": "uploads"}))
            .send()
            .await?,
    )
    .await
    .context("creating a room")?;
    let url = format!(
        "{api}/v1/rooms/{}/attachments?filename=load.pdf",
        room["id"].as_i64().context("a room id")?
    );
    // A PDF by its magic number, then filler that does not repeat in
    // short cycles.
    let mut file = b"%PDF-1.7\n".to_vec();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while file.len() < args.size as usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        file.extend_from_slice(&x.to_le_bytes());
    }
    file.truncate(args.size as usize);
    let file = Bytes::from(file);

    let cpu_before = args.server_pid.and_then(process_cpu_seconds);
    let rss_before = args
        .server_pid
        .and_then(|pid| process_memory_mib(pid, "VmRSS:"));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (http, url, token, file, next) = (
            http.clone(),
            url.clone(),
            token.clone(),
            file.clone(),
            next.clone(),
        );
        let count = args.count;
        workers.spawn(async move {
            let mut latency = histogram();
            let mut failures: BTreeMap<String, u64> = BTreeMap::new();
            let mut done = 0u64;
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count {
                let chunks: Vec<Result<Bytes, std::io::Error>> = (0..file.len())
                    .step_by(CHUNK)
                    .map(|at| Ok(file.slice(at..(at + CHUNK).min(file.len()))))
                    .collect();
                let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
                let sent = Instant::now();
                let answer = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/pdf")
                    .header("content-length", file.len())
                    .body(body)
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status() == reqwest::StatusCode::CREATED => {
                        let _ = r.bytes().await;
                        latency.saturating_record(sent.elapsed().as_micros() as u64);
                        done += 1;
                    }
                    Ok(r) => *failures.entry(r.status().to_string()).or_default() += 1,
                    Err(e) => *failures.entry(format!("{e}")).or_default() += 1,
                }
            }
            (latency, failures, done)
        });
    }
    let mut latency = histogram();
    let mut failures = BTreeMap::new();
    let mut uploads = 0;
    while let Some(joined) = workers.join_next().await {
        let (l, f, d) = joined?;
        latency.add(l)?;
        for (k, v) in f {
            *failures.entry(k).or_default() += v;
        }
        uploads += d;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = args.server_pid.and_then(process_cpu_seconds);
    Ok(UploadsReport {
        uploads,
        size: args.size,
        concurrency: args.concurrency,
        seconds,
        failures,
        latency,
        server_cpu_seconds: cpu_before.zip(cpu_after).map(|(a, b)| b - a),
        server_peak_rss_mib: args
            .server_pid
            .and_then(|pid| process_memory_mib(pid, "VmHWM:")),
        server_rss_before_mib: rss_before,
    })
}

/// The run's planned length is not known ahead; this bounds a stuck one.
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);

//! Gateway memory per connection: resident memory before connecting and
//! while the connections are held, from `/proc/PID/status` (a gateway on
//! this machine) or from its Prometheus endpoint (`process_resident_memory_bytes`
//! and `gateway_connections`).

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Time limit of one metrics scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// The body of a Prometheus `/metrics` URL (a gateway's, an api's), or why not.
pub(crate) async fn scrape_text(http: &reqwest::Client, url: &str) -> Result<String, String> {
    http.get(url)
        .timeout(SCRAPE_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .text()
        .await
        .map_err(|e| format!("{url}: {e}"))
}

/// Where to read a gateway's memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    Pid(u32),
    Metrics(String),
}

impl Probe {
    pub fn name(&self) -> String {
        match self {
            Probe::Pid(pid) => format!("pid {pid}"),
            Probe::Metrics(url) => url.clone(),
        }
    }
}

/// One reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub rss_bytes: u64,
    /// The gateway's own connection gauge (metrics only).
    pub connections: Option<u64>,
}

/// One gateway's memory over the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GatewayMemory {
    pub source: String,
    pub before: Sample,
    pub during: Sample,
    /// Connections the growth is divided by.
    pub connections: u64,
    pub per_connection_bytes: Option<f64>,
}

/// Resident memory of a local process, from `/proc/PID/status`.
pub fn read_vmrss(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    parse_vmrss(&text).ok_or_else(|| format!("{path}: no VmRSS line"))
}

fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Sums the samples of a metric over all its label sets.
pub(crate) fn metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // The name must end here (not be a prefix of a longer name).
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest
            .rsplit_once('}')
            .map_or(rest, |(_, v)| v)
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Parses a Prometheus text exposition.
pub fn parse_metrics(text: &str) -> Result<Sample, String> {
    let rss = metric(text, "process_resident_memory_bytes")
        .ok_or("no process_resident_memory_bytes in the metrics")?;
    Ok(Sample {
        rss_bytes: rss as u64,
        connections: metric(text, "gateway_connections").map(|c| c as u64),
    })
}

/// Takes one reading.
pub async fn sample(http: &reqwest::Client, probe: &Probe) -> Result<Sample, String> {
    match probe {
        Probe::Pid(pid) => read_vmrss(*pid).map(|rss_bytes| Sample {
            rss_bytes,
            connections: None,
        }),
        Probe::Metrics(url) => {
            let text = scrape_text(http, url).await?;
            parse_metrics(&text).map_err(|e| format!("{url}: {e}"))
        }
    }
}

/// Reads every probe; failures are returned as text for the report.
pub async fn sample_all(http: &reqwest::Client, probes: &[Probe]) -> Vec<Result<Sample, String>> {
    let mut out = Vec::with_capacity(probes.len());
    for p in probes {
        out.push(sample(http, p).await);
    }
    out
}

/// Per-connection memory of each probed gateway.
///
/// With metrics, the gateway's own connection gauge is used. With pids, if
/// there is one pid per gateway URL (same order), each gateway's growth is
/// divided by the connections the tool holds on it; otherwise by all the
/// tool's connections spread evenly over the pids.
pub fn per_connection(
    probes: &[Probe],
    before: &[Result<Sample, String>],
    during: &[Result<Sample, String>],
    held_per_gateway: &[u64],
) -> (Vec<GatewayMemory>, Vec<String>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let pids = probes.iter().filter(|p| matches!(p, Probe::Pid(_))).count();
    let held_total: u64 = held_per_gateway.iter().sum();
    let mut pid_index = 0;
    for (i, probe) in probes.iter().enumerate() {
        let (b, d) = match (&before[i], &during[i]) {
            (Ok(b), Ok(d)) => (*b, *d),
            (Err(e), _) | (_, Err(e)) => {
                errors.push(e.clone());
                continue;
            }
        };
        let connections = match probe {
            Probe::Metrics(_) => d
                .connections
                .unwrap_or(0)
                .saturating_sub(b.connections.unwrap_or(0)),
            Probe::Pid(_) => {
                let n = if pids == held_per_gateway.len() {
                    held_per_gateway[pid_index]
                } else {
                    held_total / pids.max(1) as u64
                };
                pid_index += 1;
                n
            }
        };
        let growth = d.rss_bytes as f64 - b.rss_bytes as f64;
        out.push(GatewayMemory {
            source: probe.name(),
            before: b,
            during: d,
            connections,
            per_connection_bytes: (connections > 0).then(|| growth / connections as f64),
        });
    }
    (out, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmrss_is_read_in_bytes() {
        let status = "Name:\tparley-gateway\nVmPeak:\t  999 kB\nVmRSS:\t   2048 kB\n";
        assert_eq!(parse_vmrss(status), Some(2 * 1024 * 1024));
        assert!(read_vmrss(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn metrics_are_summed_over_labels_and_not_confused_with_longer_names() {
        let text = "# HELP x\nprocess_resident_memory_bytes 1.5e8\ngateway_connections_total{outcome=\"ready\"} 99\ngateway_connections 40\n";
        let s = parse_metrics(text).unwrap();
        assert_eq!(
            s,
            Sample {
                rss_bytes: 150_000_000,
                connections: Some(40)
            }
        );
        assert!(parse_metrics("gateway_connections 1\n").is_err());
    }

    #[test]
    fn growth_is_divided_by_the_connections_on_each_gateway() {
        let probes = [Probe::Pid(1), Probe::Pid(2)];
        let s = |rss| {
            Ok(Sample {
                rss_bytes: rss,
                connections: None,
            })
        };
        let (mem, errors) =
            per_connection(&probes, &[s(100), s(100)], &[s(1100), s(2100)], &[10, 20]);
        assert!(errors.is_empty());
        assert_eq!(mem[0].per_connection_bytes, Some(100.0));
        assert_eq!(mem[1].per_connection_bytes, Some(100.0));
        let m = [Probe::Metrics("u".into())];
        let before = [Ok(Sample {
            rss_bytes: 0,
            connections: Some(5),
        })];
        let during = [Ok(Sample {
            rss_bytes: 5000,
            connections: Some(55),
        })];
        let (mem, _) = per_connection(&m, &before, &during, &[]);
        assert_eq!(
            (mem[0].connections, mem[0].per_connection_bytes),
            (50, Some(100.0))
        );
    }
}

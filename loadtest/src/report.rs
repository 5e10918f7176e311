//! The run's report: one structure, written as a human summary (stdout),
//! JSON (`--json`, full: histograms included in HdrHistogram V2 base64, so
//! runs can be merged or re-analysed later) and an HTML page with charts
//! (`--html`) or a bare SVG (`--svg`).

use crate::chart::{fmt_ms, histogram_svg, percentile_svg};
use crate::memory::GatewayMemory;
use crate::metrics::{LatencySummary, Reasons, total};
use crate::net::{CpuUsage, FileLimit};
use crate::redis_stats::RedisReport;
use crate::scenario::presence_kill::PresenceKillReport;
use crate::scenario::reads::ReadsReport;
use crate::scenario::storm::StormReport;
use crate::work::{CloseReport, ConnectReport, HoldReport, StepReport};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProvisionSummary {
    /// The run's username prefix (its users and rooms stay in the database).
    pub prefix: String,
    pub users: u64,
    pub rooms: u64,
    pub room_size: u64,
    pub requests: usize,
    pub elapsed_s: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MemoryReport {
    pub gateways: Vec<GatewayMemory>,
    pub errors: Vec<String>,
}

/// How a ramp ended.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RampOutcome {
    pub p99_bound_ms: f64,
    /// The highest step rate that met every criterion (None: not even the first).
    pub highest_rate_held: Option<f64>,
    pub stopped_because: String,
}

/// Percentiles and rates derived from the raw reports, for readers of the JSON.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StepSummary {
    pub step: u32,
    pub target_rate: f64,
    pub acked_per_s: f64,
    pub deliveries_per_s: f64,
    pub post_latency: LatencySummary,
    pub delivery_latency: LatencySummary,
    pub expected: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered_seq: u64,
    pub reordered_counter: u64,
    /// Ramp only: whether the step met the criteria, and if not why.
    pub verdict: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConnectSummary {
    pub attempted: u64,
    pub connected: u64,
    pub failed: u64,
    pub per_s: f64,
    pub tcp_connect: LatencySummary,
    pub handshake: LatencySummary,
    pub ready: LatencySummary,
    pub join: LatencySummary,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    pub connect: Option<ConnectSummary>,
    pub steps: Vec<StepSummary>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub tool: String,
    pub scenario: String,
    pub started_at: String,
    /// Stopped by Ctrl-C (or an agent failure): the figures are partial.
    pub interrupted: bool,
    /// The scenario's parameters (never the admin token).
    pub config: serde_json::Value,
    pub api: String,
    pub gateways: Vec<String>,
    /// `local` or the agents' addresses.
    pub workers: Vec<String>,
    pub files: Vec<(String, FileLimit)>,
    pub provision: Option<ProvisionSummary>,
    pub connect: Option<ConnectReport>,
    pub hold: Option<HoldReport>,
    pub memory: Option<MemoryReport>,
    pub steps: Vec<StepReport>,
    pub ramp: Option<RampOutcome>,
    pub close: Option<CloseReport>,
    /// Redis commands during the hold (`idle --redis-url`).
    #[serde(default)]
    pub redis: Option<RedisReport>,
    /// `presence-kill`'s figures.
    #[serde(default)]
    pub presence_kill: Option<PresenceKillReport>,
    /// `reads`' figures.
    #[serde(default)]
    pub reads: Option<ReadsReport>,
    /// `storm`'s figures.
    #[serde(default)]
    pub storm: Option<StormReport>,
    /// Problems that ended the run early or made a figure unavailable.
    pub errors: Vec<String>,
    pub summary: Summary,
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// Derived figures of one step.
pub fn step_summary(s: &StepReport, verdict: Option<String>) -> StepSummary {
    let window = (s.publish_elapsed + s.drain_elapsed).as_secs_f64();
    StepSummary {
        step: s.step,
        target_rate: s.rate,
        acked_per_s: rate(s.tally.posts_acked, s.publish_elapsed.as_secs_f64()),
        deliveries_per_s: rate(s.deliveries.frames, window),
        post_latency: s.post_latency.summary(),
        delivery_latency: s.deliveries.latency.summary(),
        expected: s.tally.expected,
        lost: s.tally.lost,
        duplicated: s.deliveries.duplicates,
        reordered_seq: s.deliveries.reordered_seq,
        reordered_counter: s.deliveries.reordered_counter,
        verdict,
    }
}

impl Report {
    /// Fills in the derived summary (call once the raw parts are final).
    pub fn finish(&mut self, verdicts: &[Option<String>]) {
        self.summary.connect = self.connect.as_ref().map(|c| ConnectSummary {
            attempted: c.attempted,
            connected: c.connected,
            failed: total(&c.failures),
            per_s: rate(c.attempted, c.elapsed.as_secs_f64()),
            tcp_connect: c.tcp_connect.summary(),
            handshake: c.handshake.summary(),
            ready: c.ready.summary(),
            join: c.join.summary(),
        });
        self.summary.steps = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| step_summary(s, verdicts.get(i).cloned().flatten()))
            .collect();
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text)?;
        Ok(())
    }

    /// The main latency chart as a bare SVG.
    pub fn svg(&self) -> String {
        let mut series = Vec::new();
        let mut delivery = crate::metrics::Hist::new();
        let mut post = crate::metrics::Hist::new();
        for s in &self.steps {
            delivery.merge(&s.deliveries.latency);
            post.merge(&s.post_latency);
        }
        if !self.steps.is_empty() {
            series.push(("publish → deliver", delivery));
            series.push(("publish (REST)", post));
        }
        if let Some(c) = &self.connect {
            series.push(("handshake", c.handshake.clone()));
            series.push(("ready (handshake + auth)", c.ready.clone()));
        }
        let refs: Vec<(&str, &crate::metrics::Hist)> =
            series.iter().map(|(n, h)| (*n, h)).collect();
        percentile_svg(
            &format!("parley-loadtest {}: latency by percentile", self.scenario),
            &refs,
        )
    }

    /// A self-contained page: the summary text, the percentile chart, the
    /// delivery-latency histogram and, for a ramp, one curve per step.
    pub fn html(&self) -> String {
        let mut page = String::new();
        let _ = write!(
            page,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>parley-loadtest {}</title><style>body{{font-family:sans-serif;margin:24px;max-width:820px}}pre{{background:#f6f6f6;padding:12px;overflow-x:auto;font-size:12px}}</style></head><body><h1>parley-loadtest {}</h1>",
            self.scenario, self.scenario
        );
        page.push_str(&self.svg());
        let mut delivery = crate::metrics::Hist::new();
        for s in &self.steps {
            delivery.merge(&s.deliveries.latency);
        }
        if !delivery.is_empty() {
            page.push_str(&histogram_svg(
                "publish → deliver latency: distribution",
                &delivery,
            ));
        } else if let Some(c) = &self.connect {
            page.push_str(&histogram_svg(
                "ready (handshake + auth): distribution",
                &c.ready,
            ));
        }
        if self.steps.len() > 1 {
            let names: Vec<String> = self
                .steps
                .iter()
                .map(|s| format!("{:.0} msg/s", s.rate))
                .collect();
            let refs: Vec<(&str, &crate::metrics::Hist)> = self
                .steps
                .iter()
                .zip(&names)
                .map(|(s, n)| (n.as_str(), &s.deliveries.latency))
                .collect();
            page.push_str(&percentile_svg(
                "publish → deliver latency per ramp step",
                &refs,
            ));
        }
        let text = self.text();
        let _ = write!(
            page,
            "<pre>{}</pre></body></html>",
            text.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        );
        page
    }

    /// The human summary.
    pub fn text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "parley-loadtest {} — started {}{}",
            self.scenario,
            self.started_at,
            if self.interrupted {
                " — INTERRUPTED: partial results"
            } else {
                ""
            }
        );
        let _ = writeln!(
            o,
            "target: api {} | gateways {}",
            self.api,
            self.gateways.join(", ")
        );
        let _ = writeln!(o, "workers: {}", self.workers.join(", "));
        for (name, f) in &self.files {
            let _ = writeln!(
                o,
                "open-file limit ({name}): soft {} (was {}), hard {}",
                f.soft, f.soft_before, f.hard
            );
        }
        if let Some(p) = &self.provision {
            let _ = writeln!(
                o,
                "provisioned: {} users, {} rooms of {} (prefix {}) in {} request(s), {:.1} s",
                p.users, p.rooms, p.room_size, p.prefix, p.requests, p.elapsed_s
            );
        }
        if let Some(c) = &self.connect {
            let _ = writeln!(
                o,
                "\nconnections: {} attempted, {} connected, {} failed{} in {:.1} s ({:.0}/s)",
                c.attempted,
                c.connected,
                total(&c.failures),
                if c.skipped > 0 {
                    format!(", {} not attempted (interrupted)", c.skipped)
                } else {
                    String::new()
                },
                c.elapsed.as_secs_f64(),
                rate(c.attempted, c.elapsed.as_secs_f64())
            );
            latency_table(
                &mut o,
                &[
                    ("TCP connect", c.tcp_connect.summary()),
                    ("handshake (to 101)", c.handshake.summary()),
                    ("ready (to auth ok)", c.ready.summary()),
                    ("join (to joined)", c.join.summary()),
                ],
            );
            for w in &c.warnings {
                let _ = writeln!(o, "  warning: {w}");
            }
            reasons(&mut o, "connect failures", &c.failures);
            cpu(&mut o, "tool CPU while connecting", &c.cpu);
            if c.per_gateway.len() > 1 {
                let _ = writeln!(o, "  connected per gateway: {:?}", c.per_gateway);
            }
        }
        if let Some(h) = &self.hold {
            let _ = writeln!(
                o,
                "\nheld: {} connections at the end of {:.1} s",
                h.held,
                h.elapsed.as_secs_f64()
            );
            reasons(&mut o, "dropped while held", &h.drops);
        }
        if let Some(r) = &self.redis {
            let _ = writeln!(
                o,
                "\nredis {}: {} commands in {:.1} s while held = {:.2} commands/s ({:.2} per gateway over {} gateways)",
                r.addr,
                r.commands,
                r.window_s,
                r.commands_per_s,
                r.commands_per_s_per_gateway,
                r.gateways
            );
            let top: Vec<String> = r.top.iter().map(|(n, c)| format!("{n} {c}")).collect();
            let _ = writeln!(o, "  busiest: {}", top.join(", "));
        }
        if let Some(m) = &self.memory {
            let _ = writeln!(o, "\ngateway memory:");
            for g in &m.gateways {
                let _ = writeln!(
                    o,
                    "  {}: RSS {:.1} MiB -> {:.1} MiB over {} connections = {}",
                    g.source,
                    g.before.rss_bytes as f64 / 1048576.0,
                    g.during.rss_bytes as f64 / 1048576.0,
                    g.connections,
                    g.per_connection_bytes
                        .map(|b| format!("{:.1} KiB per connection", b / 1024.0))
                        .unwrap_or_else(|| "n/a (no connections)".into())
                );
            }
            for e in &m.errors {
                let _ = writeln!(o, "  unavailable: {e}");
            }
        }
        for (i, s) in self.steps.iter().enumerate() {
            let sum = self
                .summary
                .steps
                .get(i)
                .cloned()
                .unwrap_or_else(|| step_summary(s, None));
            let _ = writeln!(
                o,
                "\nstep {}: target {:.1} msg/s for {:.1} s to {} receivers: {} posts, {} acknowledged ({:.1}/s), {} failed",
                s.step,
                s.rate,
                s.duration.as_secs_f64(),
                s.receivers,
                s.posts_attempted,
                s.tally.posts_acked,
                sum.acked_per_s,
                total(&s.post_failures)
            );
            let _ = writeln!(
                o,
                "  schedule: {} sends late by >10 ms (max lag {}), {} never sent (too far behind)",
                s.late_sends,
                fmt_ms(s.max_lag.as_secs_f64() * 1000.0) + " ms",
                s.not_sent
            );
            if s.late_sends * 10 > s.posts_attempted {
                let _ = writeln!(
                    o,
                    "  note: each stream posts in order, one at a time, so it manages at most 1/(REST latency) msg/s; the schedule fell behind (latency includes that wait): raise --publishers, or the api could not keep up"
                );
            }
            latency_table(
                &mut o,
                &[
                    ("publish (REST)", sum.post_latency),
                    ("publish -> deliver", sum.delivery_latency),
                ],
            );
            let t = &s.tally;
            let d = &s.deliveries;
            let _ = writeln!(
                o,
                "  deliveries: {} received ({:.0}/s); expected {}, delivered {}, LOST {}, DUPLICATED {}, REORDERED {} by seq / {} by sender counter",
                d.frames,
                sum.deliveries_per_s,
                t.expected,
                t.delivered,
                t.lost,
                d.duplicates,
                d.reordered_seq,
                d.reordered_counter
            );
            if t.unacked_posts_delivered > 0
                || t.untracked > 0
                || t.excess > 0
                || d.repeated_counter > 0
            {
                let _ = writeln!(
                    o,
                    "  also: {} unacknowledged posts delivered ({} deliveries), {} outside the plan, {} beyond expected, {} repeated counters",
                    t.unacked_posts_delivered,
                    t.unacked_deliveries,
                    t.untracked,
                    t.excess,
                    d.repeated_counter
                );
            }
            let _ = writeln!(
                o,
                "  drain: {} in {:.2} s",
                if s.drained { "complete" } else { "INCOMPLETE" },
                s.drain_elapsed.as_secs_f64()
            );
            reasons(&mut o, "post failures", &s.post_failures);
            reasons(&mut o, "dropped during the step", &s.drops);
            cpu(&mut o, "tool CPU during the step", &s.cpu);
            if let Some(v) = &sum.verdict {
                let _ = writeln!(o, "  verdict: {v}");
            }
        }
        if let Some(r) = &self.ramp {
            let _ = writeln!(
                o,
                "\nramp: highest rate held {} (p99 bound {} ms); stopped because {}",
                r.highest_rate_held
                    .map(|r| format!("{r:.1} msg/s"))
                    .unwrap_or_else(|| "none".into()),
                fmt_ms(r.p99_bound_ms),
                r.stopped_because
            );
        }
        if let Some(p) = &self.presence_kill {
            p.write_text(&mut o);
        }
        if let Some(r) = &self.reads {
            r.write_text(&mut o);
        }
        if let Some(s) = &self.storm {
            s.write_text(&mut o);
        }
        if let Some(c) = &self.close {
            let _ = writeln!(
                o,
                "\nclose: {} of {} connections closed cleanly in {:.1} s",
                c.closed_cleanly,
                c.closing,
                c.elapsed.as_secs_f64()
            );
            reasons(&mut o, "connections dropped during the run", &c.drops);
            cpu(&mut o, "tool CPU over the whole run", &c.cpu);
        }
        for e in &self.errors {
            let _ = writeln!(o, "ERROR: {e}");
        }
        o
    }
}

fn latency_table(o: &mut String, rows: &[(&str, LatencySummary)]) {
    let _ = writeln!(
        o,
        "  {:<22}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}{:>10}",
        "latency (ms)", "p50", "p90", "p99", "p99.9", "max", "mean", "count"
    );
    for (name, s) in rows {
        if s.count == 0 {
            let _ = writeln!(o, "  {name:<22}{:>9}", "-");
            continue;
        }
        let _ = writeln!(
            o,
            "  {name:<22}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}{:>10}",
            fmt_ms(s.p50_ms),
            fmt_ms(s.p90_ms),
            fmt_ms(s.p99_ms),
            fmt_ms(s.p999_ms),
            fmt_ms(s.max_ms),
            fmt_ms(s.mean_ms),
            s.count
        );
    }
}

fn reasons(o: &mut String, what: &str, r: &Reasons) {
    if r.is_empty() {
        return;
    }
    let _ = writeln!(o, "  {what}:");
    let mut sorted: Vec<_> = r.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(a.1));
    for (reason, n) in sorted {
        let _ = writeln!(o, "    {n:>8}  {reason}");
    }
}

fn cpu(o: &mut String, what: &str, usage: &[CpuUsage]) {
    for u in usage {
        let util = u.utilisation();
        let _ = writeln!(
            o,
            "  {what} ({}): {:.2} s user + {:.2} s system over {:.1} s = {:.0}% of {} core(s){}",
            u.worker,
            u.user_s,
            u.sys_s,
            u.wall_s,
            util * 100.0,
            u.cores,
            if util > 0.8 {
                " — the tool was near saturation: add agents before trusting the latencies"
            } else {
                ""
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::Tally;
    use std::time::Duration;

    fn step() -> StepReport {
        let mut s = StepReport {
            rate: 50.0,
            duration: Duration::from_secs(2),
            publish_elapsed: Duration::from_secs(2),
            drain_elapsed: Duration::from_millis(500),
            drained: true,
            tally: Tally {
                posts_acked: 100,
                expected: 2000,
                delivered: 1998,
                lost: 2,
                ..Tally::default()
            },
            ..StepReport::default()
        };
        s.deliveries.frames = 2000;
        for i in 0..2000 {
            s.deliveries.latency.record_us(1000 + i);
        }
        s
    }

    #[test]
    fn step_rates_come_from_the_measured_windows() {
        let sum = step_summary(&step(), None);
        assert_eq!(sum.acked_per_s, 50.0);
        assert_eq!(sum.deliveries_per_s, 800.0, "2000 over 2.5 s");
        assert_eq!(sum.lost, 2);
        assert_eq!(sum.delivery_latency.count, 2000);
    }

    #[test]
    fn the_summary_names_loss_and_the_report_round_trips_through_json() {
        let mut r = Report {
            scenario: "fanout".into(),
            steps: vec![step()],
            ..Report::default()
        };
        r.finish(&[]);
        let text = r.text();
        assert!(text.contains("LOST 2"), "{text}");
        assert!(text.contains("publish -> deliver"), "{text}");
        let json = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back.steps[0], r.steps[0], "histograms survive");
        let html = r.html();
        assert!(html.contains("<svg") && html.contains("LOST 2"));
    }
}

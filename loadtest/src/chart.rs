//! Latency charts as hand-written SVG: the percentile curve (latency by
//! percentile, the percentile axis stretched logarithmically towards 100%
//! so the tail is visible) and a histogram on a log latency axis.

use crate::metrics::Hist;
use std::fmt::Write as _;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 360.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 50.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

/// Series colours (colour-blind-safe palette).
const COLOURS: [&str; 6] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9",
];

/// Percentile axis ticks: 0%, 90%, 99%, ... as "nines" (x = log10(1/(1-q))).
const MAX_NINES: f64 = 5.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Latency (ms) against percentile for each series.
pub fn percentile_svg(title: &str, series: &[(&str, &Hist)]) -> String {
    let series: Vec<_> = series.iter().filter(|(_, h)| !h.is_empty()).collect();
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    // Latency on a log axis, whole decades: the handshake (sub-ms) and a
    // delivery tail (seconds) are both readable on one chart.
    let min_us = series
        .iter()
        .map(|(_, h)| h.0.min().max(1))
        .min()
        .unwrap_or(1);
    let max_us = series
        .iter()
        .map(|(_, h)| h.0.max().max(1))
        .max()
        .unwrap_or(1000);
    let lo = (min_us as f64).log10().floor();
    let hi = (max_us as f64).log10().ceil().max(lo + 1.0);
    // The legend goes under the chart, where it hides no curve.
    let total_h = HEIGHT + series.len() as f64 * 16.0 + 8.0;
    let x = |nines: f64| LEFT + nines.min(MAX_NINES) / MAX_NINES * plot_w;
    let y =
        |us: f64| TOP + plot_h - ((us.max(1.0).log10() - lo) / (hi - lo)).clamp(0.0, 1.0) * plot_h;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{total_h}" viewBox="0 0 {WIDTH} {total_h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(s, r##"<rect width="100%" height="100%" fill="#fff"/>"##);
    let _ = write!(
        s,
        r#"<text x="{}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        LEFT,
        esc(title)
    );
    // Grid and axes.
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let gx = x(i as f64);
        let _ = write!(
            s,
            r##"<line x1="{gx:.1}" y1="{TOP}" x2="{gx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{gx:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0
        );
    }
    let mut decade = lo;
    while decade <= hi {
        let gy = y(10f64.powf(decade));
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            gy + 4.0,
            fmt_ms(10f64.powf(decade) / 1000.0)
        );
        decade += 1.0;
    }
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text><text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">latency (ms, log scale)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 8.0,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    if series.is_empty() {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">no samples</text>"#,
            LEFT + plot_w / 2.0,
            TOP + plot_h / 2.0
        );
    }
    let mut legend = String::new();
    for (i, (name, h)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut points = String::new();
        // 200 points evenly spaced in "nines", plus the maximum.
        for k in 0..=200 {
            let nines = MAX_NINES * k as f64 / 200.0;
            let q = 1.0 - 10f64.powf(-nines);
            let us = h.0.value_at_quantile(q) as f64;
            let _ = write!(points, "{:.1},{:.1} ", x(nines), y(us));
        }
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>"#
        );
        let ly = HEIGHT + 8.0 + i as f64 * 16.0;
        let _ = write!(
            legend,
            r#"<rect x="{:.1}" y="{:.1}" width="12" height="3" fill="{colour}"/><text x="{:.1}" y="{:.1}">{} (n={}, p99 {} ms, max {} ms)</text>"#,
            LEFT + 10.0,
            ly - 4.0,
            LEFT + 28.0,
            ly,
            esc(name),
            h.len(),
            fmt_ms(h.0.value_at_quantile(0.99) as f64 / 1000.0),
            fmt_ms(h.0.max() as f64 / 1000.0)
        );
    }
    s.push_str(&legend);
    s.push_str("</svg>");
    s
}

/// Share of samples per latency bucket, buckets evenly spaced on a log axis.
pub fn histogram_svg(title: &str, h: &Hist) -> String {
    const BUCKETS: usize = 60;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(s, r##"<rect width="100%" height="100%" fill="#fff"/>"##);
    let _ = write!(
        s,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        esc(title)
    );
    if h.is_empty() {
        s.push_str("</svg>");
        return s;
    }
    let lo = (h.0.min().max(1) as f64).log10().floor();
    let hi = (h.0.max().max(1) as f64).log10().ceil().max(lo + 1.0);
    let mut counts = [0u64; BUCKETS];
    for v in h.0.iter_recorded() {
        let l = (v.value_iterated_to().max(1) as f64).log10();
        let b = (((l - lo) / (hi - lo)) * BUCKETS as f64) as usize;
        counts[b.min(BUCKETS - 1)] += v.count_at_value();
    }
    let peak = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let bw = plot_w / BUCKETS as f64;
    for (b, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let bh = c as f64 / peak * plot_h;
        let _ = write!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="#0072B2"><title>{c}</title></rect>"##,
            LEFT + b as f64 * bw,
            TOP + plot_h - bh,
            (bw - 1.0).max(0.5)
        );
    }
    let mut decade = lo;
    while decade <= hi {
        let gx = LEFT + (decade - lo) / (hi - lo) * plot_w;
        let ms = 10f64.powf(decade) / 1000.0;
        let _ = write!(
            s,
            r##"<line x1="{gx:.1}" y1="{TOP}" x2="{gx:.1}" y2="{:.1}" stroke="#bbb"/><text x="{gx:.1}" y="{:.1}" text-anchor="middle">{} ms</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0,
            fmt_ms(ms)
        );
        decade += 1.0;
    }
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">latency (log scale); bar height: samples (peak {})</text></svg>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 8.0,
        peak as u64
    );
    s
}

/// Milliseconds with sensible precision.
pub fn fmt_ms(ms: f64) -> String {
    if ms == 0.0 {
        "0".into()
    } else if ms < 1.0 {
        format!("{ms:.3}")
    } else if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed_svg_with_every_series() {
        let mut a = Hist::new();
        let mut b = Hist::new();
        for i in 1..=1000 {
            a.record_us(i * 10);
            b.record_us(i * 100);
        }
        let svg = percentile_svg(
            "latency <test>",
            &[("deliver", &a), ("post", &b), ("none", &Hist::new())],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("deliver (n=1000") && svg.contains("post (n=1000"));
        assert!(!svg.contains("none (n="), "empty series are left out");
        assert!(svg.contains("latency &lt;test&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        let hist = histogram_svg("h", &a);
        assert!(hist.contains("<rect x=") && hist.ends_with("</svg>"));
    }
}

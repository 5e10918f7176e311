//! Latency histograms and counters that can cross the wire between agents
//! and be merged exactly.
//!
//! Every latency is recorded in an HDR histogram (microseconds, three
//! significant digits). Agents ship histograms in HdrHistogram's V2 binary
//! format (base64 inside JSON) and the coordinator merges them with `add`:
//! percentiles of the merged histogram are the percentiles of all samples,
//! never an average of percentiles.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;

/// Largest latency a histogram tracks: one hour in microseconds. Anything
/// slower is clamped to it (and is a failure long before).
pub const MAX_TRACKABLE_US: u64 = 3_600_000_000;

/// Three significant digits: 0.1% error at every magnitude.
const SIGNIFICANT_DIGITS: u8 = 3;

/// A latency histogram in microseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Hist(pub Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Self::new()
    }
}

impl Hist {
    pub fn new() -> Self {
        // Bounds are constants that hdrhistogram accepts.
        Hist(
            Histogram::new_with_bounds(1, MAX_TRACKABLE_US, SIGNIFICANT_DIGITS)
                .unwrap_or_else(|_| unreachable!("valid constant bounds")),
        )
    }

    /// Records one latency; 0 is recorded as 1 µs and values beyond the
    /// range are clamped, so no sample is ever dropped.
    pub fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.clamp(1, MAX_TRACKABLE_US));
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds every sample of `other` (same bounds, so this cannot fail).
    pub fn merge(&mut self, other: &Hist) {
        if self.0.add(&other.0).is_err() {
            // Different bounds cannot happen between our own histograms;
            // fall back to re-recording so nothing is lost.
            for v in other.0.iter_recorded() {
                self.0
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    pub fn reset(&mut self) {
        self.0.reset();
    }

    /// Takes the samples out, leaving an empty histogram.
    pub fn take(&mut self) -> Hist {
        let out = self.clone();
        self.reset();
        out
    }

    /// The V2 serialisation (HdrHistogram's interchange format).
    pub fn to_v2(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = V2Serializer::new().serialize(&self.0, &mut out);
        out
    }

    pub fn from_v2(bytes: &[u8]) -> Result<Hist, String> {
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut std::io::Cursor::new(bytes))
            .map_err(|e| format!("not a V2 histogram: {e:?}"))?;
        // Normalise the bounds so later merges never need to resize.
        let mut out = Hist::new();
        out.merge(&Hist(h));
        Ok(out)
    }

    pub fn summary(&self) -> LatencySummary {
        LatencySummary::of(self)
    }
}

impl Serialize for Hist {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(self.to_v2()))
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)?;
        Hist::from_v2(&bytes).map_err(serde::de::Error::custom)
    }
}

/// Percentiles of a histogram, in milliseconds, for people and JSON.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    pub fn of(h: &Hist) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            min_ms: ms(h.0.min()),
            mean_ms: h.0.mean() / 1000.0,
            p50_ms: ms(h.0.value_at_quantile(0.50)),
            p90_ms: ms(h.0.value_at_quantile(0.90)),
            p99_ms: ms(h.0.value_at_quantile(0.99)),
            p999_ms: ms(h.0.value_at_quantile(0.999)),
            max_ms: ms(h.0.max()),
        }
    }
}

/// Failures or drops counted by reason.
pub type Reasons = BTreeMap<String, u64>;

/// Adds `other`'s counts into `into`.
pub fn merge_reasons(into: &mut Reasons, other: &Reasons) {
    for (reason, n) in other {
        *into.entry(reason.clone()).or_default() += n;
    }
}

/// `after - before`, per reason, dropping zeros.
pub fn diff_reasons(after: &Reasons, before: &Reasons) -> Reasons {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

pub fn total(reasons: &Reasons) -> u64 {
    reasons.values().sum()
}

/// Adds two equally long per-gateway count lists (extending the shorter).
pub fn merge_counts(into: &mut Vec<u64>, other: &[u64]) {
    if into.len() < other.len() {
        into.resize(other.len(), 0);
    }
    for (a, b) in into.iter_mut().zip(other) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: impl IntoIterator<Item = u64>) -> Hist {
        let mut h = Hist::new();
        for v in values {
            h.record_us(v);
        }
        h
    }

    #[test]
    fn a_histogram_survives_v2_serialisation_and_json() {
        let h = hist((1..=10_000).map(|i| i * 37));
        let back = Hist::from_v2(&h.to_v2()).unwrap();
        assert_eq!(back, h);
        let json = serde_json::to_string(&h).unwrap();
        let back: Hist = serde_json::from_str(&json).unwrap();
        assert_eq!(back.summary(), h.summary());
        assert_eq!(back, h);
    }

    #[test]
    fn merging_equals_recording_everything_into_one() {
        let a: Vec<u64> = (0..5_000).map(|i| 100 + i * 13 % 7_000).collect();
        let b: Vec<u64> = (0..3_000).map(|i| 50_000 + i * 101).collect();
        let mut merged = Hist::from_v2(&hist(a.clone()).to_v2()).unwrap();
        merged.merge(&Hist::from_v2(&hist(b.clone()).to_v2()).unwrap());
        let all = hist(a.into_iter().chain(b));
        assert_eq!(merged, all);
        assert_eq!(merged.len(), 8_000);
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(merged.0.value_at_quantile(q), all.0.value_at_quantile(q));
        }
    }

    #[test]
    fn percentiles_are_reported_in_milliseconds() {
        // 1..=1000 ms, one sample each.
        let h = hist((1..=1000).map(|ms| ms * 1000));
        let s = h.summary();
        assert_eq!(s.count, 1000);
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.001 + 1e-9;
        assert!(close(s.p50_ms, 500.0), "{s:?}");
        assert!(close(s.p90_ms, 900.0), "{s:?}");
        assert!(close(s.p99_ms, 990.0), "{s:?}");
        assert!(close(s.p999_ms, 999.0), "{s:?}");
        assert!(close(s.max_ms, 1000.0), "{s:?}");
        assert!(close(s.min_ms, 1.0), "{s:?}");
        assert!(close(s.mean_ms, 500.5), "{s:?}");
    }

    #[test]
    fn out_of_range_samples_are_clamped_not_dropped() {
        let h = hist([0, u64::MAX]);
        assert_eq!(h.len(), 2);
        assert_eq!(h.0.min(), 1);
    }

    #[test]
    fn reason_counts_merge_and_diff() {
        let mut a: Reasons = [("x".to_string(), 2), ("y".to_string(), 1)].into();
        let b: Reasons = [("y".to_string(), 4)].into();
        merge_reasons(&mut a, &b);
        assert_eq!(a["y"], 5);
        assert_eq!(total(&a), 7);
        let d = diff_reasons(&a, &[("x".to_string(), 2)].into());
        assert_eq!(d, [("y".to_string(), 5)].into());
    }
}

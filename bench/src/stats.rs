//! Small statistics and formatting helpers for the result table.

use std::time::Duration;

/// Latency samples, summarized by nearest-rank percentiles.
#[derive(Debug, Default, Clone)]
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, sample: Duration) {
        self.0.push(sample);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The nearest-rank `p`-th percentile (0 < p ≤ 100): the smallest sample with at least p% of the samples at
    /// or below it. `None` without samples.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        percentile_of_sorted(&sorted, p)
    }
}

/// Nearest-rank percentile of an ascending slice.
pub fn percentile_of_sorted(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    // rank = ceil(p/100 × n), at least 1.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank.min(sorted.len()) - 1).copied()
}

/// One figure measured once per round.
#[derive(Debug, Default, Clone)]
pub struct Rounds(Vec<f64>);

impl Extend<f64> for Rounds {
    fn extend<I: IntoIterator<Item = f64>>(&mut self, values: I) {
        self.0.extend(values);
    }
}

impl Rounds {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The median (the mean of the middle two for an even count); `None` without values.
    pub fn median(&self) -> Option<f64> {
        let mut sorted: Vec<f64> = self.0.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(sorted[n / 2]),
            _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
        }
    }

    /// `median` alone for one round, `median (min–max)` for several, each formatted by `format`.
    pub fn format(&self, format: impl Fn(f64) -> String) -> String {
        let Some(median) = self.median() else { return "n/a".into() };
        let min = self.0.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if self.0.len() > 1 {
            format!("{} ({}–{})", format(median), format(min), format(max))
        } else {
            format(median)
        }
    }
}

/// Messages per second of `count` messages in `elapsed`.
pub fn rate(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 { count as f64 / seconds } else { 0.0 }
}

/// `12,345` — an integer with thousands separators.
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate rounded to whole messages per second, with separators.
pub fn format_rate(per_second: f64) -> String {
    thousands(per_second.round().max(0.0) as u64)
}

/// A ratio `a / b` as `0.73×`, or `n/a` when `b` is not positive.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

pub fn format_ratio(ratio: Option<f64>) -> String {
    match ratio {
        Some(r) => format!("{r:.2}×"),
        None => "n/a".into(),
    }
}

/// A latency in milliseconds with a precision that suits its size.
pub fn format_ms(duration: Duration) -> String {
    let ms = duration.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

pub fn format_secs(duration: Duration) -> String {
    format!("{:.2}", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Samples {
        let mut samples = Samples::new();
        for v in values {
            samples.push(Duration::from_millis(*v));
        }
        samples
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples = ms(&[5, 1, 4, 2, 3, 10, 9, 8, 7, 6]);
        assert_eq!(samples.percentile(50.0), Some(Duration::from_millis(5)));
        assert_eq!(samples.percentile(90.0), Some(Duration::from_millis(9)));
        assert_eq!(samples.percentile(99.0), Some(Duration::from_millis(10)));
        assert_eq!(samples.percentile(100.0), Some(Duration::from_millis(10)));
        assert_eq!(samples.percentile(0.0), Some(Duration::from_millis(1)));
        assert_eq!(ms(&[]).percentile(50.0), None);
        assert_eq!(ms(&[42]).percentile(99.0), Some(Duration::from_millis(42)));
    }

    #[test]
    fn p99_of_a_hundred_samples_is_the_99th() {
        let samples = ms(&(1..=100).collect::<Vec<_>>());
        assert_eq!(samples.percentile(99.0), Some(Duration::from_millis(99)));
        assert_eq!(samples.percentile(50.0), Some(Duration::from_millis(50)));
    }

    #[test]
    fn ratios_and_rates_are_formatted() {
        assert_eq!(format_ratio(ratio(7.0, 10.0)), "0.70×");
        assert_eq!(format_ratio(ratio(55.0, 10.0)), "5.50×");
        assert_eq!(format_ratio(ratio(1.0, 0.0)), "n/a");
        assert_eq!(format_ratio(ratio(f64::NAN, 1.0)), "n/a");
        assert_eq!(rate(1000, Duration::from_millis(500)), 2000.0);
        assert_eq!(rate(1000, Duration::ZERO), 0.0);
        assert_eq!(format_rate(12_345.6), "12,346");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn rounds_report_the_median_and_the_range() {
        let mut rounds = Rounds::default();
        assert_eq!(rounds.median(), None);
        assert_eq!(rounds.format(format_rate), "n/a");
        rounds.extend(Some(3.0));
        assert_eq!(rounds.format(format_rate), "3");
        rounds.extend(Some(1.0));
        assert_eq!(rounds.median(), Some(2.0));
        rounds.extend(Some(10.0));
        assert_eq!(rounds.median(), Some(3.0));
        assert_eq!(rounds.format(format_rate), "3 (1–10)");
        assert_eq!(rounds.format(|r| format_ratio(Some(r))), "3.00× (1.00×–10.00×)");
    }

    #[test]
    fn milliseconds_keep_useful_precision() {
        assert_eq!(format_ms(Duration::from_micros(1_234)), "1.23");
        assert_eq!(format_ms(Duration::from_micros(12_345)), "12.3");
        assert_eq!(format_ms(Duration::from_millis(1_234)), "1234");
    }
}

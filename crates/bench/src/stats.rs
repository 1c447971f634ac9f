//! Percentiles and the other small statistics the rows are made of.

use std::time::Duration;

/// The `p`-quantile (0..=1) of sorted samples, nearest rank.
pub(crate) fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Sorts `samples` in place and returns them.
pub(crate) fn sorted(mut samples: Vec<f64>) -> Vec<f64> {
    samples.sort_by(f64::total_cmp);
    samples
}

/// The median of unsorted values.
pub(crate) fn median(values: &[f64]) -> f64 {
    quantile(&sorted(values.to_vec()), 0.5)
}

/// Microseconds of a duration.
pub(crate) fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Milliseconds of a duration.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Several runs of latency samples (µs): each run's p50 and p99, and the
/// median of those over the runs. Reporting the median run keeps one noisy
/// run (another build on the box) from deciding the row.
#[derive(Clone, Debug, Default)]
pub(crate) struct Runs {
    /// Per run: (p50, p99) in µs.
    pub runs: Vec<(f64, f64)>,
    /// Samples per run.
    pub per_run: usize,
}

impl Runs {
    /// Adds one run's samples (µs).
    pub(crate) fn push(&mut self, samples: Vec<f64>) {
        self.per_run = samples.len();
        let s = sorted(samples);
        self.runs.push((quantile(&s, 0.5), quantile(&s, 0.99)));
    }

    /// Median over runs of the per-run p50.
    pub(crate) fn p50(&self) -> f64 {
        median(&self.runs.iter().map(|r| r.0).collect::<Vec<_>>())
    }

    /// Median over runs of the per-run p99.
    pub(crate) fn p99(&self) -> f64 {
        median(&self.runs.iter().map(|r| r.1).collect::<Vec<_>>())
    }

    /// "runs × samples, p50 range a–b µs".
    pub(crate) fn describe(&self) -> String {
        let lo = self.runs.iter().map(|r| r.0).fold(f64::INFINITY, f64::min);
        let hi = self.runs.iter().map(|r| r.0).fold(0.0, f64::max);
        format!("{} runs × {} calls, run p50s {lo:.0}–{hi:.0} µs", self.runs.len(), self.per_run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let s = sorted((1..=100).map(f64::from).collect());
        assert_eq!(quantile(&s, 0.5), 51.0);
        assert_eq!(quantile(&s, 0.99), 99.0);
        assert_eq!(quantile(&s, 1.0), 100.0);
        assert!(quantile(&[], 0.5).is_nan());
        let mut r = Runs::default();
        r.push(vec![3.0, 1.0, 2.0]);
        r.push(vec![5.0, 5.0, 5.0]);
        r.push(vec![4.0, 4.0, 4.0]);
        assert_eq!(r.p50(), 4.0);
    }
}

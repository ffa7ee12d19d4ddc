//! Order statistics over latency samples.
//!
//! Percentiles use linear interpolation between the closest ranks (the
//! "R-7" definition, numpy's default): with samples sorted ascending as
//! `x[0..n]`, the p-quantile sits at rank `h = (n - 1) * p` and is
//! `x[floor h] + (h - floor h) * (x[floor h + 1] - x[floor h])`. So the median
//! of an even count is the mean of the two middle samples, p100 is the
//! maximum and p0 the minimum, and one sample is every percentile.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Summary of one operation's samples, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub samples: usize,
    pub min_ms: f64,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// The `p`-quantile (`0.0..=1.0`) of samples already sorted ascending, or
/// `None` for no samples.
pub fn quantile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let h = last as f64 * p.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(last);
    let frac = h - lo as f64;
    Some(sorted[lo] + frac * (sorted[hi] - sorted[lo]))
}

impl Summary {
    /// Summarises samples in milliseconds; `None` when there are none.
    pub fn of_ms(samples: &[f64]) -> Option<Summary> {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        Some(Summary {
            samples: n,
            min_ms: *sorted.first()?,
            median_ms: quantile(&sorted, 0.5)?,
            p90_ms: quantile(&sorted, 0.9)?,
            max_ms: *sorted.last()?,
            mean_ms: sorted.iter().sum::<f64>() / n as f64,
        })
    }

    pub fn of(samples: &[Duration]) -> Option<Summary> {
        let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        Summary::of_ms(&ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn empty_has_no_summary() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(Summary::of_ms(&[]), None);
    }

    #[test]
    fn one_sample_is_every_percentile() {
        let s = Summary::of_ms(&[7.0]).expect("summary");
        assert_eq!(
            (s.min_ms, s.median_ms, s.p90_ms, s.max_ms, s.mean_ms),
            (7.0, 7.0, 7.0, 7.0, 7.0)
        );
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert!(close(
            Summary::of_ms(&[3.0, 1.0, 2.0]).expect("s").median_ms,
            2.0
        ));
        assert!(close(
            Summary::of_ms(&[4.0, 1.0, 3.0, 2.0]).expect("s").median_ms,
            2.5
        ));
    }

    #[test]
    fn p90_interpolates_between_ranks() {
        // 1..=10: h = 9 * 0.9 = 8.1 → 9 + 0.1 * (10 - 9) = 9.1
        let v: Vec<f64> = (1..=10).rev().map(f64::from).collect();
        let s = Summary::of_ms(&v).expect("s");
        assert!(close(s.p90_ms, 9.1), "{}", s.p90_ms);
        assert!(close(s.median_ms, 5.5));
        assert!(close(s.mean_ms, 5.5));
        assert_eq!((s.min_ms, s.max_ms, s.samples), (1.0, 10.0, 10));
        // 1..=11: h = 10 * 0.9 = 9 exactly → the 10th value.
        let v: Vec<f64> = (1..=11).map(f64::from).collect();
        assert!(close(Summary::of_ms(&v).expect("s").p90_ms, 10.0));
    }

    #[test]
    fn extremes_and_non_finite_samples() {
        let sorted = [1.0, 2.0, 4.0];
        assert_eq!(quantile(&sorted, 0.0), Some(1.0));
        assert_eq!(quantile(&sorted, 1.0), Some(4.0));
        assert_eq!(quantile(&sorted, 2.0), Some(4.0));
        let s = Summary::of_ms(&[f64::NAN, 2.0, f64::INFINITY]).expect("s");
        assert_eq!(s.samples, 1);
    }

    #[test]
    fn durations_are_milliseconds() {
        let s = Summary::of(&[Duration::from_micros(1500), Duration::from_millis(3)]).expect("s");
        assert!(close(s.median_ms, 2.25));
    }
}

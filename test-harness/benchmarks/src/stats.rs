//! Percentiles with bootstrap confidence intervals, and paired ratios between two policies.
//!
//! Every policy replays the same trace, so request i of one run and request i of another saw the same
//! arrival and lengths: resampling request ids jointly (a paired bootstrap) gives tighter, honest
//! intervals for "policy A's p90 / policy B's p90".

use scheduler_core::rng::Rng;

/// A point estimate with a 95 % interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Estimate {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
}

/// The `q`-quantile (0..=1) of `values` by the nearest-rank rule; NaN when empty.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    quantile_in_place(&mut v, q)
}

fn rank(n: usize, q: f64) -> usize {
    ((q * n as f64).ceil() as usize).clamp(1, n.max(1)) - 1
}

fn quantile_in_place(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let k = rank(v.len(), q);
    v.select_nth_unstable_by(k, f64::total_cmp);
    v.get(k).copied().unwrap_or(f64::NAN)
}

/// The quantile with a percentile-bootstrap 95 % interval over `resamples` resamples.
pub fn quantile_ci(values: &[f64], q: f64, resamples: usize, seed: u64) -> Estimate {
    let value = quantile(values, q);
    if values.len() < 2 || resamples == 0 {
        return Estimate { value, lo: value, hi: value };
    }
    let mut rng = Rng::new(seed);
    let mut buf = vec![0.0; values.len()];
    let mut stats: Vec<f64> = (0..resamples)
        .map(|_| {
            for slot in buf.iter_mut() {
                *slot = values.get(rng.below(values.len())).copied().unwrap_or(f64::NAN);
            }
            quantile_in_place(&mut buf, q)
        })
        .collect();
    Estimate { value, lo: quantile_in_place(&mut stats, 0.025), hi: quantile_in_place(&mut stats, 0.975) }
}

/// `quantile(a) / quantile(b)` with a paired-bootstrap 95 % interval; `a` and `b` are per-request
/// values in request order (`None` where a request has no value, e.g. it was rejected).
pub fn paired_ratio_ci(
    a: &[Option<f64>],
    b: &[Option<f64>],
    q: f64,
    resamples: usize,
    seed: u64,
) -> Estimate {
    let pick = |idx: &mut dyn Iterator<Item = usize>| {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in idx {
            if let Some(v) = a.get(i).copied().flatten() {
                x.push(v);
            }
            if let Some(v) = b.get(i).copied().flatten() {
                y.push(v);
            }
        }
        quantile_in_place(&mut x, q) / quantile_in_place(&mut y, q)
    };
    let n = a.len().min(b.len());
    let value = pick(&mut (0..n));
    if n < 2 {
        return Estimate { value, lo: value, hi: value };
    }
    let mut rng = Rng::new(seed);
    let mut stats: Vec<f64> = (0..resamples).map(|_| pick(&mut (0..n).map(|_| rng.below(n)))).collect();
    Estimate { value, lo: quantile_in_place(&mut stats, 0.025), hi: quantile_in_place(&mut stats, 0.975) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.9), 90.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[7.0], 0.5), 7.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn bootstrap_interval_brackets_the_estimate_and_shrinks_with_more_data() {
        let mut rng = Rng::new(1);
        let small: Vec<f64> = (0..500).map(|_| rng.next_f64()).collect();
        let large: Vec<f64> = (0..20_000).map(|_| rng.next_f64()).collect();
        let (s, l) = (quantile_ci(&small, 0.9, 200, 3), quantile_ci(&large, 0.9, 200, 3));
        assert!(s.lo <= s.value && s.value <= s.hi);
        assert!((l.value - 0.9).abs() < 0.01);
        assert!(l.hi - l.lo < (s.hi - s.lo) / 2.0, "{l:?} vs {s:?}");
    }

    #[test]
    fn paired_ratio_of_a_uniformly_halved_latency_is_one_half() {
        let b: Vec<Option<f64>> = (1..=1000).map(|i| Some(f64::from(i))).collect();
        let a: Vec<Option<f64>> = b.iter().map(|v| v.map(|x| x / 2.0)).collect();
        let r = paired_ratio_ci(&a, &b, 0.9, 100, 1);
        // Pairing makes the ratio exact in every resample.
        assert_eq!((r.value, r.lo, r.hi), (0.5, 0.5, 0.5));
    }
}

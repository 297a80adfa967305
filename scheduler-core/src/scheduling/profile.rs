//! One scheduling profile: filters in order, then weighted scorers, then the picker.

use super::framework::{CycleState, Plugin, ProfileRunResult, SchedulingContext, ScoredEndpoint};
use crate::rng::Rng;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

/// A profile resolved to plugin indices (into the scheduler's plugin list).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Profile {
    pub name: String,
    pub filters: Vec<usize>,
    pub scorers: Vec<(usize, f64)>,
    pub picker: usize,
}

/// Buffers reused across requests so a decision allocates only its result.
#[derive(Default)]
pub(crate) struct Scratch {
    candidates: Vec<usize>,
    scores: Vec<f64>,
    scored: Vec<ScoredEndpoint>,
}

#[cfg(test)]
impl Scratch {
    /// Candidates with their weighted totals from the last run (as left by the picker).
    pub fn scored_for_tests(&self) -> &[ScoredEndpoint] {
        &self.scored
    }
}

/// `clamp(s, 0, 1)` with NaN counted as 0: a broken scorer must not poison the total.
pub(crate) fn sanitize(score: f64) -> f64 {
    if score.is_nan() {
        0.0
    } else {
        score.clamp(0.0, 1.0)
    }
}

impl Profile {
    /// Runs the profile over `initial` candidates. Empty `targets` means every candidate was filtered out.
    /// `(fill_to, cap)`: at most `cap` targets, and at least `fill_to` when the candidates allow (the
    /// picker's choice first, then the best scored of the rest).
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        plugins: &[Box<dyn Plugin>],
        ctx: &SchedulingContext<'_>,
        state: &mut CycleState,
        initial: &[usize],
        (fill_to, cap): (usize, usize),
        rng: &mut Rng,
        scratch: &mut Scratch,
    ) -> ProfileRunResult {
        let pool_len = ctx.pool.endpoints.len();
        let candidates = &mut scratch.candidates;
        candidates.clear();
        candidates.extend(initial.iter().copied().filter(|&i| i < pool_len));
        for filter in self.filters.iter().filter_map(|&p| plugins.get(p)?.as_filter()) {
            if candidates.is_empty() {
                break;
            }
            filter.filter(ctx, state, candidates);
            // A filter may only remove; anything it invented that is not in the pool goes.
            candidates.retain(|&i| i < pool_len);
        }
        if candidates.is_empty() {
            return ProfileRunResult { profile: self.name.clone(), targets: Vec::new() };
        }

        let scored = &mut scratch.scored;
        scored.clear();
        scored.extend(candidates.iter().map(|&index| ScoredEndpoint { index, score: 0.0 }));
        for &(p, weight) in &self.scorers {
            let Some(scorer) = plugins.get(p).and_then(|p| p.as_scorer()) else { continue };
            scratch.scores.clear();
            scratch.scores.resize(candidates.len(), 0.0);
            scorer.score(ctx, state, candidates, &mut scratch.scores);
            for (total, &s) in scored.iter_mut().zip(scratch.scores.iter()) {
                total.score += weight * sanitize(s);
            }
        }

        let mut targets = match plugins.get(self.picker).and_then(|p| p.as_picker()) {
            Some(picker) => picker.pick(scored, cap, rng),
            None => Vec::new(),
        };
        let wanted = fill_to.min(cap);
        if !targets.is_empty() && targets.len() < wanted {
            let mut rest: Vec<&ScoredEndpoint> =
                scored.iter().filter(|s| !targets.contains(&s.index)).collect();
            rest.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
            let missing = wanted.saturating_sub(targets.len());
            targets.extend(rest.iter().take(missing).map(|s| s.index));
        }
        targets.truncate(cap);
        ProfileRunResult { profile: self.name.clone(), targets }
    }
}

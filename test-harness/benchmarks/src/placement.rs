//! Where a run's prefix-cache misses come from (`quality-bench --placement`): a diagnostic, not a
//! measure in the tables.
//!
//! A request's group is its first prompt piece (the shared-prefix workload's system prompt, multi-turn's
//! chat system prompt); its prompt is all its pieces. Each measured request's missed prompt tokens
//! (prompt − cached) are split into the group part (up to the first piece's length) and the rest, and
//! each part is charged to why the pod could not have had it, from what the run routed before the
//! request arrived:
//! - `first`: no earlier request of the group went anywhere (unavoidable);
//! - `new pod`: earlier requests of the group went elsewhere, never to this pod (placement spread it);
//! - `pending`: no earlier request of the group on this pod had reached its first token yet, so no
//!   prefill of it was in the cache to reuse;
//! - `evicted`: this pod had the group before and finished prefilling it (the engine let it go).
//!
//! The rest of the prompt is charged likewise (`rest new` when no earlier request with the same pieces
//! went to this pod, `rest pending`, `rest evicted`).
//!
//! Per group it also reports how many pods its measured requests went to and what share of them went
//! to the group's most used pod.

use crate::sim::RequestRecord;
use crate::workload::Arrival;
use std::collections::HashMap;

/// Missed prompt tokens by cause, and placement of the groups, over a cell's measured requests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Placement {
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub first: u64,
    pub new_pod: u64,
    pub pending: u64,
    pub evicted: u64,
    pub rest_new: u64,
    pub rest_pending: u64,
    pub rest_evicted: u64,
    /// Groups with a measured request.
    pub groups: usize,
    /// Mean number of pods a group's measured requests went to.
    pub pods_per_group: f64,
    /// Share of measured requests that went to their group's most used pod.
    pub on_main_pod: f64,
    /// Groups whose most used pod is this pod, per pod (the prefix working set each pod keeps).
    pub main_groups_per_pod: Vec<usize>,
}

/// What was routed to one pod for one group or prompt: the earliest first token of the requests
/// routed there so far (`u64::MAX` while none has one), from when its prefill could be reused.
type Seen = HashMap<(u64, usize), u64>;

/// A stable name for a whole prompt: its pieces' seeds, folded.
fn prompt_key(a: &Arrival) -> u64 {
    a.pieces.iter().fold(0xCBF2_9CE4_8422_2325u64, |h, p| {
        (h ^ p.seed).wrapping_mul(0x0000_0100_0000_01B3) ^ u64::from(p.tokens)
    })
}

/// Charges `tokens` to `new`, `pending` or `evicted` by what `seen` says about `(key, pod)` at `at`.
fn charge(seen: &Seen, key: u64, pod: usize, at: u64, tokens: u64, counts: [&mut u64; 3]) {
    let [new, pending, evicted] = counts;
    match seen.get(&(key, pod)) {
        None => *new += tokens,
        Some(&first_token) if first_token > at => *pending += tokens,
        Some(_) => *evicted += tokens,
    }
}

/// Analyses one run: `records[i]` is what happened to `trace[i]`; requests arriving before
/// `warmup_us` build up the history but are not counted.
pub fn analyze(trace: &[Arrival], records: &[RequestRecord], warmup_us: u64) -> Placement {
    let mut order: Vec<usize> = (0..trace.len().min(records.len())).collect();
    order.sort_by_key(|&i| trace.get(i).map_or(0, |a| a.at_us));
    let mut p = Placement::default();
    let mut group_seen: Seen = HashMap::new();
    let mut prompt_seen: Seen = HashMap::new();
    let mut group_anywhere: HashMap<u64, ()> = HashMap::new();
    let mut per_group: HashMap<u64, HashMap<usize, u64>> = HashMap::new();
    for i in order {
        let (Some(a), Some(r)) = (trace.get(i), records.get(i)) else { continue };
        let Some(pod) = r.endpoint else { continue };
        let Some(group_piece) = a.pieces.first() else { continue };
        let group = group_piece.seed;
        let prompt = prompt_key(a);
        let at = r.dispatched_us.unwrap_or(a.at_us);
        if a.at_us >= warmup_us && r.finish_us.is_some() {
            let prompt_tokens = u64::from(r.prompt_tokens);
            let cached = u64::from(r.cached_tokens).min(prompt_tokens);
            p.prompt_tokens += prompt_tokens;
            p.cached_tokens += cached;
            let group_tokens = u64::from(group_piece.tokens).min(prompt_tokens);
            let group_miss = group_tokens.saturating_sub(cached);
            let rest_miss = (prompt_tokens - cached).saturating_sub(group_miss);
            if group_miss > 0 {
                if group_anywhere.contains_key(&group) {
                    let counts = [&mut p.new_pod, &mut p.pending, &mut p.evicted];
                    charge(&group_seen, group, pod, at, group_miss, counts);
                } else {
                    p.first += group_miss;
                }
            }
            if rest_miss > 0 {
                let counts = [&mut p.rest_new, &mut p.rest_pending, &mut p.rest_evicted];
                charge(&prompt_seen, prompt, pod, at, rest_miss, counts);
            }
            *per_group.entry(group).or_default().entry(pod).or_default() += 1;
        }
        let first_token = r.first_token_us.unwrap_or(u64::MAX);
        for (seen, key) in [(&mut group_seen, group), (&mut prompt_seen, prompt)] {
            let slot = seen.entry((key, pod)).or_insert(u64::MAX);
            *slot = (*slot).min(first_token);
        }
        group_anywhere.insert(group, ());
    }
    p.groups = per_group.len();
    let (mut pods, mut main, mut total) = (0usize, 0u64, 0u64);
    for counts in per_group.values() {
        pods += counts.len();
        main += counts.values().copied().max().unwrap_or(0);
        total += counts.values().sum::<u64>();
        // The most used pod, the lowest index among equals.
        let top = counts.iter().max_by_key(|&(&pod, &n)| (n, std::cmp::Reverse(pod))).map(|(&pod, _)| pod);
        if let Some(pod) = top {
            if p.main_groups_per_pod.len() <= pod {
                p.main_groups_per_pod.resize(pod + 1, 0);
            }
            if let Some(slot) = p.main_groups_per_pod.get_mut(pod) {
                *slot += 1;
            }
        }
    }
    if p.groups > 0 {
        p.pods_per_group = pods as f64 / p.groups as f64;
    }
    if total > 0 {
        p.on_main_pod = main as f64 / total as f64;
    }
    p
}

/// Header of [`row`]'s table.
pub const HEADER: &str = "| cell | hit % | miss: first | new pod | pending | evicted | rest new | rest pending | rest evicted | groups | pods/group | on main pod | groups per main pod |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|";

/// One Markdown row: misses as percentages of the measured prompt tokens.
pub fn row(label: &str, p: &Placement) -> String {
    let pct = |x: u64| if p.prompt_tokens > 0 { 100.0 * x as f64 / p.prompt_tokens as f64 } else { 0.0 };
    format!(
        "| {label} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.2} | {:.1} % | {} |",
        pct(p.cached_tokens),
        pct(p.first),
        pct(p.new_pod),
        pct(p.pending),
        pct(p.evicted),
        pct(p.rest_new),
        pct(p.rest_pending),
        pct(p.rest_evicted),
        p.groups,
        p.pods_per_group,
        100.0 * p.on_main_pod,
        p.main_groups_per_pod.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" / ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Piece;

    fn arrival(id: u64, at_us: u64, group: u64, question: u64) -> Arrival {
        Arrival {
            id,
            at_us,
            pieces: vec![Piece { seed: group, tokens: 100 }, Piece { seed: question, tokens: 20 }],
            output_tokens: 10,
            lora: None,
            class: None,
        }
    }

    fn record(at: u64, pod: usize, first_token: u64, cached: u32) -> RequestRecord {
        RequestRecord {
            arrival_us: at,
            endpoint: Some(pod),
            first_token_us: Some(first_token),
            finish_us: Some(first_token + 10),
            prompt_tokens: 120,
            output_tokens: 10,
            cached_tokens: cached,
            ..RequestRecord::default()
        }
    }

    #[test]
    fn misses_are_charged_to_their_cause() {
        let trace = vec![
            arrival(0, 0, 1, 10),   // group 1 first: all 100 group tokens are `first`, 20 `rest new`
            arrival(1, 5, 1, 10),   // same prompt, same pod, before the first token: pending
            arrival(2, 100, 1, 11), // other question, another pod: group `new pod`, rest new
            arrival(3, 200, 1, 10), // back on pod 0 after its first token, nothing cached: evicted
            arrival(4, 300, 1, 10), // pod 0, fully cached
        ];
        let records = vec![
            record(0, 0, 50, 0),
            record(5, 0, 60, 0),
            record(100, 1, 150, 0),
            record(200, 0, 250, 0),
            record(300, 0, 350, 120),
        ];
        let p = analyze(&trace, &records, 0);
        assert_eq!(p.prompt_tokens, 600);
        assert_eq!(p.cached_tokens, 120);
        assert_eq!((p.first, p.new_pod, p.pending, p.evicted), (100, 100, 100, 100));
        assert_eq!((p.rest_new, p.rest_pending, p.rest_evicted), (40, 20, 20));
        assert_eq!(p.groups, 1);
        assert!((p.pods_per_group - 2.0).abs() < 1e-9);
        assert!((p.on_main_pod - 0.8).abs() < 1e-9);
        assert_eq!(p.main_groups_per_pod, vec![1]);
    }

    #[test]
    fn warm_up_builds_history_without_being_counted() {
        let trace = vec![arrival(0, 0, 1, 10), arrival(1, 100, 1, 10)];
        let records = vec![record(0, 0, 50, 0), record(100, 1, 150, 0)];
        let p = analyze(&trace, &records, 100);
        assert_eq!(p.prompt_tokens, 120);
        assert_eq!((p.first, p.new_pod, p.rest_new), (0, 100, 20));
    }
}

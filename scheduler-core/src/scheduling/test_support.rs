//! Small stand-in plugins and pools for the pipeline and admission tests.

use crate::config::params::{NoParams, ParamError};
use crate::model::{Endpoint, EndpointState, PoolSnapshot, Role, ROLE_LABEL};
use crate::plugins::registry::{Entry, Registry};
use crate::prefix::{PrefixMatch, PREFIX_MATCH_STATE_KEY};
use crate::scheduling::{
    BuildContext, CycleState, Filter, Plugin, PluginFactory, ProfileRunResult, SaturationDetector,
    SchedulingContext, Scorer,
};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};
use serde::Deserialize;

/// A stand-in whose parameters are the plugin itself.
macro_rules! params_are_the_plugin {
    ($plugin:ident, $type_name:literal) => {
        impl PluginFactory for $plugin {
            const TYPE: &'static str = $type_name;
            type Params = $plugin;
            fn build(params: $plugin, _: &mut BuildContext<'_>) -> Result<$plugin, ParamError> {
                Ok(params)
            }
        }
    };
}

/// A stand-in that takes no parameters.
macro_rules! no_params {
    ($plugin:ident, $type_name:literal) => {
        impl PluginFactory for $plugin {
            const TYPE: &'static str = $type_name;
            type Params = NoParams;
            fn build(_: NoParams, _: &mut BuildContext<'_>) -> Result<$plugin, ParamError> {
                Ok($plugin)
            }
        }
    };
}

/// Scores endpoint `i` with `scores[i]` (by pool index; missing → 0).
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct FixedScorer {
    pub scores: Vec<f64>,
}

impl Scorer for FixedScorer {
    fn score(&self, _: &SchedulingContext<'_>, _: &mut CycleState, candidates: &[usize], scores: &mut [f64]) {
        for (s, &c) in scores.iter_mut().zip(candidates) {
            *s = self.scores.get(c).copied().unwrap_or(0.0);
        }
    }
}

impl Plugin for FixedScorer {
    fn type_name(&self) -> &'static str {
        "fixed-scorer"
    }
    fn as_scorer(&self) -> Option<&dyn Scorer> {
        Some(self)
    }
}

params_are_the_plugin!(FixedScorer, "fixed-scorer");

/// Returns NaN for every candidate.
pub struct NanScorer;
impl Scorer for NanScorer {
    fn score(&self, _: &SchedulingContext<'_>, _: &mut CycleState, _: &[usize], scores: &mut [f64]) {
        scores.fill(f64::NAN);
    }
}
impl Plugin for NanScorer {
    fn type_name(&self) -> &'static str {
        "nan-scorer"
    }
    fn as_scorer(&self) -> Option<&dyn Scorer> {
        Some(self)
    }
}
no_params!(NanScorer, "nan-scorer");

/// Removes every candidate.
pub struct DropAll;
impl Filter for DropAll {
    fn filter(&self, _: &SchedulingContext<'_>, _: &mut CycleState, candidates: &mut Vec<usize>) {
        candidates.clear();
    }
}
impl Plugin for DropAll {
    fn type_name(&self) -> &'static str {
        "drop-all-filter"
    }
    fn as_filter(&self) -> Option<&dyn Filter> {
        Some(self)
    }
}
no_params!(DropAll, "drop-all-filter");

/// Reports a fixed saturation.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct FixedDetector {
    pub saturation: f64,
}
impl SaturationDetector for FixedDetector {
    fn saturation(&self, _: &SchedulingContext<'_>) -> f64 {
        self.saturation
    }
}
impl Plugin for FixedDetector {
    fn type_name(&self) -> &'static str {
        "fixed-detector"
    }
    fn as_saturation_detector(&self) -> Option<&dyn SaturationDetector> {
        Some(self)
    }
}
params_are_the_plugin!(FixedDetector, "fixed-detector");

/// Publishes a `PrefixMatch` (as the prefix plugin will) and scores nothing.
#[derive(Deserialize, Default, Clone)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PrefixStub {
    pub total_blocks: u32,
    pub matched: Vec<(usize, u32)>,
}
impl Scorer for PrefixStub {
    fn score(&self, ctx: &SchedulingContext<'_>, state: &mut CycleState, _: &[usize], scores: &mut [f64]) {
        let mut matched_blocks = alloc::vec![0; ctx.pool.endpoints.len()];
        for &(i, m) in &self.matched {
            if let Some(slot) = matched_blocks.get_mut(i) {
                *slot = m;
            }
        }
        let hashes = alloc::vec![0; self.total_blocks as usize];
        state.insert(PREFIX_MATCH_STATE_KEY, PrefixMatch { hashes, matched_blocks, block_bytes: 64 });
        scores.fill(0.0);
    }
}
impl Plugin for PrefixStub {
    fn type_name(&self) -> &'static str {
        "prefix-stub"
    }
    fn as_scorer(&self) -> Option<&dyn Scorer> {
        Some(self)
    }
}
params_are_the_plugin!(PrefixStub, "prefix-stub");

/// Counts `pre_request` calls and remembers the last destination profile's primary.
pub static PRE_REQUEST_CALLS: AtomicUsize = AtomicUsize::new(0);
pub struct Recorder;
impl Filter for Recorder {
    fn filter(&self, _: &SchedulingContext<'_>, _: &mut CycleState, _: &mut Vec<usize>) {}
}
impl Plugin for Recorder {
    fn type_name(&self) -> &'static str {
        "recorder"
    }
    fn as_filter(&self) -> Option<&dyn Filter> {
        Some(self)
    }
    fn pre_request(&mut self, _: &SchedulingContext<'_>, _: &CycleState, done: &[ProfileRunResult]) {
        if !done.is_empty() {
            PRE_REQUEST_CALLS.fetch_add(1, Ordering::SeqCst);
        }
    }
}
no_params!(Recorder, "recorder");

/// The built-in registry plus the stand-ins above; the GIE default scorers are fixed scorers.
pub fn registry() -> Registry {
    Registry::builtin()
        .with::<FixedScorer>()
        .with_entry(Entry::named::<FixedScorer>("queue-scorer"))
        .with_entry(Entry::named::<FixedScorer>("kv-cache-utilization-scorer"))
        .with_entry(Entry::named::<FixedScorer>("prefix-cache-scorer"))
        .with::<NanScorer>()
        .with::<DropAll>()
        .with::<FixedDetector>()
        .with_entry(Entry::named::<FixedDetector>("utilization-detector"))
        .with::<PrefixStub>()
        .with::<Recorder>()
}

/// `n` endpoints `10.0.0.{i}:8000`, aggregated.
pub fn pool(n: usize) -> PoolSnapshot {
    PoolSnapshot {
        endpoints: (0..n).map(|i| EndpointState::new(Endpoint::new(format!("10.0.0.{i}:8000")))).collect(),
        ..PoolSnapshot::default()
    }
}

/// One endpoint per role given, labelled like llm-d does (except `Both`, left unlabelled).
pub fn pool_with_roles(roles: &[Role]) -> PoolSnapshot {
    let mut p = pool(roles.len());
    for (e, &r) in p.endpoints.iter_mut().zip(roles) {
        e.endpoint.role = r;
        if r != Role::Both {
            e.endpoint.labels.push((String::from(ROLE_LABEL), String::from(r.as_str())));
        }
    }
    p
}

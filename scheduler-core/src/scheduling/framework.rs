//! The contract between the pipeline and its plugins (GIE's `framework/interface`, in Rust).
//!
//! A plugin is one object created from one `plugins[]` entry of the configuration. It may play several
//! parts (the prefix scorer scores and also learns from the final pick), so the pipeline stores
//! `Box<dyn Plugin>` and asks each one which parts it plays through the `as_*` accessors. Profiles refer to
//! plugins by index into the scheduler's plugin list.

use crate::model::PoolSnapshot;
use crate::rng::Rng;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::any::Any;

/// What an llm-d plugin outside the scheduling pipeline is, as its configuration sections refer to it.
/// Such plugins are accepted because another part of wasm-epp does their work (the collector scrapes,
/// the request reader parses); see `plugins::upstream`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectionRole {
    /// `requestHandler.parsers[]`, `parser`.
    Parser,
    /// `dataLayer.sources[]`.
    DataSource,
    /// `dataLayer.sources[].extractors[]`.
    Extractor,
    /// `dataLayer.discovery`.
    Discovery,
    /// Producers of per-request data that scorers name in their parameters.
    DataProducer,
}

impl SectionRole {
    /// The words for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            SectionRole::Parser => "parser",
            SectionRole::DataSource => "data source",
            SectionRole::Extractor => "data extractor",
            SectionRole::Discovery => "endpoint discovery plugin",
            SectionRole::DataProducer => "data producer",
        }
    }
}

/// Everything about a request the scheduler may look at. Built by the caller (filter, shim, simulator)
/// from the parsed body and the request headers; borrows, so a 1 MB prompt is never copied.
#[derive(Clone, Debug, Default)]
pub struct SchedulingRequest<'a> {
    /// `x-request-id`, for logs only.
    pub request_id: &'a str,
    /// Model to serve (after any rewrite). For LoRA serving this is the adapter name.
    pub model: &'a str,
    /// Bytes hashed for prefix affinity (see `request` for what they are per API).
    pub prefix_input: &'a [u8],
    /// `cache_salt` from the body: isolates prefix-cache sharing between tenants.
    pub cache_salt: Option<&'a str>,
    /// Size of the prompt in bytes (for token estimates: bytes / 4).
    pub prompt_bytes: usize,
    /// `max_tokens` / `max_completion_tokens`, when given.
    pub max_output_tokens: Option<u64>,
    /// From the InferenceObjective (`x-gateway-inference-objective`): unset 0, negative = sheddable.
    pub priority: i32,
    /// `x-session-token` (session-affinity scorer).
    pub session_token: Option<&'a str>,
    /// The request headers configured plugins read while scheduling (`header-profile-handler`,
    /// `header-label-affinity-scorer`): lower-case name and value, only those names, copied once when
    /// the request headers arrive.
    pub headers: &'a [(String, String)],
}

impl<'a> SchedulingRequest<'a> {
    /// The value of request header `name` (lower-case), if a plugin asked for it and the request has it.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Estimated input tokens (GIE's 4 bytes per token).
    pub fn estimated_input_tokens(&self) -> u64 {
        (self.prompt_bytes as u64).div_ceil(4)
    }

    /// Estimated total tokens the request will hold on a server: input plus expected output
    /// (`max_tokens` when given, else GIE's 1.5 × input).
    pub fn estimated_total_tokens(&self) -> u64 {
        let input = self.estimated_input_tokens();
        let output = self.max_output_tokens.unwrap_or(input.saturating_mul(3) / 2);
        input.saturating_add(output)
    }
}

/// What every plugin sees during one scheduling cycle.
pub struct SchedulingContext<'a> {
    pub request: &'a SchedulingRequest<'a>,
    /// The pool, with gateway in-flight counts already merged in. Candidates index into `pool.endpoints`.
    pub pool: &'a PoolSnapshot,
    /// Caller's clock in ms (same clock as `Metrics::updated_at_ms`).
    pub now_ms: u64,
}

/// Scratch space for one request, shared by the plugins of every profile in the cycle, so work such as
/// hashing the prompt is done once. Keys are chosen by the plugin that stores the value.
#[derive(Default)]
pub struct CycleState {
    entries: Vec<(&'static str, Box<dyn Any>)>,
}

impl CycleState {
    pub fn get<T: 'static>(&self, key: &str) -> Option<&T> {
        self.entries.iter().find(|(k, _)| *k == key).and_then(|(_, v)| v.downcast_ref::<T>())
    }

    /// Removes and returns the value under `key` (when it has type `T`), without copying it.
    pub fn take<T: 'static>(&mut self, key: &str) -> Option<T> {
        let pos = self.entries.iter().position(|(k, v)| *k == key && v.is::<T>())?;
        let (_, v) = self.entries.swap_remove(pos);
        v.downcast::<T>().ok().map(|b| *b)
    }

    pub fn insert<T: 'static>(&mut self, key: &'static str, value: T) {
        self.entries.retain(|(k, _)| *k != key);
        self.entries.push((key, Box::new(value)));
    }
}

/// An endpoint (index into `pool.endpoints`) with its weighted total score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoredEndpoint {
    pub index: usize,
    pub score: f64,
}

/// Removes candidates. Must leave `candidates` a subset of what it received, order preserved.
pub trait Filter {
    fn filter(&self, ctx: &SchedulingContext<'_>, state: &mut CycleState, candidates: &mut Vec<usize>);
}

/// Scores candidates. Writes one score per candidate into `scores` (same order, same length); the
/// pipeline clamps each score to [0, 1] and multiplies by the configured weight.
pub trait Scorer {
    fn score(
        &self,
        ctx: &SchedulingContext<'_>,
        state: &mut CycleState,
        candidates: &[usize],
        scores: &mut [f64],
    );
}

/// Chooses the targets from scored candidates: primary first, then fallbacks, at most `max` entries.
/// `scored` is never empty when called. `max` is the caller's cap; a picker also applies its own
/// configured `maxNumOfEndpoints`.
pub trait Picker {
    fn pick(&self, scored: &mut [ScoredEndpoint], max: usize, rng: &mut Rng) -> Vec<usize>;
}

/// The outcome of one profile run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProfileRunResult {
    pub profile: String,
    /// Picked endpoints (indices into `pool.endpoints`), primary first. Empty when every candidate was
    /// filtered out.
    pub targets: Vec<usize>,
}

/// Which profiles run, and how their results become the request's destination.
pub trait ProfileHandler {
    /// Names of the profiles to run next, given those already run. Return an empty list to stop.
    /// Called repeatedly (so P/D can decide on prefill after seeing the decode result).
    /// `state` is the cycle's scratch space, already filled by the plugins of the profiles that ran
    /// (P/D reads the prefix match of the decode pick from it, as GIE's handler does, and computes it
    /// there when no plugin of the decode profile did).
    fn pick_profiles(
        &self,
        ctx: &SchedulingContext<'_>,
        state: &mut CycleState,
        profiles: &[String],
        done: &[ProfileRunResult],
    ) -> Vec<String>;

    /// Checked once when the scheduler is built: the configured profile names suit this handler.
    /// `Err` says what was expected (it becomes a configuration error).
    fn validate_profiles(&self, _profiles: &[String]) -> Result<(), String> {
        Ok(())
    }

    /// Name of the profile whose targets are the destination, and, for disaggregated serving, the
    /// profile whose primary target goes into the prefill header.
    fn primary_profile<'r>(&self, done: &'r [ProfileRunResult]) -> Option<&'r ProfileRunResult>;

    fn prefill_profile<'r>(&self, _done: &'r [ProfileRunResult]) -> Option<&'r ProfileRunResult> {
        None
    }
}

/// Decides whether a request's prefill runs on a pod of its own (llm-d's P/D deciders), once the decode
/// pod is picked. Profile handlers find the decider their parameters name through the build context.
pub trait PdDecider {
    /// `input_tokens` is the prompt's estimated length; `cached_tokens` says how many of those tokens the
    /// decode pick probably holds in its KV cache (computed only when called).
    fn disaggregate(&self, input_tokens: u64, cached_tokens: &mut dyn FnMut() -> u64) -> bool;

    /// Whether the decision reads the decode pick's prefix-cache hits, so that the handler needs a
    /// prefix index even when no prefix plugin is configured (llm-d then creates its default producer).
    fn reads_prefix_cache(&self) -> bool {
        false
    }
}

/// Says how saturated the pool is (1.0 = saturated): drives shedding of sheddable requests.
pub trait SaturationDetector {
    fn saturation(&self, ctx: &SchedulingContext<'_>) -> f64;
}

/// Decides, once the candidates are known and before any profile runs, whether a request is served at
/// all (llm-d's admitters). `Err` is the sentence the client gets with a 429.
pub trait Admitter {
    fn admit(&self, ctx: &SchedulingContext<'_>, candidates: &[usize], rng: &mut Rng) -> Result<(), String>;
}

/// A configured plugin instance. Implement the parts the plugin plays; a plugin type is made known to
/// the configuration through [`PluginFactory`](super::factory::PluginFactory).
pub trait Plugin {
    /// The configuration `type` this plugin was built from (e.g. `queue-scorer`).
    fn type_name(&self) -> &'static str;

    fn as_filter(&self) -> Option<&dyn Filter> {
        None
    }
    fn as_scorer(&self) -> Option<&dyn Scorer> {
        None
    }
    fn as_picker(&self) -> Option<&dyn Picker> {
        None
    }
    fn as_profile_handler(&self) -> Option<&dyn ProfileHandler> {
        None
    }
    fn as_saturation_detector(&self) -> Option<&dyn SaturationDetector> {
        None
    }
    fn as_admitter(&self) -> Option<&dyn Admitter> {
        None
    }
    /// The part an llm-d plugin that is not a scheduling plugin plays here (a parser, a data source...),
    /// so the configuration's sections (`requestHandler.parsers`, `dataLayer.sources`...) can be checked
    /// to name plugins of the right kind.
    fn section_role(&self) -> Option<SectionRole> {
        None
    }

    /// Called once per request after the final decision (GIE's PreRequest): stateful plugins learn from
    /// it (the prefix index records which endpoint will now hold the prompt's blocks).
    fn pre_request(
        &mut self,
        _ctx: &SchedulingContext<'_>,
        _state: &CycleState,
        _destination: &[ProfileRunResult],
    ) {
    }
}

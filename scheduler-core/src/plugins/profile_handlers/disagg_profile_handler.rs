//! `disagg-profile-handler` (llm-d v0.10): disaggregated prefill/decode, and [`Disaggregation`], the
//! stage logic it shares with the older `pd-profile-handler`.
//!
//! Decode-first (the default): the decode profile runs; if it picked a pod and a prefill profile
//! exists, the prefill decider named by `deciders.prefill` is asked, given the decode pick, whether
//! prefill gets a pod of its own; if so the prefill profile runs and its pick goes into
//! `x-prefiller-host-port`. No decider: decode only. Prefill-first: the prefill profile (when there is
//! one) runs first, always, then decode; a prefill decider is then an error, as in llm-d. The decode
//! pick is the destination either way.
//!
//! Not here, and refused with a reason: encode disaggregation (`deciders.encode`, llm-d's E/PD and
//! E/P/D, which sends `x-encoder-hosts-ports` to an encoder-cache sidecar). The `peer-endpoint` llm-d
//! publishes for topology-aware plugins has no reader here (those plugins are refused).
//!
//! The deciders read the decode pick's prefix-cache hits. When no plugin of the decode profile has
//! computed the request's prefix match, the handler computes it from the configuration's prefix index,
//! or, when there is none, from an index it keeps and records its picks in, as llm-d creates its
//! default prefix producer for a handler that needs one.

use crate::config::params::{json_repr, parse_params, ParamError};
use crate::prefix::{prefix_match, record_destination, PrefixConfig, PrefixHandle, PrefixMatch};
use crate::prefix::{BYTES_PER_TOKEN, PREFIX_MATCH_STATE_KEY};
use crate::scheduling::{
    BuildContext, CycleState, LookupError, PdDecider, Plugin, PluginFactory, ProfileHandler,
    ProfileRunResult, SchedulingContext,
};
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use serde::Deserialize;
use serde_json::{Map, Value};

pub const TYPE: &str = "disagg-profile-handler";

/// The name llm-d gives its default prefix producer, whose match its deciders read.
const DEFAULT_PREFIX_PRODUCER: &str = "approx-prefix-cache-producer";

/// In which order the stages run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StageOrder {
    /// Decode, then prefill when the decider says so.
    #[default]
    DecodeFirst,
    /// Prefill (always, when the profile exists), then decode.
    PrefillFirst,
}

impl StageOrder {
    /// llm-d's spellings: case, `-` and `_` do not matter; `decode`/`prefill` are accepted too.
    pub fn parse(s: &str) -> Option<StageOrder> {
        let folded: String =
            s.chars().filter(|c| *c != '-' && *c != '_').flat_map(char::to_lowercase).collect();
        match folded.as_str() {
            "" | "decodefirst" | "decode" => Some(StageOrder::DecodeFirst),
            "prefillfirst" | "prefill" => Some(StageOrder::PrefillFirst),
            _ => None,
        }
    }
}

/// How the decode-first order decides on a prefill pod.
#[derive(Clone)]
pub enum PrefillDecision {
    /// Never: no prefill decider.
    Never,
    /// `pd-profile-handler`'s own `threshold` (uncached tokens, from the matched fraction of the
    /// prompt); 0 disaggregates every request.
    Threshold(u64),
    /// The decider plugin the handler names.
    Decider(Rc<dyn PdDecider>),
}

impl core::fmt::Debug for PrefillDecision {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PrefillDecision::Never => f.write_str("Never"),
            PrefillDecision::Threshold(t) => write!(f, "Threshold({t})"),
            PrefillDecision::Decider(_) => f.write_str("Decider"),
        }
    }
}

impl PrefillDecision {
    fn reads_prefix_cache(&self) -> bool {
        match self {
            PrefillDecision::Never => false,
            PrefillDecision::Threshold(t) => *t > 0,
            PrefillDecision::Decider(d) => d.reads_prefix_cache(),
        }
    }
}

/// The index a handler reads the decode pick's prefix hits from.
#[derive(Clone, Debug)]
struct PrefixSource {
    handle: PrefixHandle,
    /// The handler's own index (no prefix producer configured): it records the picks itself.
    records: bool,
}

/// The stages of a disaggregating handler: profile names, order, decision, prefix index.
#[derive(Clone, Debug)]
pub struct Disaggregation {
    pub decode_profile: String,
    pub prefill_profile: String,
    pub order: StageOrder,
    pub decision: PrefillDecision,
    prefix: Option<PrefixSource>,
}

impl Disaggregation {
    /// The stages, with the prefix index the decision reads when it reads one: the plugin named
    /// `producer` (its parameter is `producer_field`), else llm-d's default producer, else the only one
    /// configured, else an index of the handler's own.
    pub fn new(
        decode_profile: String,
        prefill_profile: String,
        order: StageOrder,
        decision: PrefillDecision,
        producer: Option<(&str, &str)>,
        ctx: &mut BuildContext<'_>,
    ) -> Result<Disaggregation, ParamError> {
        if decode_profile.is_empty() {
            return Err(ParamError::new("decodeProfile", "a profile name", Some(String::from("\"\""))));
        }
        let named = match producer {
            Some((field, name)) => match ctx.prefix_index(Some(name)) {
                Ok(found) => found,
                Err(_) => {
                    return Err(ParamError::new(
                        field,
                        "the name of a plugin that keeps a prefix index (approx-prefix-cache-producer, \
                         prefix-cache-scorer)",
                        Some(format!("{name:?}")),
                    ))
                }
            },
            None => None,
        };
        let prefix = if !decision.reads_prefix_cache() {
            None
        } else if let Some(handle) = named {
            Some(PrefixSource { handle, records: false })
        } else {
            let shared = match ctx.prefix_index(None) {
                Ok(found) => found,
                Err(LookupError::Ambiguous) => ctx.prefix_index(Some(DEFAULT_PREFIX_PRODUCER)).ok().flatten(),
                Err(LookupError::NotProduced) => None,
            };
            Some(match shared {
                Some(handle) => PrefixSource { handle, records: false },
                None => {
                    let own = PrefixHandle::new(PrefixConfig::default());
                    ctx.keep_prefix_index(own.clone());
                    PrefixSource { handle: own, records: true }
                }
            })
        };
        Ok(Disaggregation { decode_profile, prefill_profile, order, decision, prefix })
    }

    fn find<'r>(done: &'r [ProfileRunResult], name: &str) -> Option<&'r ProfileRunResult> {
        done.iter().find(|r| r.profile == name)
    }

    /// The request's prefix match: the one a plugin computed this cycle, else computed now from the
    /// handler's index (and stored, so the picks are recorded and shared with the other workers).
    fn prefix_match<'s>(
        &self,
        ctx: &SchedulingContext<'_>,
        state: &'s mut CycleState,
    ) -> Option<&'s PrefixMatch> {
        if state.get::<PrefixMatch>(PREFIX_MATCH_STATE_KEY).is_none() {
            if let Some(p) = &self.prefix {
                prefix_match(ctx, state, &p.handle);
            }
        }
        state.get::<PrefixMatch>(PREFIX_MATCH_STATE_KEY)
    }

    /// Whether prefill gets its own pod, given the decode pick.
    fn disaggregate(
        &self,
        ctx: &SchedulingContext<'_>,
        state: &mut CycleState,
        decode_target: usize,
    ) -> bool {
        let tokens = ctx.request.estimated_input_tokens();
        match &self.decision {
            PrefillDecision::Never => false,
            PrefillDecision::Threshold(0) => true,
            PrefillDecision::Threshold(threshold) => {
                let cached =
                    self.prefix_match(ctx, state).map_or(0.0, |m| m.score(decode_target).clamp(0.0, 1.0));
                // Rounded so that 90 % of 1000 tokens leaves exactly 100 uncached, not 99.999….
                let cached_tokens = (tokens as f64 * cached + 0.5) as u64;
                tokens.saturating_sub(cached_tokens) >= *threshold
            }
            PrefillDecision::Decider(decider) => decider.disaggregate(tokens, &mut || {
                self.prefix_match(ctx, state).map_or(0, |m| {
                    let block_tokens = (m.block_bytes / BYTES_PER_TOKEN) as u64;
                    u64::from(m.matched(decode_target)).saturating_mul(block_tokens)
                })
            }),
        }
    }
}

impl ProfileHandler for Disaggregation {
    fn pick_profiles(
        &self,
        ctx: &SchedulingContext<'_>,
        state: &mut CycleState,
        profiles: &[String],
        done: &[ProfileRunResult],
    ) -> Vec<String> {
        let prefill_pending =
            profiles.contains(&self.prefill_profile) && Self::find(done, &self.prefill_profile).is_none();
        let decode = Self::find(done, &self.decode_profile);
        match self.order {
            StageOrder::PrefillFirst => match decode {
                Some(_) => Vec::new(),
                None if prefill_pending => alloc::vec![self.prefill_profile.clone()],
                None => alloc::vec![self.decode_profile.clone()],
            },
            StageOrder::DecodeFirst => {
                let Some(decode) = decode else {
                    return alloc::vec![self.decode_profile.clone()];
                };
                match decode.targets.first() {
                    Some(&target) if prefill_pending && self.disaggregate(ctx, state, target) => {
                        alloc::vec![self.prefill_profile.clone()]
                    }
                    _ => Vec::new(),
                }
            }
        }
    }

    fn validate_profiles(&self, profiles: &[String]) -> Result<(), String> {
        if profiles.contains(&self.decode_profile) {
            Ok(())
        } else {
            Err(format!(
                "a profile named {:?} (the decode profile), got profiles {:?}",
                self.decode_profile, profiles
            ))
        }
    }

    fn primary_profile<'r>(&self, done: &'r [ProfileRunResult]) -> Option<&'r ProfileRunResult> {
        Self::find(done, &self.decode_profile)
    }

    /// The prefill pick, when prefill ran and found a pod (no prefill pod → aggregated, no header).
    fn prefill_profile<'r>(&self, done: &'r [ProfileRunResult]) -> Option<&'r ProfileRunResult> {
        Self::find(done, &self.prefill_profile).filter(|r| !r.targets.is_empty())
    }
}

impl Disaggregation {
    /// Records the picks in the handler's own prefix index, when it keeps one.
    pub fn pre_request(
        &self,
        ctx: &SchedulingContext<'_>,
        state: &CycleState,
        destination: &[ProfileRunResult],
    ) {
        if let Some(p) = self.prefix.as_ref().filter(|p| p.records) {
            record_destination(ctx, state, destination, &p.handle);
        }
    }

    /// The index the decision reads, if it reads one (tests, diagnostics).
    pub fn prefix_handle(&self) -> Option<&PrefixHandle> {
        self.prefix.as_ref().map(|p| &p.handle)
    }
}

/// The prefill decider named by `field`: a plugin that offers one.
pub fn decider_named(
    ctx: &BuildContext<'_>,
    field: &str,
    name: &str,
) -> Result<Rc<dyn PdDecider>, ParamError> {
    ctx.pd_decider(name).ok_or_else(|| {
        ParamError::new(
            field,
            "the name of a P/D decider plugin (prefix-based-pd-decider, always-disagg-pd-decider)",
            Some(format!("{name:?}")),
        )
    })
}

/// `profiles` (nested form).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Profiles {
    decode: String,
    prefill: String,
    /// Accepted: without an encode decider (refused) the encode stage never runs, as in llm-d.
    #[allow(dead_code)]
    encode: String,
}

/// `deciders` (nested form): plugin names.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Deciders {
    prefill: String,
    encode: String,
}

/// The deprecated flat form.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct Legacy {
    stage_order: String,
    decode_profile: String,
    prefill_profile: String,
    /// As `profiles.encode`.
    #[allow(dead_code)]
    encode_profile: String,
    prefill_decider_plugin_name: String,
    encode_decider_plugin_name: String,
    decider_plugin_name: String,
}

const LEGACY_KEYS: [&str; 6] = [
    "decodeProfile",
    "prefillProfile",
    "encodeProfile",
    "prefillDeciderPluginName",
    "encodeDeciderPluginName",
    "deciderPluginName",
];
const NESTED_KEYS: [&str; 3] = ["profiles", "deciders", "stageOrder"];

/// A parameter's value with the key it came from (for errors).
struct Named {
    value: String,
    field: &'static str,
}

impl Named {
    fn new(value: String, field: &'static str) -> Named {
        Named { value, field }
    }

    fn or_default(self, default: &str) -> String {
        if self.value.is_empty() {
            String::from(default)
        } else {
            self.value
        }
    }
}

/// The parameters in either form, as llm-d reads them.
struct DisaggParams {
    stage_order: Named,
    decode: Named,
    prefill: Named,
    prefill_decider: Named,
    encode_decider: Named,
}

/// Errors inside a nested object name the key within it (`deciders.prefil`).
fn nested<T: serde::de::DeserializeOwned + Default>(
    obj: &Map<String, Value>,
    key: &str,
) -> Result<T, ParamError> {
    match obj.get(key) {
        None => Ok(T::default()),
        Some(v) => parse_params(v).map_err(|e| {
            let field = if e.field.is_empty() { String::from(key) } else { format!("{key}.{}", e.field) };
            ParamError { field, ..e }
        }),
    }
}

fn read_params(params: &Value, ctx: &mut BuildContext<'_>) -> Result<DisaggParams, ParamError> {
    let empty = Map::new();
    let obj = match params {
        Value::Null => &empty,
        Value::Object(o) => o,
        other => return Err(ParamError::new("", "an object of parameters", Some(json_repr(other)))),
    };
    let legacy = obj.keys().find(|k| LEGACY_KEYS.contains(&k.as_str()));
    let modern = obj.keys().find(|k| k.as_str() == "profiles" || k.as_str() == "deciders");
    if let (Some(l), Some(m)) = (legacy, modern) {
        return Err(ParamError::new(
            l.as_str(),
            format!("one form of parameters: {m} is the nested form, {l} the deprecated flat one"),
            Some(String::from("both")),
        ));
    }
    if legacy.is_none() {
        if let Some(k) = obj.keys().find(|k| !NESTED_KEYS.contains(&k.as_str())) {
            let expected = "one of the known parameters: profiles, deciders, stageOrder (or the deprecated \
                            decodeProfile, prefillProfile, encodeProfile, prefillDeciderPluginName, \
                            encodeDeciderPluginName, deciderPluginName)";
            return Err(ParamError::new(k.as_str(), expected, Some(String::from("an unknown parameter"))));
        }
        let stage_order = match obj.get("stageOrder") {
            None => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(ParamError::new("stageOrder", "a string", Some(json_repr(other))));
            }
        };
        let profiles: Profiles = nested(obj, "profiles")?;
        let deciders: Deciders = nested(obj, "deciders")?;
        return Ok(DisaggParams {
            stage_order: Named::new(stage_order, "stageOrder"),
            decode: Named::new(profiles.decode, "profiles.decode"),
            prefill: Named::new(profiles.prefill, "profiles.prefill"),
            prefill_decider: Named::new(deciders.prefill, "deciders.prefill"),
            encode_decider: Named::new(deciders.encode, "deciders.encode"),
        });
    }
    let l: Legacy = parse_params(params)?;
    ctx.warn("", "the flat parameters are deprecated in llm-d; use profiles and deciders");
    // llm-d: `deciderPluginName` (pd-profile-handler's) is the prefill decider when the newer name is
    // not given.
    let prefill_decider = if l.prefill_decider_plugin_name.is_empty() && !l.decider_plugin_name.is_empty() {
        Named::new(l.decider_plugin_name, "deciderPluginName")
    } else {
        Named::new(l.prefill_decider_plugin_name, "prefillDeciderPluginName")
    };
    Ok(DisaggParams {
        stage_order: Named::new(l.stage_order, "stageOrder"),
        decode: Named::new(l.decode_profile, "decodeProfile"),
        prefill: Named::new(l.prefill_profile, "prefillProfile"),
        prefill_decider,
        encode_decider: Named::new(l.encode_decider_plugin_name, "encodeDeciderPluginName"),
    })
}

/// Why encode disaggregation is refused (the `deciders.encode` error and the compatibility table).
pub const ENCODE_REFUSED: &str =
    "encode disaggregation (llm-d's E/PD and E/P/D) needs the x-encoder-hosts-ports \
     contract with llm-d's encoder-cache sidecar and a multimodal request detector, which wasm-epp does not \
     implement; serve multimodal requests aggregated (no encode decider)";

/// The prefill profile of a `plugins[]` entry that is a P/D handler (`pd-profile-handler` or
/// `disagg-profile-handler`), for the parts outside the scheduler that name the prefill pick (the session
/// token). Reads only what a configuration that built has; `None` for other types.
pub fn configured_prefill_profile(type_name: &str, params: &Value) -> Option<String> {
    let name = match type_name {
        super::pd_profile_handler::TYPE => params.get("prefillProfile"),
        TYPE => {
            params.get("profiles").and_then(|p| p.get("prefill")).or_else(|| params.get("prefillProfile"))
        }
        _ => return None,
    };
    let name = name.and_then(Value::as_str).unwrap_or_default();
    Some(String::from(if name.is_empty() { "prefill" } else { name }))
}

/// `disagg-profile-handler` (see the module documentation).
#[derive(Clone, Debug)]
pub struct DisaggProfileHandler {
    stages: Disaggregation,
}

impl DisaggProfileHandler {
    pub fn stages(&self) -> &Disaggregation {
        &self.stages
    }
}

impl PluginFactory for DisaggProfileHandler {
    const TYPE: &'static str = TYPE;
    /// Nested (`profiles`, `deciders`, `stageOrder`) or the deprecated flat form, never both.
    type Params = Value;

    fn build(params: Value, ctx: &mut BuildContext<'_>) -> Result<DisaggProfileHandler, ParamError> {
        let p = read_params(&params, ctx)?;
        let order = StageOrder::parse(&p.stage_order.value).ok_or_else(|| {
            ParamError::new(
                p.stage_order.field,
                "\"decode-first\" or \"prefill-first\"",
                Some(format!("{:?}", p.stage_order.value)),
            )
        })?;
        if !p.encode_decider.value.is_empty() {
            let name = &p.encode_decider.value;
            decider_named(ctx, p.encode_decider.field, name)?;
            return Err(ParamError::new(
                p.encode_decider.field,
                format!("no encode decider: {ENCODE_REFUSED}"),
                Some(format!("{name:?}")),
            ));
        }
        let decision = match (p.prefill_decider.value.as_str(), order) {
            ("", _) => PrefillDecision::Never,
            (name, StageOrder::PrefillFirst) => return Err(ParamError::new(
                p.prefill_decider.field,
                "no prefill decider with stageOrder prefill-first (prefill then always runs), as in llm-d",
                Some(format!("{name:?}")),
            )),
            (name, StageOrder::DecodeFirst) => {
                PrefillDecision::Decider(decider_named(ctx, p.prefill_decider.field, name)?)
            }
        };
        let stages = Disaggregation::new(
            p.decode.or_default("decode"),
            p.prefill.or_default("prefill"),
            order,
            decision,
            None,
            ctx,
        )?;
        Ok(DisaggProfileHandler { stages })
    }
}

impl ProfileHandler for DisaggProfileHandler {
    fn pick_profiles(
        &self,
        ctx: &SchedulingContext<'_>,
        state: &mut CycleState,
        profiles: &[String],
        done: &[ProfileRunResult],
    ) -> Vec<String> {
        self.stages.pick_profiles(ctx, state, profiles, done)
    }

    fn validate_profiles(&self, profiles: &[String]) -> Result<(), String> {
        self.stages.validate_profiles(profiles)
    }

    fn primary_profile<'r>(&self, done: &'r [ProfileRunResult]) -> Option<&'r ProfileRunResult> {
        self.stages.primary_profile(done)
    }

    fn prefill_profile<'r>(&self, done: &'r [ProfileRunResult]) -> Option<&'r ProfileRunResult> {
        self.stages.prefill_profile(done)
    }
}

impl Plugin for DisaggProfileHandler {
    fn type_name(&self) -> &'static str {
        TYPE
    }

    fn as_profile_handler(&self) -> Option<&dyn ProfileHandler> {
        Some(self)
    }

    fn pre_request(
        &mut self,
        ctx: &SchedulingContext<'_>,
        state: &CycleState,
        destination: &[ProfileRunResult],
    ) {
        self.stages.pre_request(ctx, state, destination);
    }
}

#[cfg(test)]
mod tests {
    use crate::config::EndpointPickerConfig;
    use crate::model::{PoolSnapshot, Role};
    use crate::rng::Rng;
    use crate::scheduling::pipeline::{Scheduler, SchedulingResult};
    use crate::scheduling::test_support::pool_with_roles;
    use crate::scheduling::{SchedulingContext, SchedulingRequest};
    use alloc::string::{String, ToString};
    use alloc::vec::Vec;

    fn build(json: &str) -> Result<Scheduler, String> {
        let cfg = EndpointPickerConfig::from_json(json).map_err(|e| e.to_string())?;
        Scheduler::from_config(&cfg).map_err(|e| e.to_string())
    }

    fn built(json: &str) -> Scheduler {
        build(json).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A P/D configuration with `handler` (and `extra` plugins) over a prefill and a decode profile.
    fn pd(handler: &str, extra: &str, prefix_in_profiles: bool) -> String {
        let prefix =
            if prefix_in_profiles { r#", {"pluginRef": "prefix-cache-scorer", "weight": 2}"# } else { "" };
        let prefix_plugin = if prefix_in_profiles { r#"{"type": "prefix-cache-scorer"},"# } else { "" };
        alloc::format!(
            r#"{{"plugins": [{prefix_plugin} {{"type": "queue-scorer"}}, {{"type": "prefill-filter"}},
                {{"type": "decode-filter"}}, {{"type": "max-score-picker"}}, {handler} {extra}],
              "schedulingProfiles": [
                {{"name": "prefill", "plugins": [{{"pluginRef": "prefill-filter"}}, {{"pluginRef": "queue-scorer"}}{prefix}]}},
                {{"name": "decode", "plugins": [{{"pluginRef": "decode-filter"}}, {{"pluginRef": "queue-scorer"}}{prefix}]}}]}}"#
        )
    }

    const DECIDER_16: &str =
        r#", {"type": "prefix-based-pd-decider", "parameters": {"nonCachedTokens": 16}}"#;

    fn disagg(params: &str) -> String {
        alloc::format!(r#"{{"type": "disagg-profile-handler", "parameters": {params}}}"#)
    }

    /// e0 prefill, e1 decode.
    fn pool() -> PoolSnapshot {
        pool_with_roles(&[Role::Prefill, Role::Decode])
    }

    fn run(s: &mut Scheduler, pool: &PoolSnapshot, prompt: &[u8]) -> SchedulingResult {
        let req = SchedulingRequest {
            request_id: "r",
            model: "m",
            prefix_input: prompt,
            prompt_bytes: prompt.len(),
            ..SchedulingRequest::default()
        };
        let ctx = SchedulingContext { request: &req, pool, now_ms: 0 };
        let all: Vec<usize> = (0..pool.endpoints.len()).collect();
        s.schedule(&ctx, &all, &mut Rng::new(7)).unwrap()
    }

    fn ran(r: &SchedulingResult) -> Vec<&str> {
        r.profiles.iter().map(|p| p.profile.as_str()).collect()
    }

    #[test]
    fn the_prefix_decider_sends_uncached_prompts_to_a_prefill_pod_and_cached_ones_not() {
        let mut s =
            built(&pd(&disagg(r#"{"deciders": {"prefill": "prefix-based-pd-decider"}}"#), DECIDER_16, true));
        let pool = pool();
        // 400 bytes = 100 tokens, nothing cached: 100 ≥ 16 uncached.
        let prompt = [b'a'; 400];
        let r = run(&mut s, &pool, &prompt);
        assert_eq!((r.destination(), r.prefill), (Some(1), Some(0)));
        assert_eq!(ran(&r), ["decode", "prefill"]);
        // Again: the decode pod holds 6 blocks of 16 tokens, 4 tokens are left (< 16): aggregated.
        let r = run(&mut s, &pool, &prompt);
        assert_eq!((r.destination(), r.prefill), (Some(1), None));
        assert_eq!(ran(&r), ["decode"]);
        // A longer prompt with the same start: 100 tokens more to prefill.
        let mut longer = prompt.to_vec();
        longer.extend_from_slice(&[b'b'; 400]);
        assert_eq!(run(&mut s, &pool, &longer).prefill, Some(0));
        // Shorter than nonCachedTokens: never.
        assert_eq!(run(&mut s, &pool, &[b'z'; 60]).prefill, None);
    }

    #[test]
    fn zero_non_cached_tokens_or_no_decider_serve_every_request_on_the_decode_pod() {
        let zero = r#", {"type": "prefix-based-pd-decider", "parameters": {"nonCachedTokens": 0}}"#;
        for config in [
            pd(&disagg(r#"{"deciders": {"prefill": "prefix-based-pd-decider"}}"#), zero, true),
            pd(&disagg("{}"), DECIDER_16, true),
            pd(r#"{"type": "disagg-profile-handler"}"#, "", true),
        ] {
            let mut s = built(&config);
            let r = run(&mut s, &pool(), &[b'a'; 4000]);
            assert_eq!((r.destination(), r.prefill), (Some(1), None), "{config}");
        }
    }

    #[test]
    fn the_always_decider_disaggregates_every_request() {
        let always = r#", {"name": "always", "type": "always-disagg-pd-decider"}"#;
        let mut s = built(&pd(&disagg(r#"{"deciders": {"prefill": "always"}}"#), always, false));
        for _ in 0..2 {
            assert_eq!(run(&mut s, &pool(), b"hi").prefill, Some(0));
        }
    }

    #[test]
    fn without_a_prefix_plugin_the_decider_still_sees_the_prefix_hits() {
        // As llm-d's sim-e-p-d config without its encode stage: no prefix plugin anywhere.
        let mut s =
            built(&pd(&disagg(r#"{"deciders": {"prefill": "prefix-based-pd-decider"}}"#), DECIDER_16, false));
        assert_eq!(s.shared().prefix_indexes().count(), 1, "the handler keeps an index");
        let pool = pool();
        let prompt = [b'a'; 400];
        let r = run(&mut s, &pool, &prompt);
        assert_eq!(r.prefill, Some(0));
        assert_eq!(r.prefix_hashes.len(), 6, "the hashes are shared with the other workers");
        let r = run(&mut s, &pool, &prompt);
        assert_eq!(r.prefill, None, "the decode pod now holds the prompt");
    }

    #[test]
    fn the_decision_reads_the_configured_producer_even_when_the_decode_profile_has_no_prefix_plugin() {
        // The prefix scorer only in the prefill profile: the handler computes the match from its index.
        let config = r#"{"plugins": [{"type": "prefix-cache-scorer"}, {"type": "prefill-filter"},
                {"type": "decode-filter"}, {"type": "prefix-based-pd-decider", "parameters": {"nonCachedTokens": 16}},
                {"type": "disagg-profile-handler", "parameters": {"deciders": {"prefill": "prefix-based-pd-decider"}}}],
              "schedulingProfiles": [
                {"name": "prefill", "plugins": [{"pluginRef": "prefill-filter"}, {"pluginRef": "prefix-cache-scorer"}]},
                {"name": "decode", "plugins": [{"pluginRef": "decode-filter"}]}]}"#;
        let mut s = built(config);
        assert_eq!(s.shared().prefix_indexes().count(), 1, "no second index");
        let prompt = [b'a'; 400];
        assert_eq!(run(&mut s, &pool(), &prompt).prefill, Some(0));
        assert_eq!(run(&mut s, &pool(), &prompt).prefill, None);
    }

    #[test]
    fn prefill_first_runs_prefill_then_decode() {
        let mut s = built(&pd(&disagg(r#"{"stageOrder": "prefill-first"}"#), "", true));
        let r = run(&mut s, &pool(), b"hi");
        assert_eq!(ran(&r), ["prefill", "decode"]);
        assert_eq!((r.destination(), r.prefill), (Some(1), Some(0)));
        // llm-d's other spellings.
        for order in ["Prefill_First", "prefill", "PREFILLFIRST"] {
            let mut s = built(&pd(&disagg(&alloc::format!(r#"{{"stageOrder": "{order}"}}"#)), "", true));
            assert_eq!(ran(&run(&mut s, &pool(), b"hi")), ["prefill", "decode"], "{order}");
        }
        let mut s = built(&pd(&disagg(r#"{"stageOrder": "decode_first"}"#), "", true));
        assert_eq!(ran(&run(&mut s, &pool(), b"hi")), ["decode"]);
    }

    #[test]
    fn the_flat_parameters_load_with_a_warning() {
        for params in [
            r#"{"decodeProfile": "decode", "prefillDeciderPluginName": "prefix-based-pd-decider"}"#,
            r#"{"deciderPluginName": "prefix-based-pd-decider"}"#,
        ] {
            let mut s = built(&pd(&disagg(params), DECIDER_16, true));
            assert_eq!(run(&mut s, &pool(), &[b'a'; 400]).prefill, Some(0), "{params}");
            let w: Vec<String> = s.warnings().iter().map(|w| w.to_string()).collect();
            assert!(w.iter().any(|w| w.contains("flat parameters are deprecated")), "{w:?}");
        }
    }

    #[test]
    fn bad_parameters_name_the_parameter() {
        let cases = [
            (
                r#"{"deciders": {"prefill": "nope"}}"#,
                r#"parameters.deciders.prefill: expected the name of a P/D decider plugin (prefix-based-pd-decider, always-disagg-pd-decider), got "nope""#,
            ),
            (
                r#"{"deciders": {"prefill": "queue-scorer"}}"#,
                r#"parameters.deciders.prefill: expected the name of a P/D decider plugin"#,
            ),
            (
                r#"{"deciderPluginName": "nope"}"#,
                r#"parameters.deciderPluginName: expected the name of a P/D decider"#,
            ),
            (
                r#"{"deciders": {"prefil": "x"}}"#,
                "parameters.deciders.prefil: expected one of the known parameters",
            ),
            (
                r#"{"profiles": {"decode": "d"}, "prefillProfile": "p"}"#,
                "parameters.prefillProfile: expected one form",
            ),
            (r#"{"threshold": 5}"#, "parameters.threshold: expected one of the known parameters: profiles"),
            (
                r#"{"stageOrder": "sideways"}"#,
                r#"parameters.stageOrder: expected "decode-first" or "prefill-first", got "sideways""#,
            ),
            (
                r#"{"stageOrder": "prefill-first", "deciders": {"prefill": "prefix-based-pd-decider"}}"#,
                "parameters.deciders.prefill: expected no prefill decider with stageOrder prefill-first",
            ),
            (
                r#"{"deciders": {"encode": "prefix-based-pd-decider"}}"#,
                "parameters.deciders.encode: expected no encode decider: encode disaggregation",
            ),
            (
                r#"{"profiles": {"decode": "missing"}}"#,
                r#"schedulingProfiles: expected a profile named "missing""#,
            ),
        ];
        for (params, expected) in cases {
            let err = build(&pd(&disagg(params), DECIDER_16, false)).unwrap_err();
            assert!(err.contains(expected), "{params}: {err}");
        }
    }

    #[test]
    fn encode_disaggregation_is_refused_with_its_reason() {
        let err = build(&pd(
            &disagg(r#"{"deciders": {"encode": "always-disagg-multimodal-decider"}}"#),
            r#", {"type": "always-disagg-multimodal-decider"}"#,
            false,
        ))
        .unwrap_err();
        assert!(
            err.contains(r#"got "always-disagg-multimodal-decider", which it cannot: encode disaggregation"#),
            "{err}"
        );
        let err = build(&pd(
            r#"{"type": "data-parallel-profile-handler", "parameters": {"primaryPort": 8000}}"#,
            "",
            false,
        ))
        .unwrap_err();
        assert!(err.contains("which it cannot: rewriting the destination to a pod's primaryPort"), "{err}");
    }

    #[test]
    fn the_prefill_profile_is_found_for_the_session_token() {
        use super::configured_prefill_profile as pre;
        use serde_json::json;
        assert_eq!(pre("disagg-profile-handler", &json!(null)).as_deref(), Some("prefill"));
        assert_eq!(
            pre("disagg-profile-handler", &json!({"profiles": {"prefill": "p"}})).as_deref(),
            Some("p")
        );
        assert_eq!(pre("disagg-profile-handler", &json!({"prefillProfile": "q"})).as_deref(), Some("q"));
        assert_eq!(pre("pd-profile-handler", &json!({"prefillProfile": "r"})).as_deref(), Some("r"));
        assert_eq!(pre("pd-profile-handler", &json!({"prefillProfile": ""})).as_deref(), Some("prefill"));
        assert_eq!(pre("single-profile-handler", &json!(null)), None);
    }

    #[test]
    fn the_header_handlers_are_accepted_with_a_warning() {
        let s = built(&pd(
            &disagg(r#"{"deciders": {"prefill": "prefix-based-pd-decider"}}"#),
            r#", {"type": "prefix-based-pd-decider"}, {"type": "prefill-header-handler", "parameters": {"prefillProfile": "prefill"}},
               {"type": "disagg-headers-handler"}"#,
            false,
        ));
        let w: Vec<String> = s.warnings().iter().map(|w| w.to_string()).collect();
        assert_eq!(
            w.iter()
                .filter(|w| w.contains("deprecated in llm-d (disagg-profile-handler sets the headers)"))
                .count(),
            2
        );
        let err = build(&pd(
            r#"{"type": "prefill-header-handler", "parameters": {"prefillProfile": 3}}"#,
            "",
            false,
        ));
        assert!(err.unwrap_err().contains("parameters.prefillProfile: expected a profile name, got 3"));
    }
}

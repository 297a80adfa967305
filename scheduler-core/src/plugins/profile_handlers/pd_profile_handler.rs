//! `pd-profile-handler` (llm-d, deprecated there since v0.7 in favour of `disagg-profile-handler`):
//! disaggregated prefill/decode, decode first (the stages are
//! [`Disaggregation`](super::disagg_profile_handler::Disaggregation)'s).
//!
//! Two sets of parameters are read:
//! - llm-d v0.10's: `deciderPluginName` names the P/D decider plugin (by default the plugin called
//!   `prefix-based-pd-decider`, when there is one); `prefixMatchInfoProducerName`, `prefixPluginName` and
//!   `prefixPluginType` (the name when `prefixPluginName` is not given) name the plugin whose prefix index
//!   the decision reads; `primaryPort` must be 0 (see [`DATA_PARALLEL_REFUSED`]);
//! - wasm-epp's earlier ones: `threshold`, in uncached prompt tokens (bytes / 4), with no decider:
//!   prefill gets its own pod when at least that many tokens are not cached on the decode pick; 0
//!   disaggregates every request. This is also what a configuration with neither gets. `hashBlockSize`
//!   is accepted and ignored with a warning (the prefix index's blocks are used).

use super::disagg_profile_handler::{decider_named, Disaggregation, PrefillDecision, StageOrder};
use crate::config::params::{non_negative_count, ParamError};
use crate::plugins::deciders::prefix_based_pd_decider;
use crate::scheduling::{
    BuildContext, CycleState, Plugin, PluginFactory, ProfileHandler, ProfileRunResult, SchedulingContext,
};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

pub const TYPE: &str = "pd-profile-handler";

/// Why the data-parallel destination rewrite (`primaryPort`, `data-parallel-profile-handler`) is refused.
pub const DATA_PARALLEL_REFUSED: &str = "rewriting the destination to a pod's primaryPort and naming the \
     data-parallel rank in x-data-parallel-host-port is for llm-d's routing sidecar, which wasm-epp does not \
     drive; route to each rank's port directly with single-profile-handler, as llm-d recommends with Istio \
     1.28.1 and later";

/// llm-d's parameters (v0.10 and earlier) and wasm-epp's `threshold` (see the module documentation).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PdParams {
    pub decode_profile: String,
    pub prefill_profile: String,
    #[serde(deserialize_with = "some_count")]
    pub threshold: Option<u64>,
    /// Accepted with a warning so earlier llm-d configurations load.
    pub hash_block_size: Option<Value>,
    pub prefix_plugin_type: Option<String>,
    pub prefix_plugin_name: Option<String>,
    pub prefix_match_info_producer_name: Option<String>,
    pub primary_port: Option<i64>,
    pub decider_plugin_name: Option<String>,
}

fn some_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    non_negative_count(d).map(Some)
}

impl Default for PdParams {
    fn default() -> PdParams {
        PdParams {
            decode_profile: String::from("decode"),
            prefill_profile: String::from("prefill"),
            threshold: None,
            hash_block_size: None,
            prefix_plugin_type: None,
            prefix_plugin_name: None,
            prefix_match_info_producer_name: None,
            primary_port: None,
            decider_plugin_name: None,
        }
    }
}

/// `pd-profile-handler` (see the module documentation).
#[derive(Clone, Debug)]
pub struct PdProfileHandler {
    pub params: PdParams,
    stages: Disaggregation,
}

impl PdProfileHandler {
    pub fn stages(&self) -> &Disaggregation {
        &self.stages
    }
}

/// A name parameter that is set and not empty.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

impl PluginFactory for PdProfileHandler {
    const TYPE: &'static str = TYPE;
    type Params = PdParams;

    fn build(params: PdParams, ctx: &mut BuildContext<'_>) -> Result<PdProfileHandler, ParamError> {
        if params.prefill_profile.is_empty() {
            return Err(ParamError::new("prefillProfile", "a profile name", Some(String::from("\"\""))));
        }
        match params.primary_port {
            None | Some(0) => {}
            Some(port) => {
                let expected = format!("0 or no primaryPort: {DATA_PARALLEL_REFUSED}");
                return Err(ParamError::new("primaryPort", expected, Some(format!("{port}"))));
            }
        }
        if params.hash_block_size.is_some() {
            ctx.warn(
                "hashBlockSize",
                "ignored: the decision reads the blocks of the configuration's prefix index",
            );
        }
        let decision = match (given(&params.decider_plugin_name), params.threshold) {
            (Some(name), Some(t)) => {
                let expected = format!("no threshold beside deciderPluginName ({name:?} decides)");
                return Err(ParamError::new("threshold", expected, Some(format!("{t}"))));
            }
            (Some(name), None) => PrefillDecision::Decider(decider_named(ctx, "deciderPluginName", name)?),
            (None, Some(t)) => PrefillDecision::Threshold(t),
            // llm-d's default decider, when configured; else wasm-epp's earlier default.
            (None, None) => ctx
                .pd_decider(prefix_based_pd_decider::TYPE)
                .map_or(PrefillDecision::Threshold(0), PrefillDecision::Decider),
        };
        // Every named prefix plugin must exist; the first one given is read.
        let named = [
            ("prefixMatchInfoProducerName", given(&params.prefix_match_info_producer_name)),
            ("prefixPluginName", given(&params.prefix_plugin_name)),
            (
                "prefixPluginType",
                given(&params.prefix_plugin_type).filter(|_| params.prefix_plugin_name.is_none()),
            ),
        ];
        let mut producer = None;
        for (field, name) in named {
            let Some(name) = name else { continue };
            if ctx.prefix_index(Some(name)).is_err() {
                return Err(ParamError::new(
                    field,
                    "the name of a plugin that keeps a prefix index (approx-prefix-cache-producer, \
                     prefix-cache-scorer)",
                    Some(format!("{name:?}")),
                ));
            }
            producer = producer.or(Some((field, name)));
        }
        let stages = Disaggregation::new(
            params.decode_profile.clone(),
            params.prefill_profile.clone(),
            StageOrder::DecodeFirst,
            decision,
            producer,
            ctx,
        )?;
        Ok(PdProfileHandler { params, stages })
    }
}

impl ProfileHandler for PdProfileHandler {
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
        if profiles.contains(&self.stages.decode_profile) {
            Ok(())
        } else {
            Err(format!(
                "a profile named {:?} (the decodeProfile of {TYPE}), got profiles {:?}",
                self.stages.decode_profile, profiles
            ))
        }
    }

    fn primary_profile<'r>(&self, done: &'r [ProfileRunResult]) -> Option<&'r ProfileRunResult> {
        self.stages.primary_profile(done)
    }

    fn prefill_profile<'r>(&self, done: &'r [ProfileRunResult]) -> Option<&'r ProfileRunResult> {
        self.stages.prefill_profile(done)
    }
}

impl Plugin for PdProfileHandler {
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
    use crate::model::Role;
    use crate::rng::Rng;
    use crate::scheduling::pipeline::Scheduler;
    use crate::scheduling::test_support::pool_with_roles;
    use crate::scheduling::{SchedulingContext, SchedulingRequest};
    use alloc::format;
    use alloc::string::{String, ToString};
    use alloc::vec::Vec;

    fn build(handler_params: &str, extra: &str) -> Result<Scheduler, String> {
        let json = format!(
            r#"{{"plugins": [{{"type": "prefix-cache-scorer"}}, {{"type": "prefill-filter"}}, {{"type": "decode-filter"}},
                {{"type": "pd-profile-handler", "parameters": {handler_params}}} {extra}],
              "schedulingProfiles": [
                {{"name": "prefill", "plugins": [{{"pluginRef": "prefill-filter"}}, {{"pluginRef": "prefix-cache-scorer"}}]}},
                {{"name": "decode", "plugins": [{{"pluginRef": "decode-filter"}}, {{"pluginRef": "prefix-cache-scorer"}}]}}]}}"#
        );
        let cfg = EndpointPickerConfig::from_json(&json).map_err(|e| e.to_string())?;
        Scheduler::from_config(&cfg).map_err(|e| e.to_string())
    }

    /// Whether a 100-token prompt gets a prefill pod, the first time and the second.
    fn prefills(s: &mut Scheduler) -> [bool; 2] {
        let pool = pool_with_roles(&[Role::Prefill, Role::Decode]);
        let prompt = [b'a'; 400];
        let req =
            SchedulingRequest { model: "m", prefix_input: &prompt, prompt_bytes: 400, ..Default::default() };
        let ctx = SchedulingContext { request: &req, pool: &pool, now_ms: 0 };
        let all: Vec<usize> = (0..pool.endpoints.len()).collect();
        let mut once = || s.schedule(&ctx, &all, &mut Rng::new(1)).unwrap().prefill.is_some();
        [once(), once()]
    }

    const DECIDER: &str = r#", {"type": "prefix-based-pd-decider", "parameters": {"nonCachedTokens": 16}}"#;

    #[test]
    fn v0_10_parameters_use_the_named_decider() {
        let named =
            r#", {"name": "d", "type": "prefix-based-pd-decider", "parameters": {"nonCachedTokens": 16}}"#;
        let mut s = build(
            r#"{"deciderPluginName": "d", "prefixPluginType": "prefix-cache-scorer", "primaryPort": 0}"#,
            named,
        )
        .unwrap();
        assert_eq!(prefills(&mut s), [true, false], "the second time the decode pod holds the prompt");
        // No deciderPluginName: llm-d's default name, when that plugin is configured.
        let mut s = build("{}", DECIDER).unwrap();
        assert_eq!(prefills(&mut s), [true, false]);
        let always = r#", {"name": "a", "type": "always-disagg-pd-decider"}"#;
        let mut s = build(
            r#"{"deciderPluginName": "a", "prefixMatchInfoProducerName": "prefix-cache-scorer"}"#,
            always,
        )
        .unwrap();
        assert_eq!(prefills(&mut s), [true, true]);
    }

    #[test]
    fn wasm_epp_s_threshold_still_works() {
        let mut s = build(r#"{"threshold": 0}"#, DECIDER).unwrap();
        assert_eq!(prefills(&mut s), [true, true], "0 disaggregates every request");
        let mut s = build(r#"{"threshold": 50}"#, "").unwrap();
        assert_eq!(prefills(&mut s), [true, false]);
        let mut s = build("{}", "").unwrap();
        assert_eq!(prefills(&mut s), [true, true], "no decider and no threshold: every request, as before");
        let s = build(r#"{"threshold": 50, "hashBlockSize": 5}"#, "").unwrap();
        let w: Vec<String> = s.warnings().iter().map(|w| w.to_string()).collect();
        assert_eq!(
            w,
            ["plugins[3].parameters.hashBlockSize: ignored: the decision reads the blocks of the configuration's prefix index"]
        );
    }

    #[test]
    fn bad_references_and_unsupported_values_are_errors_naming_the_parameter() {
        let cases = [
            (r#"{"deciderPluginName": "nope"}"#, r#"plugins[3].parameters.deciderPluginName: expected the name of a P/D decider plugin (prefix-based-pd-decider, always-disagg-pd-decider), got "nope""#),
            (r#"{"deciderPluginName": "prefill-filter"}"#, "plugins[3].parameters.deciderPluginName: expected the name of a P/D decider plugin"),
            (r#"{"deciderPluginName": "prefix-based-pd-decider", "threshold": 3}"#, r#"plugins[3].parameters.threshold: expected no threshold beside deciderPluginName ("prefix-based-pd-decider" decides), got 3"#),
            (r#"{"primaryPort": 8000}"#, "plugins[3].parameters.primaryPort: expected 0 or no primaryPort: rewriting the destination"),
            (r#"{"prefixPluginName": "nope"}"#, r#"plugins[3].parameters.prefixPluginName: expected the name of a plugin that keeps a prefix index (approx-prefix-cache-producer, prefix-cache-scorer), got "nope""#),
            (r#"{"prefixPluginType": "prefix-scorer"}"#, "plugins[3].parameters.prefixPluginType: expected the name of a plugin that keeps a prefix index"),
            (r#"{"prefixMatchInfoProducerName": "decode-filter"}"#, "plugins[3].parameters.prefixMatchInfoProducerName: expected the name of a plugin that keeps a prefix index"),
            (r#"{"threshold": -5}"#, "plugins[3].parameters.threshold: expected an integer ≥ 0, got -5"),
            (r#"{"prefillProfile": ""}"#, r#"plugins[3].parameters.prefillProfile: expected a profile name, got """#),
        ];
        for (params, expected) in cases {
            let err = build(params, DECIDER).unwrap_err();
            assert!(err.starts_with(expected), "{params}: {err}");
        }
        // The type name is only the default of the name.
        assert!(build(
            r#"{"prefixPluginType": "prefix-scorer", "prefixPluginName": "prefix-cache-scorer"}"#,
            DECIDER
        )
        .is_ok());
    }
}

//! `pd-profile-handler` (llm-d): disaggregated prefill/decode.
//!
//! Decode is always scheduled first; a separate prefill pod is added only when the part of the prompt
//! the decode pod has not cached is long enough to be worth the KV transfer, and a prefill pod exists.
//! Otherwise the request is served aggregated by the decode pod.

use crate::config::params::{non_negative_count, ParamError};
use crate::prefix::{PrefixMatch, PREFIX_MATCH_STATE_KEY};
use crate::scheduling::{
    BuildContext, CycleState, Plugin, PluginFactory, ProfileHandler, ProfileRunResult, SchedulingContext,
};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde::Deserialize;
use serde_json::Value;

pub const TYPE: &str = "pd-profile-handler";

/// llm-d's parameters. `threshold` is in prompt tokens (bytes / 4): when the prompt's uncached part is
/// shorter, prefill stays on the decode pod; 0 disaggregates every request.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PdParams {
    pub decode_profile: String,
    pub prefill_profile: String,
    #[serde(deserialize_with = "non_negative_count")]
    pub threshold: u64,
    /// Accepted so existing llm-d configurations load; unused here (see the module docs).
    #[serde(default)]
    pub hash_block_size: Option<Value>,
    #[serde(default)]
    pub prefix_plugin_type: Option<Value>,
    #[serde(default)]
    pub prefix_plugin_name: Option<Value>,
    #[serde(default)]
    pub primary_port: Option<Value>,
    #[serde(default)]
    pub decider_plugin_name: Option<Value>,
}

impl Default for PdParams {
    fn default() -> PdParams {
        PdParams {
            decode_profile: String::from("decode"),
            prefill_profile: String::from("prefill"),
            threshold: 0,
            hash_block_size: None,
            prefix_plugin_type: None,
            prefix_plugin_name: None,
            primary_port: None,
            decider_plugin_name: None,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct PdProfileHandler {
    pub params: PdParams,
}

impl PluginFactory for PdProfileHandler {
    const TYPE: &'static str = TYPE;
    type Params = PdParams;

    fn build(params: PdParams, _: &mut BuildContext<'_>) -> Result<PdProfileHandler, ParamError> {
        if params.decode_profile.is_empty() {
            return Err(ParamError::new("decodeProfile", "a profile name", Some(String::from("\"\""))));
        }
        if params.prefill_profile.is_empty() {
            return Err(ParamError::new("prefillProfile", "a profile name", Some(String::from("\"\""))));
        }
        Ok(PdProfileHandler { params })
    }
}

impl PdProfileHandler {
    fn find<'r>(done: &'r [ProfileRunResult], name: &str) -> Option<&'r ProfileRunResult> {
        done.iter().find(|r| r.profile == name)
    }

    /// Whether prefill is worth its own pod, given the decode pick.
    fn disaggregate(&self, ctx: &SchedulingContext<'_>, state: &CycleState, decode_target: usize) -> bool {
        if self.params.threshold == 0 {
            return true;
        }
        let cached = state
            .get::<PrefixMatch>(PREFIX_MATCH_STATE_KEY)
            .map_or(0.0, |m| m.score(decode_target).clamp(0.0, 1.0));
        let tokens = ctx.request.estimated_input_tokens();
        // Rounded so that 90 % of 1000 tokens leaves exactly 100 uncached, not 99.999….
        let cached_tokens = (tokens as f64 * cached + 0.5) as u64;
        tokens.saturating_sub(cached_tokens) >= self.params.threshold
    }
}

impl ProfileHandler for PdProfileHandler {
    fn pick_profiles(
        &self,
        ctx: &SchedulingContext<'_>,
        state: &CycleState,
        profiles: &[String],
        done: &[ProfileRunResult],
    ) -> Vec<String> {
        let p = &self.params;
        let Some(decode) = Self::find(done, &p.decode_profile) else {
            return alloc::vec![p.decode_profile.clone()];
        };
        let Some(&decode_target) = decode.targets.first() else {
            return Vec::new();
        };
        let prefill_configured = profiles.contains(&p.prefill_profile);
        if !prefill_configured || Self::find(done, &p.prefill_profile).is_some() {
            return Vec::new();
        }
        if self.disaggregate(ctx, state, decode_target) {
            alloc::vec![p.prefill_profile.clone()]
        } else {
            Vec::new()
        }
    }

    fn validate_profiles(&self, profiles: &[String]) -> Result<(), String> {
        if profiles.contains(&self.params.decode_profile) {
            Ok(())
        } else {
            Err(format!(
                "a profile named {:?} (the decodeProfile of {TYPE}), got profiles {:?}",
                self.params.decode_profile, profiles
            ))
        }
    }

    fn primary_profile<'r>(&self, done: &'r [ProfileRunResult]) -> Option<&'r ProfileRunResult> {
        Self::find(done, &self.params.decode_profile)
    }

    /// The prefill pick, when prefill ran and found a pod (no prefill pod → aggregated, no header).
    fn prefill_profile<'r>(&self, done: &'r [ProfileRunResult]) -> Option<&'r ProfileRunResult> {
        Self::find(done, &self.params.prefill_profile).filter(|r| !r.targets.is_empty())
    }
}

impl Plugin for PdProfileHandler {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_profile_handler(&self) -> Option<&dyn ProfileHandler> {
        Some(self)
    }
}

//! `prefix-based-pd-decider` (llm-d): a prefill pod is worth its KV transfer when the part of the prompt
//! the decode pick has not cached is long.
//!
//! With `nonCachedTokens` = N > 0 (and `promptTokens` = P), prefill runs separately when the prompt has
//! at least P tokens (P = 0: any length), at least N tokens, and at least N of them are not cached on the
//! decode pick: `prompt tokens − matched blocks × block tokens ≥ N`. N = 0 turns disaggregation off.
//!
//! Prompt tokens are the request's estimate (prompt bytes / 4, rounded up), as llm-d's tokenizer-free
//! estimate; the matched blocks come from the prefix index the handler reads (its prefix producer's, or
//! one the handler keeps when none is configured, as llm-d then creates its default producer).

use crate::config::params::{non_negative_count, ParamError};
use crate::scheduling::{BuildContext, PdDecider, Plugin, PluginFactory};
use alloc::rc::Rc;
use serde::Deserialize;

pub const TYPE: &str = "prefix-based-pd-decider";

/// llm-d's parameters and defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PrefixBasedPdDeciderParams {
    /// Uncached prompt tokens on the decode pick from which prefill gets its own pod; 0 = never.
    #[serde(deserialize_with = "non_negative_count")]
    pub non_cached_tokens: u64,
    /// Prompt tokens below which prefill always stays on the decode pod; 0 = no minimum.
    #[serde(deserialize_with = "non_negative_count")]
    pub prompt_tokens: u64,
}

/// Decides from the decode pick's prefix-cache hits (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixBasedPdDecider {
    params: PrefixBasedPdDeciderParams,
}

impl PrefixBasedPdDecider {
    pub fn new(params: PrefixBasedPdDeciderParams) -> PrefixBasedPdDecider {
        PrefixBasedPdDecider { params }
    }
}

impl PdDecider for PrefixBasedPdDecider {
    fn disaggregate(&self, input_tokens: u64, cached_tokens: &mut dyn FnMut() -> u64) -> bool {
        let PrefixBasedPdDeciderParams { non_cached_tokens, prompt_tokens } = self.params;
        if non_cached_tokens == 0 || input_tokens < prompt_tokens || input_tokens < non_cached_tokens {
            return false;
        }
        input_tokens.saturating_sub(cached_tokens()) >= non_cached_tokens
    }

    fn reads_prefix_cache(&self) -> bool {
        self.params.non_cached_tokens > 0
    }
}

impl PluginFactory for PrefixBasedPdDecider {
    const TYPE: &'static str = TYPE;
    /// Offered to the profile handlers, which are built after it.
    const PRODUCER: bool = true;
    type Params = PrefixBasedPdDeciderParams;

    fn build(
        params: PrefixBasedPdDeciderParams,
        ctx: &mut BuildContext<'_>,
    ) -> Result<PrefixBasedPdDecider, ParamError> {
        let decider = PrefixBasedPdDecider::new(params);
        ctx.produce_pd_decider(Rc::new(decider));
        Ok(decider)
    }
}

impl Plugin for PrefixBasedPdDecider {
    fn type_name(&self) -> &'static str {
        TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::params::parse_params;
    use alloc::string::ToString;
    use serde_json::json;

    fn decider(non_cached_tokens: u64, prompt_tokens: u64) -> PrefixBasedPdDecider {
        PrefixBasedPdDecider::new(PrefixBasedPdDeciderParams { non_cached_tokens, prompt_tokens })
    }

    fn decide(d: PrefixBasedPdDecider, input: u64, cached: u64) -> bool {
        d.disaggregate(input, &mut || cached)
    }

    #[test]
    fn disaggregates_when_the_uncached_part_reaches_the_threshold() {
        let d = decider(16, 0);
        assert!(decide(d, 100, 84), "16 uncached");
        assert!(!decide(d, 100, 85), "15 uncached");
        assert!(decide(d, 16, 0));
        assert!(!decide(d, 100, 200), "more cached than the prompt: nothing to prefill");
    }

    #[test]
    fn zero_non_cached_tokens_never_disaggregates() {
        let d = decider(0, 0);
        assert!(!decide(d, 100_000, 0));
        assert!(!d.reads_prefix_cache());
    }

    #[test]
    fn short_prompts_stay_on_the_decode_pod_without_reading_the_cache() {
        let d = decider(16, 1000);
        let mut asked = false;
        assert!(!d.disaggregate(999, &mut || {
            asked = true;
            0
        }));
        assert!(!d.disaggregate(15, &mut || {
            asked = true;
            0
        }));
        assert!(!asked, "the prefix match is not needed");
        assert!(decide(d, 1000, 0));
    }

    #[test]
    fn parameters_are_llm_d_s() {
        let p: PrefixBasedPdDeciderParams =
            parse_params(&json!({"nonCachedTokens": 8, "promptTokens": 0})).unwrap();
        assert_eq!(p, PrefixBasedPdDeciderParams { non_cached_tokens: 8, prompt_tokens: 0 });
        assert_eq!(parse_params::<PrefixBasedPdDeciderParams>(&json!(null)).unwrap(), Default::default());
        let e = parse_params::<PrefixBasedPdDeciderParams>(&json!({"nonCachedTokens": -1})).unwrap_err();
        assert_eq!(e.to_string(), "nonCachedTokens: expected an integer ≥ 0, got -1");
        let e = parse_params::<PrefixBasedPdDeciderParams>(&json!({"threshold": 1})).unwrap_err();
        assert_eq!(e.field, "threshold");
    }
}

//! `always-disagg-pd-decider` (llm-d): every request gets a prefill pod, when the prefill profile finds
//! one.

use crate::config::params::{IgnoredParams, ParamError};
use crate::scheduling::{BuildContext, PdDecider, Plugin, PluginFactory};
use alloc::rc::Rc;

pub const TYPE: &str = "always-disagg-pd-decider";

/// Says yes to every request.
#[derive(Clone, Copy, Debug, Default)]
pub struct AlwaysDisaggPdDecider;

impl PdDecider for AlwaysDisaggPdDecider {
    fn disaggregate(&self, _input_tokens: u64, _cached_tokens: &mut dyn FnMut() -> u64) -> bool {
        true
    }
}

impl PluginFactory for AlwaysDisaggPdDecider {
    const TYPE: &'static str = TYPE;
    /// Offered to the profile handlers, which are built after it.
    const PRODUCER: bool = true;
    /// llm-d's factory reads no parameters; any given are ignored with a warning.
    type Params = IgnoredParams;

    fn build(params: IgnoredParams, ctx: &mut BuildContext<'_>) -> Result<AlwaysDisaggPdDecider, ParamError> {
        ctx.ignore_params(&params);
        ctx.produce_pd_decider(Rc::new(AlwaysDisaggPdDecider));
        Ok(AlwaysDisaggPdDecider)
    }
}

impl Plugin for AlwaysDisaggPdDecider {
    fn type_name(&self) -> &'static str {
        TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_yes_without_looking_at_the_cache() {
        let mut asked = false;
        assert!(AlwaysDisaggPdDecider.disaggregate(0, &mut || {
            asked = true;
            0
        }));
        assert!(!asked);
        assert!(!AlwaysDisaggPdDecider.reads_prefix_cache());
    }
}

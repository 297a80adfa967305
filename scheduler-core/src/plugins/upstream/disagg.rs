//! Disaggregation (llm-d's disagg-profile-handler family): the profile handlers and P/D deciders run
//! here as ordinary plugins (`plugins/profile_handlers`, `plugins/deciders`); the deprecated header
//! handlers are mapped onto the request lifecycle, which sets `x-prefiller-host-port` from the P/D
//! handler's prefill pick; encode disaggregation and the data-parallel destination rewrite are refused.

use super::{only_keys, Group, Mapped, Refused};
use crate::config::params::{json_repr, ParamError};
use crate::plugins::deciders::always_disagg_pd_decider::AlwaysDisaggPdDecider;
use crate::plugins::deciders::prefix_based_pd_decider::PrefixBasedPdDecider;
use crate::plugins::profile_handlers::disagg_profile_handler::{DisaggProfileHandler, ENCODE_REFUSED};
use crate::plugins::profile_handlers::pd_profile_handler::DATA_PARALLEL_REFUSED;
use crate::plugins::registry::Entry;
use crate::scheduling::BuildContext;
use serde_json::Value;

/// `prefillProfile` and `encodeProfile`, profile names; deprecated in llm-d.
fn headers_params(params: &Value, ctx: &mut BuildContext<'_>) -> Result<(), ParamError> {
    if let Some(obj) = only_keys(params, &["prefillProfile", "encodeProfile"])? {
        for (key, v) in obj {
            if !v.is_string() {
                return Err(ParamError::new(key.as_str(), "a profile name", Some(json_repr(v))));
            }
        }
    }
    ctx.warn(
        "",
        "deprecated in llm-d (disagg-profile-handler sets the headers); here x-prefiller-host-port is set \
         from the P/D handler's prefill pick whether or not this plugin is declared",
    );
    Ok(())
}

crate::upstream_mapped_plugin!(
    /// `disagg-headers-handler`: the request lifecycle sets `x-prefiller-host-port`.
    DisaggHeadersHandler,
    "disagg-headers-handler",
    None,
    headers_params
);

crate::upstream_mapped_plugin!(
    /// `prefill-header-handler` (llm-d's older name of `disagg-headers-handler`).
    PrefillHeaderHandler,
    "prefill-header-handler",
    None,
    headers_params
);

const HEADERS_DONE_BY: &str = "the request lifecycle, which sets x-prefiller-host-port to the P/D handler's \
     prefill pick (and removes a client's copy); x-encoder-hosts-ports is never needed, as encode \
     disaggregation is refused";

pub const GROUP: Group = Group {
    entries: &[
        Entry::of::<DisaggProfileHandler>(),
        Entry::of::<PrefixBasedPdDecider>(),
        Entry::of::<AlwaysDisaggPdDecider>(),
        Entry::of::<DisaggHeadersHandler>(),
        Entry::of::<PrefillHeaderHandler>(),
    ],
    mapped: &[
        Mapped { type_name: "disagg-headers-handler", role: None, done_by: HEADERS_DONE_BY },
        Mapped { type_name: "prefill-header-handler", role: None, done_by: HEADERS_DONE_BY },
    ],
    refused: &[
        Refused { type_name: "always-disagg-multimodal-decider", why: ENCODE_REFUSED },
        Refused { type_name: "data-parallel-profile-handler", why: DATA_PARALLEL_REFUSED },
    ],
};

//! `header-profile-handler` (llm-d): runs the one profile a request header names.
//!
//! The profile is the trimmed value of request header `headerName` (default `EPP-Profile`, compared
//! case-insensitively), or `defaultProfile` (default `decode`) when the header is absent or empty. A
//! value that names no profile leaves the request without a destination, as in llm-d. With a single
//! profile configured, that profile always runs. The header stays on the request.

use crate::config::params::ParamError;
use crate::scheduling::{
    BuildContext, CycleState, Plugin, PluginFactory, ProfileHandler, ProfileRunResult, SchedulingContext,
};
use alloc::string::String;
use alloc::vec::Vec;
use serde::Deserialize;
use serde_json::Value;

pub const TYPE: &str = "header-profile-handler";
pub const DEFAULT_HEADER: &str = "epp-profile";
pub const DEFAULT_PROFILE: &str = "decode";

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// Empty: `EPP-Profile`.
    pub header_name: String,
    /// Empty: `decode`.
    pub default_profile: String,
}

/// The lower-case request header a `header-profile-handler` entry with these `parameters` reads (for
/// the exchange, which keeps only the headers plugins read).
pub fn header_name(parameters: &Value) -> String {
    let name = parameters.get("headerName").and_then(Value::as_str).map(str::trim).unwrap_or("");
    if name.is_empty() {
        String::from(DEFAULT_HEADER)
    } else {
        name.to_ascii_lowercase()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct HeaderProfileHandler {
    header: String,
    default_profile: String,
}

impl PluginFactory for HeaderProfileHandler {
    const TYPE: &'static str = TYPE;
    type Params = Params;

    fn build(params: Params, _: &mut BuildContext<'_>) -> Result<HeaderProfileHandler, ParamError> {
        let header = match params.header_name.trim() {
            "" => String::from(DEFAULT_HEADER),
            h => h.to_ascii_lowercase(),
        };
        let default_profile = match params.default_profile.trim() {
            "" => String::from(DEFAULT_PROFILE),
            p => String::from(p),
        };
        Ok(HeaderProfileHandler { header, default_profile })
    }
}

impl ProfileHandler for HeaderProfileHandler {
    fn pick_profiles(
        &self,
        ctx: &SchedulingContext<'_>,
        _state: &mut CycleState,
        profiles: &[String],
        done: &[ProfileRunResult],
    ) -> Vec<String> {
        if !done.is_empty() {
            return Vec::new();
        }
        if let [only] = profiles {
            return alloc::vec![only.clone()];
        }
        let asked = ctx.request.header(&self.header).map(str::trim).unwrap_or("");
        let wanted = if asked.is_empty() { self.default_profile.as_str() } else { asked };
        profiles.iter().filter(|p| p.as_str() == wanted).take(1).cloned().collect()
    }

    fn primary_profile<'r>(&self, done: &'r [ProfileRunResult]) -> Option<&'r ProfileRunResult> {
        done.first()
    }
}

impl Plugin for HeaderProfileHandler {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_profile_handler(&self) -> Option<&dyn ProfileHandler> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::{built, pool, NOW};
    use crate::scheduling::SchedulingRequest;
    use alloc::vec;

    fn picked(h: &HeaderProfileHandler, headers: &[(String, String)], profiles: &[&str]) -> Vec<String> {
        let profiles: Vec<String> = profiles.iter().map(|p| String::from(*p)).collect();
        let request = SchedulingRequest { headers, ..SchedulingRequest::default() };
        let p = pool(vec![]);
        let ctx = SchedulingContext { request: &request, pool: &p, now_ms: NOW };
        h.pick_profiles(&ctx, &mut CycleState::default(), &profiles, &[])
    }

    fn header(name: &str, value: &str) -> Vec<(String, String)> {
        vec![(String::from(name), String::from(value))]
    }

    #[test]
    fn the_header_names_the_profile() {
        let h: HeaderProfileHandler = built("{}");
        let all = ["decode", "prefill", "encode"];
        assert_eq!(picked(&h, &header("epp-profile", " prefill "), &all), ["prefill"]);
        assert_eq!(picked(&h, &[], &all), ["decode"], "no header: defaultProfile");
        assert_eq!(picked(&h, &header("epp-profile", ""), &all), ["decode"], "empty header: defaultProfile");
        assert!(
            picked(&h, &header("epp-profile", "batch"), &all).is_empty(),
            "unknown profile: no destination"
        );
        assert_eq!(
            picked(&h, &header("epp-profile", "batch"), &["only"]),
            ["only"],
            "one profile always runs"
        );

        let h: HeaderProfileHandler = built(r#"{"headerName": "X-Tier", "defaultProfile": "standard"}"#);
        assert_eq!(picked(&h, &header("x-tier", "premium"), &["standard", "premium"]), ["premium"]);
        assert_eq!(picked(&h, &header("epp-profile", "premium"), &["standard", "premium"]), ["standard"]);
    }

    #[test]
    fn the_exchange_learns_which_header_to_keep() {
        assert_eq!(header_name(&Value::Null), "epp-profile");
        assert_eq!(header_name(&serde_json::json!({"headerName": " X-Tier "})), "x-tier");
    }
}

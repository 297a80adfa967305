//! Scheduling filters and scorers of llm-d that wasm-epp maps or refuses.
//!
//! The ones it runs are ordinary plugins (`plugins/filters`, `plugins/scorers`) registered here because
//! they exist for llm-d's configurations: the label-selector filters (with llm-d's deprecated names),
//! `utilization-filter`, `encode-filter` and `context-length-aware`. The refused ones need data this
//! gateway does not have; each reason says what is missing and, where there is one, what to use.

use super::{Group, Refused};
use crate::plugins::filters::by_label_filter::ByLabelFilter;
use crate::plugins::filters::encode_filter::EncodeFilter;
use crate::plugins::filters::label_selector_filter::{ByLabelSelector, LabelSelectorFilter};
use crate::plugins::filters::utilization_filter::UtilizationFilter;
use crate::plugins::registry::Entry;
use crate::plugins::scorers::context_length_aware::ContextLengthAware;

const MULTICLUSTER: &str = "routing between clusters (endpoints that are peer gateways, addressed by host name and \
     scored on their pickers' pool-average metrics) is not implemented: wasm-epp routes to the pods of its own \
     pool; give each cluster its own gateway and pool";

const LATENCY_PREDICTOR: &str = "it needs TTFT/TPOT predictions from llm-d's latency-predictor sidecars \
     (predicted-latency-producer), which wasm-epp does not run; use load-based scorers (queue-scorer, \
     kv-cache-utilization-scorer, active-request-scorer) instead";

const REQUEST_HEADERS: &str =
    "it needs the request's headers while scheduling, and wasm-epp's scheduler sees \
     only the model, the prompt, the objective and the session token";

const ENDPOINT_ATTRIBUTES: &str =
    "it reads custom per-endpoint attributes (written by llm-d's dcgm-extractor \
     or core-metrics-extractor customMetrics), and wasm-epp's collector publishes only the standard engine \
     metrics (waiting, running, KV use, LoRA); use utilization-filter or queue-/kv-cache-utilization-scorer \
     for those";

const TOPOLOGY: &str = "it needs each pod's node topology (host, rack, zone, region) and the decode pick as \
     the prefill stage's peer, which wasm-epp does not track; without it, prefill and decode pods are chosen \
     on load and prefix alone";

pub const GROUP: Group = Group {
    entries: &[
        Entry::of::<LabelSelectorFilter>(),
        Entry::of::<ByLabelSelector>(),
        Entry::of::<ByLabelFilter>(),
        Entry::of::<EncodeFilter>(),
        Entry::of::<UtilizationFilter>(),
        Entry::of::<ContextLengthAware>(),
    ],
    mapped: &[],
    refused: &[
        Refused { type_name: "header-profile-handler", why: REQUEST_HEADERS },
        Refused { type_name: "header-label-affinity-scorer", why: REQUEST_HEADERS },
        Refused { type_name: "endpoint-attribute-filter", why: ENDPOINT_ATTRIBUTES },
        Refused { type_name: "endpoint-attribute-scorer", why: ENDPOINT_ATTRIBUTES },
        Refused { type_name: "topology-affinity-filter", why: TOPOLOGY },
        Refused { type_name: "topology-affinity-scorer", why: TOPOLOGY },
        Refused {
            type_name: "topology-extractor",
            why: "it reads node topology for topology-affinity-filter/-scorer, which wasm-epp does not \
                  implement (pods' labels are carried, their node topology is not)",
        },
        Refused { type_name: "slo-headroom-tier-filter", why: LATENCY_PREDICTOR },
        Refused { type_name: "latency-scorer", why: LATENCY_PREDICTOR },
        Refused {
            type_name: "session-affinity-filter",
            why: "a hard session filter is not implemented; session-affinity-scorer (x-session-token) keeps \
                  a session on its endpoint when weighted above the other scorers, and moves it when that \
                  endpoint is gone",
        },
        Refused { type_name: "multicluster-session-affinity-filter", why: MULTICLUSTER },
        Refused { type_name: "multicluster-queue-scorer", why: MULTICLUSTER },
        Refused { type_name: "multicluster-kv-cache-utilization-scorer", why: MULTICLUSTER },
        Refused { type_name: "multicluster-prefix-cache-scorer", why: MULTICLUSTER },
        Refused { type_name: "multicluster-approx-prefix-cache-producer", why: MULTICLUSTER },
        Refused { type_name: "multicluster-file-discovery", why: MULTICLUSTER },
        Refused { type_name: "multicluster-metrics-data-source", why: MULTICLUSTER },
        Refused { type_name: "multicluster-metrics-extractor", why: MULTICLUSTER },
    ],
};

#[cfg(test)]
mod tests {
    use crate::config::EndpointPickerConfig;
    use crate::plugins::registry::Registry;
    use crate::scheduling::pipeline::Scheduler;
    use alloc::string::{String, ToString};
    use alloc::vec::Vec;

    fn build(json: &str) -> Result<Scheduler, String> {
        let cfg = EndpointPickerConfig::from_json(json).map_err(|e| e.to_string())?;
        Scheduler::from_config_with(&cfg, &Registry::builtin()).map_err(|e| e.to_string())
    }

    fn warnings(json: &str) -> Vec<String> {
        let s = build(json).unwrap_or_else(|e| panic!("{e}"));
        s.warnings().iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn parameters_llm_d_ignores_are_accepted_with_a_warning() {
        let w = warnings(
            r#"{"plugins": [{"type": "queue-scorer", "parameters": {"weight": 2}},
                            {"type": "single-profile-handler", "parameters": {"scorer": "kv", "picker": "random"}},
                            {"type": "decode-filter", "parameters": {}}]}"#,
        );
        assert_eq!(
            w,
            [
                "plugins[0].parameters: weight ignored, as in llm-d (this plugin type reads no parameters)",
                "plugins[1].parameters: picker, scorer ignored, as in llm-d (this plugin type reads no parameters)",
            ]
        );
        let err =
            build(r#"{"plugins": [{"type": "least-queue-filter", "parameters": {"x": 1}}]}"#).unwrap_err();
        assert!(
            err.starts_with("plugins[0].parameters.x: expected no parameters"),
            "ours still refuse: {err}"
        );
    }

    #[test]
    fn profile_entries_that_play_no_part_and_stray_weights_are_warnings() {
        let w = warnings(
            r#"{"plugins": [{"type": "single-profile-handler"}, {"type": "queue-scorer"}, {"type": "max-score-picker"}],
                "schedulingProfiles": [{"name": "p", "plugins": [
                    {"pluginRef": "single-profile-handler"}, {"pluginRef": "queue-scorer", "weight": 2},
                    {"pluginRef": "max-score-picker", "weight": 3}]}]}"#,
        );
        assert_eq!(
            w,
            [
                r#"schedulingProfiles[0].plugins[0].pluginRef: "single-profile-handler" is a profile handler, not a filter, scorer or picker: it plays no part in profile "p" (ignored, as in llm-d)"#,
                r#"schedulingProfiles[0].plugins[2].weight: weight 3 ignored, as in llm-d: "max-score-picker" is a picker, and only scorers are weighted"#,
            ]
        );
    }

    #[test]
    fn pickers_read_a_non_positive_count_as_one() {
        let s = build(r#"{"plugins": [{"type": "random-picker", "parameters": {"maxNumOfEndpoints": 0}}]}"#)
            .unwrap();
        assert_eq!(
            s.warnings().iter().map(|w| w.to_string()).collect::<Vec<_>>(),
            ["plugins[0].parameters.maxNumOfEndpoints: 0 read as 1, as in llm-d"]
        );
        let err = build(
            r#"{"plugins": [{"type": "max-score-picker", "parameters": {"maxNumOfEndpoints": "two"}}]}"#,
        );
        assert_eq!(
            err.err().as_deref(),
            Some(r#"plugins[0].parameters.maxNumOfEndpoints: expected an integer, got "two""#)
        );
    }

    #[test]
    fn deprecated_names_load_with_a_warning() {
        let w = warnings(
            r#"{"plugins": [{"type": "by-label-selector", "parameters": {"matchLabels": {"a": "b"}}},
                            {"type": "by-label", "parameters": {"label": "a", "validValues": ["b"]}}]}"#,
        );
        assert_eq!(
            w,
            [
                "plugins[0].parameters: plugin type by-label-selector is deprecated in llm-d, use label-selector-filter",
                "plugins[1].parameters: plugin type by-label is deprecated in llm-d, use label-selector-filter",
            ]
        );
    }

    #[test]
    fn refused_types_say_why() {
        let err = build(r#"{"plugins": [{"type": "header-profile-handler"}]}"#).unwrap_err();
        assert!(
            err.starts_with(r#"plugins[0].type: expected a plugin type wasm-epp can run, got "header-profile-handler", which it cannot: it needs the request's headers"#),
            "{err}"
        );
    }
}

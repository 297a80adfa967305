//! Scheduling filters and scorers of llm-d that wasm-epp maps or refuses.
//!
//! The ones it runs are ordinary plugins (`plugins/filters`, `plugins/scorers`, `plugins/profile_handlers`)
//! registered here because they exist for llm-d's configurations: the label-selector filters (with
//! llm-d's deprecated names), `utilization-filter`, `encode-filter`, `context-length-aware` and the two
//! that read a request header (`header-profile-handler`, `header-label-affinity-scorer`; the exchange
//! keeps the headers they name for the scheduler). The refused ones need data this gateway does not
//! have; each reason says what is missing and, where there is one, what to use.

use super::{Group, Refused};
use crate::plugins::filters::by_label_filter::ByLabelFilter;
use crate::plugins::filters::encode_filter::EncodeFilter;
use crate::plugins::filters::label_selector_filter::{ByLabelSelector, LabelSelectorFilter};
use crate::plugins::filters::utilization_filter::UtilizationFilter;
use crate::plugins::profile_handlers::header_profile_handler::HeaderProfileHandler;
use crate::plugins::registry::Entry;
use crate::plugins::scorers::context_length_aware::ContextLengthAware;
use crate::plugins::scorers::header_label_affinity_scorer::HeaderLabelAffinityScorer;

const MULTICLUSTER: &str = "routing between clusters (endpoints that are peer gateways, addressed by host name and \
     scored on their pickers' pool-average metrics) is not implemented: wasm-epp routes to the pods of its own \
     pool; give each cluster its own gateway and pool";

const LATENCY_PREDICTOR: &str = "it needs TTFT/TPOT predictions from llm-d's latency-predictor sidecars \
     (predicted-latency-producer), which wasm-epp does not run; use load-based scorers (queue-scorer, \
     kv-cache-utilization-scorer, active-request-scorer) instead";

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
        Entry::of::<HeaderProfileHandler>(),
        Entry::of::<HeaderLabelAffinityScorer>(),
    ],
    mapped: &[],
    refused: &[
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
    fn out_of_range_values_fall_back_to_llm_d_s_defaults_with_a_warning() {
        let w = warnings(
            r#"{"plugins": [
                {"type": "active-request-scorer", "parameters": {"idleThreshold": -2, "maxBusyScore": 3, "requestTimeout": "2m"}},
                {"type": "load-aware-scorer", "parameters": {"threshold": 0}},
                {"type": "token-load-scorer", "parameters": {"queueThresholdTokens": -1}}]}"#,
        );
        assert_eq!(
            w,
            [
                "plugins[0].parameters.idleThreshold: -2 read as 0, as in llm-d",
                "plugins[0].parameters.maxBusyScore: 3 read as 1, as in llm-d",
                "plugins[0].parameters.requestTimeout: ignored, as in llm-d (deprecated)",
                "plugins[1].parameters.threshold: 0 read as 128, as in llm-d",
                "plugins[2].parameters.queueThresholdTokens: -1 read as 4194304, as in llm-d",
            ]
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
        let err = build(r#"{"plugins": [{"type": "latency-scorer"}]}"#).unwrap_err();
        assert!(
            err.starts_with(r#"plugins[0].type: expected a plugin type wasm-epp can run, got "latency-scorer", which it cannot: it needs TTFT/TPOT predictions"#),
            "{err}"
        );
    }

    /// The exchange keeps the headers the configured plugins name, and the decision sees them: the
    /// profile is the one `x-tier` names, and in it the pod whose zone label matches `x-zone` wins.
    #[test]
    fn request_headers_reach_header_plugins_through_the_exchange() {
        use crate::config::gateway::GatewayConfig;
        use crate::endpoint_picker::{EndpointPicker, Outcome, PoolView};
        use crate::exchange::{Exchange, ExchangeSettings, HeaderLookup};
        use crate::model::{Endpoint, EndpointState, Metrics, PoolSnapshot};
        use alloc::borrow::Cow;
        use alloc::format;

        struct Headers(Vec<(&'static str, &'static str)>);
        impl HeaderLookup for Headers {
            fn get(&self, name: &str) -> Option<Cow<'_, str>> {
                self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| Cow::Borrowed(*v))
            }
        }
        let json = r#"{"plugins": [
              {"type": "header-profile-handler", "parameters": {"headerName": "X-Tier", "defaultProfile": "standard"}},
              {"name": "gold-pods", "type": "label-selector-filter", "parameters": {"matchLabels": {"tier": "gold"}}},
              {"type": "header-label-affinity-scorer", "parameters": {"headerName": "X-Zone", "labelKey": "zone"}},
              {"type": "max-score-picker"}],
            "schedulingProfiles": [
              {"name": "standard", "plugins": [{"pluginRef": "header-label-affinity-scorer"}]},
              {"name": "gold", "plugins": [{"pluginRef": "gold-pods"}, {"pluginRef": "header-label-affinity-scorer"}]}]}"#;
        let config = GatewayConfig::from_json(json).unwrap();
        let settings = ExchangeSettings::new(&config);
        assert_eq!(settings.scheduling_headers, ["x-tier", "x-zone"]);
        let mut picker = EndpointPicker::new(config).unwrap();

        // Pods: 1 gold in zone a, 2 gold in zone b, 3 plain in zone c.
        let mut pool = PoolSnapshot { generation: 1, published_at_ms: 1_000, ..PoolSnapshot::default() };
        for (n, tier, zone) in [(1, "gold", "a"), (2, "gold", "b"), (3, "plain", "c")] {
            let mut e = Endpoint::new(format!("10.0.0.{n}:8000"));
            e.labels = alloc::vec![
                (String::from("tier"), String::from(tier)),
                (String::from("zone"), String::from(zone))
            ];
            let metrics = Metrics { updated_at_ms: 1_000, ..Metrics::default() };
            pool.endpoints.push(EndpointState { metrics: Some(metrics), ..EndpointState::new(e) });
        }
        let body: &[u8] = br#"{"model": "m", "prompt": "hi"}"#;
        let mut decide = |headers: &[(&'static str, &'static str)]| {
            let mut x = Exchange::new();
            let mut all = alloc::vec![(":path", "/v1/completions"), ("x-request-id", "r")];
            all.extend_from_slice(headers);
            x.on_request_headers(&settings, Some(&Headers(all)), None, false, &mut || String::from("id"));
            match picker.decide(&x.facts().info(None), Some(body), PoolView::Fresh(&pool), 1_010, 3) {
                Outcome::Route(r) => r.destination,
                Outcome::Reply(r) => format!("{} {}", r.status, r.reason),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(decide(&[("x-tier", "gold"), ("x-zone", "b")]), "10.0.0.2:8000");
        assert_eq!(decide(&[("x-tier", "gold"), ("x-zone", "a")]), "10.0.0.1:8000");
        assert_eq!(decide(&[("x-zone", "c")]), "10.0.0.3:8000", "no x-tier: the standard profile");
        assert_ne!(
            decide(&[("x-tier", "gold"), ("x-zone", "c")]),
            "10.0.0.3:8000",
            "gold keeps plain pods out"
        );
        // A profile nobody configured: no destination, answered as every scheduling failure (llm-d too).
        assert_eq!(decide(&[("x-tier", "bronze")]), "429 all_filtered");
    }
}

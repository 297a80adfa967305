use super::*;
use crate::scheduling::pipeline::Scheduler;
use crate::scheduling::test_support::registry;
use alloc::format;
use alloc::string::ToString;

fn parse_err(json: &str) -> String {
    EndpointPickerConfig::from_json(json).unwrap_err().to_string()
}

/// Parses, then builds with the test registry; returns the error message.
fn build_err(json: &str) -> String {
    let cfg = EndpointPickerConfig::from_json(json).unwrap_or_else(|e| panic!("parse failed: {e}"));
    Scheduler::from_config_with(&cfg, &registry()).unwrap_err().to_string()
}

fn build(json: &str) -> Scheduler {
    let cfg = EndpointPickerConfig::from_json(json).unwrap_or_else(|e| panic!("parse failed: {e}"));
    Scheduler::from_config_with(&cfg, &registry()).unwrap_or_else(|e| panic!("build failed: {e}"))
}

const MINIMAL: &str = r#"{"apiVersion": "llm-d.ai/v1alpha1", "kind": "EndpointPickerConfig",
  "plugins": [{"type": "fixed-scorer"}, {"type": "random-picker"}],
  "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "fixed-scorer", "weight": 2.5}, {"pluginRef": "random-picker"}]}]}"#;

#[test]
fn both_api_versions_parse_and_the_old_one_warns() {
    let cfg = EndpointPickerConfig::from_json(MINIMAL).unwrap();
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    assert_eq!(cfg.plugins.len(), 2);
    assert_eq!(cfg.plugins[0].name, "fixed-scorer", "name defaults to the type");
    assert_eq!(cfg.scheduling_profiles[0].plugins[0].weight, Some(2.5));
    assert_eq!(cfg.scheduling_profiles[0].plugins[1].weight, None);

    let old = MINIMAL.replace("llm-d.ai/v1alpha1", "inference.networking.x-k8s.io/v1alpha1");
    let cfg = EndpointPickerConfig::from_json(&old).unwrap();
    assert_eq!(cfg.plugins.len(), 2);
    assert_eq!(
        cfg.warnings[0].to_string(),
        "apiVersion: inference.networking.x-k8s.io/v1alpha1 is deprecated, use llm-d.ai/v1alpha1"
    );
}

#[test]
fn no_config_means_the_default_scheduling_and_gie_default_is_one_explicit_profile_away() {
    let shipped = include_str!("../../../envoy-config/scheduling/gie-default.json");
    let gie = EndpointPickerConfig::from_json(shipped).unwrap();
    let expected = EndpointPickerConfig::gie_default();
    let types = |c: &EndpointPickerConfig| c.plugins.iter().map(|p| p.type_name.clone()).collect::<Vec<_>>();
    assert_eq!(types(&gie)[..3], types(&expected)[..], "gie-default.json is GIE's default profile");
    assert_eq!(gie.scheduling_profiles[0].plugins[..3], expected.scheduling_profiles[0].plugins[..]);
    let default = EndpointPickerConfig::default_scheduling().unwrap();
    let types: Vec<&str> = default.plugins.iter().map(|p| p.type_name.as_str()).collect();
    assert!(types.contains(&"prefix-owner-scorer") && types.contains(&"near-best-picker"), "{types:?}");
    assert!(default.warnings.is_empty(), "{:?}", default.warnings);
    for text in ["", "  \n", "{}", r#"{"apiVersion": "llm-d.ai/v1alpha1", "kind": "EndpointPickerConfig"}"#] {
        let cfg = EndpointPickerConfig::from_json(text).unwrap();
        assert_eq!(cfg.plugins, default.plugins, "{text:?}");
        assert_eq!(cfg.scheduling_profiles, default.scheduling_profiles, "{text:?}");
    }
    let s = Scheduler::from_config_with(&EndpointPickerConfig::gie_default(), &registry()).unwrap();
    assert_eq!(
        s.plugin_names(),
        [
            "queue-scorer",
            "kv-cache-utilization-scorer",
            "prefix-cache-scorer",
            "single-profile-handler",
            "max-score-picker",
            "utilization-detector"
        ]
    );
    assert_eq!(s.profile_names(), ["default"]);
    let weights: Vec<f64> = s.profiles[0].scorers.iter().map(|(_, w)| *w).collect();
    assert_eq!(weights, [2.0, 2.0, 3.0]);
    // The built-in registry builds the default, saturation detector included.
    let s = Scheduler::gie_default().unwrap();
    assert_eq!(s.detector_name(), Some("utilization-detector"));
    assert!(s.warnings().is_empty(), "{:?}", s.warnings());
}

#[test]
fn llm_d_system_defaults() {
    // No profiles: one `default` profile with every filter/scorer/picker; picker and handler added.
    let s = build(r#"{"plugins": [{"type": "decode-filter"}, {"name": "s", "type": "fixed-scorer"}]}"#);
    assert_eq!(s.profile_names(), ["default"]);
    let p = &s.profiles[0];
    assert_eq!((p.filters.as_slice(), p.scorers.as_slice()), ([0].as_slice(), [(1, 1.0)].as_slice()));
    assert_eq!(s.plugin_names()[p.picker], "max-score-picker");
    assert!(s.plugin("single-profile-handler").is_some());

    // Two profiles without a picker share the one configured picker.
    let s = build(
        r#"{"plugins": [{"type": "pd-profile-handler"}, {"type": "weighted-random-picker"}, {"type": "fixed-scorer"}],
            "schedulingProfiles": [{"name": "decode", "plugins": [{"pluginRef": "fixed-scorer"}]},
                                   {"name": "prefill", "plugins": []}]}"#,
    );
    assert!(s.profiles.iter().all(|p| s.plugin_names()[p.picker] == "weighted-random-picker"));
    assert_eq!(
        s.plugin_names(),
        ["pd-profile-handler", "weighted-random-picker", "fixed-scorer", "utilization-detector"],
        "no default picker or handler added; the default detector is"
    );
}

#[test]
fn saturation_detector_shapes() {
    let s = build(
        r#"{"plugins": [{"name": "d", "type": "fixed-detector"}, {"type": "fixed-scorer"}], "saturationDetector": {"pluginRef": "d"}}"#,
    );
    assert_eq!(s.detector_name(), Some("d"));
    assert!(s
        .warnings()
        .iter()
        .any(|w| w.to_string() == "saturationDetector: deprecated, use flowControl.saturationDetector"));

    // flowControl's field wins over the deprecated one.
    let s = build(
        r#"{"plugins": [{"name": "d1", "type": "fixed-detector"}, {"name": "d2", "type": "fixed-detector"}, {"type": "fixed-scorer"}],
            "saturationDetector": {"pluginRef": "d1"}, "flowControl": {"saturationDetector": {"pluginRef": "d2"}}}"#,
    );
    assert_eq!(s.detector_name(), Some("d2"));

    // GIE ≤ 1.2 inline thresholds become a utilization-detector plugin with those parameters.
    let cfg = EndpointPickerConfig::from_json(
        r#"{"plugins": [{"type": "fixed-scorer"}], "saturationDetector": {"queueDepthThreshold": 8, "kvCacheUtilThreshold": 0.9}}"#,
    )
    .unwrap();
    let d = cfg.plugin("utilization-detector").unwrap();
    assert_eq!(d.parameters["queueDepthThreshold"], 8);

    // Not configured: the default detector is created on demand.
    let cfg = EndpointPickerConfig::from_json(r#"{"plugins": [{"type": "decode-filter"}]}"#).unwrap();
    assert_eq!(Scheduler::from_config(&cfg).unwrap().detector_name(), Some("utilization-detector"));
    // Not configured and not registered: no detector, and a warning says shedding is off.
    let registry = crate::plugins::registry::Registry::empty()
        .with::<crate::plugins::filters::decode_filter::DecodeFilter>()
        .with::<crate::plugins::pickers::max_score_picker::MaxScorePicker>()
        .with::<crate::plugins::profile_handlers::single_profile_handler::SingleProfileHandler>();
    let s = Scheduler::from_config_with(&cfg, &registry).unwrap();
    assert!(s.detector.is_none());
    assert!(s.warnings().iter().any(|w| w.message.contains("never shed")));
}

#[test]
fn feature_gates() {
    let cfg =
        EndpointPickerConfig::from_json(r#"{"featureGates": ["flowControl", "prepareDataPlugins=false"]}"#)
            .unwrap();
    assert_eq!(
        cfg.feature_gates,
        [(String::from("flowControl"), true), (String::from("prepareDataPlugins"), false)]
    );
    let warnings: Vec<String> = cfg.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        [
            "featureGates[1]: feature gate \"prepareDataPlugins\" has no effect here: the prefix match is always computed, by the first prefix plugin that needs it",
        ],
        "known gates are accepted with a warning, enabled or not; flowControl is implemented"
    );
    assert!(cfg.flow_control.is_some(), "the gate alone turns flow control on, with llm-d's defaults");
    let cfg = EndpointPickerConfig::from_json(r#"{"featureGates": ["dataLayer", "flowControll"]}"#).unwrap();
    assert_eq!(
        cfg.warnings[1].to_string(),
        "featureGates[1]: unknown feature gate \"flowControll\" ignored (GIE/llm-d gates: dataLayer, dynamicPD, flowControl, prepareDataPlugins)"
    );
    // The warnings reach the built scheduler, which embedders log.
    let s = Scheduler::from_config(&cfg).unwrap();
    assert_eq!(s.warnings().len(), 2, "{:?}", s.warnings());
    assert_eq!(
        parse_err(r#"{"featureGates": ["flowControl=maybe"]}"#),
        r#"featureGates[0]: expected "name", "name=true" or "name=false", got "flowControl=maybe""#
    );
}

#[test]
fn parse_errors_name_the_path() {
    let cases = [
        (r#"{"plugins": [}"#, "configuration: expected a JSON document, got invalid JSON (expected value at line 1 column 14)"),
        (r#"[1]"#, "configuration: expected an object, got [1]"),
        (r#"{"apiVersion": "v2"}"#, r#"apiVersion: expected "llm-d.ai/v1alpha1" or "inference.networking.x-k8s.io/v1alpha1", got "v2""#),
        (r#"{"kind": "Pod"}"#, r#"kind: expected "EndpointPickerConfig", got "Pod""#),
        (
            r#"{"plugin": []}"#,
            "plugin: expected one of the fields apiVersion, kind, plugins, schedulingProfiles, saturationDetector, flowControl, featureGates, dataLayer, requestHandler, parser, got an unknown field",
        ),
        (r#"{"plugins": [{"name": "x"}]}"#, "plugins[0].type: expected a plugin type, got nothing"),
        (r#"{"plugins": [{"type": 7}]}"#, "plugins[0].type: expected a non-empty string, got 7"),
        (
            r#"{"plugins": [{"type": "a", "params": {}}]}"#,
            "plugins[0].params: expected one of the fields name, type, parameters, got an unknown field",
        ),
        (
            r#"{"plugins": [{"type": "fixed-scorer"}, {"type": "random-picker"}, {"name": "fixed-scorer", "type": "decode-filter"}]}"#,
            r#"plugins[2].name: expected a unique plugin name (name defaults to the type), got "fixed-scorer", already used by plugins[0]"#,
        ),
        (
            r#"{"plugins": [{"type": "fixed-scorer"}], "schedulingProfiles": [{"name": "p", "plugins": [{"pluginRef": "fixed-scorer"}, {"pluginRef": "queue"}]}]}"#,
            r#"schedulingProfiles[0].plugins[1].pluginRef: expected the name of an entry in plugins (fixed-scorer), got "queue""#,
        ),
        (r#"{"plugins": [{"type": "fixed-scorer"}], "schedulingProfiles": []}"#, "schedulingProfiles: expected at least one profile (omit the field for the default profile), got []"),
        (
            r#"{"plugins": [{"type": "fixed-scorer"}], "schedulingProfiles": [{"name": "p"}, {"name": "p"}]}"#,
            r#"schedulingProfiles[1].name: expected a unique profile name, got "p", already used by schedulingProfiles[0]"#,
        ),
        (
            r#"{"plugins": [{"type": "fixed-scorer"}], "schedulingProfiles": [{"name": "p", "plugins": [{"pluginRef": "fixed-scorer", "weight": "high"}]}]}"#,
            r#"schedulingProfiles[0].plugins[0].weight: expected a number ≥ 0, got "high""#,
        ),
        (
            r#"{"plugins": [{"type": "fixed-scorer"}], "saturationDetector": {"pluginRef": "nope"}}"#,
            r#"saturationDetector.pluginRef: expected the name of an entry in plugins (fixed-scorer), got "nope""#,
        ),
        (
            r#"{"plugins": [{"type": "fixed-scorer"}], "flowControl": {"saturationDetector": {"pluginRef": "nope"}}}"#,
            r#"flowControl.saturationDetector.pluginRef: expected the name of an entry in plugins (fixed-scorer), got "nope""#,
        ),
        (
            r#"{"saturationDetector": {"queueDepth": 3}}"#,
            "saturationDetector.queueDepth: expected one of the fields pluginRef, queueDepthThreshold, kvCacheUtilThreshold, metricsStalenessThreshold, got an unknown field",
        ),
    ];
    for (json, want) in cases {
        assert_eq!(parse_err(json), want, "for {json}");
    }
}

#[test]
fn build_errors_name_the_path() {
    let known = registry().types().join(", ");
    let cases = [
        (
            String::from(r#"{"plugins": [{"type": "fixed-scorer"}, {"type": "least-queue-scorer"}]}"#),
            format!(r#"plugins[1].type: expected a known plugin type ({known}), got "least-queue-scorer""#),
        ),
        (
            String::from(r#"{"plugins": [{"type": "fixed-scorer"}, {"type": "max-score-picker", "parameters": {"maxNumOfEndpoints": "two"}}]}"#),
            String::from(r#"plugins[1].parameters.maxNumOfEndpoints: expected an integer, got "two""#),
        ),
        (
            String::from(r#"{"plugins": [{"type": "pd-profile-handler", "parameters": {"threshold": -5}}]}"#),
            String::from("plugins[0].parameters.threshold: expected an integer ≥ 0, got -5"),
        ),
        (
            String::from(r#"{"plugins": [{"type": "least-queue-filter", "parameters": {"x": 1}}]}"#),
            String::from("plugins[0].parameters.x: expected no parameters (this plugin takes none), got an unknown parameter"),
        ),
        (
            String::from(r#"{"plugins": [{"type": "random-picker", "parameters": 3}]}"#),
            String::from("plugins[0].parameters: expected an object of parameters, got 3"),
        ),
        (
            String::from(
                r#"{"plugins": [{"type": "max-score-picker"}, {"type": "random-picker"}],
                    "schedulingProfiles": [{"name": "p", "plugins": [{"pluginRef": "max-score-picker"}, {"pluginRef": "random-picker"}]}]}"#,
            ),
            String::from(r#"schedulingProfiles[0].plugins[1].pluginRef: expected at most one picker in profile "p", got a second picker "random-picker""#),
        ),
        (
            String::from(r#"{"plugins": [{"type": "single-profile-handler"}, {"type": "pd-profile-handler"}]}"#),
            String::from(r#"plugins[1].type: expected at most one profile handler, got a second one ("pd-profile-handler" after "single-profile-handler")"#),
        ),
        (
            String::from(r#"{"plugins": [{"type": "fixed-scorer"}], "schedulingProfiles": [{"name": "a"}, {"name": "b"}]}"#),
            String::from("plugins: expected a profile handler (such as pd-profile-handler) for 2 profiles, got none"),
        ),
        (
            String::from(r#"{"plugins": [{"type": "single-profile-handler"}], "schedulingProfiles": [{"name": "a"}, {"name": "b"}]}"#),
            String::from("schedulingProfiles: expected exactly one profile for single-profile-handler, got 2"),
        ),
        (
            String::from(r#"{"plugins": [{"type": "pd-profile-handler"}], "schedulingProfiles": [{"name": "prefill"}, {"name": "d"}]}"#),
            String::from(r#"schedulingProfiles: expected a profile named "decode" (the decodeProfile of pd-profile-handler), got profiles ["prefill", "d"]"#),
        ),
        (
            String::from(r#"{"plugins": [{"type": "fixed-scorer"}], "saturationDetector": {"pluginRef": "fixed-scorer"}}"#),
            String::from(r#"saturationDetector.pluginRef: expected the name of a saturation detector plugin, got "fixed-scorer", a scorer"#),
        ),
    ];
    for (json, want) in cases {
        assert_eq!(build_err(&json), want, "for {json}");
    }
}

#[test]
fn own_sections_are_skipped_only_when_named() {
    let doc = r#"{"plugins": [{"type": "fixed-scorer"}], "endpoints": ["10.0.0.1:8000"]}"#;
    assert!(EndpointPickerConfig::from_json(doc).is_err());
    let cfg = EndpointPickerConfig::from_json_with_sections(doc, &["endpoints", "collector"]).unwrap();
    assert_eq!(cfg.plugins.len(), 1);
}

#[test]
fn llm_d_sections_name_plugins_of_the_right_kind() {
    // llm-d v0.10's integration-test shape: a parser and a data source named from their sections.
    let ok = r#"{"plugins": [{"type": "fixed-scorer"}, {"type": "openai-parser"}],
                 "requestHandler": {"parsers": [{"pluginRef": "openai-parser"}]},
                 "parser": {"pluginRef": "openai-parser"},
                 "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "fixed-scorer"}]}]}"#;
    let s = build(ok);
    assert!(s.plugin("openai-parser").is_some());
    assert_eq!(
        parse_err(r#"{"plugins": [{"type": "fixed-scorer"}], "parser": {"pluginRef": "openai"}}"#),
        r#"parser.pluginRef: expected the name of an entry in plugins (fixed-scorer), got "openai""#,
        "a dangling reference is an error naming it"
    );
    assert_eq!(
        parse_err(
            r#"{"plugins": [{"type": "fixed-scorer"}], "dataLayer": {"sources": [{"pluginRef": "fixed-scorer", "extractors": [{"pluginRef": "core"}]}]}}"#
        ),
        r#"dataLayer.sources[0].extractors[0].pluginRef: expected the name of an entry in plugins (fixed-scorer), got "core""#
    );
    assert_eq!(
        parse_err(
            r#"{"plugins": [{"type": "fixed-scorer"}], "flowControl": {"priorityBands": [{"priority": 1, "fairnessPolicyRef": "fair"}]}}"#
        ),
        r#"flowControl.priorityBands[0].fairnessPolicyRef: expected the name of an entry in plugins or a built-in policy (fixed-scorer, global-strict-fairness-policy), got "fair""#
    );
    assert_eq!(
        parse_err(r#"{"plugins": [{"type": "fixed-scorer"}], "requestHandler": {"parser": []}}"#),
        "requestHandler.parser: expected one of the fields parsers, got an unknown field"
    );
    assert_eq!(
        build_err(
            r#"{"plugins": [{"type": "fixed-scorer"}], "requestHandler": {"parsers": [{"pluginRef": "fixed-scorer"}]}}"#
        ),
        r#"requestHandler.parsers[0].pluginRef: expected the name of a parser plugin, got "fixed-scorer", a scorer"#,
        "a reference to a plugin of the wrong kind is an error when plugins are built"
    );
}

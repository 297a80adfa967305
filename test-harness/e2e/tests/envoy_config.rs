//! The files in `envoy-config/` without a running proxy: every Envoy template renders with the documented
//! placeholders into YAML, and every Kubernetes manifest parses and carries a filter configuration the
//! picker accepts. (`cargo xtask test` additionally runs each rendered bootstrap through `envoy --mode
//! validate`.)
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use e2e::{workspace_root, EnvoyTemplate};
use scheduler_core::config::gateway::{CollectorMode, GatewayConfig};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
}

fn yaml_files(sub: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    files_under(&workspace_root().join("envoy-config").join(sub), &mut out);
    out.sort();
    out
}

fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    // Documents are separated by `---` lines in these files.
    text.split("\n---\n")
        .map(|d| {
            serde_yaml::from_str(d).unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
        })
        .collect()
}

#[test]
fn every_envoy_template_renders_to_yaml_with_the_documented_placeholders() {
    let documented = ["WASM_PATH", "GATEWAY_CONFIG", "POOL_LB_ENDPOINTS"];
    let templates: Vec<PathBuf> =
        yaml_files("").into_iter().filter(|p| p.file_name().is_some_and(|n| n == "envoy.yaml")).collect();
    assert!(templates.len() >= 3, "the three wasm-picker shapes at least: {templates:?}");
    for path in templates {
        let rel =
            path.strip_prefix(workspace_root().join("envoy-config")).unwrap().to_str().unwrap().to_string();
        let mut t = EnvoyTemplate::load(&rel).unwrap();
        for name in t.placeholders() {
            assert!(
                documented.contains(&name.as_str())
                    || name.starts_with("PORT_")
                    || name.ends_with("_LB_ENDPOINTS"),
                "{rel}: placeholder {{{{{name}}}}} is not in envoy-config/README.md"
            );
            if name.starts_with("PORT_") {
                t = t.set(&name, "10001");
            }
            // One pool's members per multi-pool file placeholder (bbr-two-models/), like POOL_LB_ENDPOINTS.
            if name.ends_with("_LB_ENDPOINTS") && name != "POOL_LB_ENDPOINTS" {
                t = t.set(
                    &name,
                    "[{endpoint: {address: {socket_address: {address: 10.0.0.3, port_value: 8000}}}}]",
                );
            }
        }
        // bbr-two-models/ carries its (router) configuration inline, not as {{GATEWAY_CONFIG}}.
        let configured = t.placeholders().iter().any(|n| n == "GATEWAY_CONFIG");
        let rendered = t
            .wasm(Path::new("/opt/epp/epp_filter.wasm"))
            .gateway_config(
                r#"{"pool": {"endpoints": ["10.0.0.1:8000"]}, "note": "quote \" and \\ survive"}"#,
            )
            .pool_endpoints(&["10.0.0.1:8000", "10.0.0.2:8000"])
            .render()
            .unwrap();
        let doc: Value =
            serde_yaml::from_str(&rendered).unwrap_or_else(|e| panic!("{rel} renders to bad YAML: {e}"));
        let text = doc.to_string();
        assert!(!text.contains("{{"), "{rel}: a placeholder survived");
        // The filter configuration arrives as one string holding the JSON, escapes intact.
        if configured && text.contains("StringValue") {
            assert!(text.contains(r#"quote \\\" and \\\\ survive"#), "{rel}: configuration mangled: {text}");
        }
    }
}

#[test]
fn a_missing_placeholder_value_is_named() {
    let err = EnvoyTemplate::load("wasm-picker/envoy.yaml").unwrap().render().unwrap_err();
    assert!(err.contains("{{GATEWAY_CONFIG}}") && err.contains("{{WASM_PATH}}"), "{err}");
}

#[test]
fn kubernetes_manifests_parse_and_name_their_kind() {
    let mut kinds = Vec::new();
    for path in yaml_files("kubernetes") {
        for doc in docs(&path) {
            let api =
                doc["apiVersion"].as_str().unwrap_or_else(|| panic!("{}: no apiVersion", path.display()));
            let kind = doc["kind"].as_str().unwrap_or_else(|| panic!("{}: no kind", path.display()));
            assert!(doc["metadata"]["name"].is_string(), "{}: {kind} has no metadata.name", path.display());
            kinds.push(format!("{api} {kind}"));
        }
    }
    for expected in [
        "inference.networking.k8s.io/v1 InferencePool",
        "llm-d.ai/v1alpha2 InferenceObjective",
        "extensions.istio.io/v1alpha1 WasmPlugin",
        "gateway.envoyproxy.io/v1alpha1 EnvoyExtensionPolicy",
        "gateway.networking.k8s.io/v1 Gateway",
        "gateway.networking.k8s.io/v1 HTTPRoute",
        "apps/v1 Deployment",
        "v1 Service",
    ] {
        assert!(kinds.iter().any(|k| k == expected), "no {expected} in {kinds:?}");
    }
}

#[test]
fn filter_configurations_in_the_manifests_are_accepted_by_the_picker() {
    let mut checked = 0;
    for path in yaml_files("kubernetes") {
        for doc in docs(&path) {
            let configs: Vec<(Option<String>, Value)> = match doc["kind"].as_str() {
                Some("WasmPlugin") => {
                    vec![(
                        doc["spec"]["pluginName"].as_str().map(String::from),
                        doc["spec"]["pluginConfig"].clone(),
                    )]
                }
                Some("EnvoyExtensionPolicy") => doc["spec"]["wasm"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|w| (w["rootID"].as_str().map(String::from), w["config"].clone()))
                    .collect(),
                _ => continue,
            };
            for (root_id, config) in configs {
                let parsed = GatewayConfig::from_value(&config).unwrap_or_else(|e| {
                    panic!("{}: the picker rejects its configuration: {e}", path.display())
                });
                if root_id.as_deref() == Some("bbr") {
                    assert!(parsed.bbr.is_some(), "{}: a router without a bbr section", path.display());
                    continue;
                }
                // Neither Istio nor Envoy Gateway runs a bootstrap singleton: every pool elects its scraper.
                for i in 0..parsed.pool_count() {
                    let pool = parsed.pool_config(i).unwrap();
                    assert_eq!(pool.collector.mode, CollectorMode::LeaderElected, "{}", path.display());
                }
                checked += 1;
            }
        }
    }
    // Istio's and Envoy Gateway's single-pool pickers, and the two-model one.
    assert_eq!(checked, 3);
}

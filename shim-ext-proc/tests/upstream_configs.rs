//! Every EndpointPickerConfig llm-d-router ships (`test-harness/fixtures/upstream-configs/`), loaded as a
//! user migrating from it would: the shim reads the YAML file as it is; the Wasm filter gets the same
//! document as JSON in its Envoy configuration (here, in the Proxy-Wasm host emulator). Each one is either
//! accepted by both, and then routes a request, or refused by both with the same error, which names the
//! refused plugin type and says why. `expected.txt` in the fixtures directory says which; the
//! compatibility table in `docs/upstream-compatibility.md` is checked against the registry here too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use proxy_wasm_emulator::{build_wasm_crate, workspace_root, Host, LogLevel, Plugin, StartError};
use scheduler_core::endpoint_picker::EndpointPicker;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    workspace_root().join("test-harness/fixtures/upstream-configs")
}

/// `file → expectation`: `accepted`, or `refused <plugin type>`.
fn expected() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(fixtures().join("expected.txt")).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (file, outcome) =
                l.split_once(char::is_whitespace).unwrap_or_else(|| panic!("bad line {l:?}"));
            (file.to_string(), outcome.trim().to_string())
        })
        .collect()
}

/// Every fixture file, relative to the fixtures directory.
fn fixture_files() -> Vec<String> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(fixtures()).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "yaml") {
                let rel = f.strip_prefix(fixtures()).unwrap().to_string_lossy().into_owned();
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

/// The outcome through the shim: `accepted` (and a request routed) or `refused <type>: <error>`.
fn through_shim(path: &Path) -> Result<(), String> {
    let config = epp_shim::config::load(path).map_err(|e| e.to_string())?;
    EndpointPicker::new(config).map(|_| ()).map_err(|e| e.to_string())
}

fn filter_wasm() -> PathBuf {
    let root = workspace_root();
    build_wasm_crate(&root.join("filter/Cargo.toml"), "epp_filter", &root.join("target/filter-wasm"))
        .unwrap_or_else(|e| panic!("building the filter failed: {e}"))
}

/// The outcome through the filter: the same document as JSON, with a pool added as the filter needs one.
fn through_filter(wasm: &Path, path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut doc: serde_json::Value = serde_norway::from_str(&text).unwrap();
    doc.as_object_mut().unwrap().insert(
        "pool".into(),
        serde_json::json!({"name": "pool", "endpoints": ["10.0.0.1:8000", "10.0.0.2:8000"]}),
    );
    let mut host = Host::builder().build();
    let plugin = Plugin::new(wasm.to_path_buf())
        .root_id("picker")
        .vm_id("epp")
        .configuration(doc.to_string())
        .allow_on_headers_stop_iteration(true);
    match host.start_vm(plugin) {
        Ok(_) => Ok(()),
        Err(StartError::ConfigurationRejected) => {
            let errors = host.logs_at(LogLevel::Error);
            Err(errors.join(" | "))
        }
        Err(e) => panic!("{path:?}: the filter failed to start for another reason: {e:?}"),
    }
}

/// `accepted` or `refused <type>` from an error naming `"<type>", which it cannot: ...`.
fn outcome(result: &Result<(), String>) -> String {
    match result {
        Ok(()) => String::from("accepted"),
        Err(e) => match e.split_once(", which it cannot") {
            Some((before, _)) => {
                let t = before.rsplit('"').nth(1).unwrap_or("?");
                format!("refused {t}")
            }
            None => format!("error {e}"),
        },
    }
}

#[test]
fn every_upstream_config_is_accepted_or_refused_with_a_reason_in_both_paths() {
    let expected = expected();
    let files = fixture_files();
    assert!(files.len() >= 60, "the fixtures are there ({} files)", files.len());
    let wasm = filter_wasm();
    let mut report = Vec::new();
    for f in &files {
        let path = fixtures().join(f);
        let shim = through_shim(&path);
        let filter = through_filter(&wasm, &path);
        let (a, b) = (outcome(&shim), outcome(&filter));
        let want = expected.get(f).map(String::as_str).unwrap_or("<missing from expected.txt>");
        if a != want || b != want {
            report.push(format!("{f}\n    expected: {want}\n    shim:     {a}\n    filter:   {b}"));
        }
        if let (Err(s), Err(w)) = (&shim, &filter) {
            let s = s.rsplit("configuration file ").next().unwrap_or(s);
            let tail = s.split_once(": ").map_or(s, |(_, t)| t);
            assert!(w.contains(tail), "{f}: the filter's error {w:?} says what the shim's does: {tail:?}");
        }
    }
    let stale: Vec<&String> = expected.keys().filter(|k| !files.contains(k)).collect();
    assert!(stale.is_empty(), "expected.txt names files that do not exist: {stale:?}");
    assert!(
        report.is_empty(),
        "{} of {} configs differ from expected.txt:\n{}",
        report.len(),
        files.len(),
        report.join("\n")
    );
}

/// The `type`s of a fixture's `plugins`.
fn plugin_types(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let doc: serde_json::Value = serde_norway::from_str(&text).unwrap();
    let list = doc.get("plugins").and_then(|p| p.as_array()).cloned().unwrap_or_default();
    list.iter().filter_map(|p| p.get("type").and_then(|t| t.as_str()).map(String::from)).collect()
}

/// The source named in a fixture's header line.
fn source(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let first = text.lines().next().unwrap_or_default();
    first.trim_start_matches("# Source: ").trim_start_matches("github.com/llm-d/llm-d-router ").to_string()
}

/// `(status, what it means here)` for an llm-d plugin type, from the registry's own tables.
fn classify(type_name: &str) -> Option<(&'static str, String)> {
    use scheduler_core::plugins::upstream;
    if let Some(s) = upstream::SUPPORTED.iter().find(|s| s.type_name == type_name) {
        return Some(("supported", s.note.to_string()));
    }
    if let Some(m) = upstream::mapped().into_iter().find(|m| m.type_name == type_name) {
        return Some(("mapped", format!("Accepted: {}", m.done_by)));
    }
    if let Some(r) = upstream::all_refused().into_iter().find(|r| r.type_name == type_name) {
        return Some(("refused", r.why.to_string()));
    }
    None
}

fn replace_generated(doc: &str, marker: &str, body: &str) -> String {
    let begin = format!("<!-- BEGIN GENERATED: {marker}");
    let start = doc.find(&begin).unwrap_or_else(|| panic!("no {begin:?} in the doc"));
    let after_begin = start + doc[start..].find("-->").unwrap() + 3;
    let end = after_begin + doc[after_begin..].find("<!-- END GENERATED -->").unwrap();
    format!("{}\n{}{}", &doc[..after_begin], body, &doc[end..])
}

/// The compatibility table in the docs is what the registry says, for every type the fixtures use and every
/// type the registry knows from llm-d; `UPDATE_DOCS=1` rewrites it.
#[test]
fn the_compatibility_table_matches_the_registry() {
    use scheduler_core::plugins::registry::Registry;
    use scheduler_core::plugins::upstream;
    let files = fixture_files();
    let mut used: BTreeMap<String, usize> = BTreeMap::new();
    for f in &files {
        for t in plugin_types(&fixtures().join(f)) {
            *used.entry(t).or_default() += 1;
        }
    }
    let mut types: Vec<String> = used.keys().cloned().collect();
    types.extend(upstream::SUPPORTED.iter().map(|s| s.type_name.to_string()));
    types.extend(upstream::mapped().iter().map(|m| m.type_name.to_string()));
    types.extend(upstream::all_refused().iter().map(|r| r.type_name.to_string()));
    types.sort();
    types.dedup();
    let registry = Registry::builtin();
    let mut unknown = Vec::new();
    let mut table =
        String::from("| Type | Here | What it means here | Fixtures using it |\n|---|---|---|---:|\n");
    for t in &types {
        let Some((status, text)) = classify(t) else {
            unknown.push(t.clone());
            continue;
        };
        if status != "refused" {
            assert!(registry.get(t).is_some(), "{t} is {status} but not in the registry");
        }
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|");
        let n = used.get(t).copied().unwrap_or(0);
        table.push_str(&format!("| `{t}` | {status} | {text} | {n} |\n"));
    }
    assert!(
        unknown.is_empty(),
        "plugin types the fixtures use that are neither supported, mapped nor refused: {unknown:?}"
    );

    let expected = expected();
    let mut configs = String::from("| Source (llm-d-router v0.10.0) | Here |\n|---|---|\n");
    for f in &files {
        let outcome = expected.get(f).cloned().unwrap_or_default();
        configs.push_str(&format!("| `{}` | {} |\n", source(&fixtures().join(f)), outcome));
    }

    let doc_path = workspace_root().join("docs/upstream-compatibility.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap();
    let want = replace_generated(&replace_generated(&doc, "plugin table", &table), "fixture table", &configs);
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&doc_path, &want).unwrap();
    } else {
        assert!(
            doc == want,
            "docs/upstream-compatibility.md is out of date: run UPDATE_DOCS=1 cargo test -p epp-shim --test upstream_configs"
        );
    }
}

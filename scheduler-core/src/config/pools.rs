//! One picker, many pools: the `pools` section. Each entry is a whole single-pool configuration (its
//! `pool`, scheduling, objectives, collector, health, …) plus `match`, which says which requests it
//! serves: by the upstream cluster the route chose (`match.clusters`) and/or by the model the request
//! names (`match.models`, base models and adapters alike).
//!
//! An entry inherits every top-level section it does not set itself; the scheduling sections
//! (`plugins`, `schedulingProfiles`, `flowControl`, …) go together: an entry that sets any of them
//! inherits none. `routing`, `limits` and `bbr` apply before a request's pool is known (headers
//! stripped, body buffered and read), so they are top-level only.
//!
//! Which pool a request gets ([`GatewayConfig::choose_pool`]):
//! 1. The route's cluster, when a pool claims it: that pool. If that pool also lists models, a model
//!    it does not list is answered 404.
//! 2. Otherwise the pools that claim no cluster, by model: the pool listing the request's model (or,
//!    with a `bbr` base-model mapping, its base model). A model none of them lists is answered 404
//!    naming it; a request without a model (no body) is left alone.
//! 3. No pool matches by model alone: the request is not an inference request of this picker (a route
//!    to another cluster) and passes through untouched.
//!
//! The cluster is what Envoy's stream info holds when the picker decides. Envoy clears its route cache
//! when a filter changes request headers but re-selects the route only when a filter asks for it; until
//! then the stream info keeps the route chosen on the headers the client sent. So a filter that changes
//! routing headers before the picker (the `bbr` role) must be followed by one that asks for the route
//! (`envoy-config/bbr-two-models/` puts Envoy's `header_mutation` filter between them), and a picker
//! whose own `bbr` section sets them cannot match by cluster (refused): it matches by model.

use super::gateway::GatewayConfig;
use super::params::json_repr;
use super::ConfigError;
use crate::endpoint_picker::Reply;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde_json::{Map, Value};

/// Sections that act before a request's pool is chosen: set once, at the top level.
pub const TOP_LEVEL_ONLY: &[&str] = &["routing", "limits", "bbr", "pools"];

/// The `EndpointPickerConfig` sections an entry takes all together or not at all: every upstream
/// top-level field but the document's `apiVersion`/`kind` and the body `parser`.
fn is_scheduling_section(key: &str) -> bool {
    super::parse::TOP_LEVEL.contains(&key) && !matches!(key, "apiVersion" | "kind" | "parser")
}

/// Which requests a pool serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolMatch {
    /// Upstream clusters (Envoy's `xds.cluster_name`) whose requests this pool decides.
    pub clusters: Vec<String>,
    /// Model names (base models and adapters) this pool serves.
    pub models: Vec<String>,
}

/// One entry of `pools`.
#[derive(Clone, Debug)]
pub struct PoolEntry {
    pub matches: PoolMatch,
    /// The entry's whole configuration (top-level sections merged in); its `pools` is empty.
    pub config: GatewayConfig,
}

/// The pool a request goes to.
#[derive(Clone, Debug, PartialEq)]
pub enum PoolChoice {
    /// `pools[i]` decides.
    Pool(usize),
    /// No pool's business: forward untouched.
    Pass,
    /// Answer this (404, a model no pool serves).
    Reply(Reply),
}

/// Parses `pools` against the top-level document `top` (which holds it).
pub(super) fn parse(top: &Map<String, Value>, list: &Value) -> Result<Vec<PoolEntry>, ConfigError> {
    let Value::Array(items) = list else {
        return Err(ConfigError::new("pools", "a list of pool configurations", Some(json_repr(list))));
    };
    if items.is_empty() {
        return Err(ConfigError::new(
            "pools",
            "at least one pool (omit the section for a single pool)",
            Some(String::from("[]")),
        ));
    }
    if top.contains_key("pool") {
        return Err(ConfigError::new(
            "pool",
            "no top-level pool next to pools (each pools[i] names its own)",
            top.get("pool").map(json_repr),
        ));
    }
    let mut entries: Vec<PoolEntry> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("pools[{i}]");
        let Value::Object(own) = item else {
            return Err(ConfigError::new(at, "a pool configuration object", Some(json_repr(item))));
        };
        for key in TOP_LEVEL_ONLY {
            if own.contains_key(*key) {
                return Err(ConfigError::new(
                    format!("{at}.{key}"),
                    "no such section here: it applies before the pool is chosen, set it at the top level",
                    own.get(*key).map(json_repr),
                ));
            }
        }
        let matches = parse_match(&at, own.get("match"))?;
        let mut merged: Map<String, Value> =
            top.iter().filter(|(k, _)| k.as_str() != "pools").map(|(k, v)| (k.clone(), v.clone())).collect();
        if own.keys().any(|k| is_scheduling_section(k)) {
            merged.retain(|k, _| !is_scheduling_section(k));
        }
        for (k, v) in own {
            if k != "match" {
                merged.insert(k.clone(), v.clone());
            }
        }
        let config = GatewayConfig::from_value(&Value::Object(merged)).map_err(|e| ConfigError {
            path: if e.path.is_empty() { at.clone() } else { format!("{at}.{}", e.path) },
            ..e
        })?;
        if let Some(j) = entries.iter().position(|e| e.config.pool.name == config.pool.name) {
            return Err(ConfigError::new(
                format!("{at}.pool.name"),
                format!(
                    "a name no other pool has (pools[{j}] is {:?}; shared-data keys are per name)",
                    config.pool.name
                ),
                Some(format!("{:?}", config.pool.name)),
            ));
        }
        for (field, names, of) in [
            ("clusters", &matches.clusters, (|m: &PoolMatch| &m.clusters) as fn(&PoolMatch) -> &Vec<String>),
            ("models", &matches.models, |m: &PoolMatch| &m.models),
        ] {
            for (k, name) in names.iter().enumerate() {
                if let Some(j) = entries.iter().position(|e| of(&e.matches).contains(name)) {
                    return Err(ConfigError::new(
                        format!("{at}.match.{field}[{k}]"),
                        format!("a name no other pool claims (pools[{j}] claims it)"),
                        Some(format!("{name:?}")),
                    ));
                }
            }
        }
        // The picker reads the cluster of the route Envoy chose before its own `bbr` headers changed it:
        // Envoy re-selects the route only when a later filter asks for it.
        if let (Some(_), Some(first)) = (top.get("bbr"), matches.clusters.first()) {
            return Err(ConfigError::new(
                format!("{at}.match.clusters"),
                "no clusters with a top-level bbr section (the route is re-selected on its headers only after \
                 this filter): match by models, or run the bbr role as a filter of its own before the picker",
                Some(format!("{first:?}")),
            ));
        }
        entries.push(PoolEntry { matches, config });
    }
    Ok(entries)
}

fn parse_match(at: &str, v: Option<&Value>) -> Result<PoolMatch, ConfigError> {
    let expected = "{\"clusters\": [names], \"models\": [names]} with at least one name";
    let Some(Value::Object(m)) = v else {
        return Err(ConfigError::new(format!("{at}.match"), expected, v.map(json_repr)));
    };
    let mut out = PoolMatch::default();
    for (key, value) in m {
        let list = match key.as_str() {
            "clusters" => &mut out.clusters,
            "models" => &mut out.models,
            other => {
                return Err(ConfigError::new(
                    format!("{at}.match.{other}"),
                    "one of clusters, models",
                    Some(json_repr(value)),
                ))
            }
        };
        let path = format!("{at}.match.{key}");
        let Value::Array(items) = value else {
            return Err(ConfigError::new(path, "a list of names", Some(json_repr(value))));
        };
        for (k, item) in items.iter().enumerate() {
            let name = match item {
                Value::String(s) if !s.trim().is_empty() => String::from(s.trim()),
                other => {
                    return Err(ConfigError::new(
                        format!("{path}[{k}]"),
                        "a non-empty name",
                        Some(json_repr(other)),
                    ))
                }
            };
            if list.contains(&name) {
                return Err(ConfigError::new(
                    format!("{path}[{k}]"),
                    "a name not listed before",
                    Some(format!("{name:?}")),
                ));
            }
            list.push(name);
        }
    }
    if out.clusters.is_empty() && out.models.is_empty() {
        return Err(ConfigError::new(format!("{at}.match"), expected, v.map(json_repr)));
    }
    Ok(out)
}

impl GatewayConfig {
    /// The pool for a request whose route chose `cluster` (None: unknown) and whose body names `model`
    /// (None: no body, or no model in it). See the module docs for the rules. A configuration without
    /// `pools` has the one pool: always `Pool(0)`.
    pub fn choose_pool(&self, cluster: Option<&str>, model: Option<&str>) -> PoolChoice {
        if self.pools.is_empty() {
            return PoolChoice::Pool(0);
        }
        let model = model.map(str::trim).filter(|m| !m.is_empty());
        let base = model.and_then(|m| self.bbr.as_ref()?.base_models.as_ref()?.base_of(m));
        let serves = |m: &PoolMatch| {
            model.is_some_and(|name| m.models.iter().any(|s| s == name))
                || base.is_some_and(|name| m.models.iter().any(|s| s == name))
        };
        if let Some(c) = cluster.filter(|c| !c.is_empty()) {
            if let Some(i) = self.pools.iter().position(|p| p.matches.clusters.iter().any(|x| x == c)) {
                let m = self.pools.get(i).map(|p| &p.matches);
                return match (model, m) {
                    (Some(name), Some(m)) if !m.models.is_empty() && !serves(m) => {
                        PoolChoice::Reply(crate::bbr::model_not_found(name))
                    }
                    _ => PoolChoice::Pool(i),
                };
            }
        }
        let mut by_model = self.pools.iter().enumerate().filter(|(_, p)| p.matches.clusters.is_empty());
        let Some(first) = by_model.next() else { return PoolChoice::Pass };
        let Some(name) = model else { return PoolChoice::Pass };
        match core::iter::once(first).chain(by_model).find(|(_, p)| serves(&p.matches)) {
            Some((i, _)) => PoolChoice::Pool(i),
            None => PoolChoice::Reply(crate::bbr::model_not_found(name)),
        }
    }

    /// The configuration of the pool [`GatewayConfig::choose_pool`] chose: `pools[i]`, or this one
    /// when there is no `pools` section.
    pub fn pool_config(&self, i: usize) -> Option<&GatewayConfig> {
        if self.pools.is_empty() {
            return (i == 0).then_some(self);
        }
        self.pools.get(i).map(|p| &p.config)
    }

    /// How many pools this configuration serves (1 without `pools`).
    pub fn pool_count(&self) -> usize {
        self.pools.len().max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    const TWO: &str = r#"{"routing": {"maxEndpoints": 1},
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
        "objectives": [{"name": "batch", "priority": -1}],
        "pools": [
          {"match": {"clusters": ["qwen"], "models": ["qwen", "food-review"]},
           "pool": {"name": "qwen", "endpoints": ["10.0.0.1:8000"]}},
          {"match": {"clusters": ["deepseek"]},
           "pool": {"name": "deepseek", "endpoints": ["10.0.1.1:8000"]},
           "plugins": [{"type": "kv-cache-utilization-scorer"}],
           "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "kv-cache-utilization-scorer"}]}],
           "failureMode": "FailClose"},
          {"match": {"models": ["llama", "sql-lora"]}, "pool": {"name": "llama"}}
        ]}"#;

    fn err(json: &str) -> String {
        GatewayConfig::from_json(json).unwrap_err().to_string()
    }

    fn pools(entries: &str) -> String {
        format!(r#"{{"pools": [{entries}]}}"#)
    }

    #[test]
    fn entries_inherit_the_top_level_and_scheduling_goes_whole() {
        let c = GatewayConfig::from_json(TWO).unwrap();
        assert_eq!(c.pool_count(), 3);
        let (q, d, l) = (&c.pools[0].config, &c.pools[1].config, &c.pools[2].config);
        assert_eq!(
            (q.pool.name.as_str(), d.pool.name.as_str(), l.pool.name.as_str()),
            ("qwen", "deepseek", "llama")
        );
        assert_eq!(q.pool.endpoints[0].address, "10.0.0.1:8000");
        assert_eq!(q.picker.plugins[0].type_name, "queue-scorer", "inherited");
        assert_eq!(d.picker.plugins.len(), 1);
        assert_eq!(d.picker.plugins[0].type_name, "kv-cache-utilization-scorer", "its own, not merged");
        assert_eq!(d.failure_mode, super::super::gateway::FailureMode::FailClose);
        assert_eq!(q.failure_mode, super::super::gateway::FailureMode::FailOpen);
        assert_eq!(l.objectives.priority(Some("batch")), -1, "inherited");
        assert!(q.pools.is_empty());
        assert_eq!(c.pools[0].matches.models, ["qwen", "food-review"]);
        assert_eq!(c.pool_config(1).map(|p| p.pool.name.as_str()), Some("deepseek"));
        assert!(c.pool_config(3).is_none());
    }

    #[test]
    fn no_pools_is_the_one_pool() {
        let c = GatewayConfig::from_json(r#"{"pool": {"name": "p"}}"#).unwrap();
        assert!(c.pools.is_empty());
        assert_eq!(c.pool_count(), 1);
        assert_eq!(c.choose_pool(Some("anything"), Some("any-model")), PoolChoice::Pool(0));
        assert_eq!(c.pool_config(0).map(|p| p.pool.name.as_str()), Some("p"));
    }

    #[test]
    fn the_cluster_first_then_the_model() {
        let c = GatewayConfig::from_json(TWO).unwrap();
        assert_eq!(c.choose_pool(Some("qwen"), Some("qwen")), PoolChoice::Pool(0));
        assert_eq!(c.choose_pool(Some("qwen"), Some("food-review")), PoolChoice::Pool(0));
        assert_eq!(c.choose_pool(Some("qwen"), None), PoolChoice::Pool(0), "no body: the cluster decides");
        // The cluster's pool lists its models: another one is not served there.
        let PoolChoice::Reply(r) = c.choose_pool(Some("qwen"), Some("llama")) else { panic!() };
        assert_eq!(r.status, 404);
        assert!(r.body.contains("`llama`") && r.body.contains("model_not_found"), "{}", r.body);
        // A pool listing no models takes every model its cluster gets.
        assert_eq!(c.choose_pool(Some("deepseek"), Some("whatever")), PoolChoice::Pool(1));
        // Other clusters: the pools that claim no cluster, by model.
        assert_eq!(c.choose_pool(Some("other"), Some("sql-lora")), PoolChoice::Pool(2));
        assert_eq!(c.choose_pool(None, Some("llama")), PoolChoice::Pool(2));
        assert_eq!(
            c.choose_pool(None, Some("qwen")),
            PoolChoice::Reply(crate::bbr::model_not_found("qwen")),
            "a pool that claims clusters is reached through them only"
        );
        assert_eq!(c.choose_pool(Some("other"), None), PoolChoice::Pass);
    }

    #[test]
    fn clusters_only_pass_what_is_not_theirs() {
        let c = GatewayConfig::from_json(&pools(
            r#"{"match": {"clusters": ["a"]}, "pool": {"name": "a"}},
               {"match": {"clusters": ["b"]}, "pool": {"name": "b"}}"#,
        ))
        .unwrap();
        assert_eq!(c.choose_pool(Some("b"), Some("m")), PoolChoice::Pool(1));
        assert_eq!(c.choose_pool(Some("static-site"), Some("m")), PoolChoice::Pass);
        assert_eq!(c.choose_pool(None, Some("m")), PoolChoice::Pass);
    }

    #[test]
    fn adapters_by_the_bbr_mapping() {
        let c = GatewayConfig::from_json(
            r#"{"bbr": {"plugins": [{"type": "base-model-to-header", "parameters": {"baseModels": [
                 {"baseModel": "llama", "adapters": ["sql-lora"]}]}}]},
               "pools": [{"match": {"models": ["llama"]}, "pool": {"name": "llama"}},
                         {"match": {"models": ["qwen"]}, "pool": {"name": "qwen"}}]}"#,
        )
        .unwrap();
        assert_eq!(c.choose_pool(None, Some("sql-lora")), PoolChoice::Pool(0));
        assert_eq!(c.choose_pool(None, Some("qwen")), PoolChoice::Pool(1));
        assert!(matches!(c.choose_pool(None, Some("gpt-4o")), PoolChoice::Reply(r) if r.status == 404));
    }

    #[test]
    fn every_bad_shape_names_its_field() {
        let p = r#"{"match": {"clusters": ["a"]}, "pool": {"name": "a"}}"#;
        for (json, want) in [
            (r#"{"pools": {}}"#.to_string(), "pools: expected a list of pool configurations, got {}"),
            (r#"{"pools": []}"#.to_string(), "pools: expected at least one pool"),
            (pools("3"), "pools[0]: expected a pool configuration object, got 3"),
            (pools(r#"{"pool": {"name": "a"}}"#), "pools[0].match: expected {\"clusters\""),
            (pools(r#"{"match": {}}"#), "pools[0].match: expected {\"clusters\""),
            (pools(r#"{"match": {"clusters": []}}"#), "pools[0].match: expected"),
            (pools(r#"{"match": {"cluster": ["a"]}}"#), "pools[0].match.cluster: expected one of clusters, models"),
            (pools(r#"{"match": {"clusters": "a"}}"#), "pools[0].match.clusters: expected a list of names"),
            (pools(r#"{"match": {"models": ["m", ""]}}"#), "pools[0].match.models[1]: expected a non-empty name"),
            (pools(r#"{"match": {"models": ["m", "m"]}}"#), "pools[0].match.models[1]: expected a name not listed before"),
            (format!(r#"{{"pools": [{p}, {{"match": {{"clusters": ["b", "a"]}}, "pool": {{"name": "b"}}}}]}}"#),
             "pools[1].match.clusters[1]: expected a name no other pool claims (pools[0] claims it), got \"a\""),
            (pools(r#"{"match": {"models": ["m"]}, "pool": {"name": "a"}},
                                    {"match": {"models": ["m"]}, "pool": {"name": "b"}}"#),
             "pools[1].match.models[0]: expected a name no other pool claims (pools[0] claims it), got \"m\""),
            (format!(r#"{{"pools": [{p}, {{"match": {{"clusters": ["b"]}}, "pool": {{"name": "a"}}}}]}}"#),
             "pools[1].pool.name: expected a name no other pool has"),
            (pools(r#"{"match": {"clusters": ["a"]}}, {"match": {"clusters": ["b"]}}"#),
             "pools[1].pool.name: expected a name no other pool has"),
            (pools(r#"{"match": {"clusters": ["a"]}, "routing": {}}"#), "pools[0].routing: expected no such section here"),
            (pools(r#"{"match": {"clusters": ["a"]}, "limits": {}}"#), "pools[0].limits: expected no such section here"),
            (pools(r#"{"match": {"clusters": ["a"]}, "bbr": {}}"#), "pools[0].bbr: expected no such section here"),
            (pools(r#"{"match": {"clusters": ["a"]}, "pools": []}"#), "pools[0].pools: expected no such section here"),
            (pools(r#"{"match": {"clusters": ["a"]}, "pool": {"endpoints": ["10.0.0.1"]}}"#),
             "pools[0].pool.endpoints[0].address: expected ipv4:port"),
            (pools(r#"{"match": {"clusters": ["a"]}, "plugins": 3}"#), "pools[0].plugins: expected"),
            (pools(r#"{"match": {"clusters": ["a"]}, "poool": {}}"#), "pools[0].poool: expected"),
            (format!(r#"{{"pool": {{"name": "x"}}, "pools": [{p}]}}"#), "pool: expected no top-level pool next to pools"),
            (format!(r#"{{"bbr": {{}}, "pools": [{p}]}}"#), "pools[0].match.clusters: expected no clusters with a top-level bbr section"),
            (format!(r#"{{"collector": {{"intervalMs": 0}}, "pools": [{p}]}}"#), "collector.intervalMs: expected a period"),
        ] {
            let got = err(&json);
            assert!(got.starts_with(want), "{json}\n  got: {got}\n want: {want}");
        }
    }
}

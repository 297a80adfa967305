//! The gateway configuration file: the same document the Wasm filter takes, as JSON or YAML (YAML is
//! converted to a JSON value and handed to the core, so both formats get the core's exact errors).

use scheduler_core::config::gateway::GatewayConfig;
use scheduler_core::config::ConfigError;
use std::fmt;
use std::path::Path;

#[derive(Debug)]
pub enum LoadError {
    Read { path: String, error: std::io::Error },
    Yaml { path: String, error: String },
    Config { path: String, error: ConfigError },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Read { path, error } => write!(f, "cannot read configuration file {path}: {error}"),
            LoadError::Yaml { path, error } => {
                write!(f, "configuration file {path} is neither JSON nor valid YAML: {error}")
            }
            LoadError::Config { path, error } => write!(f, "configuration file {path}: {error}"),
        }
    }
}

impl std::error::Error for LoadError {}

/// Parses a configuration document: JSON when it looks like JSON (starts with `{`), YAML otherwise.
/// Empty text means every default.
pub fn parse(text: &str) -> Result<GatewayConfig, (Option<String>, Option<ConfigError>)> {
    let config = if text.trim().is_empty() || text.trim_start().starts_with('{') {
        GatewayConfig::from_json(text).map_err(|e| (None, Some(e)))?
    } else {
        let value: serde_json::Value =
            serde_norway::from_str(text).map_err(|e| (Some(e.to_string()), None))?;
        GatewayConfig::from_value(&value).map_err(|e| (None, Some(e)))?
    };
    one_pool(config).map_err(|e| (None, Some(e)))
}

/// The shim serves one pool: GIE's shape is one endpoint picker per InferencePool, each route's ext_proc
/// pointing at its own. A `pools` section is refused rather than half-served.
fn one_pool(config: GatewayConfig) -> Result<GatewayConfig, ConfigError> {
    if config.pools.is_empty() {
        return Ok(config);
    }
    Err(ConfigError::new(
        "pools",
        "no pools section: epp-shim serves one pool (run one epp-shim per pool, each with that pool's \
         configuration, and give each route its own ext_proc filter; the Wasm filter serves many pools)",
        Some(format!("{} pools", config.pools.len())),
    ))
}

pub fn load(path: &Path) -> Result<GatewayConfig, LoadError> {
    let shown = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|error| LoadError::Read { path: shown.clone(), error })?;
    parse(&text).map_err(|e| match e {
        (Some(yaml), _) => LoadError::Yaml { path: shown, error: yaml },
        (None, Some(error)) => LoadError::Config { path: shown, error },
        (None, None) => LoadError::Yaml { path: shown, error: String::from("unreadable document") },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_give_the_same_configuration() {
        let yaml = "pool:\n  name: llama\n  endpoints:\n    - 10.0.0.1:8000\n    - address: 10.0.0.2:8000\n      engine: sglang\nrouting:\n  maxEndpoints: 2\n";
        let json = r#"{"pool":{"name":"llama","endpoints":["10.0.0.1:8000",{"address":"10.0.0.2:8000","engine":"sglang"}]},"routing":{"maxEndpoints":2}}"#;
        let (a, b) = (parse(yaml).unwrap(), parse(json).unwrap());
        assert_eq!(a.pool, b.pool);
        assert_eq!(a.routing, b.routing);
        assert_eq!(a.pool.endpoints.len(), 2);
    }

    #[test]
    fn yaml_errors_name_the_field_like_json_errors() {
        let Err((None, Some(e))) = parse("routing:\n  maxEndpoints: 0\n") else {
            panic!("expected a config error")
        };
        assert!(e.to_string().contains("routing.maxEndpoints"), "{e}");
        assert!(matches!(parse("a: [unclosed"), Err((Some(_), None))));
    }

    #[test]
    fn pools_are_refused_with_the_way_out() {
        let yaml = "pools:\n  - match: {clusters: [a]}\n    pool: {name: a}\n  - match: {clusters: [b]}\n    pool: {name: b}\n";
        let Err((None, Some(e))) = parse(yaml) else { panic!("expected a config error") };
        assert_eq!(e.path, "pools");
        assert!(e.to_string().contains("run one epp-shim per pool"), "{e}");
        assert!(e.to_string().ends_with("got 2 pools"), "{e}");
    }
}

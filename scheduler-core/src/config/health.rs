//! The `health` section of the gateway configuration (what [`crate::health`] reads).

use super::params::{parse_params, ParamError};
use alloc::string::String;
use serde::Deserialize;
use serde_json::Value;

/// The `health` section of the gateway configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthConfig {
    /// Responses 502, 503 or 504 in a row that eject an endpoint (Envoy: `consecutive_gateway_failure`).
    pub consecutive_gateway_failure: u32,
    /// Responses >= 500 of any kind in a row that eject an endpoint (Envoy: `consecutive_5xx`).
    #[serde(rename = "consecutive5xx")]
    pub consecutive_5xx: u32,
    /// Failed scrapes in a row after which an endpoint's load is unknown and it gets no traffic.
    pub consecutive_scrape_failures: u32,
    /// Metrics older than this (ms) are not trusted; unset: `limits.snapshotMaxAgeMs`.
    pub metrics_max_age_ms: Option<u64>,
    /// First ejection time (ms); doubles with each ejection in a row (Envoy: `base_ejection_time`).
    pub base_ejection_time_ms: u64,
    /// Longest ejection (ms) (Envoy: `max_ejection_time`).
    pub max_ejection_time_ms: u64,
    /// Largest share of the pool excluded at once, percent; at least one endpoint may always be excluded
    /// (Envoy: `max_ejection_percent`).
    pub max_ejection_percent: u32,
    /// A request with no response headers after this long (ms) counts as a gateway failure of its
    /// endpoint: a streamed request at once (servers send a stream's headers before generating), one
    /// that is not streamed when the endpoint's metrics, scraped since, show nothing running or waiting.
    /// Like Envoy's per-try timeout, but the request itself is left alone.
    pub first_byte_timeout_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> HealthConfig {
        HealthConfig {
            consecutive_gateway_failure: 3,
            consecutive_5xx: 5,
            consecutive_scrape_failures: 2,
            metrics_max_age_ms: None,
            base_ejection_time_ms: 1_000,
            max_ejection_time_ms: 30_000,
            max_ejection_percent: 50,
            first_byte_timeout_ms: 1_000,
        }
    }
}

impl HealthConfig {
    /// Parses the section (absent: defaults); errors name the field.
    pub fn from_value(value: &Value) -> Result<HealthConfig, ParamError> {
        let c: HealthConfig = parse_params(value)?;
        let positive = |field: &str, v: u64| {
            if v == 0 {
                Err(ParamError::new(field, "a number > 0", Some(String::from("0"))))
            } else {
                Ok(())
            }
        };
        positive("consecutiveGatewayFailure", u64::from(c.consecutive_gateway_failure))?;
        positive("consecutive5xx", u64::from(c.consecutive_5xx))?;
        positive("consecutiveScrapeFailures", u64::from(c.consecutive_scrape_failures))?;
        positive("baseEjectionTimeMs", c.base_ejection_time_ms)?;
        positive("firstByteTimeoutMs", c.first_byte_timeout_ms)?;
        if c.max_ejection_time_ms < c.base_ejection_time_ms {
            return Err(ParamError::new(
                "maxEjectionTimeMs",
                "a time in ms >= baseEjectionTimeMs",
                Some(alloc::format!("{}", c.max_ejection_time_ms)),
            ));
        }
        if c.max_ejection_percent > 100 {
            return Err(ParamError::new(
                "maxEjectionPercent",
                "a percentage in [0, 100]",
                Some(alloc::format!("{}", c.max_ejection_percent)),
            ));
        }
        Ok(c)
    }
}

//! The filter's proxy-wasm metrics (Envoy exports them as stats, prefixed `wasmcustom.`): names in one
//! place, defined once per VM, and a failed metric call never affects a request.

use crate::host::{Host, MetricKind};
use scheduler_core::endpoint_picker::Fallback;
use scheduler_core::flow_control::{FlowStats, QueueOutcome};
use scheduler_core::response::Usage;
use std::collections::BTreeMap;
use std::format;
use std::string::String;

pub const DECISIONS_ROUTED: &str = "epp_decisions_routed";
pub const DECISIONS_FAIL_OPEN: &str = "epp_decisions_fail_open";
pub const DECISIONS_REPLIED: &str = "epp_decisions_replied";
pub const FALLBACK_NO_SNAPSHOT: &str = "epp_fallback_no_snapshot";
pub const FALLBACK_STALE_SNAPSHOT: &str = "epp_fallback_stale_snapshot";
pub const FALLBACK_UNDECODABLE_SNAPSHOT: &str = "epp_fallback_undecodable_snapshot";
pub const FALLBACK_NO_USABLE_ENDPOINT: &str = "epp_fallback_no_usable_endpoint";
/// Endpoints ejected for the gateway's own failures (5xx, refused, reset, timed out), and readmitted.
pub const EJECTIONS: &str = "epp_endpoint_ejections";
pub const READMISSIONS: &str = "epp_endpoint_readmissions";
/// Requests that got no response headers within `health.firstByteTimeoutMs` (counted as gateway failures).
pub const FIRST_BYTE_TIMEOUTS: &str = "epp_first_byte_timeouts";
/// Per endpoint `epp_endpoint_health.<ip_port>`: 0 usable, else why not (1 scrapes failing, 2 ejected,
/// 3 stale metrics, 4 no metrics yet); per reason `epp_endpoints_unusable.<reason>`: how many.
pub const ENDPOINT_HEALTH: &str = "epp_endpoint_health";
pub const ENDPOINTS_UNUSABLE: &str = "epp_endpoints_unusable";
/// Scrapes whose page lacked a core gauge (counted as failed scrapes too).
pub const SCRAPE_MISSING_GAUGES: &str = "epp_scrape_missing_gauges";
/// Requests refused with 429 (sheddable while saturated, or nothing eligible).
pub const SHED: &str = "epp_shed";
/// Bodies refused with 400.
pub const PARSE_ERRORS: &str = "epp_parse_errors";
/// Bodies refused with 415 (compressed: the picker reads bodies as sent).
pub const UNSUPPORTED_ENCODING: &str = "epp_unsupported_encoding";
pub const BODY_TOO_LARGE: &str = "epp_body_too_large";
/// 503 local replies (no endpoints, subset, fail closed).
pub const UNAVAILABLE: &str = "epp_unavailable";
/// 404 local replies: a model body-based routing does not know (`bbr.unknownModels: reject`).
pub const UNKNOWN_MODEL: &str = "epp_unknown_model";
/// Requests the `bbr` role let through with headers promoted (at least one), and with none.
pub const BBR_PROMOTED: &str = "epp_bbr_promoted";
pub const BBR_NOTHING_PROMOTED: &str = "epp_bbr_nothing_promoted";
pub const SNAPSHOT_AGE_MS: &str = "epp_snapshot_age_ms";
pub const DECISION_TIME_US: &str = "epp_decision_time_us";
pub const UPSTREAM_5XX: &str = "epp_upstream_5xx";
pub const SCRAPES: &str = "epp_scrapes";
pub const SCRAPE_ERRORS: &str = "epp_scrape_errors";
pub const SNAPSHOTS_PUBLISHED: &str = "epp_snapshots_published";
pub const LEADER: &str = "epp_collector_leader";
/// Tokens the model servers reported in responses (`usage`), summed.
pub const USAGE_PROMPT_TOKENS: &str = "epp_usage_prompt_tokens";
pub const USAGE_COMPLETION_TOKENS: &str = "epp_usage_completion_tokens";
/// Pool load over the endpoints that get traffic, set once per heartbeat (docs/metrics.md maps them to
/// the reference picker's pool gauges): how many, and the sums of their queues, running batches and
/// KV-cache use in thousandths (Envoy gauges are integers; divide by the count for the average).
pub const POOL_READY_ENDPOINTS: &str = "epp_pool_ready_endpoints";
pub const POOL_QUEUE_SIZE: &str = "epp_pool_queue_size";
pub const POOL_RUNNING_REQUESTS: &str = "epp_pool_running_requests";
pub const POOL_KV_CACHE_PERMILLE: &str = "epp_pool_kv_cache_permille";
/// Per endpoint `epp_endpoint_queue_size.<ip_port>`: requests waiting in its queue (last scrape).
pub const ENDPOINT_QUEUE_SIZE: &str = "epp_endpoint_queue_size";
/// Requests this proxy has routed and not yet seen end, summed over every worker (each adds and
/// subtracts its own: Envoy keeps one gauge per name for the whole process).
pub const IN_FLIGHT: &str = "epp_in_flight_requests";
/// Flow control (names parallel to llm-d's `flow_control_*` metrics): per band
/// `epp_flow_control_queue_size.band_<priority>` and `epp_flow_control_queue_bytes.band_<priority>`
/// (`band_neg1` for -1), gauges summed over workers; `epp_flow_control_requests.<outcome>` counters by
/// llm-d's outcome label (`Dispatched`, `RejectedCapacity`, `RejectedNoEndpoints`, `EvictedTTL`,
/// `EvictedNoEndpoints`, `EvictedContextCancelled`); `epp_flow_control_revocations`: requests in flight
/// that eviction ended; `epp_flow_control_queue_duration_ms`: how long each request waited (ms).
pub const FLOW_QUEUE_SIZE: &str = "epp_flow_control_queue_size";
pub const FLOW_QUEUE_BYTES: &str = "epp_flow_control_queue_bytes";
pub const FLOW_REQUESTS: &str = "epp_flow_control_requests";
pub const FLOW_REVOCATIONS: &str = "epp_flow_control_revocations";
pub const FLOW_QUEUE_DURATION_MS: &str = "epp_flow_control_queue_duration_ms";
/// Per-endpoint upstream 5xx counters are named `epp_upstream_5xx.<ip_port>`; at most this many exist.
pub const MAX_ENDPOINT_METRICS: usize = 256;

/// Metric names one stats set defines at most (a VM has one per pool, plus its unprefixed one): past it
/// a metric is not kept (logged at debug). Per-endpoint
/// names stop at [`MAX_ENDPOINT_METRICS`]; the rest are a fixed set (and one pair per configured
/// flow-control band), far below this.
pub const MAX_DEFINED: usize = 512;

/// Metric ids of one VM, defined lazily by name.
#[derive(Debug, Default)]
pub struct Stats {
    ids: BTreeMap<String, u32>,
    /// `pool.<name>.` for a pool of a picker serving several (`pools`): every metric of that pool is
    /// named `pool.<name>.epp_…` (Envoy: `wasmcustom.pool.<name>.epp_…`). Empty for a single pool.
    prefix: String,
}

impl Stats {
    /// The stats of pool `pool` of a picker serving several: names prefixed `pool.<pool>.` (characters
    /// other than ASCII letters, digits, `-` and `_` become `_`).
    pub fn for_pool(pool: &str) -> Stats {
        let safe: String = pool
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
            .collect();
        Stats { ids: BTreeMap::new(), prefix: format!("pool.{safe}.") }
    }

    fn id(&mut self, host: &dyn Host, kind: MetricKind, name: &str) -> Option<u32> {
        if let Some(id) = self.ids.get(name) {
            return Some(*id);
        }
        if self.ids.len() >= MAX_DEFINED {
            log::debug!("metric {name} not defined: {MAX_DEFINED} are defined already");
            return None;
        }
        let defined = if self.prefix.is_empty() {
            host.metric_define(kind, name)
        } else {
            host.metric_define(kind, &format!("{}{name}", self.prefix))
        };
        match defined {
            Ok(id) => {
                self.ids.insert(String::from(name), id);
                Some(id)
            }
            Err(e) => {
                log::debug!("metric {name} unavailable: {e}");
                None
            }
        }
    }

    /// Metric names defined so far (at most [`MAX_DEFINED`]).
    pub fn defined(&self) -> usize {
        self.ids.len()
    }

    pub fn count(&mut self, host: &dyn Host, name: &str) {
        self.add(host, name, 1);
    }

    pub fn add(&mut self, host: &dyn Host, name: &str, n: u64) {
        if let Some(id) = self.id(host, MetricKind::Counter, name) {
            let _ = host.metric_add(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Adds the usage one response reported.
    pub fn usage(&mut self, host: &dyn Host, usage: Usage) {
        for (name, n) in
            [(USAGE_PROMPT_TOKENS, usage.prompt_tokens), (USAGE_COMPLETION_TOKENS, usage.completion_tokens)]
        {
            if let Some(id) = self.id(host, MetricKind::Counter, name) {
                let _ = host.metric_add(id, i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }

    pub fn gauge(&mut self, host: &dyn Host, name: &str, value: u64) {
        if let Some(id) = self.id(host, MetricKind::Gauge, name) {
            let _ = host.metric_record(id, value);
        }
    }

    /// Moves a gauge by `delta` (the process-wide gauge then sums every worker's share).
    pub fn gauge_add(&mut self, host: &dyn Host, name: &str, delta: i64) {
        if delta == 0 {
            return;
        }
        if let Some(id) = self.id(host, MetricKind::Gauge, name) {
            let _ = host.metric_add(id, delta);
        }
    }

    pub fn histogram(&mut self, host: &dyn Host, name: &str, value: u64) {
        if let Some(id) = self.id(host, MetricKind::Histogram, name) {
            let _ = host.metric_record(id, value);
        }
    }

    pub fn fallback(&mut self, host: &dyn Host, reason: Fallback) {
        self.count(host, fallback_metric(reason));
    }

    /// Counts a local reply by its status.
    pub fn reply(&mut self, host: &dyn Host, status: u16) {
        let name = match status {
            400 => PARSE_ERRORS,
            413 => BODY_TOO_LARGE,
            415 => UNSUPPORTED_ENCODING,
            429 => SHED,
            404 => UNKNOWN_MODEL,
            _ => UNAVAILABLE,
        };
        self.count(host, name);
    }

    /// A gauge per endpoint (bounded like the per-endpoint counters).
    pub fn endpoint_gauge(&mut self, host: &dyn Host, base: &str, address: &str, value: u64) {
        let name = endpoint_metric(base, address);
        if self.ids.contains_key(&name) || self.ids.len() < MAX_ENDPOINT_METRICS {
            self.gauge(host, &name, value);
        }
    }

    /// Counts an upstream 5xx, in total and per endpoint.
    pub fn upstream_5xx(&mut self, host: &dyn Host, address: &str) {
        self.count(host, UPSTREAM_5XX);
        let name = endpoint_metric(UPSTREAM_5XX, address);
        if self.ids.contains_key(&name) || self.ids.len() < MAX_ENDPOINT_METRICS {
            self.count(host, &name);
        }
    }
}

/// Flow control's stats as this worker last reported them: the proxy's stats move by the difference.
#[derive(Debug, Default)]
pub struct FlowReported {
    /// Per band: (priority, queued, bytes, outcomes, in-flight evictions).
    bands: Vec<(i32, u64, u64, [u64; 6], u64)>,
}

impl FlowReported {
    pub fn report(&mut self, host: &dyn Host, stats: &mut Stats, flow: &FlowStats) {
        for band in &flow.bands {
            let i = match self.bands.iter().position(|b| b.0 == band.priority) {
                Some(i) => i,
                None => {
                    self.bands.push((band.priority, 0, 0, [0; 6], 0));
                    self.bands.len() - 1
                }
            };
            let Some(last) = self.bands.get_mut(i) else { continue };
            let suffix = band_suffix(band.priority);
            let delta = |now: u64, before: u64| {
                i64::try_from(now).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(i64::MAX)
            };
            stats.gauge_add(host, &format!("{FLOW_QUEUE_SIZE}.{suffix}"), delta(band.queued, last.1));
            stats.gauge_add(host, &format!("{FLOW_QUEUE_BYTES}.{suffix}"), delta(band.bytes, last.2));
            for (k, outcome) in QueueOutcome::ALL.iter().enumerate() {
                let (now, before) = (band.count(*outcome), last.3.get(k).copied().unwrap_or(0));
                if now > before {
                    stats.add(host, &format!("{FLOW_REQUESTS}.{}", outcome.as_str()), now - before);
                }
                if let Some(slot) = last.3.get_mut(k) {
                    *slot = now;
                }
            }
            if band.evicted_in_flight > last.4 {
                stats.add(host, FLOW_REVOCATIONS, band.evicted_in_flight - last.4);
            }
            *last = (band.priority, band.queued, band.bytes, last.3, band.evicted_in_flight);
        }
    }
}

/// `band_10`, `band_0`, `band_neg1`: Envoy stat names are split on `.`, and Prometheus takes no `-`.
pub fn band_suffix(priority: i32) -> String {
    if priority < 0 {
        format!("band_neg{}", priority.unsigned_abs())
    } else {
        format!("band_{priority}")
    }
}

pub fn fallback_metric(reason: Fallback) -> &'static str {
    match reason {
        Fallback::NoSnapshot => FALLBACK_NO_SNAPSHOT,
        Fallback::StaleSnapshot => FALLBACK_STALE_SNAPSHOT,
        Fallback::UndecodableSnapshot => FALLBACK_UNDECODABLE_SNAPSHOT,
        Fallback::NoUsableEndpoint => FALLBACK_NO_USABLE_ENDPOINT,
    }
}

/// `epp_upstream_5xx.10_0_0_1_8000`: Envoy splits stat names on `.`, so the address's dots and colons go.
pub fn endpoint_metric(base: &str, address: &str) -> String {
    let safe: String = address.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("{base}.{safe}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    #[test]
    fn counts_by_name_and_endpoint() {
        let host = FakeHost::default();
        let mut s = Stats::default();
        s.reply(&host, 429);
        s.reply(&host, 429);
        s.fallback(&host, Fallback::StaleSnapshot);
        s.upstream_5xx(&host, "10.0.0.1:8000");
        assert_eq!(host.metric(SHED), 2);
        assert_eq!(host.metric(FALLBACK_STALE_SNAPSHOT), 1);
        assert_eq!(host.metric("epp_upstream_5xx.10_0_0_1_8000"), 1);
        assert_eq!(host.metric(UPSTREAM_5XX), 1);
    }

    #[test]
    fn a_vm_defines_a_bounded_number_of_metrics() {
        let host = FakeHost::default();
        let mut s = Stats::default();
        for i in 0..2 * MAX_DEFINED {
            s.count(&host, &format!("epp_test_{i}"));
        }
        assert_eq!(s.defined(), MAX_DEFINED);
        assert_eq!(host.metric(&format!("epp_test_{}", MAX_DEFINED - 1)), 1);
        assert_eq!(host.metric(&format!("epp_test_{MAX_DEFINED}")), 0);
    }
}

//! The gateways from the files in `envoy-config/` as they are in the tree (the filter and the shim in their
//! default override_host shapes and in the ORIGINAL_DST ones, and round-robin), and how each one's view of
//! the pods is read: Envoy's per-host counters of cluster `pool` for every gateway (`/clusters` names hosts
//! `ip:port` whatever the cluster type), and whether a pod is in rotation from the gateway's own state (the
//! filter's `epp_endpoint_health.<ip_port>` stats, the shim's `epp_shim_endpoint_usable` metric, Envoy's
//! health flags for round-robin).

use crate::report::{Gateway, HostSample, State};
use e2e::{Envoy, EnvoyOptions, EnvoyTemplate, EppShim, Request};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Envoy workers of every gateway.
pub const WORKERS: usize = 2;

/// Which scheduling configuration the picker (filter and shim alike) runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduling {
    /// `envoy-config/scheduling/recommended.json`, what the project recommends.
    Recommended,
    /// No scheduling configuration: GIE's default profile.
    GieDefault,
}

impl Scheduling {
    pub fn from_key(key: &str) -> Option<Scheduling> {
        match key {
            "recommended" => Some(Scheduling::Recommended),
            "gie-default" => Some(Scheduling::GieDefault),
            _ => None,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Scheduling::Recommended => "`envoy-config/scheduling/recommended.json`",
            Scheduling::GieDefault => "no scheduling configuration (GIE's default profile)",
        }
    }
}

/// The picker's configuration, filter and shim alike: the scheduling configuration and the pool, so
/// every health and collector setting is the default a user gets.
pub fn picker_config(addrs: &[&str], scheduling: Scheduling) -> Result<String, String> {
    let mut config = match scheduling {
        Scheduling::GieDefault => serde_json::json!({}),
        Scheduling::Recommended => {
            let path = e2e::workspace_root().join("envoy-config/scheduling/recommended.json");
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
    };
    let object = config.as_object_mut().ok_or("recommended.json is not a JSON object")?;
    object.insert(String::from("pool"), serde_json::json!({"name": "faults", "endpoints": addrs}));
    Ok(config.to_string())
}

/// A started gateway.
pub struct Running {
    pub gateway: Gateway,
    pub envoy: Envoy,
    pub shim: Option<EppShim>,
    /// Per host and counter, the last raw value and the sum of increases (counters restart from 0 when
    /// Envoy drops an ORIGINAL_DST host it has not used for a while and creates it again; a STATIC
    /// cluster's hosts keep theirs).
    counters: HashMap<(String, &'static str), (u64, u64)>,
}

pub fn start(
    gateway: Gateway,
    addrs: &[&str],
    wasm: &Path,
    scheduling: Scheduling,
) -> Result<Running, String> {
    let options =
        EnvoyOptions { concurrency: WORKERS, log_level: String::from("warn"), ..EnvoyOptions::default() };
    // Every file gets the pool's members; the ORIGINAL_DST ones have no such placeholder and ignore it.
    let template = EnvoyTemplate::load(gateway.config())?.pool_endpoints(addrs);
    let (envoy, shim) = if gateway.is_filter() {
        let template = template.wasm(wasm).gateway_config(&picker_config(addrs, scheduling)?);
        (Envoy::start(&template, &options)?, None)
    } else if gateway.is_shim() {
        let shim = EppShim::start(&picker_config(addrs, scheduling)?, &[])?;
        let port = shim.ext_proc().rsplit_once(':').map_or("", |(_, p)| p).to_string();
        (Envoy::start(&template.set("PORT_EXT_PROC", port), &options)?, Some(shim))
    } else {
        (Envoy::start(&template, &options)?, None)
    };
    Ok(Running { gateway, envoy, shim, counters: HashMap::new() })
}

impl Running {
    /// Waits until the gateway can route on what it knows of every pod: the picker's first scrapes
    /// (two snapshots published by the filter's collector, two successful rounds of the shim's), or
    /// round-robin's first health-check round with every pod healthy; at most `limit`.
    pub fn settle(&mut self, addrs: &[&str], limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let ready = match self.gateway {
                Gateway::Filter | Gateway::FilterOriginalDst => {
                    self.envoy.stat("wasmcustom.epp_snapshots_published").unwrap_or(0) >= 2
                }
                Gateway::Shim | Gateway::ShimOriginalDst => {
                    let text =
                        self.shim.as_ref().map(|s| admin_get(s.addr("http"), "/metrics")).unwrap_or_default();
                    let ok = text.lines().find_map(|l| {
                        l.strip_prefix("epp_shim_scrapes_total{result=\"ok\"}")?.trim().parse::<usize>().ok()
                    });
                    ok.unwrap_or(0) >= 2 * addrs.len()
                }
                Gateway::RoundRobin => self.sample(addrs).iter().all(|h| h.state == State::In),
            };
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{}: not ready to route after {limit:?}; Envoy log:\n{}",
                    self.gateway.label(),
                    self.envoy.process().log_tail(20)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The gateway's view of `addrs` now. A pod the gateway has no state for counts as in rotation.
    pub fn sample(&mut self, addrs: &[&str]) -> Vec<HostSample> {
        let clusters = admin_get(self.envoy.admin(), "/clusters");
        let mut raw: HashMap<(String, &'static str), u64> = HashMap::new();
        let mut flags: HashMap<String, String> = HashMap::new();
        for line in clusters.lines() {
            let Some(rest) = line.strip_prefix("pool::") else { continue };
            let mut parts = rest.splitn(3, "::");
            let (Some(host), Some(name), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            match name {
                "rq_total" => raw.insert((host.to_string(), "rq_total"), value.trim().parse().unwrap_or(0)),
                "cx_connect_fail" => {
                    raw.insert((host.to_string(), "cx_connect_fail"), value.trim().parse().unwrap_or(0))
                }
                "health_flags" => {
                    flags.insert(host.to_string(), value.trim().to_string());
                    None
                }
                _ => None,
            };
        }
        for (key, value) in raw {
            let entry = self.counters.entry(key).or_insert((0, 0));
            entry.1 += if value >= entry.0 { value - entry.0 } else { value };
            entry.0 = value;
        }
        let mut states = self.states(addrs, &flags);
        addrs
            .iter()
            .map(|a| {
                let count = |name| self.counters.get(&(a.to_string(), name)).map_or(0, |c| c.1);
                HostSample {
                    addr: a.to_string(),
                    attempts: count("rq_total") + count("cx_connect_fail"),
                    state: states.remove(*a).unwrap_or(State::Unknown),
                }
            })
            .collect()
    }

    /// Each pod's state as the gateway itself reports it; a pod it says nothing about is left out.
    fn states(&self, addrs: &[&str], flags: &HashMap<String, String>) -> HashMap<String, State> {
        let mut out = HashMap::new();
        match self.gateway {
            Gateway::RoundRobin => {
                for a in addrs {
                    let state = match flags.get(*a).map(String::as_str) {
                        None => continue,
                        Some("healthy") => State::In,
                        Some(f) => State::Out(f.trim_start_matches('/').replace('/', "+")),
                    };
                    out.insert(a.to_string(), state);
                }
            }
            Gateway::Filter | Gateway::FilterOriginalDst => {
                let stats = admin_get(self.envoy.admin(), "/stats?filter=epp_endpoint_health");
                for a in addrs {
                    let safe: String =
                        a.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
                    let name = format!("epp_endpoint_health.{safe}: ");
                    let Some(code) =
                        stats.lines().find_map(|l| l.split_once(&name)?.1.trim().parse::<u64>().ok())
                    else {
                        continue;
                    };
                    let state = match code {
                        0 => State::In,
                        1 => State::Out(String::from("scrape_failing")),
                        2 => State::Out(String::from("ejected")),
                        3 => State::Out(String::from("stale_metrics")),
                        4 => State::Out(String::from("no_metrics")),
                        other => State::Out(format!("code {other}")),
                    };
                    out.insert(a.to_string(), state);
                }
            }
            Gateway::Shim | Gateway::ShimOriginalDst => {
                let text =
                    self.shim.as_ref().map(|s| admin_get(s.addr("http"), "/metrics")).unwrap_or_default();
                for a in addrs {
                    let prefix = format!("epp_shim_endpoint_usable{{endpoint=\"{a}\",reason=\"");
                    let Some((reason, value)) =
                        text.lines().find_map(|l| l.strip_prefix(&prefix)?.split_once("\"}"))
                    else {
                        continue;
                    };
                    let state = if value.trim() == "0" { State::Out(reason.to_string()) } else { State::In };
                    out.insert(a.to_string(), state);
                }
            }
        }
        out
    }

    /// Counters worth keeping with the trial: how the gateway itself saw the fault.
    pub fn stats(&self) -> Vec<(String, u64)> {
        let own: &[&str] = match self.gateway {
            Gateway::Filter | Gateway::FilterOriginalDst => &[
                "epp_endpoint_ejections",
                "epp_endpoint_readmissions",
                "epp_scrape_errors",
                "epp_scrape_missing_gauges",
                "epp_fallback_no_usable_endpoint",
                "epp_decisions_fail_open",
                "epp_upstream_5xx",
            ],
            Gateway::Shim | Gateway::ShimOriginalDst => &[],
            Gateway::RoundRobin => &[
                "cluster.pool.outlier_detection.ejections_enforced_total",
                "cluster.pool.health_check.failure",
            ],
        };
        let wanted = own.iter().chain(&[
            "cluster.pool.upstream_rq_retry",
            "cluster.pool.upstream_rq_retry_success",
            "cluster.pool.upstream_cx_connect_fail",
        ]);
        let mut out = Vec::new();
        for name in wanted {
            let total = if name.starts_with("cluster.") {
                self.envoy.stat(name)
            } else {
                // The filter's stats carry the `wasmcustom.` prefix; `.<ip_port>` variants are left out.
                self.envoy.stat(&format!("wasmcustom.{name}"))
            };
            if let Some(v) = total {
                out.push((name.to_string(), v));
            }
        }
        if let Some(shim) = &self.shim {
            let text = admin_get(shim.addr("http"), "/metrics");
            for name in [
                "epp_shim_endpoint_ejections_total",
                "epp_shim_endpoint_readmissions_total",
                "epp_shim_scrapes_missing_gauges_total",
            ] {
                if let Some(v) = text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok()) {
                    out.push((name.to_string(), v));
                }
            }
        }
        out
    }
}

/// GET `path` from `addr`; empty when it does not answer in time (a sample then shows no change).
fn admin_get(addr: &str, path: &str) -> String {
    Request::get(path).timeout(Duration::from_secs(2)).send(addr).map(|r| r.text()).unwrap_or_default()
}

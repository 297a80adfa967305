//! Fault knobs: how a replica misbehaves, settable from the command line and at runtime so a test can
//! break a replica in the middle of a run and watch the gateway cope.
//!
//! Every knob is a field of [`Faults`]. A [`FaultsPatch`] (the JSON object POSTed to `/admin/faults`, or
//! the fault flags of the command line) names the knobs to change; [`Faults::apply`] checks the whole
//! patch first and changes nothing when any value is refused, with a [`KnobError`] naming the knob.

use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

/// The largest wall-clock delay or duration any knob takes: one day (longer is a mistake, and keeps
/// deadline arithmetic far from overflowing).
pub const MAX_MS: u64 = 86_400_000;

const EXPECT_MS: &str = "milliseconds from 0 to 86400000 (one day)";
const EXPECT_BOOL: &str = "true or false";
const EXPECT_FRACTION: &str = "a fraction in [0, 1]";
const EXPECT_SLOWDOWN: &str = "a factor in [1, 1000] (1 = no slow-down)";
const EXPECT_STATUS: &str = "an HTTP 5xx status (500 to 599, e.g. 500 or 503)";
const EXPECT_COUNT: &str = "a count (an unsigned 32-bit integer)";
const EXPECT_NAMES: &str = "a list of metric family names";

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Faults {
    /// The main port is closed: new connections get ECONNREFUSED and open ones are closed, as after
    /// `kill -9`. Stays until cleared (or until `refuse_for_ms` runs out).
    pub refuse_connections: bool,
    /// When refusing for a set time: the milliseconds asked for (0 while refusing until cleared).
    pub refuse_for_ms: u64,
    /// When a timed refusal ends.
    #[serde(skip)]
    pub refuse_until: Option<Instant>,
    /// Completion requests are read and never answered (the client must give up).
    pub completions_hang: bool,
    /// Wall milliseconds before a completion request is answered (its response headers included).
    pub response_delay_ms: u64,
    /// Fraction of completion requests answered with `error_status`.
    pub error_rate: f64,
    /// The status of the `error_rate` fault.
    pub error_status: u16,
    /// Cut every SSE stream after this many data chunks (0 = never).
    pub drop_after_chunks: u32,
    /// Wall milliseconds before /metrics answers.
    pub metrics_delay_ms: u64,
    /// /metrics never answers.
    pub metrics_hang: bool,
    /// Every engine step takes this many times longer than the replica's speed says (a noisy neighbour
    /// on the GPU for a while); 1 = none.
    pub slowdown: f64,
    /// /metrics serves the last page it served, values no longer updated.
    pub metrics_frozen: bool,
    /// /metrics answers 200 with text no Prometheus parser accepts.
    pub metrics_garbage: bool,
    /// Metric families left off the /metrics page.
    pub drop_gauges: Vec<String>,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            refuse_connections: false,
            refuse_for_ms: 0,
            refuse_until: None,
            completions_hang: false,
            response_delay_ms: 0,
            error_rate: 0.0,
            error_status: 500,
            drop_after_chunks: 0,
            metrics_delay_ms: 0,
            metrics_hang: false,
            slowdown: 1.0,
            metrics_frozen: false,
            metrics_garbage: false,
            drop_gauges: Vec::new(),
        }
    }
}

/// A partial update: only the fields present change.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultsPatch {
    pub refuse_connections: Option<bool>,
    pub refuse_for_ms: Option<u64>,
    pub completions_hang: Option<bool>,
    pub response_delay_ms: Option<u64>,
    pub error_rate: Option<f64>,
    pub error_status: Option<u16>,
    pub drop_after_chunks: Option<u32>,
    pub metrics_delay_ms: Option<u64>,
    pub metrics_hang: Option<bool>,
    pub slowdown: Option<f64>,
    pub metrics_frozen: Option<bool>,
    pub metrics_garbage: Option<bool>,
    pub drop_gauges: Option<Vec<String>>,
}

/// Every knob, by its JSON name (the command-line flag is the same with dashes).
pub const KNOBS: [&str; 13] = [
    "refuse_connections",
    "refuse_for_ms",
    "completions_hang",
    "response_delay_ms",
    "error_rate",
    "error_status",
    "drop_after_chunks",
    "metrics_delay_ms",
    "metrics_hang",
    "slowdown",
    "metrics_frozen",
    "metrics_garbage",
    "drop_gauges",
];

/// A refused knob value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnobError {
    pub knob: &'static str,
    /// What is wrong, e.g. "`2` is not a fraction in [0, 1]".
    pub message: String,
}

impl KnobError {
    fn not(knob: &'static str, value: impl fmt::Display, expected: &str) -> KnobError {
        KnobError { knob, message: format!("`{value}` is not {expected}") }
    }
}

impl fmt::Display for KnobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fault knob `{}`: {}", self.knob, self.message)
    }
}

impl std::error::Error for KnobError {}

/// Why a fault patch was refused before any value was checked against the replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatchError {
    /// Not JSON, not an object, or a knob nobody knows.
    Shape(String),
    /// A knob's value has the wrong type.
    Knob(KnobError),
}

impl PatchError {
    /// The knob at fault, if one is.
    pub fn knob(&self) -> Option<&'static str> {
        match self {
            PatchError::Shape(_) => None,
            PatchError::Knob(e) => Some(e.knob),
        }
    }
}

impl fmt::Display for PatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatchError::Shape(msg) => f.write_str(msg),
            PatchError::Knob(e) => e.fmt(f),
        }
    }
}

impl From<KnobError> for PatchError {
    fn from(e: KnobError) -> PatchError {
        PatchError::Knob(e)
    }
}

/// What a patch is checked against: the clock, whether a control port exists and which metric
/// families the /metrics page has.
pub struct Env<'a> {
    pub now: Instant,
    /// A `--control-port` listener exists, so `refuse_connections` can be switched back.
    pub control_port: bool,
    pub metric_families: &'a [String],
}

impl FaultsPatch {
    /// Reads the JSON object POSTed to `/admin/faults`; errors name the knob and what it takes.
    pub fn from_json(body: &[u8]) -> Result<FaultsPatch, PatchError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| PatchError::Shape(format!("fault patch is not valid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(PatchError::Shape(format!(
                "fault patch must be a JSON object of knobs, e.g. {{\"error_rate\": 0.5}}; got {}",
                kind(&value)
            )));
        };
        let mut p = FaultsPatch::default();
        for (key, v) in &map {
            match key.as_str() {
                "refuse_connections" => p.refuse_connections = Some(json_bool("refuse_connections", v)?),
                "refuse_for_ms" => p.refuse_for_ms = Some(json_ms("refuse_for_ms", v)?),
                "completions_hang" => p.completions_hang = Some(json_bool("completions_hang", v)?),
                "response_delay_ms" => p.response_delay_ms = Some(json_ms("response_delay_ms", v)?),
                "error_rate" => {
                    p.error_rate =
                        Some(v.as_f64().ok_or_else(|| KnobError::not("error_rate", v, EXPECT_FRACTION))?)
                }
                "error_status" => {
                    let s = v.as_u64().and_then(|n| u16::try_from(n).ok());
                    p.error_status = Some(s.ok_or_else(|| KnobError::not("error_status", v, EXPECT_STATUS))?)
                }
                "drop_after_chunks" => {
                    let n = v.as_u64().and_then(|n| u32::try_from(n).ok());
                    p.drop_after_chunks =
                        Some(n.ok_or_else(|| KnobError::not("drop_after_chunks", v, EXPECT_COUNT))?)
                }
                "metrics_delay_ms" => p.metrics_delay_ms = Some(json_ms("metrics_delay_ms", v)?),
                "metrics_hang" => p.metrics_hang = Some(json_bool("metrics_hang", v)?),
                "slowdown" => {
                    p.slowdown =
                        Some(v.as_f64().ok_or_else(|| KnobError::not("slowdown", v, EXPECT_SLOWDOWN))?)
                }
                "metrics_frozen" => p.metrics_frozen = Some(json_bool("metrics_frozen", v)?),
                "metrics_garbage" => p.metrics_garbage = Some(json_bool("metrics_garbage", v)?),
                "drop_gauges" => {
                    let names = v.as_array().and_then(|a| {
                        a.iter().map(|n| n.as_str().map(String::from)).collect::<Option<Vec<String>>>()
                    });
                    p.drop_gauges = Some(names.ok_or_else(|| KnobError::not("drop_gauges", v, EXPECT_NAMES))?)
                }
                other => {
                    let known = KNOBS.join(", ");
                    return Err(PatchError::Shape(format!("unknown fault knob `{other}` (known: {known})")));
                }
            }
        }
        Ok(p)
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn json_bool(knob: &'static str, v: &Value) -> Result<bool, KnobError> {
    v.as_bool().ok_or_else(|| KnobError::not(knob, v, EXPECT_BOOL))
}

fn json_ms(knob: &'static str, v: &Value) -> Result<u64, KnobError> {
    v.as_u64().ok_or_else(|| KnobError::not(knob, v, EXPECT_MS))
}

fn check_ms(knob: &'static str, ms: u64) -> Result<u64, KnobError> {
    if ms <= MAX_MS {
        Ok(ms)
    } else {
        Err(KnobError::not(knob, ms, EXPECT_MS))
    }
}

impl Faults {
    /// Applies a patch: all of it, or nothing when any value is refused.
    pub fn apply(&mut self, patch: FaultsPatch, env: &Env<'_>) -> Result<(), KnobError> {
        let mut next = self.clone();
        match (patch.refuse_connections, patch.refuse_for_ms) {
            (Some(_), Some(_)) => {
                return Err(KnobError {
                    knob: "refuse_for_ms",
                    message: "give refuse_connections or refuse_for_ms, not both".into(),
                })
            }
            (Some(true), None) => {
                if !env.control_port {
                    return Err(KnobError {
                        knob: "refuse_connections",
                        message: "needs --control-port: without it nothing could switch it back, since \
                                  the port it is set on stops accepting (refuse_for_ms refuses for a set \
                                  time and re-opens the port by itself)"
                            .into(),
                    });
                }
                next.refuse_connections = true;
                next.refuse_for_ms = 0;
                next.refuse_until = None;
            }
            (Some(false), None) | (None, Some(0)) => next.end_refusal(),
            (None, Some(ms)) => {
                let ms = check_ms("refuse_for_ms", ms)?;
                let until = env
                    .now
                    .checked_add(Duration::from_millis(ms))
                    .ok_or_else(|| KnobError::not("refuse_for_ms", ms, EXPECT_MS))?;
                next.refuse_connections = true;
                next.refuse_for_ms = ms;
                next.refuse_until = Some(until);
            }
            (None, None) => {}
        }
        if let Some(v) = patch.completions_hang {
            next.completions_hang = v;
        }
        if let Some(ms) = patch.response_delay_ms {
            next.response_delay_ms = check_ms("response_delay_ms", ms)?;
        }
        if let Some(rate) = patch.error_rate {
            if !(0.0..=1.0).contains(&rate) {
                return Err(KnobError::not("error_rate", rate, EXPECT_FRACTION));
            }
            next.error_rate = rate;
        }
        if let Some(status) = patch.error_status {
            if !(500..=599).contains(&status) {
                return Err(KnobError::not("error_status", status, EXPECT_STATUS));
            }
            next.error_status = status;
        }
        if let Some(v) = patch.drop_after_chunks {
            next.drop_after_chunks = v;
        }
        if let Some(ms) = patch.metrics_delay_ms {
            next.metrics_delay_ms = check_ms("metrics_delay_ms", ms)?;
        }
        if let Some(v) = patch.metrics_hang {
            next.metrics_hang = v;
        }
        if let Some(f) = patch.slowdown {
            if !(f.is_finite() && (1.0..=1000.0).contains(&f)) {
                return Err(KnobError::not("slowdown", f, EXPECT_SLOWDOWN));
            }
            next.slowdown = f;
        }
        if let Some(v) = patch.metrics_frozen {
            next.metrics_frozen = v;
        }
        if let Some(v) = patch.metrics_garbage {
            next.metrics_garbage = v;
        }
        if let Some(names) = patch.drop_gauges {
            if let Some(unknown) = names.iter().find(|n| !env.metric_families.contains(n)) {
                return Err(KnobError {
                    knob: "drop_gauges",
                    message: format!(
                        "`{unknown}` is not a metric family of this replica's /metrics (it has: {})",
                        env.metric_families.join(", ")
                    ),
                });
            }
            next.drop_gauges = names;
        }
        *self = next;
        Ok(())
    }

    /// Back to accepting connections.
    pub fn end_refusal(&mut self) {
        self.refuse_connections = false;
        self.refuse_for_ms = 0;
        self.refuse_until = None;
    }

    /// Whether the patch changes whether the main port accepts.
    pub fn touches_refusal(patch: &FaultsPatch) -> bool {
        patch.refuse_connections.is_some() || patch.refuse_for_ms.is_some()
    }
}

/// Served instead of metrics by the garbage knob: a truncated family, an unbalanced label set, a
/// non-numeric value and bytes that are not UTF-8, so a scraper must reject it rather than read zeros.
pub const GARBAGE_METRICS: &[u8] =
    b"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"x 12\n\
      vllm:kv_cache_usage_perc lots\n\xff\xfe\x00garbage{{{\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn families() -> Vec<String> {
        vec!["vllm:kv_cache_usage_perc".to_string(), "vllm:num_requests_waiting".to_string()]
    }

    fn apply(f: &mut Faults, json: &str, control_port: bool) -> Result<(), String> {
        let fams = families();
        let env = Env { now: Instant::now(), control_port, metric_families: &fams };
        let patch = FaultsPatch::from_json(json.as_bytes()).map_err(|e| e.to_string())?;
        f.apply(patch, &env).map_err(|e| e.to_string())
    }

    #[test]
    fn patch_changes_only_what_it_names_and_rejects_bad_rates() {
        let mut f = Faults { metrics_delay_ms: 5, ..Faults::default() };
        apply(&mut f, r#"{"metrics_garbage": true}"#, false).unwrap();
        assert_eq!(f, Faults { metrics_delay_ms: 5, metrics_garbage: true, ..Faults::default() });
        let err = apply(&mut f, r#"{"error_rate": 1.5}"#, false).unwrap_err();
        assert_eq!(err, "fault knob `error_rate`: `1.5` is not a fraction in [0, 1]");
        let err = apply(&mut f, r#"{"metrics_hung": true}"#, false).unwrap_err();
        assert!(err.starts_with("unknown fault knob `metrics_hung` (known: refuse_connections,"), "{err}");
    }

    #[test]
    fn a_refused_patch_changes_nothing() {
        let mut f = Faults::default();
        let err = apply(&mut f, r#"{"metrics_hang": true, "error_status": 404}"#, false).unwrap_err();
        assert_eq!(
            err,
            "fault knob `error_status`: `404` is not an HTTP 5xx status (500 to 599, e.g. 500 or 503)"
        );
        assert_eq!(f, Faults::default());
    }

    #[test]
    fn every_bad_value_names_its_knob() {
        let mut f = Faults::default();
        for (json, knob) in [
            (r#"{"refuse_connections": 1}"#, "refuse_connections"),
            (r#"{"refuse_for_ms": -5}"#, "refuse_for_ms"),
            (r#"{"refuse_for_ms": 86400001}"#, "refuse_for_ms"),
            (r#"{"completions_hang": "yes"}"#, "completions_hang"),
            (r#"{"response_delay_ms": 1.5}"#, "response_delay_ms"),
            (r#"{"response_delay_ms": 18446744073709551615}"#, "response_delay_ms"),
            (r#"{"error_rate": "half"}"#, "error_rate"),
            (r#"{"error_rate": -0.1}"#, "error_rate"),
            (r#"{"error_status": 70000}"#, "error_status"),
            (r#"{"error_status": 499}"#, "error_status"),
            (r#"{"drop_after_chunks": 4294967296}"#, "drop_after_chunks"),
            (r#"{"metrics_delay_ms": null}"#, "metrics_delay_ms"),
            (r#"{"metrics_hang": 0}"#, "metrics_hang"),
            (r#"{"slowdown": 0.5}"#, "slowdown"),
            (r#"{"slowdown": "2x"}"#, "slowdown"),
            (r#"{"metrics_frozen": []}"#, "metrics_frozen"),
            (r#"{"metrics_garbage": {}}"#, "metrics_garbage"),
            (r#"{"drop_gauges": "vllm:kv_cache_usage_perc"}"#, "drop_gauges"),
            (r#"{"drop_gauges": [1]}"#, "drop_gauges"),
            (r#"{"drop_gauges": ["vllm:kv_cache_usage_percent"]}"#, "drop_gauges"),
        ] {
            let err = apply(&mut f, json, true).unwrap_err();
            assert!(err.starts_with(&format!("fault knob `{knob}`: ")), "{json}: {err}");
        }
        assert_eq!(f, Faults::default());
        for json in ["", "[1]", "null", "{\"a\":", "\"x\""] {
            let err = apply(&mut f, json, true).unwrap_err();
            assert!(err.starts_with("fault patch"), "{json}: {err}");
        }
    }

    #[test]
    fn refusal_until_cleared_needs_a_control_port_and_a_timed_one_does_not() {
        let mut f = Faults::default();
        let err = apply(&mut f, r#"{"refuse_connections": true}"#, false).unwrap_err();
        assert!(err.starts_with("fault knob `refuse_connections`: needs --control-port"), "{err}");
        apply(&mut f, r#"{"refuse_connections": true}"#, true).unwrap();
        assert!(f.refuse_connections && f.refuse_until.is_none());
        apply(&mut f, r#"{"refuse_for_ms": 300}"#, false).unwrap();
        assert!(f.refuse_connections && f.refuse_until.is_some());
        assert_eq!(f.refuse_for_ms, 300);
        let err = apply(&mut f, r#"{"refuse_for_ms": 5, "refuse_connections": false}"#, true).unwrap_err();
        assert!(err.contains("not both"), "{err}");
        apply(&mut f, r#"{"refuse_for_ms": 0}"#, false).unwrap();
        assert_eq!(f, Faults::default());
        apply(&mut f, r#"{"refuse_for_ms": 10}"#, false).unwrap();
        apply(&mut f, r#"{"refuse_connections": false}"#, false).unwrap();
        assert_eq!(f, Faults::default());
    }

    #[test]
    fn dropped_families_must_be_on_the_page_and_an_empty_list_clears() {
        let mut f = Faults::default();
        apply(&mut f, r#"{"drop_gauges": ["vllm:kv_cache_usage_perc"]}"#, false).unwrap();
        assert_eq!(f.drop_gauges, ["vllm:kv_cache_usage_perc"]);
        let err = apply(&mut f, r#"{"drop_gauges": ["sglang:token_usage"]}"#, false).unwrap_err();
        assert_eq!(
            err,
            "fault knob `drop_gauges`: `sglang:token_usage` is not a metric family of this replica's \
             /metrics (it has: vllm:kv_cache_usage_perc, vllm:num_requests_waiting)"
        );
        apply(&mut f, r#"{"drop_gauges": []}"#, false).unwrap();
        assert_eq!(f, Faults::default());
    }

    #[test]
    fn the_json_view_lists_every_knob() {
        let v = serde_json::to_value(Faults::default()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut knobs = KNOBS.to_vec();
        knobs.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, knobs);
    }
}

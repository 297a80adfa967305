//! Fault knobs: how a replica misbehaves, settable from the command line and at runtime so a test can
//! break a replica in the middle of a run and watch the gateway cope.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Faults {
    /// Wall milliseconds before /metrics answers.
    pub metrics_delay_ms: u64,
    /// /metrics never answers.
    pub metrics_hang: bool,
    /// /metrics answers 200 with text no Prometheus parser accepts.
    pub metrics_garbage: bool,
    /// Fraction of completion requests answered with 500.
    pub error_rate: f64,
    /// Cut every SSE stream after this many data chunks (0 = never).
    pub drop_after_chunks: u32,
}

/// A partial update: only the fields present change.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsPatch {
    pub metrics_delay_ms: Option<u64>,
    pub metrics_hang: Option<bool>,
    pub metrics_garbage: Option<bool>,
    pub error_rate: Option<f64>,
    pub drop_after_chunks: Option<u32>,
}

impl Faults {
    pub fn apply(&mut self, patch: FaultsPatch) -> Result<(), String> {
        if let Some(rate) = patch.error_rate {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("error_rate must be a fraction in [0, 1], got {rate}"));
            }
            self.error_rate = rate;
        }
        if let Some(v) = patch.metrics_delay_ms {
            self.metrics_delay_ms = v;
        }
        if let Some(v) = patch.metrics_hang {
            self.metrics_hang = v;
        }
        if let Some(v) = patch.metrics_garbage {
            self.metrics_garbage = v;
        }
        if let Some(v) = patch.drop_after_chunks {
            self.drop_after_chunks = v;
        }
        Ok(())
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

    #[test]
    fn patch_changes_only_what_it_names_and_rejects_bad_rates() {
        let mut f = Faults { metrics_delay_ms: 5, ..Faults::default() };
        f.apply(serde_json::from_str(r#"{"metrics_garbage": true}"#).unwrap()).unwrap();
        assert_eq!(f, Faults { metrics_delay_ms: 5, metrics_garbage: true, ..Faults::default() });
        let err = f.apply(serde_json::from_str(r#"{"error_rate": 1.5}"#).unwrap()).unwrap_err();
        assert_eq!(err, "error_rate must be a fraction in [0, 1], got 1.5");
        assert!(serde_json::from_str::<FaultsPatch>(r#"{"metrics_hung": true}"#).is_err());
    }
}

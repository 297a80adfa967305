//! The reference picker's metric names, so dashboards and alerts written for it read this process too:
//! llm-d-router v0.10's `llm_d_epp_*`, and the legacy `inference_objective_*`, `inference_pool_*`,
//! `inference_extension_*` and `llm_d_inference_scheduler_*` names it still emits beside them. Names,
//! label names and bucket bounds are upstream's; a quantity this process does not measure is left out,
//! never filled with a stand-in (docs/metrics.md lists both).

use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as In;
use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingRequest;
use scheduler_core::endpoint_picker::Outcome;
use scheduler_core::request::{form_field, BodyFormat};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::time::Instant;

/// Request latency, 5 ms to an hour.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0,
    20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 240.0, 300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0,
    3600.0,
];
/// Request body bytes, 64 B to 1 GiB.
#[rustfmt::skip]
pub const REQUEST_SIZE_BUCKETS: &[f64] = &[
    64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0, 131072.0,
    262144.0, 524288.0, 1048576.0, 2097152.0, 4194304.0, 8388608.0, 16777216.0, 33554432.0, 67108864.0,
    134217728.0, 268435456.0, 536870912.0, 1073741824.0,
];
/// Response body bytes (upstream's layout, its 32778 included, so `le` values match its series).
pub const RESPONSE_SIZE_BUCKETS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32778.0,
    65536.0,
];
pub const INPUT_TOKEN_BUCKETS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32778.0,
    65536.0, 131072.0, 262144.0, 524288.0, 1048576.0,
];
pub const OUTPUT_TOKEN_BUCKETS: &[f64] =
    &[1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0];
/// Seconds per output token.
pub const NTPOT_BUCKETS: &[f64] =
    &[0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0];
/// Request to the first response byte, 5 ms to 2 min.
pub const TTFT_BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0,
    20.0, 30.0, 45.0, 60.0, 120.0,
];
/// Time per output token after the first, streamed responses.
pub const TPOT_BUCKETS: &[f64] = &[
    0.0005, 0.00205, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.125, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8,
    1.0, 2.0,
];
/// Between two response body chunks, streamed responses.
pub const ITL_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0];
/// One scheduling decision, 0.1 ms to 100 ms.
pub const SCHEDULER_BUCKETS: &[f64] = &[0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1];

/// Distinct model names (from request bodies, so chosen by clients) kept as label values; later new
/// names are counted as `other`, as upstream bounds them.
pub const MAX_MODEL_LABELS: usize = 1000;
pub const OTHER_MODEL: &str = "other";

/// The data source and extractor types upstream names in its data-layer error counters; ours are the
/// scrape loop and its page reader.
const SOURCE_TYPE: &str = "metrics-data-source";
const EXTRACTOR_TYPE: &str = "core-metrics-extractor";

/// A Prometheus histogram with fixed bounds (counts per bucket, not yet cumulative).
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    pub fn observe(&mut self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            if let Some(c) = self.counts.get_mut(i) {
                *c += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    /// Adds `other`'s observations (same bounds).
    fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    /// `name_bucket{labels,le=…}` lines, then `_sum` and `_count`; `labels` is `a="x",b="y"` or empty.
    fn write(&self, out: &mut String, name: &str, labels: &str) -> std::fmt::Result {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.counts) {
            cumulative += n;
            writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}")?;
        }
        writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count)?;
        let braced = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        writeln!(out, "{name}_sum{braced} {}", self.sum)?;
        writeln!(out, "{name}_count{braced} {}", self.count)
    }
}

/// Series of one (model, target model) pair.
#[derive(Clone, Debug)]
struct ModelSeries {
    requests: u64,
    running: u64,
    request_sizes: Histogram,
    response_sizes: Histogram,
    durations: Histogram,
    input_tokens: Histogram,
    output_tokens: Histogram,
    ntpot: Histogram,
    /// Time to first byte: not streamed, streamed.
    ttft: [Histogram; 2],
    tpot: Histogram,
    itl: Histogram,
}

impl ModelSeries {
    fn new() -> ModelSeries {
        ModelSeries {
            requests: 0,
            running: 0,
            request_sizes: Histogram::new(REQUEST_SIZE_BUCKETS),
            response_sizes: Histogram::new(RESPONSE_SIZE_BUCKETS),
            durations: Histogram::new(LATENCY_BUCKETS),
            input_tokens: Histogram::new(INPUT_TOKEN_BUCKETS),
            output_tokens: Histogram::new(OUTPUT_TOKEN_BUCKETS),
            ntpot: Histogram::new(NTPOT_BUCKETS),
            ttft: [Histogram::new(TTFT_BUCKETS), Histogram::new(TTFT_BUCKETS)],
            tpot: Histogram::new(TPOT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
        }
    }
}

type HistogramOf = fn(&ModelSeries) -> &Histogram;

/// The per-model histograms: legacy name, current name, help, which one.
const HISTOGRAMS: [(&str, &str, &str, HistogramOf); 6] = [
    (
        "inference_objective_request_duration_seconds",
        "llm_d_epp_request_duration_seconds",
        "Request headers to the response's end, seconds.",
        |s| &s.durations,
    ),
    ("inference_objective_request_sizes", "llm_d_epp_request_size_bytes", "Request body bytes.", |s| {
        &s.request_sizes
    }),
    ("inference_objective_response_sizes", "llm_d_epp_response_size_bytes", "Response body bytes.", |s| {
        &s.response_sizes
    }),
    (
        "inference_objective_input_tokens",
        "llm_d_epp_request_input_tokens",
        "Prompt tokens the model server reported (usage).",
        |s| &s.input_tokens,
    ),
    (
        "inference_objective_output_tokens",
        "llm_d_epp_request_output_tokens",
        "Completion tokens the model server reported (usage).",
        |s| &s.output_tokens,
    ),
    (
        "inference_objective_normalized_time_per_output_token_seconds",
        "llm_d_epp_request_ntpot_seconds",
        "Request duration per output token, seconds.",
        |s| &s.ntpot,
    ),
];

/// Per-model request series, keyed by (model_name, target_model_name); errors apart, since a refused
/// request has no other series.
#[derive(Debug, Default)]
pub struct Requests {
    series: BTreeMap<(String, String), ModelSeries>,
    errors: BTreeMap<(String, String, &'static str), u64>,
    admitted: BTreeSet<String>,
}

impl Requests {
    /// The label value for a client-chosen model name, bounded like upstream's.
    fn bound(&mut self, model: &str) -> String {
        if self.admitted.contains(model) {
            return model.to_string();
        }
        if self.admitted.len() < MAX_MODEL_LABELS {
            self.admitted.insert(model.to_string());
            return model.to_string();
        }
        OTHER_MODEL.to_string()
    }

    fn series(&mut self, labels: &Labels) -> &mut ModelSeries {
        self.series.entry((labels.model.clone(), labels.target.clone())).or_insert_with(ModelSeries::new)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Labels {
    model: String,
    target: String,
}

/// What one ext_proc stream has shown of its request so far (kept by the stream, reported as it goes).
#[derive(Debug)]
pub struct RequestRecord {
    started: Instant,
    labels: Option<Labels>,
    request_bytes: u64,
    response_bytes: u64,
    output_tokens: u64,
    /// Counted in `request_running` (decremented when the stream ends).
    running: bool,
    /// Upstream's error code for this request; counted once, when the stream ends.
    error: Option<&'static str>,
    completed: bool,
    /// The client asked for a stream, or the server answered with server-sent events.
    streaming: bool,
    first_byte: Option<Instant>,
    last_chunk: Option<Instant>,
    /// Gaps between body chunks of a streamed response, merged into the series when it completes.
    itl: Option<Histogram>,
}

impl Default for RequestRecord {
    fn default() -> RequestRecord {
        RequestRecord::new()
    }
}

impl RequestRecord {
    /// Starts the clock: the stream opens with the request headers.
    pub fn new() -> RequestRecord {
        RequestRecord {
            started: Instant::now(),
            labels: None,
            request_bytes: 0,
            response_bytes: 0,
            output_tokens: 0,
            running: false,
            error: None,
            completed: false,
            streaming: false,
            first_byte: None,
            last_chunk: None,
            itl: None,
        }
    }

    /// Counts body bytes; true when this message ends the response (then call
    /// [`super::Metrics::response_complete`] after the message's usage, if any, was reported).
    pub fn observe(&mut self, msg: &ProcessingRequest) -> bool {
        match &msg.request {
            Some(In::RequestBody(b)) => {
                self.request_bytes += b.body.len() as u64;
                false
            }
            Some(In::ResponseHeaders(h)) => {
                let sse = h.headers.iter().flat_map(|m| &m.headers).any(|v| {
                    let value = if v.raw_value.is_empty() { v.value.as_bytes() } else { &v.raw_value };
                    v.key.eq_ignore_ascii_case("content-type")
                        && value.windows(17).any(|w| w.eq_ignore_ascii_case(b"text/event-stream"))
                });
                self.streaming |= sse;
                h.end_of_stream
            }
            Some(In::ResponseBody(b)) => {
                self.response_bytes += b.body.len() as u64;
                if !b.body.is_empty() {
                    let now = Instant::now();
                    self.first_byte.get_or_insert(now);
                    if self.streaming {
                        if let Some(last) = self.last_chunk {
                            let gap = now.saturating_duration_since(last).as_secs_f64();
                            self.itl.get_or_insert_with(|| Histogram::new(ITL_BUCKETS)).observe(gap);
                        }
                        self.last_chunk = Some(now);
                    }
                }
                b.end_of_stream
            }
            Some(In::ResponseTrailers(_)) => true,
            _ => false,
        }
    }
}

/// The request's `model` as the client sent it: the top-level JSON field, or the `model` form field of a
/// multipart body; empty when there is none. Read here, on the stream's task, so the picker thread does
/// no extra work for a label.
pub fn request_model(content_type: Option<&str>, body: Option<&[u8]>) -> String {
    #[derive(serde::Deserialize)]
    struct TopLevel<'a> {
        #[serde(borrow, default)]
        model: Option<Cow<'a, str>>,
    }
    let Some(body) = body else { return String::new() };
    match BodyFormat::of(content_type) {
        BodyFormat::Form { boundary } => form_field(body, boundary, "model").unwrap_or_default().to_string(),
        BodyFormat::Json | BodyFormat::Other => serde_json::from_slice::<TopLevel<'_>>(body)
            .ok()
            .and_then(|t| t.model)
            .map(Cow::into_owned)
            .unwrap_or_default(),
    }
}

/// Upstream's `error_code` for a local reply's status.
fn error_code(status: u16) -> &'static str {
    match status {
        429 => "ResourceExhausted",
        503 => "ServiceUnavailable",
        400..=499 => "BadRequest",
        _ => "Internal",
    }
}

impl Requests {
    /// The decision for the stream's request: labels it, counts it and its size, and marks it running
    /// when it goes to a model server.
    pub fn decided(&mut self, rec: &mut RequestRecord, model: &str, outcome: &Outcome) {
        let model = self.bound(model);
        let (forwarded, target) = match outcome {
            Outcome::Route(r) | Outcome::FailOpen { route: Some(r), .. } => {
                rec.streaming |= r.streaming;
                (true, r.rewritten_model.as_deref().map(|t| self.bound(t)))
            }
            Outcome::FailOpen { route: None, .. } => (true, None),
            Outcome::Reply(reply) => {
                rec.error = Some(error_code(reply.status));
                (false, None)
            }
        };
        let labels = Labels { target: target.unwrap_or_else(|| model.clone()), model };
        if forwarded {
            let bytes = rec.request_bytes as f64;
            let s = self.series(&labels);
            s.requests += 1;
            s.request_sizes.observe(bytes);
            s.running += 1;
            rec.running = true;
        }
        rec.labels = Some(labels);
    }

    /// Answered before any decision (a body over the limit, a compressed body).
    pub fn refused_early(&mut self, rec: &mut RequestRecord) {
        rec.labels.get_or_insert_with(Labels::default);
        rec.error = Some("BadRequest");
    }

    /// The model server's status: anything but 200 is upstream's `ModelServerError` (a local reply's
    /// code stays).
    pub fn answered(&mut self, rec: &mut RequestRecord, status: u16) {
        if rec.error.is_none() || rec.error == Some("ModelServerError") {
            rec.error = (status != 200).then_some("ModelServerError");
        }
    }

    pub fn usage(&mut self, rec: &mut RequestRecord, prompt: u64, completion: u64) {
        let Some(labels) = rec.labels.clone() else { return };
        rec.output_tokens = completion;
        let s = self.series(&labels);
        if prompt > 0 {
            s.input_tokens.observe(prompt as f64);
        }
        if completion > 0 {
            s.output_tokens.observe(completion as f64);
        }
    }

    /// The response ended: its duration since the request headers, its size, time per output token, time
    /// to the first byte, and for a streamed response the time per token after the first and the gaps
    /// between chunks.
    pub fn complete(&mut self, rec: &mut RequestRecord) {
        if rec.completed {
            return;
        }
        rec.completed = true;
        let Some(labels) = rec.labels.clone() else { return };
        let took = rec.started.elapsed().as_secs_f64();
        let s = self.series(&labels);
        s.durations.observe(took);
        s.response_sizes.observe(rec.response_bytes as f64);
        if rec.output_tokens > 0 {
            s.ntpot.observe(took / rec.output_tokens as f64);
        }
        if let Some(first) = rec.first_byte {
            let ttft = first.saturating_duration_since(rec.started).as_secs_f64();
            if let Some(h) = s.ttft.get_mut(usize::from(rec.streaming)) {
                h.observe(ttft);
            }
            if rec.streaming && rec.output_tokens > 1 {
                s.tpot.observe((took - ttft).max(0.0) / (rec.output_tokens - 1) as f64);
            }
        }
        if let Some(itl) = rec.itl.take() {
            s.itl.merge(&itl);
        }
    }

    /// The stream ended: its error (once) and its running count.
    pub fn ended(&mut self, rec: &mut RequestRecord) {
        let Some(labels) = rec.labels.clone() else { return };
        if let Some(code) = rec.error.take() {
            *self.errors.entry((labels.model.clone(), labels.target.clone(), code)).or_default() += 1;
        }
        if std::mem::take(&mut rec.running) {
            let s = self.series(&labels);
            s.running = s.running.saturating_sub(1);
        }
    }

    pub fn write(&self, out: &mut String) -> std::fmt::Result {
        // Upstream's current names add fairness_id and priority, which this picker has no value for (left
        // out, not faked).
        for prefix in ["inference_objective", "llm_d_epp"] {
            let name = format!("{prefix}_request_total");
            family(out, &name, "counter", "Requests sent to a model server, per model and target model.")?;
            for ((m, t), s) in &self.series {
                writeln!(out, "{name}{{{}}} {}", pair(m, t), s.requests)?;
            }
            let name = format!("{prefix}_request_error_total");
            family(out, &name, "counter", "Requests that failed, per model, target model and error code.")?;
            for ((m, t, code), n) in &self.errors {
                writeln!(out, "{name}{{{},error_code=\"{code}\"}} {n}", pair(m, t))?;
            }
        }
        for (legacy, current, help, get) in HISTOGRAMS {
            for name in [legacy, current] {
                family(out, name, "histogram", help)?;
                for ((m, t), s) in &self.series {
                    get(s).write(out, name, &pair(m, t))?;
                }
            }
        }
        // Streaming latencies: current names only (upstream has no legacy twins).
        family(
            out,
            "llm_d_epp_request_ttft_seconds",
            "histogram",
            "Request headers to the first response byte.",
        )?;
        for ((m, t), s) in &self.series {
            for (streaming, h) in ["false", "true"].iter().zip(&s.ttft) {
                if h.count > 0 {
                    h.write(
                        out,
                        "llm_d_epp_request_ttft_seconds",
                        &format!("{},streaming=\"{streaming}\"", pair(m, t)),
                    )?;
                }
            }
        }
        let streamed: [(&str, &str, HistogramOf); 2] = [
            (
                "llm_d_epp_request_streaming_tpot_seconds",
                "Streamed responses: (duration - TTFT) / (output tokens - 1).",
                |s| &s.tpot,
            ),
            (
                "llm_d_epp_request_streaming_itl_seconds",
                "Streamed responses: time between response body chunks.",
                |s| &s.itl,
            ),
        ];
        for (name, help, get) in streamed {
            family(out, name, "histogram", help)?;
            for ((m, t), s) in &self.series {
                get(s).write(out, name, &pair(m, t))?;
            }
        }
        // Running requests: legacy per model only, current per model and target model.
        family(out, "inference_objective_running_requests", "gauge", "Requests in flight, per model.")?;
        let mut per_model: BTreeMap<&str, u64> = BTreeMap::new();
        for ((m, _), s) in &self.series {
            *per_model.entry(m).or_default() += s.running;
        }
        for (m, n) in per_model {
            writeln!(out, "inference_objective_running_requests{{model_name=\"{}\"}} {n}", escape(m))?;
        }
        family(out, "llm_d_epp_request_running", "gauge", "Requests in flight, per model and target model.")?;
        for ((m, t), s) in &self.series {
            writeln!(out, "llm_d_epp_request_running{{{}}} {}", pair(m, t), s.running)?;
        }
        Ok(())
    }
}

/// Scheduling latency under both names (one decision of the core: parsing, admission and scheduling).
pub fn write_scheduler(out: &mut String, h: &Histogram) -> std::fmt::Result {
    for name in
        ["inference_extension_scheduler_e2e_duration_seconds", "llm_d_epp_scheduler_e2e_duration_seconds"]
    {
        family(out, name, "histogram", "Time the core took to decide one request, seconds.")?;
        h.write(out, name, "")?;
    }
    Ok(())
}

/// One endpoint as the pool gauges see it.
#[derive(Clone, Copy, Debug)]
pub struct EndpointLoad {
    pub kv_usage: f64,
    pub waiting: u32,
    pub running: u32,
}

/// Pool gauges under both names: ready endpoints, and the mean (and, current names only, the sample
/// standard deviation) of KV-cache use, queue and running requests over them. With no ready endpoint
/// only the count is written: an average of nothing is not zero.
pub fn write_pool(
    out: &mut String,
    pool: &str,
    ready: &[EndpointLoad],
    queues: &[(String, u32)],
) -> std::fmt::Result {
    let name = format!("name=\"{}\"", escape(pool));
    family(out, "inference_pool_ready_pods", "gauge", "Endpoints of the pool that get traffic.")?;
    writeln!(out, "inference_pool_ready_pods{{{name}}} {}", ready.len())?;
    family(out, "llm_d_epp_ready_endpoints", "gauge", "Endpoints of the pool that get traffic.")?;
    writeln!(out, "llm_d_epp_ready_endpoints{{{name}}} {}", ready.len())?;
    if !ready.is_empty() {
        type Column = fn(&EndpointLoad) -> f64;
        let columns: [(&str, &str, Column); 3] = [
            ("kv_cache_utilization", "KV-cache use (0 to 1)", |e| e.kv_usage),
            ("queue_size", "requests waiting in the model server's queue", |e| f64::from(e.waiting)),
            ("running_requests", "requests in the model server's running batch", |e| f64::from(e.running)),
        ];
        for (quantity, what, get) in columns {
            let values: Vec<f64> = ready.iter().map(get).collect();
            let n = values.len() as f64;
            let mean = values.iter().sum::<f64>() / n;
            let squares: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
            let std_dev = (squares / (n - 1.0).max(1.0)).sqrt();
            for prefix in ["inference_pool", "llm_d_epp"] {
                let metric = format!("{prefix}_average_{quantity}");
                family(out, &metric, "gauge", &format!("Mean {what} over the ready endpoints."))?;
                writeln!(out, "{metric}{{{name}}} {mean}")?;
            }
            let metric = format!("llm_d_epp_std_dev_{quantity}");
            family(
                out,
                &metric,
                "gauge",
                &format!("Standard deviation of {what} over the ready endpoints."),
            )?;
            writeln!(out, "{metric}{{{name}}} {std_dev}")?;
        }
    }
    // Per endpoint: upstream labels it with the pod name; this picker knows endpoints by `ip:port`.
    family(out, "inference_pool_per_pod_queue_size", "gauge", "Requests waiting, per endpoint.")?;
    for (address, waiting) in queues {
        let a = escape(address);
        writeln!(out, "inference_pool_per_pod_queue_size{{{name},model_server_pod=\"{a}\"}} {waiting}")?;
    }
    family(out, "llm_d_epp_per_endpoint_queue_size", "gauge", "Requests waiting, per endpoint.")?;
    for (address, waiting) in queues {
        let a = escape(address);
        writeln!(out, "llm_d_epp_per_endpoint_queue_size{{{name},model_server_endpoint=\"{a}\"}} {waiting}")?;
    }
    Ok(())
}

/// Data-layer errors under both names: failed scrapes (unreachable, bad status, unreadable page) and
/// pages without a core gauge.
pub fn write_datalayer(out: &mut String, poll_errors: u64, extract_errors: u64) -> std::fmt::Result {
    for prefix in ["llm_d_inference_scheduler", "llm_d_epp"] {
        let name = format!("{prefix}_datalayer_poll_errors_total");
        family(out, &name, "counter", "Model-server scrapes that failed, per source type.")?;
        writeln!(out, "{name}{{source_type=\"{SOURCE_TYPE}\"}} {poll_errors}")?;
        let name = format!("{prefix}_datalayer_extract_errors_total");
        family(out, &name, "counter", "Scraped pages a core gauge could not be read from.")?;
        writeln!(
            out,
            "{name}{{source_type=\"{SOURCE_TYPE}\",extractor_type=\"{EXTRACTOR_TYPE}\"}} {extract_errors}"
        )?;
    }
    Ok(())
}

pub fn write_streams(out: &mut String, open: i64) -> std::fmt::Result {
    family(out, "llm_d_epp_extproc_streams_inflight", "gauge", "Open ext_proc streams.")?;
    writeln!(out, "llm_d_epp_extproc_streams_inflight {open}")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) -> std::fmt::Result {
    writeln!(out, "# HELP {name} {help}")?;
    writeln!(out, "# TYPE {name} {kind}")
}

fn pair(model: &str, target: &str) -> String {
    format!("model_name=\"{}\",target_model_name=\"{}\"", escape(model), escape(target))
}

/// A label value as the text format wants it (model names come from clients).
fn escape(v: &str) -> Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(v);
    }
    let mut s = String::with_capacity(v.len() + 2);
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    Cow::Owned(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_with_inf_and_sum() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.5, 1.7, 9.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.write(&mut out, "x", "a=\"b\"").unwrap();
        assert_eq!(
            out,
            "x_bucket{a=\"b\",le=\"1\"} 1\nx_bucket{a=\"b\",le=\"2\"} 3\nx_bucket{a=\"b\",le=\"+Inf\"} 4\n\
             x_sum{a=\"b\"} 12.7\nx_count{a=\"b\"} 4\n"
        );
    }

    #[test]
    fn model_from_json_form_or_nothing() {
        assert_eq!(request_model(None, Some(br#"{"messages":[],"model":"m1"}"#)), "m1");
        assert_eq!(request_model(Some("application/json"), Some(b"not json")), "");
        assert_eq!(request_model(None, None), "");
        let form = b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--b--\r\n";
        assert_eq!(request_model(Some("multipart/form-data; boundary=b"), Some(form)), "whisper");
    }

    #[test]
    fn model_labels_are_bounded_and_escaped() {
        let mut r = Requests::default();
        for i in 0..MAX_MODEL_LABELS {
            r.bound(&format!("m{i}"));
        }
        assert_eq!(r.bound("m0"), "m0");
        assert_eq!(r.bound("new"), OTHER_MODEL);
        assert_eq!(escape("a\"b\\"), "a\\\"b\\\\");
    }

    #[test]
    fn pool_averages_only_over_ready_endpoints() {
        let mut out = String::new();
        write_pool(&mut out, "p", &[], &[]).unwrap();
        assert!(out.contains("inference_pool_ready_pods{name=\"p\"} 0"), "{out}");
        assert!(!out.contains("average_kv_cache_utilization{"), "{out}");
        let ready = [
            EndpointLoad { kv_usage: 0.2, waiting: 1, running: 2 },
            EndpointLoad { kv_usage: 0.4, waiting: 3, running: 2 },
        ];
        let mut out = String::new();
        write_pool(&mut out, "p", &ready, &[("10.0.0.1:8000".into(), 3)]).unwrap();
        assert!(out.contains("inference_pool_average_queue_size{name=\"p\"} 2\n"), "{out}");
        assert!(out.contains("llm_d_epp_std_dev_running_requests{name=\"p\"} 0\n"), "{out}");
        assert!(
            out.contains(
                "llm_d_epp_per_endpoint_queue_size{name=\"p\",model_server_endpoint=\"10.0.0.1:8000\"} 3"
            ),
            "{out}"
        );
    }
}

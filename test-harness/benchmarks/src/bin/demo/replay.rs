//! One run of the demo: fresh replicas, one Envoy (picker or round-robin), the trace replayed on its
//! schedule with one client thread per request, and what each request saw.

use crate::workload::{Item, ADAPTER};
use e2e::{Envoy, EnvoyOptions, EnvoyTemplate, ModelSim, Request};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Set by the SIGINT/SIGTERM handler; every wait in a run checks it.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[derive(Clone, Debug, PartialEq)]
pub enum Policy {
    /// The Wasm picker. `config`: a scheduling configuration (`plugins`, `schedulingProfiles`, ...; `{}` is
    /// the filter's no-configuration default) to which the run adds the pool and, unless it has one, the
    /// demo's collector; `None` is the demo's own configuration. `name` heads its column.
    Picker {
        name: String,
        config: Option<Value>,
    },
    RoundRobin,
}

impl Policy {
    pub fn name(&self) -> &str {
        match self {
            Policy::Picker { name, .. } => name,
            Policy::RoundRobin => "round-robin",
        }
    }
}

/// Which replicas a run starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replicas {
    /// The demo's four: one with a LoRA adapter, one already saturated by other tenants.
    Demo,
    /// Four identical replicas that serve only the run's traffic (what the quality suite simulates).
    Even,
}

pub struct Settings<'a> {
    pub wasm: &'a Path,
    pub time_scale: f64,
    pub replicas: Replicas,
    /// model-sim's `--profile` (`a100`, `h100`).
    pub profile: &'a str,
}

/// The replicas' prefix-cache counters at the end of a run, summed (`vllm:prefix_cache_hits_total` and
/// `vllm:prefix_cache_queries_total`: prompt tokens found cached / looked up, by the engines themselves).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EngineCache {
    pub hits: f64,
    pub queries: f64,
}

/// What one request saw.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The `x-model-sim-replica` that answered, `None` when no replica did.
    pub replica: Option<String>,
    /// Time to the first SSE event, in model time.
    pub ttft: Option<Duration>,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    /// Why the request failed (`HTTP 404`, `stream cut`, `no reply`), `None` when it succeeded.
    pub error: Option<String>,
}

/// The four replicas, named as the table shows them.
const REPLICAS: [&str; 4] = ["sim-1", "sim-2-lora", "sim-3-busy", "sim-4"];
const EVEN_REPLICAS: [&str; 4] = ["sim-1", "sim-2", "sim-3", "sim-4"];

fn replica_args(i: usize, settings: &Settings<'_>) -> Vec<String> {
    let names = match settings.replicas {
        Replicas::Demo => REPLICAS,
        Replicas::Even => EVEN_REPLICAS,
    };
    let name = names.get(i).copied().unwrap_or("sim");
    let mut args: Vec<String> = [
        "--replica-name",
        name,
        "--profile",
        settings.profile,
        "--time-scale",
        &settings.time_scale.to_string(),
        "--seed",
        &i.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let extra: &[&str] = match (settings.replicas, i) {
        (Replicas::Even, _) => &[],
        // Room for a second adapter, so base-model requests still pass the LoRA filter (GIE keeps only
        // replicas with a free adapter slot for a model no replica runs, and the base model is one).
        (Replicas::Demo, 1) => &["--lora", ADAPTER, "--max-lora", "2"],
        // Already saturated by other tenants: a full batch and more waiting.
        (Replicas::Demo, 2) => &["--max-num-seqs", "16", "--busy", "24", "--busy-output-tokens", "400"],
        _ => &[],
    };
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The picker's configuration: `scheduling` (an object) with the pool and, unless it sets one, the demo's
/// collector; without one, the demo's: GIE's default scorers plus LoRA affinity, a fast collector.
fn gateway_config(sims: &[ModelSim], scheduling: Option<&Value>) -> Result<String, String> {
    let pool = json!({"name": "demo", "endpoints": sims.iter().map(ModelSim::addr).collect::<Vec<_>>()});
    if let Some(scheduling) = scheduling {
        let mut config =
            scheduling.as_object().cloned().ok_or("a picker configuration must be a JSON object")?;
        config.insert(String::from("pool"), pool);
        config.entry("collector").or_insert_with(demo_collector);
        return Ok(Value::Object(config).to_string());
    }
    let refs = |name: &str, weight: Option<u32>| match weight {
        Some(w) => json!({"pluginRef": name, "weight": w}),
        None => json!({"pluginRef": name}),
    };
    Ok(json!({
        "pool": pool,
        "collector": demo_collector(),
        "plugins": [
            {"type": "lora-affinity-filter"}, {"type": "queue-scorer"},
            {"type": "kv-cache-utilization-scorer"}, {"type": "prefix-cache-scorer"}, {"type": "max-score-picker"},
        ],
        "schedulingProfiles": [{"name": "default", "plugins": [
            refs("lora-affinity-filter", None), refs("queue-scorer", Some(2)),
            refs("kv-cache-utilization-scorer", Some(2)), refs("prefix-cache-scorer", Some(3)),
            refs("max-score-picker", None),
        ]}],
    })
    .to_string())
}

/// The demo's collector: a scrape of every replica each 50 ms (wall time), 500 ms timeout.
fn demo_collector() -> Value {
    json!({"intervalMs": 50, "timeoutMs": 500})
}

pub fn replica_names(replicas: Replicas) -> Vec<String> {
    let names = match replicas {
        Replicas::Demo => REPLICAS,
        Replicas::Even => EVEN_REPLICAS,
    };
    names.iter().map(|s| s.to_string()).collect()
}

/// Runs the whole trace through `policy` and returns one outcome per request (trace order), and the
/// replicas' prefix-cache counters at the end (`None` when a scrape failed).
pub fn run(
    policy: &Policy,
    settings: &Settings<'_>,
    trace: &[Item],
) -> Result<(Vec<Outcome>, Option<EngineCache>), String> {
    eprintln!("\n[{}] starting 4 replicas and Envoy", policy.name());
    // Started on this (the main) thread: their parent-death signal follows the spawning thread.
    let sims = ModelSim::start_many(REPLICAS.len(), |i| replica_args(i, settings))?;
    let addrs: Vec<&str> = sims.iter().map(ModelSim::addr).collect();
    let template = match policy {
        Policy::Picker { config, .. } => EnvoyTemplate::load("wasm-picker-override-host/envoy.yaml")?
            .wasm(settings.wasm)
            .gateway_config(&gateway_config(&sims, config.as_ref())?),
        Policy::RoundRobin => EnvoyTemplate::load("round-robin/envoy.yaml")?,
    }
    .pool_endpoints(&addrs);
    let options = EnvoyOptions { log_level: String::from("warn"), ..EnvoyOptions::default() };
    let envoy = Envoy::start(&template, &options)?;
    let keeper = match settings.replicas {
        Replicas::Demo => Some(AdapterInUse::start(sims.get(1).map(ModelSim::addr).unwrap_or_default())),
        Replicas::Even => None,
    };
    // A few collector rounds before traffic (the same pause for both policies).
    pause(Duration::from_secs(1))?;
    let outcomes = replay(policy.name(), envoy.listener(), settings.time_scale, trace);
    if let Some(keeper) = keeper {
        keeper.stop();
    }
    let cache = if outcomes.is_ok() { engine_cache(&sims) } else { None };
    drop(envoy);
    drop(sims);
    Ok((outcomes?, cache))
}

/// The replicas' prefix-cache counters, summed.
fn engine_cache(sims: &[ModelSim]) -> Option<EngineCache> {
    let mut total = EngineCache::default();
    for sim in sims {
        let text = sim.metrics().ok()?;
        total.hits += counter(&text, "vllm:prefix_cache_hits_total")?;
        total.queries += counter(&text, "vllm:prefix_cache_queries_total")?;
    }
    Some(total)
}

/// The sum of a Prometheus family's samples (`name{labels} value` or `name value`).
pub fn counter(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let value = rest.rsplit(' ').next()?.parse::<f64>().ok()?;
        *found.get_or_insert(0.0) += value;
    }
    found
}

fn pause(d: Duration) -> Result<(), String> {
    let until = Instant::now() + d;
    while Instant::now() < until {
        check_interrupt()?;
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

pub fn check_interrupt() -> Result<(), String> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(String::from("interrupted"))
    } else {
        Ok(())
    }
}

/// Keeps one long adapter request running on the LoRA replica (sent to it directly, in both runs), so its
/// metrics list the adapter as active: what a loaded adapter in use looks like to a scraper. Without
/// it, no gateway could know where the adapter lives until a request happened to land there.
struct AdapterInUse {
    stop: Arc<AtomicBool>,
}

impl AdapterInUse {
    fn start(addr: &str) -> AdapterInUse {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, addr) = (stop.clone(), addr.to_string());
        let body =
            json!({"model": ADAPTER, "prompt": "keep the adapter busy", "max_tokens": 2000}).to_string();
        std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                let req =
                    Request::post_json("/v1/completions", body.as_str()).timeout(Duration::from_secs(300));
                if req.send(&addr).is_err() {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        });
        // The collector must see it running before the first adapter request.
        std::thread::sleep(Duration::from_millis(200));
        AdapterInUse { stop }
    }

    /// The thread ends when its request does (at the latest when the replica stops).
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn replay(label: &str, gateway: &str, time_scale: f64, trace: &[Item]) -> Result<Vec<Outcome>, String> {
    let (tx, rx) = mpsc::channel::<(usize, Outcome)>();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; trace.len()];
    let mut progress = Progress::new(label, trace.len());
    let start = Instant::now();
    let (mut sent, mut done, mut failed) = (0usize, 0usize, 0usize);
    while done < trace.len() {
        check_interrupt().inspect_err(|_| progress.finish())?;
        let now = start.elapsed();
        while let Some(item) = trace.get(sent).filter(|it| it.at.mul_f64(time_scale) <= now) {
            let (tx, gateway, body, path) = (tx.clone(), gateway.to_string(), item.body.clone(), item.path);
            let i = sent;
            std::thread::spawn(move || {
                let _ = tx.send((i, one_request(&gateway, path, &body, time_scale)));
            });
            sent += 1;
        }
        let next = trace.get(sent).map(|it| it.at.mul_f64(time_scale).saturating_sub(now));
        let wait = next.unwrap_or(Duration::MAX).min(Duration::from_millis(100));
        if let Ok((i, outcome)) = rx.recv_timeout(wait) {
            for (i, outcome) in std::iter::once((i, outcome)).chain(rx.try_iter()) {
                failed += usize::from(outcome.error.is_some());
                if let Some(slot) = outcomes.get_mut(i) {
                    *slot = Some(outcome);
                }
                done += 1;
            }
        }
        progress.draw(sent, done, failed);
    }
    progress.finish();
    Ok(outcomes.into_iter().map(Option::unwrap_or_default).collect())
}

fn one_request(gateway: &str, path: &str, body: &str, time_scale: f64) -> Outcome {
    let request = Request::post_json(path, body).timeout(Duration::from_secs(300));
    let response = match request.send(gateway) {
        Ok(r) => r,
        Err(e) => return Outcome { error: Some(format!("no reply ({e})")), ..Outcome::default() },
    };
    let mut outcome =
        Outcome { replica: response.header("x-model-sim-replica").map(str::to_string), ..Outcome::default() };
    if response.status != 200 {
        outcome.error = Some(format!("HTTP {}", response.status));
        return outcome;
    }
    let data = response.sse_data();
    if response.truncated || data.last().map(String::as_str) != Some("[DONE]") {
        outcome.error = Some(String::from("stream cut"));
        return outcome;
    }
    outcome.ttft = response.first_body.map(|t| t.div_f64(time_scale));
    let usage = data
        .iter()
        .rev()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .map(|v| v["usage"].clone())
        .unwrap_or(Value::Null);
    outcome.prompt_tokens = usage["prompt_tokens"].as_u64().unwrap_or(0);
    outcome.cached_tokens = usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0);
    if outcome.prompt_tokens == 0 {
        outcome.error = Some(String::from("no usage chunk"));
    }
    outcome
}

/// A one-line progress bar on stderr, redrawn ten times a second; when stderr is not a terminal (CI
/// logs), a plain line every five seconds instead.
struct Progress {
    label: String,
    total: usize,
    started: Instant,
    drawn: Option<Instant>,
    terminal: bool,
}

impl Progress {
    fn new(label: &str, total: usize) -> Progress {
        use std::io::IsTerminal;
        let terminal = std::io::stderr().is_terminal();
        Progress { label: label.to_string(), total, started: Instant::now(), drawn: None, terminal }
    }

    fn draw(&mut self, sent: usize, done: usize, failed: usize) {
        let every = Duration::from_millis(if self.terminal { 100 } else { 5000 });
        if self.drawn.is_some_and(|t| t.elapsed() < every) && done < self.total {
            return;
        }
        self.drawn = Some(Instant::now());
        const WIDTH: usize = 40;
        let filled = (done * WIDTH).checked_div(self.total).unwrap_or(WIDTH);
        eprint!(
            "{}[{}] [{}{}] {done}/{} done, {} in flight, {failed} failed, {:.0} s ",
            if self.terminal { "\r" } else { "" },
            self.label,
            "#".repeat(filled),
            "-".repeat(WIDTH - filled.min(WIDTH)),
            self.total,
            sent - done,
            self.started.elapsed().as_secs_f64()
        );
        if !self.terminal {
            eprintln!();
        }
    }

    fn finish(&mut self) {
        if self.terminal {
            eprintln!();
        }
    }
}

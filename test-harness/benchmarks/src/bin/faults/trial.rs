//! One trial: four fresh model-sim replicas, one gateway, steady open-loop load, the fault injected into
//! one replica at a fixed time and ended a fixed time later, the gateway's view of the pods sampled
//! throughout. Every process is started on the calling (main) thread, so the parent-death signal stops
//! them with the benchmark, and dropped (killed) when the trial ends.

use crate::gateway;
use crate::report::{Fault, Gateway, Sample, Sent, Trial};
use e2e::{ModelSim, Request};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const REPLICAS: usize = 4;

/// The KV-cache gauge the missing-gauge fault leaves off `/metrics`.
const DROPPED_GAUGE: &str = "vllm:kv_cache_usage_perc";

/// The timeline and the load of a trial.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Requests per second, sent at even intervals whatever the answers (open loop).
    pub rate: f64,
    /// How long the load runs.
    pub length: Duration,
    pub fault_at: Duration,
    /// How long the fault lasts (kill -9: until the new process is started).
    pub fault_for: Duration,
    /// A request without a whole answer after this long counts as failed.
    pub client_timeout: Duration,
    /// How often the gateway's view is sampled.
    pub sample_every: Duration,
    /// model-sim's `--time-scale`.
    pub time_scale: f64,
    pub max_tokens: u32,
    pub scheduling: gateway::Scheduling,
}

impl Plan {
    pub fn sim_args(&self) -> Vec<String> {
        ["--time-scale", &self.time_scale.to_string()].map(String::from).to_vec()
    }

    /// Wall time of one trial without the starts.
    pub fn trial_time(&self) -> Duration {
        self.length + self.client_timeout
    }
}

/// The faulty replica is the first one.
const FAULTY: usize = 0;

pub fn run(gateway: Gateway, fault: Fault, plan: &Plan, wasm: &Path) -> Result<Trial, String> {
    let args = plan.sim_args();
    let mut sims = ModelSim::start_many(REPLICAS, |_| args.clone())?;
    let addrs: Vec<String> = sims.iter().map(|s| s.addr().to_string()).collect();
    let addr_refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let mut running = gateway::start(gateway, &addr_refs, wasm, plan.scheduling)?;
    running.settle(&addr_refs, Duration::from_secs(20))?;

    let faulty = addrs.get(FAULTY).cloned().unwrap_or_default();
    let faulty_port = sims.get(FAULTY).map_or(0, ModelSim::port);
    let results = Mutex::new(Vec::with_capacity((plan.rate * plan.length.as_secs_f64()) as usize + 16));
    let listener = running.envoy.listener().to_string();
    let start = Instant::now();
    let mut samples = Vec::new();
    // When the fault took effect (the signal sent, the knob's POST answered), and when it ended.
    let mut fault_at: Option<Duration> = None;
    let mut restore_at = None;
    let mut ready_at = None;
    let mut outcome: Result<(), String> = Ok(());

    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (results, listener, stop) = (&results, listener.as_str(), &stop);
        scope.spawn(move || load(scope, listener, plan, start, results, stop));
        // This thread samples the gateway and injects and ends the fault on time, waking for whichever
        // comes first.
        let mut next_sample = Duration::ZERO;
        loop {
            let now = start.elapsed();
            if fault_at.is_none() && now >= plan.fault_at {
                if let Err(e) = inject(fault, sims.get(FAULTY)) {
                    outcome = Err(e);
                    break;
                }
                fault_at = Some(start.elapsed());
                eprintln!("    {:>5.2} s  {} on {faulty}", start.elapsed().as_secs_f64(), fault.label());
            }
            let ends_at = fault_at.map(|f| f + plan.fault_for);
            if restore_at.is_none() && ends_at.is_some_and(|e| now >= e) {
                restore_at = Some(start.elapsed());
                match restore(fault, &mut sims, faulty_port, &args) {
                    Ok(()) => {
                        ready_at = Some(start.elapsed());
                        eprintln!(
                            "    {:>5.2} s  restored ({})",
                            start.elapsed().as_secs_f64(),
                            fault.restore()
                        );
                    }
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                }
            }
            if now >= next_sample {
                samples.push(Sample { at: start.elapsed(), hosts: running.sample(&addr_refs) });
                next_sample = (next_sample + plan.sample_every).max(start.elapsed());
            }
            if now >= plan.length {
                break;
            }
            let mut wake = next_sample.min(plan.length);
            if fault_at.is_none() {
                wake = wake.min(plan.fault_at);
            } else if let (None, Some(e)) = (restore_at, ends_at) {
                wake = wake.min(e);
            }
            std::thread::sleep(wake.saturating_sub(start.elapsed()));
        }
        // Requests already sent end within the client timeout.
        stop.store(true, Ordering::Relaxed);
    });
    // A stopped pod must not stay stopped (its process is killed when dropped anyway).
    if fault == Fault::Hang && restore_at.is_none() {
        if let Some(s) = sims.get(FAULTY) {
            signal(s, libc::SIGCONT);
        }
    }
    outcome?;
    let end = start.elapsed();
    samples.push(Sample { at: end, hosts: running.sample(&addr_refs) });
    let stats = running.stats();
    let mut sent = results.into_inner().map_err(|_| String::from("a load thread panicked"))?;
    sent.sort_by_key(|s| s.sent);
    let restore_at = restore_at.unwrap_or(end);
    drop(running);
    drop(sims);
    Ok(Trial {
        round: 0,
        gateway,
        fault,
        healthy: addrs.iter().filter(|a| **a != faulty).cloned().collect(),
        faulty,
        fault_at: fault_at.unwrap_or(plan.fault_at),
        load_end: plan.length,
        restore_at,
        ready_at: ready_at.unwrap_or(restore_at),
        end,
        sent,
        samples,
        stats,
    })
}

/// Open-loop load: one request every `1 / rate` seconds until `plan.length`, each on its own thread (a
/// request to a hung pod holds its thread until the client timeout, never the schedule).
fn load<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    listener: &'scope str,
    plan: &'scope Plan,
    start: Instant,
    results: &'scope Mutex<Vec<Sent>>,
    stop: &'scope AtomicBool,
) {
    let every = Duration::from_secs_f64(1.0 / plan.rate);
    let mut i: u64 = 0;
    loop {
        let due = every.mul_f64(i as f64);
        if due >= plan.length || stop.load(Ordering::Relaxed) {
            break;
        }
        let now = start.elapsed();
        if due > now {
            std::thread::sleep(due - now);
        }
        let body = serde_json::json!({
            "model": "meta-llama/Llama-3.1-8B-Instruct",
            "prompt": format!("request {i}: tell me something"),
            "max_tokens": plan.max_tokens,
        })
        .to_string();
        let timeout = plan.client_timeout;
        scope.spawn(move || {
            let sent = start.elapsed();
            let reply = Request::post_json("/v1/completions", body).timeout(timeout).send(listener);
            let done = start.elapsed();
            let record = match reply {
                Ok(r) => Sent {
                    sent,
                    done,
                    status: r.status,
                    ok: r.status == 200 && !r.truncated,
                    replica: r.header("x-model-sim-replica").map(String::from),
                },
                Err(_) => Sent { sent, done, status: 0, ok: false, replica: None },
            };
            if let Ok(mut v) = results.lock() {
                v.push(record);
            }
        });
        i += 1;
    }
}

fn signal(sim: &ModelSim, sig: libc::c_int) {
    let pid = sim.process().id() as libc::pid_t;
    // SAFETY: kill(2) with a pid of a child this process started and has not reaped.
    unsafe {
        libc::kill(pid, sig);
    }
}

fn inject(fault: Fault, sim: Option<&ModelSim>) -> Result<(), String> {
    let sim = sim.ok_or("no faulty replica")?;
    match fault {
        Fault::Kill => signal(sim, libc::SIGKILL),
        Fault::Hang => signal(sim, libc::SIGSTOP),
        Fault::MetricsHang => sim.set_faults(r#"{"metrics_hang": true}"#)?,
        Fault::Errors => sim.set_faults(r#"{"error_rate": 1, "error_status": 500}"#)?,
        Fault::MissingGauge => sim.set_faults(&format!(r#"{{"drop_gauges": ["{DROPPED_GAUGE}"]}}"#))?,
        // Requests already being generated finish; new ones are read and left unanswered.
        Fault::CompletionsHang => sim.set_faults(r#"{"completions_hang": true}"#)?,
    }
    Ok(())
}

fn restore(fault: Fault, sims: &mut [ModelSim], port: u16, args: &[String]) -> Result<(), String> {
    let slot = sims.get_mut(FAULTY).ok_or("no faulty replica")?;
    match fault {
        Fault::Kill => {
            // The port was just freed by the kill; a bind can still lose a race with an ephemeral port,
            // so a few tries within 3 s.
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                match ModelSim::start_on_port(port, &args) {
                    Ok(new) => {
                        *slot = new;
                        return Ok(());
                    }
                    Err(e) if Instant::now() > deadline => {
                        return Err(format!("cannot restart the killed replica on port {port}: {e}"))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
        Fault::Hang => signal(slot, libc::SIGCONT),
        Fault::MetricsHang => slot.set_faults(r#"{"metrics_hang": false}"#)?,
        Fault::Errors => slot.set_faults(r#"{"error_rate": 0}"#)?,
        Fault::MissingGauge => slot.set_faults(r#"{"drop_gauges": []}"#)?,
        // The requests it left hanging stay so until their clients give up.
        Fault::CompletionsHang => slot.set_faults(r#"{"completions_hang": false}"#)?,
    }
    Ok(())
}

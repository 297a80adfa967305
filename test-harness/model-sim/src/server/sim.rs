//! The engine in (scaled) wall-clock time: one driver task runs its steps when they are due and hands
//! each request's events to the HTTP handler waiting for them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use model_sim::engine::{Engine, Event, EventKind, Request, SubmitError};
use model_sim::{Prompt, Segment};
use scheduler_core::rng::Rng;
use tokio::sync::{mpsc, watch, Notify};

use super::cli::Options;
use super::faults::{Env, Faults, FaultsPatch, KnobError};
use super::metrics;

/// vLLM's TTFT histogram buckets (seconds).
pub const TTFT_BUCKETS: [f64; 22] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
    80.0, 160.0, 640.0, 2560.0,
];

#[derive(Clone, Debug, Default)]
pub struct Histogram {
    /// Cumulative-free counts per bucket of [`TTFT_BUCKETS`].
    pub counts: [u64; 22],
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if let Some(i) = TTFT_BUCKETS.iter().position(|&le| v <= le) {
            if let Some(c) = self.counts.get_mut(i) {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum += v;
    }
}

struct Listener {
    tx: mpsc::UnboundedSender<Event>,
}

pub struct Sim {
    pub engine: Engine,
    listeners: HashMap<u64, Listener>,
    arrivals: HashMap<u64, u64>,
    background: HashSet<u64>,
    next_id: u64,
    pub rng: Rng,
    pub ttft: Histogram,
    events: Vec<Event>,
}

pub struct Shared {
    pub opts: Options,
    pub replica: String,
    started: Instant,
    /// Unix time at start, for metrics that carry wall timestamps.
    started_unix: f64,
    sim: Mutex<Sim>,
    /// The fault knobs; the listener and open connections watch them for `refuse_connections`.
    faults: watch::Sender<Faults>,
    /// Whether the main port is open (the listener publishes it; `/admin/faults` waits on it).
    listening: watch::Sender<bool>,
    /// The last /metrics page rendered, served again while `metrics_frozen` is set.
    last_page: Mutex<Option<String>>,
    /// The metric families of this replica's /metrics page (what `drop_gauges` may name).
    pub metric_families: Vec<String>,
    wake: Notify,
}

impl Shared {
    pub fn new(opts: Options, replica: String, mut engine: Engine) -> Arc<Shared> {
        engine.set_slowdown(opts.faults.slowdown);
        let started_unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let sim = Sim {
            rng: Rng::new(opts.engine.seed ^ 0x6d73_696d),
            engine,
            listeners: HashMap::new(),
            arrivals: HashMap::new(),
            background: HashSet::new(),
            next_id: 1,
            ttft: Histogram::default(),
            events: Vec::new(),
        };
        let (faults, _) = watch::channel(opts.faults.clone());
        let (listening, _) = watch::channel(false);
        let metric_families = metrics::families(opts.engine_kind);
        Arc::new(Shared {
            opts,
            replica,
            started: Instant::now(),
            started_unix,
            sim: Mutex::new(sim),
            faults,
            listening,
            last_page: Mutex::new(None),
            metric_families,
            wake: Notify::new(),
        })
    }

    /// Simulated microseconds since start.
    pub fn vnow(&self) -> u64 {
        (self.started.elapsed().as_micros() as f64 / self.opts.time_scale) as u64
    }

    /// Wall-clock Unix seconds at start (the `_created` of every counter).
    pub fn started_unix(&self) -> f64 {
        self.started_unix
    }

    /// Wall-clock Unix seconds now.
    pub fn unix_now(&self) -> f64 {
        self.started_unix + self.started.elapsed().as_secs_f64()
    }

    fn wall_at(&self, vus: u64) -> tokio::time::Instant {
        let wall_us = vus as f64 * self.opts.time_scale;
        tokio::time::Instant::from_std(self.started + Duration::from_micros(wall_us as u64))
    }

    pub fn lock(&self) -> MutexGuard<'_, Sim> {
        self.sim.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn faults(&self) -> Faults {
        self.faults.borrow().clone()
    }

    /// Follows the fault knobs as they change.
    pub fn watch_faults(&self) -> watch::Receiver<Faults> {
        self.faults.subscribe()
    }

    /// Applies a fault patch (all of it or, when a value is refused, nothing) and returns the knobs.
    pub fn apply_faults(&self, patch: FaultsPatch) -> Result<Faults, KnobError> {
        let env = Env {
            now: Instant::now(),
            control_port: self.opts.control_port.is_some(),
            metric_families: &self.metric_families,
        };
        let mut result = Ok(());
        self.faults.send_if_modified(|f| {
            let before = f.clone();
            result = f.apply(patch, &env);
            *f != before
        });
        let faults = result.map(|()| self.faults())?;
        self.lock().engine.set_slowdown(faults.slowdown);
        // The driver may be sleeping until a step planned at the old speed.
        self.wake.notify_one();
        Ok(faults)
    }

    /// A timed refusal ran out: accept again, unless the knob was set anew meanwhile.
    pub fn end_timed_refusal(&self, until: Instant) {
        self.faults.send_if_modified(|f| {
            let due = f.refuse_until == Some(until);
            if due {
                f.end_refusal();
            }
            due
        });
    }

    /// Whether the main port is open, as the listener last reported.
    pub fn watch_listening(&self) -> watch::Receiver<bool> {
        self.listening.subscribe()
    }

    pub fn set_listening(&self, open: bool) {
        self.listening.send_if_modified(|l| std::mem::replace(l, open) != open);
    }

    /// The /metrics page last rendered; `render` makes a fresh one (and keeps it) unless `frozen` and
    /// there is one already.
    pub fn metrics_page(&self, frozen: bool, render: impl FnOnce() -> String) -> String {
        let mut last = self.last_page.lock().unwrap_or_else(|e| e.into_inner());
        match last.as_ref() {
            Some(page) if frozen => page.clone(),
            _ => {
                let page = render();
                *last = Some(page.clone());
                page
            }
        }
    }

    /// Brings the engine up to now and delivers what happened. Returns the next time it has work.
    pub fn pump(&self) -> Option<u64> {
        let now = self.vnow();
        let mut sim = self.lock();
        sim.advance(now, &self.opts);
        sim.engine.next_event_time()
    }

    /// Queues a request; its events arrive on the returned channel.
    pub fn submit(
        &self,
        prompt: Prompt,
        max_tokens: u32,
        lora: Option<u32>,
    ) -> Result<(u64, mpsc::UnboundedReceiver<Event>), SubmitError> {
        let now = self.vnow();
        let (tx, rx) = mpsc::unbounded_channel();
        let id = {
            let mut sim = self.lock();
            sim.advance(now, &self.opts);
            let id = sim.next_id;
            sim.next_id += 1;
            sim.engine.submit(Request { id, prompt, max_tokens, lora }, now)?;
            sim.arrivals.insert(id, now);
            sim.listeners.insert(id, Listener { tx });
            id
        };
        self.wake.notify_one();
        Ok((id, rx))
    }

    /// The client went away: stop spending simulated GPU time on it.
    pub fn abort(&self, id: u64) {
        let mut sim = self.lock();
        sim.listeners.remove(&id);
        sim.arrivals.remove(&id);
        sim.engine.abort(id);
        drop(sim);
        self.wake.notify_one();
    }

    /// Starts the `--busy` background requests.
    pub fn preload(&self) {
        let now = self.vnow();
        let mut sim = self.lock();
        for _ in 0..self.opts.busy {
            sim.submit_background(now, &self.opts);
        }
        drop(sim);
        self.wake.notify_one();
    }
}

impl Sim {
    fn advance(&mut self, now: u64, opts: &Options) {
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        self.engine.advance(now, &mut events);
        for ev in &events {
            if ev.kind == EventKind::FirstToken {
                if let Some(&arrival) = self.arrivals.get(&ev.id) {
                    self.ttft.observe(ev.time_us.saturating_sub(arrival) as f64 / 1e6);
                }
            }
            if let Some(l) = self.listeners.get(&ev.id) {
                // A handler that already gave up is cleaned up by its abort.
                let _ = l.tx.send(*ev);
            }
            if matches!(ev.kind, EventKind::Finished(_)) {
                self.listeners.remove(&ev.id);
                self.arrivals.remove(&ev.id);
                if self.background.remove(&ev.id) {
                    self.submit_background(ev.time_us, opts);
                }
            }
        }
        self.events = events;
    }

    fn submit_background(&mut self, now: u64, opts: &Options) {
        let id = self.next_id;
        self.next_id += 1;
        // A fresh group per request: background load must not warm the cache for real traffic.
        let segment = Segment { group: id | (1 << 63), len: opts.busy_prompt_tokens };
        let prompt = Prompt::from_segments(&[segment], opts.engine.block_size);
        let req = Request { id, prompt, max_tokens: opts.busy_output_tokens, lora: None };
        if self.engine.submit(req, now).is_ok() {
            self.background.insert(id);
            self.arrivals.insert(id, now);
        }
    }
}

/// Runs the engine's steps on time; wakes early when a request arrives.
pub async fn drive(shared: Arc<Shared>) {
    loop {
        match shared.pump() {
            Some(t) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(shared.wall_at(t)) => {}
                    _ = shared.wake.notified() => {}
                }
            }
            None => shared.wake.notified().await,
        }
    }
}

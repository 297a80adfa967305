//! One vLLM-like replica as a pure state machine in virtual time: continuous batching, chunked prefill,
//! prefix caching by block hash, preemption when KV blocks run out, and LoRA slots.
//!
//! No clock and no I/O: the caller passes `now` (µs) in, so the same engine serves the HTTP replica (wall
//! clock, scaled) and the discrete-event benchmark (millions of steps, deterministic for a seed).
//!
//! Driving it: `submit` arrivals, then `advance(now)` to run every step that ends by `now`; between
//! calls, `next_event_time()` says when something will next happen.

mod blocks;
mod config;

use std::collections::VecDeque;
use std::fmt;

use scheduler_core::rng::Rng;

use crate::prompt::{mix, nonzero, Prompt};
use blocks::{BlockPool, FastMap};
pub use config::{ConfigError, EngineConfig, StepModel, StepShape};

/// Mixed into every block hash of a LoRA request: an adapter's KV never matches the base model's.
const LORA_SALT: u64 = 0x4c6f_5241_2d6b_7673;

/// One generation request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Caller's id, unique among the requests the engine currently holds.
    pub id: u64,
    pub prompt: Prompt,
    /// Tokens to generate (the simulator always generates exactly this many).
    pub max_tokens: u32,
    /// LoRA adapter id, `None` for the base model.
    pub lora: Option<u32>,
}

/// Token counts of a finished request, as the OpenAI `usage` object reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens served from the prefix cache at the request's first scheduling.
    pub cached_prompt_tokens: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The first output token exists (TTFT measured from submit time).
    FirstToken,
    /// Another output token (only with `emit_token_events`).
    Token,
    /// The last token; the request has left the engine.
    Finished(Usage),
    /// Evicted to free KV blocks; it will be recomputed and still finish.
    Preempted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub time_us: u64,
    pub id: u64,
    pub kind: EventKind,
}

/// Why a request was refused at submit time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmitError {
    EmptyPrompt {
        id: u64,
    },
    ZeroMaxTokens {
        id: u64,
    },
    /// Prompt plus output can never fit in the KV cache, so the request could never finish.
    TooLong {
        id: u64,
        tokens: u64,
        capacity: u64,
    },
    DuplicateId {
        id: u64,
    },
    /// A LoRA request to an engine with `max_lora = 0` could never be scheduled.
    LoraDisabled {
        id: u64,
    },
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::EmptyPrompt { id } => write!(f, "request {id}: prompt must have at least 1 token"),
            SubmitError::ZeroMaxTokens { id } => write!(f, "request {id}: max_tokens must be at least 1"),
            SubmitError::TooLong { id, tokens, capacity } => write!(
                f,
                "request {id}: prompt + max_tokens = {tokens} tokens, but this replica's KV cache holds at \
                 most {capacity} tokens for one request"
            ),
            SubmitError::DuplicateId { id } => write!(f, "request {id}: id already in use"),
            SubmitError::LoraDisabled { id } => {
                write!(f, "request {id}: asks for a LoRA adapter but this replica has max_lora = 0")
            }
        }
    }
}

impl std::error::Error for SubmitError {}

/// The replica's state as its `/metrics` would report it, computed from the real queues and blocks.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineMetrics {
    /// Waiting for admission, preempted requests included.
    pub num_requests_waiting: usize,
    pub num_requests_running: usize,
    /// `1 − free / total`; cached blocks nobody references count as free.
    pub kv_cache_usage: f64,
    pub free_blocks: u32,
    pub num_gpu_blocks: u32,
    pub block_size: u32,
    pub max_lora: u32,
    /// Adapters with running requests (they hold the LoRA slots), ascending.
    pub running_lora_adapters: Vec<u32>,
    /// Adapters requested by waiting requests, ascending.
    pub waiting_lora_adapters: Vec<u32>,
    /// Prompt tokens looked up in the prefix cache / found there (first scheduling of each request).
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    pub num_preemptions: u64,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    pub finished_requests: u64,
    pub steps: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// In the API server (overhead), not yet visible to the scheduler.
    Incoming,
    Waiting,
    Running,
}

struct Seq {
    id: u64,
    hashes: Vec<u64>,
    prompt_len: u32,
    max_tokens: u32,
    lora: Option<u32>,
    phase: Phase,
    generated: u32,
    /// Tokens whose KV exists (prefix hits included).
    computed: u32,
    blocks: Vec<u32>,
    /// Leading prompt blocks already published in (or found in) the prefix cache.
    registered: u32,
    cached_tokens: u32,
    admitted_once: bool,
    /// Finished or aborted: leaves `running` at the end of the step.
    done: bool,
}

impl Seq {
    fn num_tokens(&self) -> u32 {
        self.prompt_len.saturating_add(self.generated)
    }
}

struct LoraSlot {
    adapter: u32,
    running: u32,
    reserved: Vec<u32>,
}

enum Admission {
    /// Scheduled with this many tokens.
    Admitted(u32),
    LoraSlotsFull,
    NoBlocks,
    Gone,
}

/// One replica.
pub struct Engine {
    cfg: EngineConfig,
    rng: Rng,
    pool: BlockPool,
    seqs: Vec<Option<Seq>>,
    free_slots: Vec<u32>,
    by_id: FastMap<u32>,
    /// (time the scheduler may see it, slot), in submit order.
    incoming: VecDeque<(u64, u32)>,
    waiting: VecDeque<u32>,
    /// Admission order; the newest is preempted first.
    running: Vec<u32>,
    step_end: Option<u64>,
    /// (slot, tokens) of the step in flight.
    scheduled: Vec<(u32, u32)>,
    skipped: Vec<u32>,
    finished: Vec<u32>,
    loras: Vec<LoraSlot>,
    clock: u64,
    /// Step-time multiplier set from outside for a while (a noisy neighbour): 1 = none.
    slowdown: f64,
    prefix_queries: u64,
    prefix_hits: u64,
    preemptions: u64,
    prompt_tokens: u64,
    generation_tokens: u64,
    finished_requests: u64,
    steps: u64,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Result<Engine, ConfigError> {
        cfg.validate()?;
        Ok(Engine {
            rng: Rng::new(cfg.seed),
            pool: BlockPool::new(cfg.num_gpu_blocks),
            cfg,
            seqs: Vec::new(),
            free_slots: Vec::new(),
            by_id: FastMap::default(),
            incoming: VecDeque::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            step_end: None,
            scheduled: Vec::new(),
            skipped: Vec::new(),
            finished: Vec::new(),
            loras: Vec::new(),
            clock: 0,
            slowdown: 1.0,
            prefix_queries: 0,
            prefix_hits: 0,
            preemptions: 0,
            prompt_tokens: 0,
            generation_tokens: 0,
            finished_requests: 0,
            steps: 0,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Accepts a request arriving at `now_us` (clamped to the engine's clock so time never runs back).
    /// It reaches the scheduler after the API overhead.
    pub fn submit(&mut self, req: Request, now_us: u64) -> Result<(), SubmitError> {
        let id = req.id;
        let (mut hashes, prompt_len) = req.prompt.into_parts();
        if prompt_len == 0 {
            return Err(SubmitError::EmptyPrompt { id });
        }
        if req.max_tokens == 0 {
            return Err(SubmitError::ZeroMaxTokens { id });
        }
        if self.by_id.contains_key(&id) {
            return Err(SubmitError::DuplicateId { id });
        }
        if req.lora.is_some() && self.cfg.max_lora == 0 {
            return Err(SubmitError::LoraDisabled { id });
        }
        let bs = self.cfg.block_size;
        let own_lora = if req.lora.is_some() { self.cfg.lora_blocks() } else { 0 };
        let capacity = u64::from(self.cfg.num_gpu_blocks.saturating_sub(own_lora)) * u64::from(bs);
        let tokens = u64::from(prompt_len) + u64::from(req.max_tokens);
        if tokens > capacity {
            return Err(SubmitError::TooLong { id, tokens, capacity });
        }
        hashes.truncate((prompt_len / bs) as usize);
        if let Some(adapter) = req.lora {
            let salt = mix(LORA_SALT, u64::from(adapter));
            for h in &mut hashes {
                *h = nonzero(mix(*h, salt));
            }
        }
        let seq = Seq {
            id,
            hashes,
            prompt_len,
            max_tokens: req.max_tokens,
            lora: req.lora,
            phase: Phase::Incoming,
            generated: 0,
            computed: 0,
            blocks: Vec::new(),
            registered: 0,
            cached_tokens: 0,
            admitted_once: false,
            done: false,
        };
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                if let Some(s) = self.seqs.get_mut(slot as usize) {
                    *s = Some(seq);
                }
                slot
            }
            None => {
                self.seqs.push(Some(seq));
                u32::try_from(self.seqs.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.by_id.insert(id, slot);
        let ready = now_us.max(self.clock).saturating_add(self.cfg.api_overhead_us);
        self.incoming.push_back((ready, slot));
        Ok(())
    }

    /// When the engine next has something to do (a step ends, or an idle engine sees an arrival);
    /// `None` when it has nothing at all.
    pub fn next_event_time(&self) -> Option<u64> {
        self.step_end.or_else(|| self.incoming.front().map(|&(ready, _)| ready))
    }

    /// Runs every step that ends at or before `now_us`, appending what happened to `events` in time order.
    pub fn advance(&mut self, now_us: u64, events: &mut Vec<Event>) {
        let now = now_us.max(self.clock);
        loop {
            match self.step_end {
                Some(end) if end <= now => {
                    self.complete_step(end, events);
                    self.start_step(end, events);
                }
                Some(_) => break,
                None => match self.incoming.front() {
                    Some(&(ready, _)) if ready <= now => self.start_step(ready, events),
                    _ => break,
                },
            }
        }
        self.clock = now;
        self.admit_incoming(now);
    }

    /// Drops a request (client went away). Returns whether the engine held it. A request inside the
    /// step in flight leaves when that step ends, as in a real engine.
    pub fn abort(&mut self, id: u64) -> bool {
        let Some(&slot) = self.by_id.get(&id) else { return false };
        let Some(phase) = self.seq(slot).map(|s| s.phase) else { return false };
        match phase {
            Phase::Incoming => {
                self.incoming.retain(|&(_, s)| s != slot);
                self.retire(slot);
            }
            Phase::Waiting => {
                self.waiting.retain(|&s| s != slot);
                self.retire(slot);
            }
            Phase::Running if self.step_end.is_some() => {
                if let Some(seq) = self.seq_mut(slot) {
                    seq.done = true;
                }
            }
            Phase::Running => {
                self.running.retain(|&s| s != slot);
                self.retire(slot);
            }
        }
        true
    }

    /// Multiplies the time of every step that starts from now on by `factor` (on top of the configured
    /// `speed`), until set again: a noisy neighbour taking part of the GPU for a while (2 = steps take
    /// twice as long), 1 to end it. A step already in flight keeps its duration. Anything but a positive
    /// finite factor is ignored.
    pub fn set_slowdown(&mut self, factor: f64) {
        if factor.is_finite() && factor > 0.0 {
            self.slowdown = factor;
        }
    }

    /// The step-time multiplier [`Engine::set_slowdown`] set (1 = none).
    pub fn slowdown(&self) -> f64 {
        self.slowdown
    }

    /// The time of the last `advance`.
    pub fn clock(&self) -> u64 {
        self.clock
    }

    pub fn num_requests_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn num_requests_running(&self) -> usize {
        self.running.len()
    }

    pub fn kv_cache_usage(&self) -> f64 {
        1.0 - f64::from(self.pool.free_count()) / f64::from(self.cfg.num_gpu_blocks)
    }

    /// Requests the engine holds in any phase (API overhead included).
    pub fn num_requests_in_engine(&self) -> usize {
        self.by_id.len()
    }

    pub fn metrics(&self) -> EngineMetrics {
        let running_lora_adapters = sorted_unique(self.loras.iter().map(|l| l.adapter));
        let waiting_lora_adapters =
            sorted_unique(self.waiting.iter().filter_map(|&slot| self.seq(slot).and_then(|s| s.lora)));
        EngineMetrics {
            num_requests_waiting: self.num_requests_waiting(),
            num_requests_running: self.num_requests_running(),
            kv_cache_usage: self.kv_cache_usage(),
            free_blocks: self.pool.free_count(),
            num_gpu_blocks: self.cfg.num_gpu_blocks,
            block_size: self.cfg.block_size,
            max_lora: self.cfg.max_lora,
            running_lora_adapters,
            waiting_lora_adapters,
            prefix_cache_queries: self.prefix_queries,
            prefix_cache_hits: self.prefix_hits,
            num_preemptions: self.preemptions,
            prompt_tokens: self.prompt_tokens,
            generation_tokens: self.generation_tokens,
            finished_requests: self.finished_requests,
            steps: self.steps,
        }
    }

    fn seq(&self, slot: u32) -> Option<&Seq> {
        self.seqs.get(slot as usize).and_then(Option::as_ref)
    }

    fn seq_mut(&mut self, slot: u32) -> Option<&mut Seq> {
        self.seqs.get_mut(slot as usize).and_then(Option::as_mut)
    }

    fn admit_incoming(&mut self, now: u64) {
        while let Some(&(ready, slot)) = self.incoming.front() {
            if ready > now {
                break;
            }
            self.incoming.pop_front();
            if let Some(seq) = self.seq_mut(slot) {
                seq.phase = Phase::Waiting;
            }
            self.waiting.push_back(slot);
        }
    }

    fn start_step(&mut self, at: u64, events: &mut Vec<Event>) {
        self.admit_incoming(at);
        let shape = self.schedule(at, events);
        if self.scheduled.is_empty() {
            self.step_end = None;
            return;
        }
        // Exactly the model's time when speed and slowdown are both 1 (× 1.0 is exact).
        let mut ms = self.cfg.step_model.step_ms(&shape) * (self.slowdown / self.cfg.speed);
        if self.cfg.step_jitter > 0.0 {
            ms *= 1.0 + self.cfg.step_jitter * (2.0 * self.rng.next_f64() - 1.0);
        }
        let us = (ms * 1000.0).round().max(1.0) as u64;
        self.step_end = Some(at.saturating_add(us));
        self.steps += 1;
    }

    /// vLLM's order: running sequences first (decodes and unfinished prefill chunks, oldest first,
    /// preempting the newest when blocks run out), then waiting ones FIFO if nothing was preempted.
    fn schedule(&mut self, at: u64, events: &mut Vec<Event>) -> StepShape {
        self.scheduled.clear();
        let mut shape = StepShape::default();
        let mut budget = self.cfg.max_num_batched_tokens;
        let mut preempted = false;
        let mut i = 0;
        while budget > 0 {
            let Some(&slot) = self.running.get(i) else { break };
            let Some(seq) = self.seq(slot) else { break };
            let n = (seq.num_tokens() - seq.computed).min(budget);
            let target = seq.computed + n;
            let mut fits = false;
            loop {
                let have = self.seq(slot).map_or(0, |s| s.blocks.len() as u32);
                let need = self.blocks_for(target).saturating_sub(have);
                if self.pool.free_count() >= need {
                    fits = true;
                    break;
                }
                let Some(victim) = self.running.pop() else { break };
                self.preempt(victim, at, events);
                preempted = true;
                if victim == slot {
                    break;
                }
            }
            if !fits {
                break;
            }
            self.grow(slot, target);
            self.record(slot, n, &mut shape);
            budget -= n;
            i += 1;
        }
        if preempted {
            return shape;
        }
        self.skipped.clear();
        while budget > 0 && self.running.len() < self.cfg.max_num_seqs as usize {
            let Some(slot) = self.waiting.pop_front() else { break };
            match self.try_admit(slot, budget, &mut shape) {
                Admission::Admitted(n) => budget = budget.saturating_sub(n),
                Admission::LoraSlotsFull => self.skipped.push(slot),
                Admission::Gone => {}
                Admission::NoBlocks => {
                    self.waiting.push_front(slot);
                    break;
                }
            }
        }
        while let Some(slot) = self.skipped.pop() {
            self.waiting.push_front(slot);
        }
        shape
    }

    fn try_admit(&mut self, slot: u32, budget: u32, shape: &mut StepShape) -> Admission {
        let bs = self.cfg.block_size;
        let Some(seq) = self.seq(slot) else { return Admission::Gone };
        let new_adapter = match seq.lora {
            Some(a) if !self.loras.iter().any(|l| l.adapter == a) => {
                if self.loras.len() >= self.cfg.max_lora as usize {
                    return Admission::LoraSlotsFull;
                }
                true
            }
            _ => false,
        };
        let total = seq.num_tokens();
        // At least one token is always computed, so the last block can never be a full hit.
        let max_hits = if self.cfg.enable_prefix_caching { ((total - 1) / bs) as usize } else { 0 };
        let (mut hits, mut free_hits) = (0u32, 0u32);
        for &h in seq.hashes.iter().take(max_hits) {
            let Some(b) = self.pool.lookup(h) else { break };
            hits += 1;
            free_hits += u32::from(self.pool.is_free(b));
        }
        let hit_tokens = hits * bs;
        let n = (total - hit_tokens).min(budget);
        let need_new = self.blocks_for(hit_tokens + n).saturating_sub(hits);
        let lora_need = if new_adapter { self.cfg.lora_blocks() } else { 0 };
        if self.pool.free_count() < need_new + free_hits + lora_need {
            return Admission::NoBlocks;
        }
        // Hits first: taking them out of the free queue keeps the allocations below from evicting them.
        for j in 0..hits as usize {
            let block = self.seq(slot).and_then(|s| s.hashes.get(j)).and_then(|&h| self.pool.lookup(h));
            if let (Some(b), Some(seq)) = (block, self.seqs.get_mut(slot as usize).and_then(Option::as_mut)) {
                self.pool.touch(b);
                seq.blocks.push(b);
            }
        }
        let lora = self.seq(slot).and_then(|s| s.lora);
        if let Some(adapter) = lora {
            self.lora_enter(adapter, new_adapter);
        }
        if let Some(seq) = self.seqs.get_mut(slot as usize).and_then(Option::as_mut) {
            seq.computed = hit_tokens;
            seq.registered = hits;
            seq.phase = Phase::Running;
            if !seq.admitted_once {
                seq.admitted_once = true;
                seq.cached_tokens = hit_tokens;
                self.prefix_queries += u64::from(total);
                self.prefix_hits += u64::from(hit_tokens);
                self.prompt_tokens += u64::from(seq.prompt_len);
            }
        }
        self.grow(slot, hit_tokens + n);
        self.running.push(slot);
        self.record(slot, n, shape);
        Admission::Admitted(n)
    }

    fn blocks_for(&self, tokens: u32) -> u32 {
        tokens.div_ceil(self.cfg.block_size)
    }

    /// Gives `slot` blocks for `tokens` tokens and publishes the prompt blocks those tokens complete
    /// (at scheduling time, as vLLM does, so a request scheduled right after can already hit them).
    fn grow(&mut self, slot: u32, tokens: u32) {
        let want = self.blocks_for(tokens) as usize;
        let bs = self.cfg.block_size;
        let Some(seq) = self.seqs.get_mut(slot as usize).and_then(Option::as_mut) else { return };
        while seq.blocks.len() < want {
            let Some(b) = self.pool.allocate() else { break };
            seq.blocks.push(b);
        }
        let full = ((tokens / bs) as usize).min(seq.hashes.len()).min(seq.blocks.len());
        for j in seq.registered as usize..full {
            if let (Some(&b), Some(&h)) = (seq.blocks.get(j), seq.hashes.get(j)) {
                self.pool.register(b, h);
            }
        }
        seq.registered = seq.registered.max(full as u32);
    }

    fn record(&mut self, slot: u32, n: u32, shape: &mut StepShape) {
        let Some(seq) = self.seq(slot) else { return };
        let context = u64::from(seq.computed + n);
        let decode = n == 1 && seq.generated > 0 && seq.computed + 1 == seq.num_tokens();
        if decode {
            shape.decode_seqs += 1;
            shape.decode_context_tokens += context;
        } else {
            shape.prefill_tokens += n;
        }
        shape.context_tokens += context;
        self.scheduled.push((slot, n));
    }

    /// Recompute-style preemption: the KV goes back to the free queue (hashes kept) and the request
    /// returns to the head of the waiting queue.
    fn preempt(&mut self, slot: u32, at: u64, events: &mut Vec<Event>) {
        let Some(seq) = self.seqs.get_mut(slot as usize).and_then(Option::as_mut) else { return };
        for &b in seq.blocks.iter().rev() {
            self.pool.release(b);
        }
        seq.blocks.clear();
        seq.computed = 0;
        seq.registered = 0;
        seq.phase = Phase::Waiting;
        let (id, lora) = (seq.id, seq.lora);
        if let Some(adapter) = lora {
            self.lora_leave(adapter);
        }
        self.preemptions += 1;
        self.waiting.push_front(slot);
        events.push(Event { time_us: at, id, kind: EventKind::Preempted });
    }

    fn complete_step(&mut self, end: u64, events: &mut Vec<Event>) {
        self.step_end = None;
        let emit_tokens = self.cfg.emit_token_events;
        for &(slot, n) in &self.scheduled {
            let Some(seq) = self.seqs.get_mut(slot as usize).and_then(Option::as_mut) else { continue };
            if seq.done {
                continue;
            }
            seq.computed += n;
            if seq.computed < seq.num_tokens() {
                continue; // a prefill chunk that did not reach the end of the prompt yet
            }
            seq.generated += 1;
            self.generation_tokens += 1;
            let kind = if seq.generated == 1 { Some(EventKind::FirstToken) } else { None };
            if let Some(kind) = kind {
                events.push(Event { time_us: end, id: seq.id, kind });
            } else if emit_tokens {
                events.push(Event { time_us: end, id: seq.id, kind: EventKind::Token });
            }
            if seq.generated >= seq.max_tokens {
                seq.done = true;
                self.finished_requests += 1;
                let usage = Usage {
                    prompt_tokens: seq.prompt_len,
                    completion_tokens: seq.generated,
                    cached_prompt_tokens: seq.cached_tokens,
                };
                events.push(Event { time_us: end, id: seq.id, kind: EventKind::Finished(usage) });
            }
        }
        let seqs = &self.seqs;
        let finished = &mut self.finished;
        self.running.retain(|&slot| {
            let done = seqs.get(slot as usize).and_then(Option::as_ref).is_none_or(|s| s.done);
            if done {
                finished.push(slot);
            }
            !done
        });
        while let Some(slot) = self.finished.pop() {
            self.retire(slot);
        }
    }

    /// Frees everything a request holds and forgets it.
    fn retire(&mut self, slot: u32) {
        let Some(seq) = self.seqs.get_mut(slot as usize).and_then(Option::take) else { return };
        // Reverse order: the tail of a prompt is the least likely to be shared, so it is evicted first.
        for &b in seq.blocks.iter().rev() {
            self.pool.release(b);
        }
        if seq.phase == Phase::Running {
            if let Some(adapter) = seq.lora {
                self.lora_leave(adapter);
            }
        }
        self.by_id.remove(&seq.id);
        self.free_slots.push(slot);
    }

    fn lora_enter(&mut self, adapter: u32, new_adapter: bool) {
        if new_adapter {
            let mut reserved = Vec::with_capacity(self.cfg.lora_blocks() as usize);
            for _ in 0..self.cfg.lora_blocks() {
                if let Some(b) = self.pool.allocate() {
                    reserved.push(b);
                }
            }
            self.loras.push(LoraSlot { adapter, running: 0, reserved });
        }
        if let Some(l) = self.loras.iter_mut().find(|l| l.adapter == adapter) {
            l.running += 1;
        }
    }

    fn lora_leave(&mut self, adapter: u32) {
        let Some(pos) = self.loras.iter().position(|l| l.adapter == adapter) else { return };
        let Some(l) = self.loras.get_mut(pos) else { return };
        l.running = l.running.saturating_sub(1);
        if l.running == 0 {
            let l = self.loras.swap_remove(pos);
            for b in l.reserved {
                self.pool.release(b);
            }
        }
    }
}

fn sorted_unique(items: impl Iterator<Item = u32>) -> Vec<u32> {
    let mut v: Vec<u32> = items.collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[cfg(test)]
mod tests;

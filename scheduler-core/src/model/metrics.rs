//! What a model server last told us about itself, and what the gateway knows it has sent it.

use alloc::string::String;
use alloc::vec::Vec;

/// Model-server metrics from one scrape, normalised across engines (see `metrics_text` for the mappings).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    /// Requests queued (vLLM counts preempted requests here too).
    pub waiting: u32,
    /// Requests in the running batch.
    pub running: u32,
    /// KV-cache use as a fraction in [0, 1].
    pub kv_usage: f64,
    /// LoRA adapters with running requests.
    pub running_loras: Vec<String>,
    /// LoRA adapters with waiting requests.
    pub waiting_loras: Vec<String>,
    /// Maximum number of adapters resident at once (`max_lora`), when the server reports it.
    pub max_lora: Option<u32>,
    /// KV block size in tokens (`block_size` / `page_size`), when reported.
    pub block_size: Option<u32>,
    /// Number of KV blocks on the device (`num_gpu_blocks` / `num_pages`), when reported.
    pub num_gpu_blocks: Option<u32>,
    /// Collector clock (ms) when these values were read.
    pub updated_at_ms: u64,
}

impl Metrics {
    /// Age of these metrics at `now_ms`; zero if the clock went backwards.
    pub fn age_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.updated_at_ms)
    }

    pub fn has_active_lora(&self, adapter: &str) -> bool {
        self.running_loras.iter().any(|a| a == adapter)
    }

    pub fn has_waiting_lora(&self, adapter: &str) -> bool {
        self.waiting_loras.iter().any(|a| a == adapter)
    }
}

/// Work the gateway has routed to an endpoint and not yet seen finish. Fills the gap between scrapes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    pub requests: u32,
    /// Estimated tokens (input + expected output) of those requests.
    pub tokens: u64,
    /// Estimated prompt tokens of those requests that have not produced their first token yet, less what
    /// the prefix index said the endpoint held when each was routed: prefill queued or running on the
    /// endpoint (`prefill-backlog-scorer`, `prefill-backlog-detector`).
    pub awaiting_first_token: u64,
}

impl InFlight {
    pub fn add(&mut self, tokens: u64) {
        self.requests = self.requests.saturating_add(1);
        self.tokens = self.tokens.saturating_add(tokens);
    }

    pub fn remove(&mut self, tokens: u64) {
        self.requests = self.requests.saturating_sub(1);
        self.tokens = self.tokens.saturating_sub(tokens);
    }

    /// A routed request with `prompt_tokens` waits for its first token.
    pub fn await_first_token(&mut self, prompt_tokens: u64) {
        self.awaiting_first_token = self.awaiting_first_token.saturating_add(prompt_tokens);
    }

    /// A request counted by [`InFlight::await_first_token`] produced its first token (or ended).
    pub fn first_token(&mut self, prompt_tokens: u64) {
        self.awaiting_first_token = self.awaiting_first_token.saturating_sub(prompt_tokens);
    }

    pub fn merge(&mut self, other: InFlight) {
        self.requests = self.requests.saturating_add(other.requests);
        self.tokens = self.tokens.saturating_add(other.tokens);
        self.awaiting_first_token = self.awaiting_first_token.saturating_add(other.awaiting_first_token);
    }
}

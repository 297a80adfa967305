//! model-sim: a vLLM/SGLang-like model server, as a pure timing model (`engine`) plus an HTTP binary.
//!
//! The engine is a library so the discrete-event quality benchmark can drive the very same batching,
//! KV-cache and LoRA model in virtual time that the HTTP replicas run in (scaled) wall-clock time.

pub mod engine;
pub mod prompt;

pub use engine::{
    Engine, EngineConfig, EngineMetrics, Event, EventKind, Request, StepModel, SubmitError, Usage,
};
pub use prompt::{Prompt, Segment};

//! The HTTP replica: flags, the engine driven in scaled wall-clock time, the OpenAI surface, metrics
//! in vLLM or SGLang names, and fault knobs.

pub mod cli;
pub mod faults;
pub mod http;
pub mod listen;
pub mod metrics;
pub mod openai;
pub mod sim;

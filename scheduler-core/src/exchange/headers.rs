//! Header names of the Endpoint Picker protocol that the request lifecycle reads or writes. The routing
//! headers' names are configurable (`routing.*Header`); these are the ones that are not, and the
//! protocol defaults every client-set copy of which is removed.

/// `:path`: selects the API (`/v1/chat/completions`, ...).
pub const PATH: &str = ":path";
/// Correlates logs and seeds the request's decision; set by the gateway when the client sent none.
pub const REQUEST_ID: &str = "x-request-id";
/// The InferenceObjective the request belongs to (its priority): llm-d's deprecated name, still the one
/// GIE documents.
pub const OBJECTIVE: &str = "x-gateway-inference-objective";
/// llm-d's current name for [`OBJECTIVE`]; it wins when a request carries both, as in llm-d.
pub const OBJECTIVE_LLM_D: &str = "x-llm-d-inference-objective";
/// The request's flow (tenant) in flow control: llm-d's current name, then its deprecated alias.
pub const FAIRNESS_ID: [&str; 2] = ["x-llm-d-inference-fairness-id", "x-gateway-inference-fairness-id"];
/// Forces the model the server runs.
pub const MODEL_REWRITE: &str = "x-gateway-model-name-rewrite";
/// Session affinity token.
pub const SESSION_TOKEN: &str = "x-session-token";
/// Request and response body length.
pub const CONTENT_LENGTH: &str = "content-length";
/// Request body type (JSON, `multipart/form-data`, ...) and response body type (server-sent events or
/// not).
pub const CONTENT_TYPE: &str = "content-type";
/// Request body compression (`gzip`, ...); only `identity` is read.
pub const CONTENT_ENCODING: &str = "content-encoding";
/// Response status pseudo-header.
pub const STATUS: &str = ":status";

/// Routing headers a client must never set, whatever the configured names: a proxy configured with
/// custom names may still sit in front of a cluster keyed by a default one.
pub const DEFAULT_ROUTING_HEADERS: [&str; 4] = [
    "x-gateway-destination-endpoint",
    "x-prefiller-host-port",
    "x-gateway-destination-endpoint-served",
    // Protocol v0.3's fallback header: nothing should act on it, nothing should pass it on either.
    "x-gateway-destination-endpoint-fallback",
];

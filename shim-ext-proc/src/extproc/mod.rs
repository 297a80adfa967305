//! The ext_proc side of the shim: a pure protocol state machine ([`machine`]) and the tonic service
//! that drives it ([`service`]), with the body-chunking and protobuf helpers they share
//! (request/response body edits and usage come from `scheduler_core::{request, response}`).

pub mod body;
pub mod machine;
pub mod proto;
pub mod service;

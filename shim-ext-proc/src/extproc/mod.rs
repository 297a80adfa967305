//! The ext_proc side of the shim: a pure protocol state machine ([`machine`]) and the tonic service
//! that drives it ([`service`]), with the body and protobuf helpers they share.

pub mod body;
pub mod machine;
pub mod proto;
pub mod response;
pub mod service;

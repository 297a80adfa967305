//! Who an endpoint is: its address and the labels that change how it is scheduled.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Label that carries the engine type of a pod (GIE convention).
pub const ENGINE_TYPE_LABEL: &str = "inference.networking.k8s.io/engine-type";
/// llm-d-router's engine label, which it reads before [`ENGINE_TYPE_LABEL`].
pub const LLMD_ENGINE_TYPE_LABEL: &str = "llm-d.ai/engine-type";
/// The labels a pod's engine is read from, first present wins (llm-d-router's order).
pub const ENGINE_LABELS: [&str; 2] = [LLMD_ENGINE_TYPE_LABEL, ENGINE_TYPE_LABEL];
/// Label that carries the prefill/decode role of a pod (llm-d convention).
pub const ROLE_LABEL: &str = "llm-d.ai/role";

/// Which phase of inference an endpoint serves. Disaggregated serving splits prefill and decode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Role {
    /// Serves whole requests (aggregated serving), the default.
    #[default]
    Both,
    Prefill,
    Decode,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Both => "both",
            Role::Prefill => "prefill",
            Role::Decode => "decode",
        }
    }

    /// Parses llm-d's role label values; unknown values are `None` so the caller can report them.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "both" | "" => Some(Role::Both),
            "prefill" => Some(Role::Prefill),
            "decode" => Some(Role::Decode),
            _ => None,
        }
    }
}

/// The model server software behind an endpoint; selects the metric-name mapping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Engine {
    #[default]
    Vllm,
    Sglang,
    /// `trtllm-serve` (TensorRT-LLM's OpenAI server).
    TrtllmServe,
    /// Triton Inference Server with the TensorRT-LLM backend.
    Triton,
}

impl Engine {
    pub const ALL: [Engine; 4] = [Engine::Vllm, Engine::Sglang, Engine::TrtllmServe, Engine::Triton];

    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Vllm => "vllm",
            Engine::Sglang => "sglang",
            Engine::TrtllmServe => "trtllm-serve",
            Engine::Triton => "triton-tensorrt-llm",
        }
    }

    /// Accepts the values seen on `inference.networking.k8s.io/engine-type`.
    pub fn parse(s: &str) -> Option<Engine> {
        match s {
            "vllm" | "" => Some(Engine::Vllm),
            "sglang" => Some(Engine::Sglang),
            "trtllm-serve" | "trtllm" | "tensorrt-llm" => Some(Engine::TrtllmServe),
            "triton-tensorrt-llm" | "triton" => Some(Engine::Triton),
            _ => None,
        }
    }
}

/// One model-server endpoint (`ip:port`; a pod with several target ports is several endpoints).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// `ip:port`, IPv6 in brackets (`[::1]:8000`). Exactly what goes into the routing header.
    pub address: String,
    pub role: Role,
    pub engine: Engine,
    /// Other pod labels worth carrying (sorted by key), e.g. for subset selection or debugging.
    pub labels: Vec<(String, String)>,
}

impl Endpoint {
    pub fn new(address: impl Into<String>) -> Endpoint {
        Endpoint { address: address.into(), ..Endpoint::default() }
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Why an endpoint address was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressError {
    pub address: String,
    pub reason: &'static str,
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid endpoint address {:?}: {}", self.address, self.reason)
    }
}

/// Checks that `addr` is `ipv4:port` or `[ipv6]:port` with a port in 1..=65535.
///
/// Addresses end up in a routing header that Envoy turns into a connection, so anything else is refused
/// rather than passed through.
pub fn validate_address(addr: &str) -> Result<(), AddressError> {
    let err = |reason| Err(AddressError { address: String::from(addr), reason });
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        match rest.split_once("]:") {
            Some((h, p)) => {
                if h.parse::<core::net::Ipv6Addr>().is_err() {
                    return err("expected an IPv6 address inside the brackets");
                }
                (h, p)
            }
            None => return err("expected [ipv6]:port"),
        }
    } else {
        match addr.rsplit_once(':') {
            Some((h, p)) => {
                if h.parse::<core::net::Ipv4Addr>().is_err() {
                    return err("expected ipv4:port or [ipv6]:port");
                }
                (h, p)
            }
            None => return err("missing :port"),
        }
    };
    let _ = host;
    match port.parse::<u16>() {
        Ok(0) | Err(_) => err("port must be a number in 1..=65535"),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(validate_address("10.0.0.1:8000").is_ok());
        assert!(validate_address("[fd00::1]:8000").is_ok());
        assert!(validate_address("10.0.0.1").is_err());
        assert!(validate_address("10.0.0.1:0").is_err());
        assert!(validate_address("10.0.0.1:99999").is_err());
        assert!(validate_address("pod.svc:8000").is_err());
        assert!(validate_address("fd00::1:8000").is_err());
        assert!(validate_address("[fd00::1]8000").is_err());
        assert!(validate_address("").is_err());
    }

    #[test]
    fn roles_and_engines_round_trip() {
        for r in [Role::Both, Role::Prefill, Role::Decode] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        for e in Engine::ALL {
            assert_eq!(Engine::parse(e.as_str()), Some(e));
        }
        assert_eq!(Engine::parse("mystery"), None);
    }
}

//! TLS for the ext_proc port: gateways expect a TLS picker with ALPN h2 (kgateway refuses plaintext)
//! and skip verification, so by default a self-signed certificate is generated at start.

use std::fmt;
use std::path::Path;
use tonic::transport::{Identity, ServerTlsConfig};

#[derive(Debug)]
pub enum TlsError {
    Generate(rcgen::Error),
    Read { path: String, error: std::io::Error },
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Generate(e) => write!(f, "cannot generate a self-signed certificate: {e}"),
            TlsError::Read { path, error } => write!(f, "cannot read {path}: {error}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A fresh self-signed certificate for `names` (DNS names or IPs).
pub fn self_signed(names: &[&str]) -> Result<CertPair, TlsError> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).map_err(TlsError::Generate)?;
    Ok(CertPair { cert_pem: ck.cert.pem(), key_pem: ck.signing_key.serialize_pem() })
}

pub fn from_files(cert: &Path, key: &Path) -> Result<CertPair, TlsError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|error| TlsError::Read { path: p.display().to_string(), error })
    };
    Ok(CertPair { cert_pem: read(cert)?, key_pem: read(key)? })
}

/// Server TLS configuration (tonic advertises ALPN h2).
pub fn server_config(pair: &CertPair) -> ServerTlsConfig {
    ServerTlsConfig::new().identity(Identity::from_pem(&pair.cert_pem, &pair.key_pem))
}

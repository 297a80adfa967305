//! The data model shared by every part: endpoints, their metrics, gateway in-flight work, the pool snapshot.

mod endpoint;
mod metrics;
mod snapshot;

pub use endpoint::{
    validate_address, AddressError, Endpoint, Engine, Role, ENGINE_LABELS, ENGINE_TYPE_LABEL,
    LLMD_ENGINE_TYPE_LABEL, ROLE_LABEL,
};
pub use metrics::{InFlight, Metrics};
pub use snapshot::{EndpointState, PoolResources, PoolSnapshot};

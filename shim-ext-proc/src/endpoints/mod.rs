//! Where the pool's endpoints come from: the configuration file's `pool.endpoints`, or a Kubernetes
//! InferencePool and the Ready pods it selects. Each source publishes whole lists on a watch channel
//! (`None` until the first complete list, which is what readiness waits for).

pub mod kubernetes;
pub mod static_list;

use scheduler_core::model::Endpoint;

/// The latest complete endpoint list, or `None` before discovery synced.
pub type Discovered = Option<Vec<Endpoint>>;

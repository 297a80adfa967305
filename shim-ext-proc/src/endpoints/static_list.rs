//! Endpoints listed in the configuration file (`pool.endpoints`): known at start, never change.

use super::Discovered;
use scheduler_core::config::gateway::GatewayConfig;
use tokio::sync::watch;

/// A channel already holding the configured list (synced at once). Keep the sender for as long as the
/// list should be served: dropping it ends the scrape loop.
pub fn from_config(config: &GatewayConfig) -> watch::Sender<Discovered> {
    watch::Sender::new(Some(config.pool.endpoints.clone()))
}

//! gRPC health on its own port, with every service name gateways and Kubernetes probes ask for:
//! an unregistered name answers NOT_FOUND, which fails the probe. Liveness is always SERVING; the
//! others follow readiness (endpoints synced).

use tokio::sync::watch;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// Names that follow readiness.
pub const READINESS_SERVICES: [&str; 4] =
    ["", "readiness", "inference-extension", "envoy.service.ext_proc.v3.ExternalProcessor"];
pub const LIVENESS_SERVICE: &str = "liveness";

/// Keeps the reporter in line with `ready` until the channel closes.
pub async fn follow(reporter: HealthReporter, mut ready: watch::Receiver<bool>) {
    reporter.set_service_status(LIVENESS_SERVICE, ServingStatus::Serving).await;
    loop {
        let status =
            if *ready.borrow_and_update() { ServingStatus::Serving } else { ServingStatus::NotServing };
        for name in READINESS_SERVICES {
            reporter.set_service_status(name, status).await;
        }
        if ready.changed().await.is_err() {
            return;
        }
    }
}

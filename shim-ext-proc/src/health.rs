//! gRPC health on its own port, with every service name gateways and Kubernetes probes ask for:
//! an unregistered name answers NOT_FOUND, which fails the probe. Liveness is always SERVING; the
//! others follow readiness (endpoints synced).
//!
//! The ext_proc port answers gRPC health too, as the reference picker's does (GIE's EPP registers
//! grpc-go's health server next to its ExternalProcessor, and its reference Envoy bootstrap
//! health-checks the ext_proc cluster there with service `envoy.service.ext_proc.v3.ExternalProcessor`).
//! There it knows the names that server knows — `""` and the ExternalProcessor service — and both
//! follow readiness: the reference starts its ext_proc server only once its caches have synced.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::watch;
use tonic::codegen::http;
use tonic::codegen::Service;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// The ext_proc service's gRPC name, as Envoy's `grpc_health_check.service_name` spells it.
pub const EXT_PROC_SERVICE: &str = "envoy.service.ext_proc.v3.ExternalProcessor";
/// Names that follow readiness.
pub const READINESS_SERVICES: [&str; 4] = ["", "readiness", "inference-extension", EXT_PROC_SERVICE];
pub const LIVENESS_SERVICE: &str = "liveness";
/// Names the ext_proc port's health service knows, all following readiness.
pub const EXT_PROC_PORT_SERVICES: [&str; 2] = ["", EXT_PROC_SERVICE];

/// Keeps the health port's reporter in line with `ready` until the channel closes.
pub async fn follow(reporter: HealthReporter, ready: watch::Receiver<bool>) {
    reporter.set_service_status(LIVENESS_SERVICE, ServingStatus::Serving).await;
    follow_names(reporter, ready, &READINESS_SERVICES).await
}

/// Keeps the ext_proc port's reporter in line with `ready` until the channel closes.
pub async fn follow_ext_proc_port(reporter: HealthReporter, ready: watch::Receiver<bool>) {
    follow_names(reporter, ready, &EXT_PROC_PORT_SERVICES).await
}

async fn follow_names(reporter: HealthReporter, mut ready: watch::Receiver<bool>, names: &[&str]) {
    loop {
        let status =
            if *ready.borrow_and_update() { ServingStatus::Serving } else { ServingStatus::NotServing };
        for name in names {
            reporter.set_service_status(*name, status).await;
        }
        if ready.changed().await.is_err() {
            return;
        }
    }
}

const HEALTH_PATH_PREFIX: &str = "/grpc.health.v1.Health/";

/// Two gRPC services on one port without tonic's router (which would pull axum into the build):
/// `grpc.health.v1.Health` calls go to `health`, everything else to `service`.
#[derive(Clone, Debug)]
pub struct WithHealth<S, H> {
    service: S,
    health: H,
}

impl<S, H> WithHealth<S, H> {
    pub fn new(service: S, health: H) -> WithHealth<S, H> {
        WithHealth { service, health }
    }
}

type Reply = http::Response<tonic::body::Body>;

impl<S, H, B> Service<http::Request<B>> for WithHealth<S, H>
where
    S: Service<http::Request<B>, Response = Reply, Error = Infallible>,
    S::Future: Send + 'static,
    H: Service<http::Request<B>, Response = Reply, Error = Infallible>,
    H::Future: Send + 'static,
{
    type Response = Reply;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Reply, Infallible>> + Send>>;

    /// tonic's generated servers (both of these) are always ready; so is the pair.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path().starts_with(HEALTH_PATH_PREFIX) {
            Box::pin(self.health.call(request))
        } else {
            Box::pin(self.service.call(request))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
    use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
        ExternalProcessor, ExternalProcessorServer,
    };
    use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
    use std::time::Duration;
    use tonic::transport::Channel;
    use tonic::{Code, Request, Response, Status, Streaming};
    use tonic_health::pb::health_check_response::ServingStatus as Wire;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    /// Stands in for the picker's service: answers every stream with a recognisable status.
    struct Stub;

    #[tonic::async_trait]
    impl ExternalProcessor for Stub {
        type ProcessStream = tokio_stream::Empty<Result<ProcessingResponse, Status>>;
        async fn process(
            &self,
            _: Request<Streaming<ProcessingRequest>>,
        ) -> Result<Response<Self::ProcessStream>, Status> {
            Err(Status::unavailable("stub ext_proc"))
        }
    }

    async fn check(client: &mut HealthClient<Channel>, name: &str) -> Result<i32, Code> {
        client
            .check(HealthCheckRequest { service: name.into() })
            .await
            .map(|r| r.into_inner().status)
            .map_err(|s| s.code())
    }

    #[tokio::test]
    async fn ext_proc_port_answers_the_reference_names_following_readiness_and_routes_the_rest() {
        let (ready_tx, ready_rx) = watch::channel(false);
        let (reporter, health) = tonic_health::server::health_reporter();
        tokio::spawn(follow_ext_proc_port(reporter, ready_rx));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = WithHealth::new(ExternalProcessorServer::new(Stub), health);
        tokio::spawn(
            tonic::transport::Server::builder()
                .serve_with_incoming(service, tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let mut client = HealthClient::new(channel.clone());

        // Not ready yet: the reference's names answer NOT_SERVING (once the follower has run).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while check(&mut client, EXT_PROC_SERVICE).await != Ok(Wire::NotServing as i32) {
            assert!(tokio::time::Instant::now() < deadline, "never NOT_SERVING");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(check(&mut client, "").await, Ok(Wire::NotServing as i32));
        // Names the reference's ext_proc port does not register are unknown here too.
        for name in ["liveness", "readiness", "inference-extension", "grpc.health.v1.Health"] {
            assert_eq!(check(&mut client, name).await, Err(Code::NotFound), "{name:?}");
        }

        ready_tx.send(true).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while check(&mut client, EXT_PROC_SERVICE).await != Ok(Wire::Serving as i32) {
            assert!(tokio::time::Instant::now() < deadline, "never SERVING");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(check(&mut client, "").await, Ok(Wire::Serving as i32));

        ready_tx.send(false).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while check(&mut client, "").await != Ok(Wire::NotServing as i32) {
            assert!(tokio::time::Instant::now() < deadline, "never back to NOT_SERVING");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // Everything else still reaches the ext_proc service on the same port.
        let mut ext_proc = ExternalProcessorClient::new(channel);
        let status = ext_proc.process(tokio_stream::iter(Vec::<ProcessingRequest>::new())).await.unwrap_err();
        assert_eq!((status.code(), status.message()), (Code::Unavailable, "stub ext_proc"));
    }

    #[tokio::test]
    async fn health_port_keeps_liveness_and_every_readiness_name() {
        let (ready_tx, ready_rx) = watch::channel(true);
        let (reporter, health) = tonic_health::server::health_reporter();
        let follower = tokio::spawn(follow(reporter, ready_rx));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .serve_with_incoming(health, tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let mut client = HealthClient::new(channel);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while check(&mut client, "inference-extension").await != Ok(Wire::Serving as i32) {
            assert!(tokio::time::Instant::now() < deadline, "never SERVING");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for name in READINESS_SERVICES.into_iter().chain([LIVENESS_SERVICE]) {
            assert_eq!(check(&mut client, name).await, Ok(Wire::Serving as i32), "{name:?}");
        }
        drop(ready_tx);
        follower.await.unwrap();
    }
}

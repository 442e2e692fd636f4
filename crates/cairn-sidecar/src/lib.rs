//! # cairn-sidecar: the Durable Task sidecar protocol
//!
//! Serves `TaskHubSidecarService` (the gRPC protocol of the official Durable Task SDKs for
//! Python, JavaScript, Java, .NET and Go) on top of a Cairn engine, so an existing app only
//! changes the address it connects to. Client calls go to the engine's client; orchestrations
//! and activities that are not registered in Rust are handed to connected SDK workers through
//! the engine's remote work queue. One engine, two front doors: the partition state machine
//! does not know which one an episode came through.
//!
//! The schema is compiled by `build.rs` with protox (no `protoc`); it has no package, so the
//! services live at `/TaskHubSidecarService/<Rpc>`.

pub mod convert;
pub mod dispatch;
pub mod service;

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("_");
}

use std::net::SocketAddr;
use std::time::Duration;

/// Settings of the gRPC front.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    pub addr: SocketAddr,
    /// How often an idle `GetWorkItems` stream gets a health ping.
    pub health_ping: Duration,
    /// Largest gRPC message accepted (payload limits are checked separately, with clearer errors).
    pub max_message_bytes: usize,
}

impl Default for SidecarConfig {
    fn default() -> Self {
        SidecarConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 4001)),
            health_ping: Duration::from_secs(30),
            max_message_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Serves the protocol for `engine` until `shutdown` resolves.
pub async fn serve(
    engine: &cairn_runtime::Engine,
    config: SidecarConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let queue = engine.remote_queue().unwrap_or_default();
    let sidecar = service::Sidecar {
        client: engine.client(),
        dispatcher: dispatch::Dispatcher::new(queue, config.health_ping),
    };
    let svc = proto::task_hub_sidecar_service_server::TaskHubSidecarServiceServer::new(sidecar)
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
}

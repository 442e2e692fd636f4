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
/// A TLS certificate chain and key for [`SidecarConfig::tls`].
pub use tonic::transport::Identity;

/// Settings of the gRPC front.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    pub addr: SocketAddr,
    /// How often an idle `GetWorkItems` stream gets a health ping.
    pub health_ping: Duration,
    /// Largest gRPC message accepted (payload limits are checked separately, with clearer errors).
    pub max_message_bytes: usize,
    /// How long a worker may hold a work item without completing or abandoning it before it is
    /// dispatched again (Durable Task's storage backends use a lock/visibility timeout of
    /// minutes). The protocol has no lease renewal: work that legitimately runs longer needs a
    /// longer lease.
    pub work_item_lease: Duration,
    /// How long work waits for a worker that runs it before the log says that none does: long
    /// enough that workers reconnecting after a restart cause no warning.
    pub unserved_warning_after: Duration,
    /// A bearer token every call must carry as `authorization: Bearer <token>` metadata (the
    /// SDKs' `metadata` / `grpc.Metadata` settings); `None` accepts every call.
    pub auth_token: Option<String>,
    /// Serve the protocol over TLS with this certificate and key (None: plaintext h2c, which is
    /// what the SDKs speak unless told `grpcs://` / `useTLS`).
    pub tls: Option<tonic::transport::Identity>,
}

impl Default for SidecarConfig {
    fn default() -> Self {
        SidecarConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 4001)),
            health_ping: Duration::from_secs(30),
            max_message_bytes: 64 * 1024 * 1024,
            work_item_lease: Duration::from_secs(5 * 60),
            unserved_warning_after: Duration::from_secs(10),
            auth_token: None,
            tls: None,
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
        dispatcher: dispatch::Dispatcher::new(
            queue,
            config.health_ping,
            config.work_item_lease,
            config.unserved_warning_after,
        ),
    };
    let svc = proto::task_hub_sidecar_service_server::TaskHubSidecarServiceServer::new(sidecar)
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let expected = config.auth_token.map(String::into_bytes);
    let svc = tonic::service::interceptor::InterceptedService::new(svc, move |request| {
        authorize(expected.as_deref(), &request)?;
        Ok(request)
    });
    let mut server = tonic::transport::Server::builder();
    if let Some(identity) = config.tls {
        server = server.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    server
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
}

/// Accepts a call carrying `authorization: Bearer <token>` (the scheme in any case, as HTTP
/// has it) when a token is `expected`, every call otherwise. The token is compared in time
/// independent of where a wrong one differs.
fn authorize(expected: Option<&[u8]>, request: &tonic::Request<()>) -> Result<(), tonic::Status> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let given = request
        .metadata()
        .get("authorization")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let token = cairn_runtime::auth::bearer_token(given).unwrap_or_default();
    if cairn_runtime::auth::constant_time_eq(token, expected) {
        Ok(())
    } else {
        Err(tonic::Status::unauthenticated(
            "this Cairn requires a bearer token: give the SDK client and worker the metadata \
             ('authorization', 'Bearer <token>') with the token of `cairn serve --auth-token`",
        ))
    }
}

/// The accepted connections of `listener`, each set up for a request/response protocol.
///
/// `TCP_NODELAY` is the one that matters: the protocol's messages are small, and with Nagle's
/// algorithm on, a server write that follows another unacknowledged one waits for the client's
/// delayed ACK (40 ms on Linux), which made every activity step through an SDK cost ~80 ms.
/// TCP keepalive lets a dead worker's connection be noticed (and its work items handed on)
/// when the peer vanished without a FIN.
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(TCP_KEEPALIVE))
}

/// Idle time before TCP keepalive probes start on an accepted connection.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    /// Nagle's algorithm on the server side cost ~80 ms per activity step through the JS SDK.
    #[tokio::test]
    async fn accepted_grpc_connections_have_nodelay_and_keepalive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = super::incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(
            accepted.nodelay().unwrap(),
            "TCP_NODELAY is off on an accepted gRPC connection"
        );
        let keepalive = socket2::SockRef::from(&accepted).keepalive().unwrap();
        assert!(
            keepalive,
            "TCP keepalive is off on an accepted gRPC connection"
        );
    }
}

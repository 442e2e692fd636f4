//! # One node's connection to the NATS cluster
//!
//! [`Nats`] owns the NATS client and a small Tokio runtime of its own that the client's tasks
//! and the partition logs' writer tasks run on. The storage seams are synchronous (an append
//! returns at once, a flush blocks), and they are called from the engine's own runtime, so the
//! JetStream side must not depend on which runtime (or none) its caller is on: [`Nats::run`]
//! hands a future to this runtime and blocks the calling thread until it finishes.
//!
//! It owns the connection and nothing about partitions.

use async_nats::jetstream;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// How a node reaches the NATS cluster and which task hub it serves.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:port`, `tls://` to require TLS); the client fails over
    /// between them. A user and password (`nats://user:password@host:port`) or a token
    /// (`nats://token@host:port`) in a URL authenticate the connection.
    pub urls: Vec<String>,
    /// The task hub's name: the prefix of every stream, bucket and subject Cairn uses.
    pub hub: String,
    /// This node's name (in epoch markers, leases and `cairn cluster status`).
    pub node_id: String,
    /// JetStream replicas of each partition's streams (1 or 3; 3 needs a NATS cluster of at
    /// least 3 servers). 0: 3 when the server this node connects to is part of a cluster, else 1.
    pub replicas: usize,
    /// A NATS credentials file (`.creds`), for a server that requires one.
    pub credentials: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for the server's TLS certificate; TLS is then required.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate and key (PEM) for servers that verify clients.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Checkpoints of a partition between two snapshots of its state (see
    /// [`crate::checkpoint`]).
    pub snapshot_every: u64,
}

/// `url` with any password or token in it masked, for logs and messages.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => format!("{scheme}://***@{host}"),
    }
}

impl ClusterConfig {
    /// The server URLs, comma-separated, with passwords and tokens masked.
    pub fn urls_for_people(&self) -> String {
        self.urls
            .iter()
            .map(|u| redacted(u))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A configuration with defaults for everything but where the servers are.
    pub fn new(urls: Vec<String>, hub: &str, node_id: &str) -> ClusterConfig {
        ClusterConfig {
            urls,
            hub: hub.to_string(),
            node_id: node_id.to_string(),
            replicas: 0,
            credentials: None,
            tls_ca: None,
            tls_client: None,
            snapshot_every: crate::checkpoint::SNAPSHOT_EVERY,
        }
    }
}

/// What can go wrong talking to NATS.
#[derive(Debug, Error)]
pub enum ClusterError {
    #[error(
        "hub name {0:?} cannot name NATS streams: use letters, digits, '-' and '_' only (at most \
         64 characters)"
    )]
    BadHubName(String),
    #[error("cannot connect to NATS at {urls}: {detail}. Check that the servers are running and reachable, and the credentials and TLS settings")]
    Connect { urls: String, detail: String },
    #[error("JetStream is not available on the NATS servers at {urls}: {detail}. Start nats-server with JetStream enabled (-js)")]
    NoJetStream { urls: String, detail: String },
    #[error("the NATS client runtime has stopped")]
    Stopped,
    #[error("JetStream: {0}")]
    Remote(String),
    #[error(
        "the task hub {hub:?} in JetStream has {has} partitions but {requested} were requested; \
         the partition count is fixed when a hub is created: omit --partitions or use another \
         --hub name"
    )]
    PartitionsDiffer {
        hub: String,
        has: u32,
        requested: u32,
    },
}

/// A connected node: the NATS client, its JetStream context and the runtime they run on.
pub struct Nats {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    client: async_nats::Client,
    jetstream: jetstream::Context,
    config: ClusterConfig,
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nats")
            .field("urls", &self.config.urls_for_people())
            .field("hub", &self.config.hub)
            .field("node_id", &self.config.node_id)
            .finish()
    }
}

fn valid_hub(hub: &str) -> bool {
    !hub.is_empty()
        && hub.len() <= 64
        && hub
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Nats {
    /// Connects and checks that JetStream answers. Blocks the calling thread.
    pub fn connect(config: ClusterConfig) -> Result<Nats, ClusterError> {
        if !valid_hub(&config.hub) {
            return Err(ClusterError::BadHubName(config.hub.clone()));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cairn-nats")
            .enable_all()
            .build()
            .map_err(|e| ClusterError::Connect {
                urls: config.urls_for_people(),
                detail: format!("cannot start the client's runtime: {e}"),
            })?;
        let handle = runtime.handle().clone();
        let urls = config.urls_for_people();
        let connect_config = config.clone();
        let connected = run_on(&handle, async move {
            let mut options = async_nats::ConnectOptions::new()
                .name(format!("cairn {}", connect_config.node_id))
                .connection_timeout(Duration::from_secs(5))
                .max_reconnects(None::<usize>);
            if let Some(path) = &connect_config.credentials {
                options = options
                    .credentials_file(path)
                    .await
                    .map_err(|e| format!("credentials file {}: {e}", path.display()))?;
            }
            if let Some(ca) = &connect_config.tls_ca {
                options = options.add_root_certificates(ca.clone()).require_tls(true);
            }
            if let Some((cert, key)) = &connect_config.tls_client {
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
            let mut servers = Vec::new();
            for url in &connect_config.urls {
                let server: async_nats::ServerAddr = url
                    .parse()
                    .map_err(|e| format!("server URL {}: {e}", redacted(url)))?;
                // The client does not take credentials from the URL by itself.
                if server.has_user_pass() {
                    options = match (server.username(), server.password()) {
                        (Some(user), Some(password)) => {
                            options.user_and_password(user.to_string(), password.to_string())
                        }
                        (Some(token), None) => options.token(token.to_string()),
                        _ => options,
                    };
                }
                servers.push(server);
            }
            let client = options.connect(servers).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(client)
        })
        .ok_or(ClusterError::Stopped)?;
        let client = connected.map_err(|detail| ClusterError::Connect {
            urls: urls.clone(),
            detail,
        })?;
        // The context spawns its acknowledgement task on the runtime it is made in.
        let jetstream = {
            let _entered = handle.enter();
            jetstream::new(client.clone())
        };
        let js = jetstream.clone();
        // A cluster that just started may need a moment to elect its JetStream meta leader.
        let ready = run_on(&handle, async move {
            let mut last = String::new();
            for _ in 0..100 {
                // Short attempts: until a meta leader is elected, requests go unanswered for
                // the client's whole request time-out.
                match tokio::time::timeout(Duration::from_millis(500), js.query_account()).await {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = "no answer within 500 ms".to_string(),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(last)
        })
        .ok_or(ClusterError::Stopped)?;
        ready.map_err(|detail| ClusterError::NoJetStream {
            urls: urls.clone(),
            detail,
        })?;
        let mut config = config;
        if config.replicas == 0 {
            config.replicas = if client.server_info().cluster.is_some() {
                3
            } else {
                1
            };
        }
        Ok(Nats {
            runtime: Some(runtime),
            handle,
            client,
            jetstream,
            config,
        })
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// The runtime the client runs on, for tasks that must live as long as the connection.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Runs `future` on the connection's runtime and blocks until it finishes; `None` if the
    /// runtime stopped first.
    pub fn run<F>(&self, future: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        run_on(&self.handle, future)
    }
}

/// How long a node keeps retrying an operation JetStream cannot answer yet before it gives
/// up: longer than a stream leader election after a server's death takes.
pub(crate) const SETTLE_FOR: Duration = Duration::from_secs(30);

/// Retries `op` while JetStream is still settling, for up to [`SETTLE_FOR`] (a new R3 stream may answer
/// "no responders" for a moment; a leader election after a server's death takes a few
/// seconds; a NATS cluster that has just started may not have elected its JetStream leader).
/// Each attempt may take at most `attempt`. The last error is returned if it never succeeds.
/// What a node does when it starts, joins or opens a partition's streams goes through here, so
/// that a restarting server delays it instead of stopping it.
pub(crate) async fn patiently<T, E, F, Fut>(attempt: Duration, mut op: F) -> Result<T, String>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + SETTLE_FOR;
    let mut last = String::new();
    let mut pause = Duration::from_millis(25);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(attempt, op()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("no answer within {attempt:?}"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
    Err(last)
}

/// Spawns `future` on `handle` and blocks the calling thread (which may be another runtime's
/// worker) until it finishes.
fn run_on<F>(handle: &tokio::runtime::Handle, future: F) -> Option<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv().ok()
}

impl Drop for Nats {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics on another runtime's thread: let it wind down
        // in the background instead.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn secrets_in_urls_are_masked() {
        assert_eq!(redacted("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(
            redacted("tls://cairn:s3cret@nats.internal:4222"),
            "tls://cairn:***@nats.internal:4222"
        );
        assert_eq!(redacted("nats://t0ken@host:4222"), "nats://***@host:4222");
        assert_eq!(redacted("host:4222"), "host:4222");
    }
}

//! The `cairn` binary: `serve` runs the engine on a data directory, `bench` runs the built-in
//! workloads. Errors are reported with context (anyhow) and a non-zero exit code.

mod bench;
mod cluster;

use anyhow::{Context, Result};
use cairn_runtime::{Engine, EngineConfig, Registry};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "cairn", version, about = "Cairn: a durable workflow engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine on a data directory (created if missing) until Ctrl-C.
    Serve(Box<ServeArgs>),
    /// Run the built-in benchmark workloads in-process on a fresh data directory.
    Bench(Box<bench::BenchArgs>),
    /// A node of a multi-node `cairn bench --nodes` run (started by the bench itself).
    #[command(hide = true)]
    BenchNode(Box<bench::nodes::NodeArgs>),
    /// Look at a task hub in NATS JetStream (cluster mode).
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
}

/// Engine settings shared by the commands.
#[derive(Args, Clone)]
pub struct EngineArgs {
    /// Data directory of the task hub.
    #[arg(long, default_value = "./cairn-data", env = "CAIRN_DATA")]
    data: PathBuf,
    /// Partition count of a new task hub (fixed at creation; default 12).
    #[arg(long)]
    partitions: Option<u32>,
    /// Memory for cached instances and live orchestrators, in MiB.
    #[arg(long, default_value_t = 256)]
    instance_cache_mb: usize,
    /// Memory for the checkpoint stores' page caches, in MiB (all partitions).
    #[arg(long, default_value_t = 128)]
    store_cache_mb: usize,
    /// Orchestration episodes running at once.
    #[arg(long, default_value_t = 1000)]
    max_concurrent_orchestrations: usize,
    /// Activities running at once.
    #[arg(long, default_value_t = 1000)]
    max_concurrent_activities: usize,
    /// Episodes a partition hands out at once per orchestration (or entity) name; the rest of
    /// a backlog waits on disk, not in memory.
    #[arg(long, default_value_t = 512)]
    dispatch_window: usize,
    /// Activities a partition hands out at once per activity name; the rest of the queue
    /// waits on disk, not in memory.
    #[arg(long, default_value_t = 2048)]
    activity_window: usize,
    /// Armed durable timers a partition holds in memory (the soonest due); the rest wait on
    /// disk.
    #[arg(long, default_value_t = 4096)]
    timer_window: usize,
    /// Do not fsync the log (faster, NOT durable across power loss).
    #[arg(long)]
    no_fsync: bool,
    /// Largest accepted payload (input, event data, result), in bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    max_payload_bytes: usize,
    /// Client requests a partition queues before clients are told it is busy (gRPC
    /// RESOURCE_EXHAUSTED, HTTP 429): a flood is pushed back instead of growing memory.
    #[arg(long, default_value_t = 10_000)]
    max_queued_requests: usize,
    /// Purge completed orchestrations (with their histories) this long after they complete,
    /// e.g. 7d.
    #[arg(long, value_parser = humantime::parse_duration)]
    retain_completed: Option<std::time::Duration>,
    /// Purge failed orchestrations this long after they fail, e.g. 30d.
    #[arg(long, value_parser = humantime::parse_duration)]
    retain_failed: Option<std::time::Duration>,
    /// Purge terminated orchestrations this long after they are terminated.
    #[arg(long, value_parser = humantime::parse_duration)]
    retain_terminated: Option<std::time::Duration>,
    /// A retention rule for one orchestration name, replacing the hub's for that status:
    /// NAME:STATUS=AGE, e.g. `--retain nightly-report:completed=1d` (repeatable).
    #[arg(long = "retain", value_parser = parse_retain_rule)]
    retain: Vec<(String, cairn_runtime::RuntimeStatus, std::time::Duration)>,
    /// Fault injection for tests: every log sync takes at least this long (a slow disk).
    #[arg(long, value_parser = humantime::parse_duration, hide = true)]
    log_sync_delay: Option<std::time::Duration>,
    #[command(flatten)]
    cluster: cluster::ClusterArgs,
}

/// `NAME:STATUS=AGE` of `--retain`.
fn parse_retain_rule(
    s: &str,
) -> Result<(String, cairn_runtime::RuntimeStatus, std::time::Duration), String> {
    use cairn_runtime::RuntimeStatus;
    let usage = || format!("'{s}' is not NAME:STATUS=AGE (e.g. nightly-report:completed=1d)");
    let (name, rest) = s.rsplit_once(':').ok_or_else(usage)?;
    let (status, age) = rest.split_once('=').ok_or_else(usage)?;
    let status = match status.to_ascii_lowercase().as_str() {
        "completed" => RuntimeStatus::Completed,
        "failed" => RuntimeStatus::Failed,
        "terminated" => RuntimeStatus::Terminated,
        other => {
            return Err(format!(
                "'{other}' in '{s}': retention applies to completed, failed or terminated"
            ))
        }
    };
    let age = humantime::parse_duration(age).map_err(|e| format!("'{age}' in '{s}': {e}"))?;
    if name.is_empty() {
        return Err(usage());
    }
    Ok((name.to_string(), status, age))
}

impl EngineArgs {
    /// The retention policy the flags give.
    fn retention(&self) -> cairn_runtime::RetentionPolicy {
        let mut policy = cairn_runtime::RetentionPolicy {
            hub: cairn_runtime::RetentionRule {
                completed: self.retain_completed,
                failed: self.retain_failed,
                terminated: self.retain_terminated,
            },
            ..Default::default()
        };
        for (name, status, age) in &self.retain {
            // Only ended statuses get past the parser.
            let _ = policy
                .by_name
                .entry(name.clone())
                .or_default()
                .set(*status, *age);
        }
        policy
    }

    pub fn config(&self) -> EngineConfig {
        EngineConfig {
            data_dir: self.data.clone(),
            partitions: self.partitions,
            instance_cache_mb: self.instance_cache_mb,
            retention: self.retention(),
            store_cache_mb: self.store_cache_mb,
            max_concurrent_orchestrations: self.max_concurrent_orchestrations,
            max_concurrent_activities: self.max_concurrent_activities,
            dispatch_window: self.dispatch_window.max(1),
            activity_window: self.activity_window.max(1),
            timer_window: self.timer_window.max(1),
            fsync: !self.no_fsync,
            max_payload_bytes: self.max_payload_bytes,
            max_queued_requests: self.max_queued_requests.max(1),
            log_sync_delay: self.log_sync_delay,
            ..EngineConfig::default()
        }
    }
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Address of the Durable Task gRPC front (the SDKs' default is localhost:4001).
    #[arg(long, default_value = "127.0.0.1:4001", env = "CAIRN_GRPC")]
    grpc: String,
    /// Address of the HTTP front: management API, /metrics and the dashboard.
    #[arg(long, default_value = "127.0.0.1:8080", env = "CAIRN_HTTP")]
    http: String,
    /// Do not serve HTTP (no management API, metrics or dashboard).
    #[arg(long)]
    no_http: bool,
    /// Bearer token required on every HTTP management route (and /metrics) and on every gRPC
    /// call (as `authorization: Bearer <token>` metadata).
    #[arg(long, env = "CAIRN_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
    /// Serve on an address other machines can reach without --auth-token (on a network you
    /// trust, or behind a proxy that authenticates). Without it, Cairn refuses to.
    #[arg(long)]
    allow_unauthenticated: bool,
    /// Serve gRPC and HTTP over TLS with this certificate (PEM: the server's certificate, then
    /// any intermediates). Needs --tls-key.
    #[arg(
        long,
        env = "CAIRN_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1, unencrypted).
    #[arg(
        long,
        env = "CAIRN_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<std::path::PathBuf>,
    /// Base URL put in the management URLs the HTTP API hands out (default: from the request's
    /// Host header), e.g. https://cairn.example.com behind a proxy.
    #[arg(long, env = "CAIRN_PUBLIC_URL")]
    public_url: Option<String>,
    /// How long an SDK worker may hold a work item without completing or abandoning it before
    /// the item is dispatched again (e.g. 5m, 30s, 1h). The protocol has no lease renewal: an
    /// activity that runs longer than this is dispatched a second time.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration, env = "CAIRN_WORK_ITEM_LEASE")]
    work_item_lease: std::time::Duration,
    /// Backlog (instances with work plus queued activities) one SDK worker process is expected
    /// to carry: /api/scale recommends backlog / this many workers.
    #[arg(long, default_value_t = 100, env = "CAIRN_SCALE_BACKLOG_PER_WORKER")]
    scale_backlog_per_worker: u64,
    /// Work that waited longer than this for a worker makes /api/scale ask for one worker more
    /// than are connected (they are saturated).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, env = "CAIRN_SCALE_MAX_WAIT")]
    scale_max_wait: std::time::Duration,
    /// How long work waits for a connected worker that runs it before the log says none does.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, hide = true)]
    unserved_warning_after: std::time::Duration,
    /// Seconds between health pings on idle worker streams.
    #[arg(long, default_value_t = 30, hide = true)]
    health_ping_secs: u64,
}

/// jemalloc rather than glibc's allocator, as TiKV does: glibc's per-thread arenas kept what the
/// checkpoint writer threads allocated and freed, and the process that filled a hub of a million
/// instances stayed at 1.6 GiB where jemalloc needs 0.75 (and fills 25% faster). Measured in
/// docs/benchmarks.md ("The allocator").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options: a background thread gives freed pages back to the system within a second
/// (by default they stay resident for ten, and only an allocating thread returns them).
#[cfg(not(target_env = "msvc"))]
#[export_name = "_rjem_malloc_conf"]
static JEMALLOC_CONF: &[u8; 85] =
    b"background_thread:true,max_background_threads:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour_logs())
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Bench(args) => bench::run(*args).await,
            Command::BenchNode(args) => bench::nodes::run_node(*args).await,
            Command::Cluster(command) => command.run().await,
        }
    });
    // After an error, partition tasks may still be running: drop them without polling them
    // again (a clean stop has already shut the engine down inside `block_on`).
    runtime.shutdown_background();
    result
}

async fn serve(args: ServeArgs) -> Result<()> {
    let config = EngineConfig {
        // Orchestrations and activities come from SDK workers connected over gRPC.
        remote_workers: true,
        ..args.engine.config()
    };
    // The options are checked before the hub is touched: a mistake costs nothing.
    if let Some(t) = &args.auth_token {
        if t.trim().is_empty() {
            anyhow::bail!("--auth-token is empty; give a secret token or leave the option out");
        }
    }
    if args.auth_token.is_none() && !args.allow_unauthenticated {
        let mut public = Vec::new();
        if !reaches_only_this_machine(&args.grpc).await {
            public.push(format!("--grpc {}", args.grpc));
        }
        if !args.no_http && !reaches_only_this_machine(&args.http).await {
            public.push(format!("--http {}", args.http));
        }
        if !public.is_empty() {
            anyhow::bail!(
                "refusing to serve on {} without an auth token: other machines could start, \
                 terminate and purge instances. Set --auth-token (or CAIRN_AUTH_TOKEN), bind to \
                 127.0.0.1, or pass --allow-unauthenticated on a network you trust",
                public.join(" and ")
            );
        }
    }
    // A wrong file is an error before anything is opened or written.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(cairn_http::tls::TlsIdentity::load(cert, key)?),
        _ => None,
    };
    let (config, nats) = args.engine.cluster.attach(config, None).await?;
    // In a cluster, this node shares the hub's partitions with the others: it runs those the
    // balance gives it, and forwards requests for the rest.
    let (config, routers) = match &nats {
        Some(nats) => {
            let (config, routers) = cairn_cluster::shared_config(nats.clone(), config);
            (config, Some(routers))
        }
        None => (config, None),
    };
    let lease = args.engine.cluster.lease_duration();
    // This node's record in the hub's list of live nodes, renewed four times per lease: the
    // other nodes count it alive while it changes.
    let beat = match &nats {
        Some(nats) => {
            let nats = nats.clone();
            let beat = tokio::task::spawn_blocking(move || {
                let record = cairn_cluster::nodes::NodeRecord::starting(&nats.config().node_id);
                cairn_cluster::nodes::NodeBeat::start(nats, record, lease / 4)
            })
            .await
            .context("registering this node panicked")?
            .context("cannot register this node in the hub's list of nodes")?;
            Some(beat)
        }
        None => None,
    };
    // What the dashboard and /api/cluster show of the cluster: read on demand, never written.
    let cluster_view = nats.clone().map(|nats| cairn_http::ClusterView {
        node: nats.config().node_id.clone(),
        status: std::sync::Arc::new(move || {
            let status = cairn_cluster::status::hub_status(&nats).map_err(|e| e.to_string())?;
            serde_json::to_value(status).map_err(|e| e.to_string())
        }),
    });
    if !config.fsync {
        tracing::warn!("fsync is OFF: acknowledged work can be lost on power failure");
    }
    let dir = config.data_dir.clone();
    let max_payload = config.max_payload_bytes;
    // Before the engine opens, so the log's histograms bind to it.
    let prometheus = if args.no_http {
        None
    } else {
        match cairn_http::metrics::install_recorder() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!("metrics are disabled: {e}");
                None
            }
        }
    };
    let engine = Engine::open(config, Registry::new())
        .await
        .with_context(|| format!("cannot open the task hub in {}", dir.display()))?;
    let (records, runnable, activities, timers) =
        engine.recovery.iter().fold((0, 0, 0, 0), |a, r| {
            (
                a.0 + r.replayed_records,
                a.1 + r.runnable,
                a.2 + r.activities,
                a.3 + r.timers,
            )
        });
    let torn: u64 = engine.recovery.iter().map(|r| r.torn_tail_bytes).sum();
    if torn > 0 {
        tracing::warn!(
            "cut {torn} bytes of torn log tail (a write interrupted by a crash; never acknowledged, \
             so nothing acknowledged is lost)"
        );
    }
    let ownership = match (&nats, routers.and_then(|r| r.router())) {
        (Some(nats), Some(router)) => Some(
            cairn_cluster::ownership::Ownership::start(
                nats.clone(),
                engine.partitions(),
                engine.partition_count(),
                router,
                lease,
            )
            .await
            .context("cannot take part in the hub's partitions")?,
        ),
        _ => None,
    };
    // SDK workers connected here run work queued on the other nodes too.
    let _work_sharing = match (&nats, &ownership, engine.remote_queue()) {
        (Some(nats), Some(ownership), Some(queue)) => Some(
            cairn_cluster::work_sharing::WorkSharing::start(
                nats.clone(),
                queue,
                ownership.live_nodes(),
                args.work_item_lease
                    .max(std::time::Duration::from_millis(100)),
            )
            .await
            .map_err(anyhow::Error::msg)
            .context("cannot share work with the hub's other nodes")?,
        ),
        _ => None,
    };
    if ownership.is_some() {
        tracing::info!(
            partitions = engine.partition_count(),
            "joined the hub: this node takes its share of the partitions and forwards requests \
             for the others to the nodes that run them"
        );
    } else if engine.created {
        tracing::info!(
            data = %dir.display(),
            partitions = engine.partition_count(),
            "created a new task hub"
        );
    } else {
        tracing::info!(
            data = %dir.display(),
            partitions = engine.partition_count(),
            "recovered: {records} log records replayed after checkpoints; {runnable} instances with work, \
             {activities} activities and {timers} timers pending"
        );
    }
    let listener = bind(&args.grpc, "gRPC", "--grpc ADDR").await?;
    let grpc_addr = listener
        .local_addr()
        .context("the gRPC listener has no address")?;
    if !grpc_addr.ip().is_loopback() && args.auth_token.is_none() {
        tracing::warn!(
            "the gRPC front listens on {grpc_addr}, reachable from other machines, with NO auth \
             token (--allow-unauthenticated): restrict access to it with a firewall or a private network"
        );
    }
    if !grpc_addr.ip().is_loopback() && args.auth_token.is_some() && tls.is_none() {
        tracing::warn!(
            "the fronts listen on {grpc_addr} without TLS: the auth token and every payload cross \
             the network in clear text. Give --tls-cert and --tls-key, or put a TLS-terminating \
             proxy in front"
        );
    }
    let http_listener = if args.no_http {
        None
    } else {
        Some(bind(&args.http, "HTTP", "--http ADDR or --no-http").await?)
    };
    let http_addr = match &http_listener {
        Some(l) => Some(l.local_addr().context("the HTTP listener has no address")?),
        None => None,
    };
    if let Some(beat) = &beat {
        beat.update(|r| {
            r.role = cairn_cluster::nodes::Role::Serving;
            r.grpc = Some(grpc_addr.to_string());
            r.http = http_addr.map(|a| a.to_string());
        });
    }
    // Install the handlers before saying we run, so an early Ctrl-C is not lost.
    let signal = wait_for_signal()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sidecar_config = cairn_sidecar::SidecarConfig {
        addr: grpc_addr,
        health_ping: std::time::Duration::from_secs(args.health_ping_secs.max(1)),
        work_item_lease: args
            .work_item_lease
            .max(std::time::Duration::from_millis(100)),
        unserved_warning_after: args.unserved_warning_after,
        auth_token: args.auth_token.clone(),
        tls: tls
            .as_ref()
            .map(|t| cairn_sidecar::Identity::from_pem(t.cert_pem(), t.key_pem())),
        // Leave room for protocol framing around the largest payload.
        max_message_bytes: (max_payload * 2).max(64 * 1024 * 1024),
    };
    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let grpc = cairn_sidecar::serve(&engine, sidecar_config, listener, async {
        let _ = stop_rx.await;
    });
    let http = async {
        match http_listener {
            None => std::future::pending().await,
            Some(l) => {
                let config = cairn_http::HttpConfig {
                    auth_token: args.auth_token.clone(),
                    public_url: args.public_url.clone(),
                    max_body_bytes: max_payload + 64 * 1024,
                    tls: tls.clone(),
                    scale: cairn_runtime::scale::ScalePolicy {
                        backlog_per_worker: args.scale_backlog_per_worker.max(1),
                        max_wait: args.scale_max_wait,
                    },
                    cluster: cluster_view.clone(),
                };
                cairn_http::serve(&engine, config, prometheus, l, async {
                    let _ = http_stop_rx.await;
                })
                .await
            }
        }
    };
    let grpcs = if tls.is_some() { "grpcs://" } else { "" };
    match &http_addr {
        Some(addr) => {
            if !addr.ip().is_loopback() && args.auth_token.is_none() {
                tracing::warn!(
                    "the HTTP API listens on {addr}, reachable from other machines, with NO auth token: \
                     anyone who can reach it can start, terminate and purge instances. Set --auth-token \
                     (or CAIRN_AUTH_TOKEN), or bind to 127.0.0.1"
                );
            }
            let https = if tls.is_some() { "https" } else { "http" };
            tracing::info!(grpc = %grpc_addr, http = %addr, "Cairn is running; Durable Task SDKs can connect to {grpcs}{grpc_addr}; dashboard and HTTP API at {https}://{addr}/; press Ctrl-C to stop");
        }
        None => {
            tracing::info!(grpc = %grpc_addr, "Cairn is running; Durable Task SDKs can connect to {grpcs}{grpc_addr}; press Ctrl-C to stop")
        }
    }
    tokio::select! {
        r = grpc => r.context("the gRPC server failed")?,
        r = http => r.context("the HTTP server failed")?,
        _ = signal => {
            let _ = stop_tx.send(());
            let _ = http_stop_tx.send(());
        }
    }
    if let Some(ownership) = ownership {
        tracing::info!("stopping: handing this node's partitions over to the other nodes");
        ownership.stop().await;
    }
    tracing::info!("stopping: flushing the log and writing checkpoints");
    engine.shutdown().await.context("clean shutdown failed")?;
    leave_cluster(beat).await;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Colour only on a terminal, and never when `NO_COLOR` is set (to anything non-empty): logs
/// written to a file or a pipe must not carry escape codes.
fn colour_logs() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// Takes this node out of the hub's list of live nodes, if it is in one.
async fn leave_cluster(beat: Option<cairn_cluster::nodes::NodeBeat>) {
    if let Some(beat) = beat {
        tokio::task::spawn_blocking(move || beat.stop()).await.ok();
    }
}

/// Whether every address `addr` (`HOST:PORT`) resolves to is a loopback one. An address that
/// does not resolve counts as loopback here: binding it fails with its own clear error.
async fn reaches_only_this_machine(addr: &str) -> bool {
    match tokio::net::lookup_host(addr).await {
        Ok(addrs) => addrs.into_iter().all(|a| a.ip().is_loopback()),
        Err(_) => true,
    }
}

/// Listens on `addr`, a `HOST:PORT` where HOST is an IP address or a name (`localhost`): the
/// first address the name resolves to that can be bound is used.
async fn bind(addr: &str, what: &str, flag: &str) -> Result<tokio::net::TcpListener> {
    let has_port = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !has_port {
        anyhow::bail!(
            "cannot listen for {what} on '{addr}': give HOST:PORT, e.g. 127.0.0.1:4001, localhost:4001 or [::1]:4001"
        );
    }
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen for {what} on {addr} (is another Cairn running? use {flag})")
    })
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when this is called.
fn wait_for_signal() -> Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int =
            signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
        let mut term =
            signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

//! The flags that make `cairn serve` (and `cairn bench`) a node of a cluster whose task hub
//! lives in NATS JetStream, and turning them into the engine's configuration.

use anyhow::{Context, Result};
use cairn_runtime::EngineConfig;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args, Clone, Debug, Default)]
pub struct ClusterArgs {
    /// Keep the task hub in NATS JetStream instead of the data directory (which then holds
    /// only caches): the NATS server URLs, comma-separated, e.g. nats://10.0.0.5:4222.
    #[arg(long, value_delimiter = ',', env = "CAIRN_CLUSTER")]
    pub cluster: Vec<String>,
    /// The task hub's name in JetStream (letters, digits, '-' and '_').
    #[arg(long, default_value = "default", env = "CAIRN_HUB")]
    pub hub: String,
    /// This node's name in the cluster (default: the host name and process id).
    #[arg(long, env = "CAIRN_NODE_ID")]
    pub node_id: Option<String>,
    /// JetStream replicas of each partition's streams (default: 3 when the NATS servers form a
    /// cluster, else 1).
    #[arg(long)]
    pub replicas: Option<usize>,
    /// A NATS credentials file (.creds) for servers that require one.
    #[arg(long, env = "CAIRN_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// A CA certificate (PEM) to verify the NATS servers' TLS certificates; TLS is then
    /// required.
    #[arg(long)]
    pub nats_tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) for NATS servers that verify clients (with --nats-tls-key).
    #[arg(long, requires = "nats_tls_key")]
    pub nats_tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, requires = "nats_tls_cert")]
    pub nats_tls_key: Option<PathBuf>,
    /// How long a node may go without renewing its record before the other nodes take its
    /// partitions over (the failover time is this plus the recovery).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub lease: std::time::Duration,
}

impl ClusterArgs {
    pub fn enabled(&self) -> bool {
        !self.cluster.is_empty()
    }

    fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "node".into());
            format!("{host}-{}", std::process::id())
        })
    }

    /// How to reach NATS, for hub `hub`.
    fn client_config(&self, hub: &str) -> cairn_cluster::ClusterConfig {
        let mut cluster =
            cairn_cluster::ClusterConfig::new(self.cluster.clone(), hub, &self.node_id());
        cluster.replicas = self.replicas.unwrap_or(0);
        cluster.credentials = self.nats_creds.clone();
        cluster.tls_ca = self.nats_tls_ca.clone();
        cluster.tls_client = self.nats_tls_cert.clone().zip(self.nats_tls_key.clone());
        cluster
    }

    /// `config` with the hub in JetStream when `--cluster` is given (and the connection);
    /// unchanged otherwise. `hub` overrides `--hub` (the bench gives each scenario a hub of its
    /// own).
    pub async fn attach(
        &self,
        config: EngineConfig,
        hub: Option<String>,
    ) -> Result<(EngineConfig, Option<Arc<cairn_cluster::Nats>>)> {
        if !self.enabled() {
            return Ok((config, None));
        }
        let cluster = self.client_config(hub.as_deref().unwrap_or(&self.hub));
        let urls = cluster.urls_for_people();
        let (nats, config) = tokio::task::spawn_blocking(move || {
            let nats = Arc::new(cairn_cluster::Nats::connect(cluster)?);
            let config = cairn_cluster::cluster_config(nats.clone(), config)?;
            Ok::<_, cairn_cluster::ClusterError>((nats, config))
        })
        .await
        .context("connecting to NATS panicked")?
        .with_context(|| format!("cannot use the task hub in JetStream at {urls}"))?;
        let settings = nats.config();
        tracing::info!(
            hub = %settings.hub,
            node = %settings.node_id,
            replicas = settings.replicas,
            nats = %urls,
            "cluster mode: the task hub lives in JetStream"
        );
        Ok((config, Some(nats)))
    }

    /// JetStream's own figures on the `--cluster` servers (for the bench).
    pub async fn probe(&self) -> Result<cairn_cluster::probe::Probe> {
        let cluster = self.client_config(&format!("probe-{}", std::process::id()));
        tokio::task::spawn_blocking(move || {
            let nats = cairn_cluster::Nats::connect(cluster).map_err(|e| anyhow::anyhow!("{e}"))?;
            let replicas = nats.config().replicas;
            cairn_cluster::probe::probe(&nats, replicas).map_err(|e| anyhow::anyhow!("{e}"))
        })
        .await
        .context("the JetStream probe panicked")?
        .context("measuring JetStream itself")
    }

    /// How long a node's silence means it is gone (its partitions then move).
    pub fn lease_duration(&self) -> std::time::Duration {
        self.lease.max(std::time::Duration::from_millis(200))
    }
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// The hub's nodes, which node runs each partition, and each partition's log and
    /// checkpoints.
    Status(StatusArgs),
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl ClusterCommand {
    pub async fn run(self) -> Result<()> {
        match self {
            ClusterCommand::Status(args) => {
                if !args.cluster.enabled() {
                    anyhow::bail!("give the NATS servers with --cluster nats://HOST:PORT");
                }
                let config = args.cluster.client_config(&args.cluster.hub);
                let urls = config.urls_for_people();
                let status = tokio::task::spawn_blocking(move || {
                    let nats = cairn_cluster::Nats::connect(config)?;
                    cairn_cluster::status::hub_status(&nats)
                })
                .await
                .context("reading the hub's status panicked")?
                .with_context(|| format!("cannot read the hub's status from {urls}"))?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&status)?);
                } else {
                    print_status(&status);
                }
                Ok(())
            }
        }
    }
}

fn print_status(s: &cairn_cluster::status::HubStatus) {
    println!("hub {}: {} partitions", s.hub, s.partitions);
    if s.nodes.is_empty() {
        println!("no live node");
    }
    for n in &s.nodes {
        let role = match n.role {
            cairn_cluster::nodes::Role::Serving => "serving",
            cairn_cluster::nodes::Role::Starting => "starting",
        };
        let fronts = match (&n.grpc, &n.http) {
            (Some(g), Some(h)) => format!(" gRPC {g}, HTTP {h}"),
            (Some(g), None) => format!(" gRPC {g}"),
            _ => String::new(),
        };
        let runs = s
            .partition_status
            .iter()
            .filter(|p| p.owner.as_deref() == Some(n.node.as_str()))
            .count();
        println!(
            "node {} ({role}, Cairn {}){fronts}, runs {runs} partitions",
            n.node, n.version
        );
    }
    println!(
        "{:>9} {:>12} {:>13} {:>6} {:>9} {:>11} {:>13} {:>7} {:>20}",
        "partition",
        "owner",
        "next position",
        "epoch",
        "log msgs",
        "log bytes",
        "checkpoint at",
        "deltas",
        "snapshot at (bytes)"
    );
    for p in &s.partition_status {
        let snapshot = match (p.snapshot_position, p.snapshot_bytes) {
            (Some(at), Some(bytes)) => format!("{at} ({bytes})"),
            _ => "-".to_string(),
        };
        let checkpoint = p
            .checkpoint_position
            .map_or("-".to_string(), |at| at.to_string());
        println!(
            "{:>9} {:>12} {:>13} {:>6} {:>9} {:>11} {:>13} {:>7} {:>20}",
            p.partition,
            p.owner.as_deref().unwrap_or("-"),
            p.next_position,
            p.owner_epoch,
            p.log_messages,
            p.log_bytes,
            checkpoint,
            p.checkpoint_deltas,
            snapshot
        );
    }
}

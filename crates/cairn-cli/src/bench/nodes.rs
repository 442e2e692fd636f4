//! `cairn bench --nodes N`: the scenarios on a hub whose partitions N Cairn nodes share. This
//! process is one node; it starts N-1 more (`cairn bench-node`, the same binary with the same
//! workflows registered), waits until each runs its share of the partitions, and then runs the
//! scenarios as usual: every start, event and status read of a partition another node runs is
//! forwarded there, messages between partitions travel through JetStream, and each node runs
//! the workflows of its own partitions. So the figures include everything a cluster adds.

use anyhow::{Context, Result};
use clap::Args;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// This process's part in a shared hub: its ownership of partitions and its record.
pub struct Member {
    ownership: cairn_cluster::ownership::Ownership,
    beat: cairn_cluster::nodes::NodeBeat,
}

impl Member {
    /// Joins the hub `engine` runs on (opened with `routers` from `shared_config`).
    pub async fn join(
        nats: Arc<cairn_cluster::Nats>,
        engine: &cairn_runtime::Engine,
        routers: &cairn_cluster::routing::JetStreamRouters,
        lease: Duration,
    ) -> Result<Member> {
        let beat_nats = nats.clone();
        let beat = tokio::task::spawn_blocking(move || {
            let record = cairn_cluster::nodes::NodeRecord::starting(&beat_nats.config().node_id);
            cairn_cluster::nodes::NodeBeat::start(beat_nats, record, lease / 4)
        })
        .await
        .context("registering the node panicked")??;
        let router = routers
            .router()
            .context("the engine did not open the cluster's router")?;
        let ownership = cairn_cluster::ownership::Ownership::start(
            nats,
            engine.partitions(),
            engine.partition_count(),
            router,
            lease,
        )
        .await?;
        Ok(Member { ownership, beat })
    }

    /// Hands this node's partitions over and leaves the hub.
    pub async fn leave(self) {
        self.ownership.stop().await;
        let beat = self.beat;
        let _ = tokio::task::spawn_blocking(move || beat.stop()).await;
    }
}

/// The other nodes of a multi-node run.
pub struct Helpers {
    children: Vec<Child>,
}

impl Helpers {
    /// Starts `count` `cairn bench-node` processes on hub `hub` and waits until the hub's
    /// `partitions` are spread over all `count + 1` nodes and every partition answers (a
    /// partition's key moves before its new owner has recovered it).
    pub async fn start(
        urls: &[String],
        hub: &str,
        partitions: u32,
        count: usize,
        lease: Duration,
        client: &cairn_runtime::Client,
    ) -> Result<Helpers> {
        let helpers = Helpers::spread(urls, hub, partitions, count, lease).await?;
        let mut probes: Vec<String> = Vec::new();
        for i in 0.. {
            let id = format!("probe-{i}");
            let p = cairn_core::partition_of(&id, partitions);
            if probes
                .iter()
                .all(|o| cairn_core::partition_of(o, partitions) != p)
            {
                probes.push(id);
            }
            if probes.len() == partitions as usize {
                break;
            }
        }
        for id in probes {
            client
                .get_status(&id, false)
                .await
                .with_context(|| format!("partition of {id} does not answer"))?;
        }
        Ok(helpers)
    }

    async fn spread(
        urls: &[String],
        hub: &str,
        partitions: u32,
        count: usize,
        lease: Duration,
    ) -> Result<Helpers> {
        let mut children = Vec::new();
        for k in 1..=count {
            let child = Command::new(std::env::current_exe().context("finding this binary")?)
                .args(["bench-node", "--cluster", &urls.join(","), "--hub", hub])
                .args(["--node-id", &format!("{hub}-node{k}")])
                .args(["--partitions", &partitions.to_string()])
                .args(["--lease", &format!("{}ms", lease.as_millis())])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .context("starting a bench node")?;
            children.push(child);
        }
        let helpers = Helpers { children };
        let nodes = count + 1;
        let share = (partitions as usize).div_ceil(nodes);
        let (urls, hub_name) = (urls.to_vec(), hub.to_string());
        let started = Instant::now();
        loop {
            let (urls, hub_name) = (urls.clone(), hub_name.clone());
            let owners = tokio::task::spawn_blocking(move || {
                let nats = cairn_cluster::Nats::connect(cairn_cluster::ClusterConfig::new(
                    urls,
                    &hub_name,
                    "bench-watch",
                ))?;
                cairn_cluster::status::hub_status(&nats)
            })
            .await
            .context("reading the hub's owners panicked")?
            .map(|s| {
                s.partition_status
                    .into_iter()
                    .map(|p| p.owner.unwrap_or_default())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
            let mut by_node = std::collections::BTreeMap::<String, usize>::new();
            for o in owners.iter().filter(|o| !o.is_empty()) {
                *by_node.entry(o.clone()).or_default() += 1;
            }
            let covered = by_node.values().sum::<usize>() == partitions as usize;
            if covered && by_node.len() == nodes && by_node.values().all(|n| *n <= share) {
                return Ok(helpers);
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "the {nodes} nodes did not share the {partitions} partitions within 60 s \
                 (owners: {by_node:?})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the helper nodes cleanly (they hand their partitions over) and waits for them.
    pub fn stop(mut self) {
        for child in &self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for child in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `cairn bench-node`: a node of a multi-node bench run (started by `cairn bench --nodes`).
#[derive(Args)]
pub struct NodeArgs {
    #[command(flatten)]
    cluster: crate::cluster::ClusterArgs,
    #[arg(long, default_value_t = 12)]
    partitions: u32,
}

/// Runs a bench node until SIGTERM or SIGINT, then hands its partitions over.
pub async fn run_node(args: NodeArgs) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("cairn-bench-node-{}", std::process::id()));
    let config = cairn_runtime::EngineConfig {
        data_dir: dir.clone(),
        partitions: Some(args.partitions),
        ..cairn_runtime::EngineConfig::default()
    };
    let (config, nats) = args.cluster.attach(config, None).await?;
    let nats = nats.context("a bench node needs --cluster")?;
    let (config, routers) = cairn_cluster::shared_config(nats.clone(), config);
    let registry = super::registry(Arc::default(), Arc::default());
    let engine = cairn_runtime::Engine::open(config, registry).await?;
    let member = Member::join(nats, &engine, &routers, args.cluster.lease_duration()).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    member.leave().await;
    engine.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

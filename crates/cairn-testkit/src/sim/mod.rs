//! # The deterministic simulator
//!
//! Runs the whole engine — its partition leaders, state machine, orchestration replay,
//! activities, timers, entities, client — on one thread of a current-thread Tokio runtime with
//! paused (simulated) time, over the simulator's seams ([`seams`]): in-memory logs and
//! checkpoint stores whose every write is a step the seeded fault injector ([`world`]) may die
//! at, and a router that delays and duplicates deliveries between partitions. After each crash
//! the process "restarts" on what its disks hold and the clients go on; at the end the checks
//! of [`workload`] must hold:
//!
//! * every instance reaches its correct output (every acknowledged start, since clients retry
//!   starts idempotently);
//! * every step of every history has exactly one result (activities, sub-orchestrations,
//!   timers, entity calls: nothing applied twice, nothing lost), and no instance fails
//!   (a non-determinism error would);
//! * every acknowledged entity operation was applied exactly once, unacknowledged ones at most
//!   once;
//! * the status counts the partitions keep equal the instances a query finds;
//! * after every recovery, everything a client saw acknowledged is still there.
//!
//! Everything — the plan, the faults, the engine's ids and clock, the scheduling — comes from
//! the seed, so a seed replays bit for bit: [`SimReport::trace_hash`] hashes every record
//! appended, every step and every answer, and two runs of a seed must agree on it.
//!
//! Run one seed: `cargo run -p cairn-testkit --bin cairn-sim -- --seed N` (add `--trace` to
//! print every step).

pub mod seams;
pub mod workload;
pub mod world;

use cairn_runtime::clock::{Clock, SeededIds, TokioClock};
use cairn_runtime::{Engine, EngineConfig};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use workload::{Life, Plan, Seen};
use world::{Faults, World};

/// How to run a seed.
#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// A deliberate bug to switch on (see `cairn_core::mutation`).
    pub mutation: Option<cairn_core::mutation::Mutation>,
    /// Keep every line of the trace (for printing).
    pub keep_trace: bool,
}

/// What one seed did.
#[derive(Debug, Clone)]
pub struct SimReport {
    pub seed: u64,
    pub problems: Vec<String>,
    pub trace_hash: u64,
    pub steps: u64,
    pub crashes: u32,
    pub lives: u32,
    pub instances: usize,
    pub partitions: u32,
    /// Simulated time the seed covered.
    pub simulated_ms: u64,
    pub trace: Vec<String>,
}

impl SimReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The command that replays a seed.
pub fn replay_command(seed: u64, mutation: Option<cairn_core::mutation::Mutation>) -> String {
    let m = match mutation {
        Some(cairn_core::mutation::Mutation::SkipDedup) => " --mutation skip-dedup",
        Some(cairn_core::mutation::Mutation::EarlyAnswers) => " --mutation early-answers",
        None => "",
    };
    format!("cargo run -p cairn-testkit --bin cairn-sim -- --seed {seed}{m} --trace")
}

fn faults(seed: u64) -> Faults {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.rotate_left(17) ^ 0xfa_17);
    let mut pick = |o: &[u64]| o[rng.random_range(0..o.len())];
    let crashes = pick(&[0, 1, 2, 3, 3]) as u32;
    let crash_within = pick(&[30, 150, 600, 2000]);
    let duplicate_per_mille = pick(&[0, 50, 300]) as u32;
    let max_delivery_delay_us = pick(&[0, 2_000, 50_000]);
    let max_sync_delay_us = pick(&[0, 500, 5_000]);
    let failing_sync = match pick(&[0, 0, 0, 0, 0, 0, 1, 2]) {
        0 => None,
        n => Some(n * pick(&[1, 5, 20])),
    };
    Faults {
        crashes,
        crash_within,
        duplicate_per_mille,
        max_delivery_delay_us,
        max_sync_delay_us,
        failing_sync,
    }
}

/// Runs one seed to the end and checks it.
pub fn run_seed(seed: u64, options: &SimOptions) -> SimReport {
    let plan = Plan::draw(seed);
    let faults = faults(seed);
    let lives = faults.crashes + 1;
    let world = Arc::new(World::new(seed, faults, options.keep_trace));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut problems = Vec::new();
    if let Err(e) = cairn_core::mutation::set(options.mutation) {
        problems.push(e);
    }
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            problems.push(format!("cannot create a directory for the hub: {e}"));
            return report(seed, &plan, &world, problems, 0, 0);
        }
    };
    // Simulated wall-clock time: continuous across restarts (a restart takes a second).
    let mut now: u64 = 1_700_000_000_000;
    let mut lived = 0;
    for life in 0..lives {
        let last = life + 1 == lives;
        world.begin_life(!last);
        world.note(&format!("life {life} begins at {now}"));
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("cannot build a runtime: {e}"));
                break;
            }
        };
        lived += 1;
        let ids = seed.wrapping_mul(1_000_003).wrapping_add(life as u64);
        let result = runtime.block_on(one_life(
            &plan,
            &world,
            &seen,
            dir.path(),
            now,
            ids,
            life > 0,
            last,
        ));
        // Dropping the runtime drops every task of the process: whatever was not on a disk
        // is gone.
        drop(runtime);
        if world.ran_away() {
            problems.push(format!(
                "life {life} did not settle: more than {} steps (a livelock)",
                world::MAX_STEPS_PER_LIFE
            ));
            break;
        }
        match result {
            Ok(end) => now = end + 1_000,
            Err(e) => {
                problems.push(e);
                break;
            }
        }
    }
    let _ = cairn_core::mutation::set(None);
    problems.extend(seen.lock().problems.iter().cloned());
    report(seed, &plan, &world, problems, lived, now)
}

fn report(
    seed: u64,
    plan: &Plan,
    world: &World,
    problems: Vec<String>,
    lives: u32,
    now: u64,
) -> SimReport {
    SimReport {
        seed,
        problems,
        trace_hash: world.trace_hash(),
        steps: world.steps(),
        crashes: world.crashes_seen(),
        lives,
        instances: plan.instances.len(),
        partitions: plan.partitions,
        simulated_ms: now.saturating_sub(1_700_000_000_000),
        trace: world.take_trace_lines(),
    }
}

/// One life of the process: open (recover), check that nothing acknowledged was lost, drive
/// the workload until it is done or the process dies. Returns the simulated time it ended at.
#[allow(clippy::too_many_arguments)]
async fn one_life(
    plan: &Plan,
    world: &Arc<World>,
    seen: &Arc<Mutex<Seen>>,
    dir: &std::path::Path,
    now: u64,
    ids: u64,
    recovering: bool,
    last: bool,
) -> Result<u64, String> {
    let clock = Arc::new(TokioClock::starting_at(now));
    let config = EngineConfig {
        data_dir: dir.to_path_buf(),
        partitions: Some(plan.partitions),
        checkpoint_every_records: plan.checkpoint_every_records,
        checkpoint_interval: Duration::from_millis(plan.checkpoint_interval_ms),
        checkpoints_in_place: plan.checkpoints_in_place,
        instance_cache_mb: plan.instance_cache_mb,
        cache_orchestrators: plan.cache_orchestrators,
        max_queued_requests: plan.max_queued_requests,
        max_concurrent_orchestrations: plan.max_concurrent,
        max_concurrent_activities: plan.max_concurrent,
        max_entity_batch: plan.max_entity_batch,
        dispatch_window: plan.dispatch_window,
        // The same draw: windows of one or two activities put every refill path to work.
        activity_window: plan.dispatch_window,
        logs: Some(Arc::new(seams::SimLogs(world.clone()))),
        checkpoints: Some(Arc::new(seams::SimStores(world.clone()))),
        router: Some(Arc::new(seams::SimRouters(world.clone()))),
        clock: Some(clock.clone()),
        ids: Some(Arc::new(SeededIds::new(ids))),
        ..EngineConfig::default()
    };
    let crash = world.crash.lock().clone();
    let engine = Engine::open(config, workload::registry(world.clone(), seen.clone()))
        .await
        .map_err(|e| format!("the engine did not open: {e}"))?;
    let life = Life {
        world: world.clone(),
        seen: seen.clone(),
        client: engine.client(),
    };
    let work = async {
        if recovering {
            life.check_nothing_lost().await;
        }
        let drives = plan.instances.iter().map(|p| life.drive(p));
        let signals = plan.signals.iter().map(|(op, at)| life.signal(op, *at));
        futures::future::join(
            futures::future::join_all(drives),
            futures::future::join_all(signals),
        )
        .await;
        if last {
            life.check_final(plan, &engine).await;
        }
    };
    tokio::select! {
        biased;
        _ = crash.notified() => {}
        _ = work => {}
    }
    let end = clock.now_millis();
    if world.crashed().is_none() {
        engine
            .shutdown()
            .await
            .map_err(|e| format!("shutdown failed: {e}"))?;
    }
    // A crashed engine is dropped as it stands: no shutdown, no final checkpoint.
    Ok(end)
}

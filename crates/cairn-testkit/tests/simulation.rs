//! The deterministic simulator over many seeds (see `cairn_testkit::sim`): the whole engine at
//! random crash points, torn syncs, failed fsyncs, delayed and duplicated deliveries, with the
//! invariants checked per seed. A failing seed prints the command that replays it.
//!
//! `CAIRN_SIM_SEEDS=N` changes how many seeds run (default 1000).

use cairn_core::mutation::Mutation;
use cairn_testkit::sim::{replay_command, run_seed, SimOptions, SimReport};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

fn seeds() -> u64 {
    std::env::var("CAIRN_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
}

/// Runs seeds `0..count` on two threads (each seed on one thread, as always); stops early at
/// the first failure when `stop_at_failure`. Returns the reports of failing seeds.
fn run_seeds(count: u64, options: &SimOptions, stop_at_failure: bool) -> (u64, Vec<SimReport>) {
    let next = AtomicU64::new(0);
    let ran = AtomicU64::new(0);
    let failed = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= count {
                    return;
                }
                if stop_at_failure && !failed.lock().unwrap().is_empty() {
                    return;
                }
                let report = run_seed(seed, options);
                ran.fetch_add(1, Ordering::SeqCst);
                if !report.ok() {
                    failed.lock().unwrap().push(report);
                }
            });
        }
    });
    let mut failed = failed.into_inner().unwrap();
    failed.sort_by_key(|r| r.seed);
    (ran.into_inner(), failed)
}

fn describe(failed: &[SimReport], mutation: Option<Mutation>) -> String {
    failed
        .iter()
        .take(5)
        .map(|r| {
            format!(
                "seed {}:\n  {}\n  replay: {}",
                r.seed,
                r.problems.join("\n  "),
                replay_command(r.seed, mutation)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_seed_keeps_every_promise() {
    let count = seeds();
    let started = std::time::Instant::now();
    let (ran, failed) = run_seeds(count, &SimOptions::default(), false);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{ran} seeds in {secs:.1} s ({:.0} seeds/s)",
        ran as f64 / secs.max(1e-9)
    );
    assert_eq!(ran, count);
    assert!(
        failed.is_empty(),
        "{} of {ran} seeds failed:\n{}",
        failed.len(),
        describe(&failed, None)
    );
}

#[test]
fn a_seed_replays_bit_for_bit() {
    // Seeds with crashes, torn syncs, duplicates and several partitions among them.
    for seed in (0..seeds()).step_by(50) {
        let a = run_seed(seed, &SimOptions::default());
        let b = run_seed(
            seed,
            &SimOptions {
                keep_trace: true,
                ..SimOptions::default()
            },
        );
        assert_eq!(
            a.trace_hash, b.trace_hash,
            "seed {seed} is not deterministic: {} steps, then {}",
            a.steps, b.steps
        );
        assert_eq!(a.steps, b.steps);
        assert!(!b.trace.is_empty());
    }
}

/// A deliberate bug must turn some seed red within the seeds CI runs, and that seed must
/// replay to the same failure.
fn caught(mutation: Mutation) {
    let options = SimOptions {
        mutation: Some(mutation),
        keep_trace: false,
    };
    let (ran, failed) = run_seeds(seeds(), &options, true);
    let first = failed.first().unwrap_or_else(|| {
        panic!("{mutation:?} survived {ran} seeds: the simulator does not catch it")
    });
    println!(
        "{mutation:?} caught by seed {} after {ran} seeds:\n{}",
        first.seed,
        describe(&failed[..1], Some(mutation))
    );
    let again = run_seed(first.seed, &options);
    assert_eq!(
        again.trace_hash, first.trace_hash,
        "the failing seed does not replay"
    );
    assert_eq!(again.problems, first.problems);
}

#[test]
fn breaking_dedup_is_caught() {
    caught(Mutation::SkipDedup);
}

#[test]
fn answering_before_durable_is_caught() {
    caught(Mutation::EarlyAnswers);
}

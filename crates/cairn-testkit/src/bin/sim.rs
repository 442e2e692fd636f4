//! `cairn-sim`: runs seeds of the deterministic simulator (see `cairn_testkit::sim`).
//!
//! `cairn-sim --seed 42 --trace` replays one seed and prints every step; `--seeds 0..1000`
//! runs a range and prints a line per failing seed; `--twice` runs each seed twice and checks
//! that both runs are bit-for-bit the same (their trace hashes agree).

use anyhow::{bail, Context, Result};
use cairn_testkit::sim::{replay_command, run_seed, SimOptions};
use clap::Parser;

#[derive(Parser)]
#[command(name = "cairn-sim")]
struct Args {
    /// One seed to run.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// A range of seeds, `START..END`.
    #[arg(long)]
    seeds: Option<String>,
    /// Switch a deliberate bug on (skip-dedup, early-answers).
    #[arg(long)]
    mutation: Option<cairn_core::mutation::Mutation>,
    /// Print every step of the trace.
    #[arg(long)]
    trace: bool,
    /// Run each seed twice and compare the trace hashes.
    #[arg(long)]
    twice: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let range = match (&args.seed, &args.seeds) {
        (Some(s), _) => *s..*s + 1,
        (None, Some(r)) => {
            let (a, b) = r
                .split_once("..")
                .context("--seeds takes START..END, e.g. 0..1000")?;
            a.parse::<u64>().context("bad START")?..b.parse::<u64>().context("bad END")?
        }
        (None, None) => 0..100,
    };
    let options = SimOptions {
        mutation: args.mutation,
        keep_trace: args.trace,
    };
    let started = std::time::Instant::now();
    let (mut failed, mut ran) = (0u64, 0u64);
    for seed in range {
        let report = run_seed(seed, &options);
        ran += 1;
        if args.trace {
            for line in &report.trace {
                println!("{line}");
            }
        }
        let mut problems = report.problems.clone();
        if args.twice {
            let again = run_seed(seed, &options);
            if again.trace_hash != report.trace_hash {
                problems.push(format!(
                    "not deterministic: trace hash {:016x} then {:016x}",
                    report.trace_hash, again.trace_hash
                ));
            }
        }
        println!(
            "seed {seed}: {} · {} partitions, {} instances, {} lives, {} crashes, {} steps, {:.1} s simulated, trace {:016x}",
            if problems.is_empty() { "ok" } else { "FAILED" },
            report.partitions,
            report.instances,
            report.lives,
            report.crashes,
            report.steps,
            report.simulated_ms as f64 / 1000.0,
            report.trace_hash
        );
        if !problems.is_empty() {
            failed += 1;
            for p in &problems {
                println!("  {p}");
            }
            println!("  replay: {}", replay_command(seed, args.mutation));
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{ran} seeds in {secs:.1} s ({:.0} seeds/s): {} passed, {failed} failed",
        ran as f64 / secs.max(1e-9),
        ran - failed
    );
    if failed > 0 {
        bail!("{failed} of {ran} seeds failed");
    }
    Ok(())
}

//! Crash test: a separate `cairn` process runs a mixed workload and is killed with SIGKILL at
//! random moments (during start-up and recovery, mid-commit, mid-checkpoint), at least 20 times,
//! restarted each time. At the end every acknowledged start must exist and complete with the
//! right output, and every activity / sub-orchestration / timer result must appear exactly once
//! in its history.

use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;

use common::{finish, ledger_lines, workload};

const ARGS: &[&str] = &["--partitions", "4", "--checkpoint-every", "1500"];

fn ledger_starts(ledger: &Path) -> usize {
    ledger_lines(ledger, "started ")
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ledger = dir.path().join("ledger");
    let seed: u64 = std::env::var("CAIRN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash test seed {seed} (set CAIRN_CRASH_SEED to replay the same kill times)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let kills = 22;
    let mut progressed = 0;
    for round in 0..kills {
        let before = ledger_starts(&ledger);
        let mut child = workload(&data, &ledger, ARGS)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cairn starts");
        // Early kills hit start-up and recovery; later ones hit commits and checkpoints.
        let delay = Duration::from_millis(rng.random_range(40..1200));
        let started = Instant::now();
        while started.elapsed() < delay {
            if let Some(status) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                panic!(
                    "round {round}: the workload exited on its own ({status}) before the kill:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().expect("SIGKILL"); // std's kill() is SIGKILL on Unix
        child.wait().unwrap();
        if ledger_starts(&ledger) > before {
            progressed += 1;
        }
    }
    assert!(
        progressed >= kills / 2,
        "only {progressed} of {kills} rounds made progress"
    );
    let acknowledged = ledger_starts(&ledger);
    assert!(
        acknowledged >= 100,
        "only {acknowledged} acknowledged starts: the workload barely ran"
    );

    let summary = finish(&data, &ledger, ARGS);
    assert_eq!(summary["instances"].as_u64(), Some(acknowledged as u64));
    assert_eq!(summary["ok"].as_u64(), Some(acknowledged as u64));
    assert!(summary["activity_results_checked"].as_u64().unwrap_or(0) > acknowledged as u64);
    // Entity signals: every acknowledged one applied exactly once (checked per signal id in the
    // workload's verification; "problems" is empty), and there were many of them.
    let signals = summary["signals_acknowledged"].as_u64().unwrap_or(0);
    assert!(signals >= 100, "only {signals} acknowledged entity signals");
    assert!(summary["signals_applied"].as_u64().unwrap_or(0) >= signals);
    eprintln!("after {kills} kills: {summary}");
}

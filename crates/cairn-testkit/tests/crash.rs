//! Crash test: a separate `cairn` process runs a mixed workload and is killed with SIGKILL at
//! random moments (during start-up and recovery, mid-commit, mid-checkpoint), at least 20 times,
//! restarted each time. At the end every acknowledged start must exist and complete with the
//! right output, and every activity / sub-orchestration / timer result must appear exactly once
//! in its history.

use rand::Rng;
use std::path::Path;
use std::time::Duration;

mod common;

use common::{finish, kill_times, ledger_lines, run_then_kill};

const ARGS: &[&str] = &["--partitions", "4", "--checkpoint-every", "1500"];

fn ledger_starts(ledger: &Path) -> usize {
    ledger_lines(ledger, "started ")
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ledger = dir.path().join("ledger");
    let mut rng = kill_times("crash test");
    let kills = 22;
    let mut progressed = 0;
    for round in 0..kills {
        let before = ledger_starts(&ledger);
        // Early kills hit start-up and recovery; later ones hit commits and checkpoints.
        let delay = Duration::from_millis(rng.random_range(40..1200));
        run_then_kill(
            &data,
            &ledger,
            ARGS,
            round,
            delay,
            Duration::from_millis(5),
            |_| {},
        );
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

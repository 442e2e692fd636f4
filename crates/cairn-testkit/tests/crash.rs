//! Crash test: a separate `cairn` process runs a mixed workload and is killed with SIGKILL at
//! random moments (during start-up and recovery, mid-commit, mid-checkpoint), at least 20 times,
//! restarted each time. At the end every acknowledged start must exist and complete with the
//! right output, and every activity / sub-orchestration / timer result must appear exactly once
//! in its history.

use rand::Rng;
use std::path::Path;
use std::time::Duration;

mod common;

use common::{check_after_kills, finish, kill_times, ledger_lines, run_then_kill};

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
    let acknowledged = ledger_starts(&ledger);
    let summary = finish(&data, &ledger, ARGS);
    check_after_kills(&summary, kills, progressed, acknowledged, 100, 100);
    eprintln!("after {kills} kills: {summary}");
}

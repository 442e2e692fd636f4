//! A flood of starts, far past what the engine takes, pushed back with "busy", and SIGKILL in
//! the middle of it: memory stays bounded, and every acknowledged start completes exactly once
//! after the restarts.

use rand::Rng;
use std::time::Duration;

mod common;

use common::{finish, kill_times, ledger_lines, run_then_kill};

const ARGS: &[&str] = &[
    "--partitions",
    "4",
    "--checkpoint-every",
    "1500",
    "--workers",
    "2",
    "--flood",
    "2",
    "--max-queued-requests",
    "16",
];

fn rss_mib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024)
}

#[test]
fn a_flood_killed_mid_way_loses_nothing_acknowledged_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ledger = dir.path().join("ledger");
    let mut rng = kill_times("flood test");
    let mut max_rss = 0;
    let mut samples = Vec::new();
    for round in 0..3 {
        let delay = Duration::from_millis(rng.random_range(800..1600));
        run_then_kill(
            &data,
            &ledger,
            ARGS,
            round,
            delay,
            Duration::from_millis(50),
            |pid| {
                if let Some(rss) = rss_mib(pid) {
                    max_rss = max_rss.max(rss);
                    samples.push(rss);
                }
            },
        );
    }
    let acknowledged = ledger_lines(&ledger, "started ");
    let busy = ledger_lines(&ledger, "busy ") * 100;
    eprintln!(
        "acknowledged {acknowledged} starts, refused at least {busy} as busy; RSS max {max_rss} MiB \
         over {} samples",
        samples.len()
    );
    assert!(busy >= 1000, "the flood was never pushed back");
    assert!(
        acknowledged >= 50,
        "only {acknowledged} acknowledged starts"
    );
    // Bounded: the queues hold at most 16 requests per partition, whatever is offered.
    assert!(max_rss < 400, "RSS reached {max_rss} MiB during the flood");

    let summary = finish(&data, &ledger, ARGS);
    assert_eq!(
        summary["ok"].as_u64(),
        Some(acknowledged as u64),
        "{summary}"
    );
}

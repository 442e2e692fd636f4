//! A flood of starts, far past what the engine takes, pushed back with "busy", and SIGKILL in
//! the middle of it: memory stays bounded, and every acknowledged start completes exactly once
//! after the restarts.

use rand::{Rng, SeedableRng};
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;

use common::{finish, ledger_lines, workload};

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
    let seed: u64 = std::env::var("CAIRN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("flood test seed {seed} (set CAIRN_CRASH_SEED to replay the same kill times)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut max_rss = 0;
    let mut samples = Vec::new();
    for round in 0..3 {
        let mut child = workload(&data, &ledger, ARGS)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the workload starts");
        let delay = Duration::from_millis(rng.random_range(800..1600));
        let started = Instant::now();
        while started.elapsed() < delay {
            if let Some(status) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                panic!(
                    "round {round}: the workload exited on its own ({status}):\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            if let Some(rss) = rss_mib(child.id()) {
                max_rss = max_rss.max(rss);
                samples.push(rss);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
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

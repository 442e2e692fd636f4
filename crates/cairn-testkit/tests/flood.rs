//! A flood of starts, far past what the engine takes, pushed back with "busy", and SIGKILL in
//! the middle of it: memory stays bounded, and every acknowledged start completes exactly once
//! after the restarts.

use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn workload(data: &Path, ledger: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn-crash-workload"));
    cmd.args([
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
    ])
    .arg("--data")
    .arg(data)
    .arg("--ledger")
    .arg(ledger)
    .env("RUST_LOG", "warn");
    cmd
}

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

fn ledger_lines(ledger: &Path, prefix: &str) -> usize {
    let text = std::fs::read_to_string(ledger).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete.lines().filter(|l| l.starts_with(prefix)).count()
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
        let mut child = workload(&data, &ledger)
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

    let out = workload(&data, &ledger).arg("--finish").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "verification failed:\n{stdout}\n{stderr}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap_or(""))
            .unwrap_or_else(|e| panic!("bad summary {stdout}: {e}"));
    assert_eq!(
        summary["problems"].as_array().map(|a| a.len()),
        Some(0),
        "{summary}"
    );
    assert_eq!(
        summary["ok"].as_u64(),
        Some(acknowledged as u64),
        "{summary}"
    );
}

//! What the crash, flood and full-disk tests share: running the crash workload, reading its
//! ledger, and its final verification.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The crash workload on `data`, recording acknowledged work in `ledger`, with `args`.
pub fn workload(data: &Path, ledger: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn-crash-workload"));
    cmd.args(args)
        .arg("--data")
        .arg(data)
        .arg("--ledger")
        .arg(ledger)
        .env("RUST_LOG", "warn");
    cmd
}

/// The random source of a kill test's timings: seeded from `CAIRN_CRASH_SEED` to replay a run,
/// else at random (printed, so a failure can be replayed).
pub fn kill_times(test: &str) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    let seed: u64 = std::env::var("CAIRN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{test} seed {seed} (set CAIRN_CRASH_SEED to replay the same kill times)");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Runs the workload for `delay`, calling `tick` with its pid every `every`, then kills it with
/// SIGKILL. Round `round` fails if the workload exits on its own before the kill.
pub fn run_then_kill(
    data: &Path,
    ledger: &Path,
    args: &[&str],
    round: u32,
    delay: Duration,
    every: Duration,
    mut tick: impl FnMut(u32),
) {
    let mut child = workload(data, ledger, args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the workload starts");
    let started = Instant::now();
    while started.elapsed() < delay {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "round {round}: the workload exited on its own ({status}) before the kill:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tick(child.id());
        std::thread::sleep(every);
    }
    child.kill().expect("SIGKILL"); // std's kill() is SIGKILL on Unix
    child.wait().unwrap();
}

/// Complete ledger lines starting with `prefix` (a kill can leave a torn last line, which
/// does not count).
pub fn ledger_lines(ledger: &Path, prefix: &str) -> usize {
    let text = std::fs::read_to_string(ledger).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete.lines().filter(|l| l.starts_with(prefix)).count()
}

/// Runs the workload's `--finish` (wait for everything in the ledger, verify it) and returns its
/// summary, which must report no problems.
pub fn finish(data: &Path, ledger: &Path, args: &[&str]) -> serde_json::Value {
    let out = workload(data, ledger, args)
        .arg("--finish")
        .output()
        .unwrap();
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
    summary
}

/// What every kill test ends with: enough rounds made progress and enough starts were
/// acknowledged (the run was not trivial), and the verification's `summary` found every
/// acknowledged start completed with the right output and every acknowledged entity signal
/// applied (exactly once: the verification checks each signal id).
pub fn check_after_kills(
    summary: &serde_json::Value,
    kills: u32,
    progressed: u32,
    acknowledged: usize,
    min_acknowledged: usize,
    min_signals: u64,
) {
    assert!(
        progressed >= kills / 2,
        "only {progressed} of {kills} rounds made progress"
    );
    assert!(
        acknowledged >= min_acknowledged,
        "only {acknowledged} acknowledged starts: the workload barely ran"
    );
    assert_eq!(summary["instances"].as_u64(), Some(acknowledged as u64));
    assert_eq!(summary["ok"].as_u64(), Some(acknowledged as u64));
    assert!(summary["activity_results_checked"].as_u64().unwrap_or(0) > acknowledged as u64);
    let signals = summary["signals_acknowledged"].as_u64().unwrap_or(0);
    assert!(
        signals >= min_signals,
        "only {signals} acknowledged entity signals"
    );
    assert!(summary["signals_applied"].as_u64().unwrap_or(0) >= signals);
}

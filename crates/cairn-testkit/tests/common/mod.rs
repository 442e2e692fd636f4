//! What the crash, flood and full-disk tests share: running the crash workload, reading its
//! ledger, and its final verification.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

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

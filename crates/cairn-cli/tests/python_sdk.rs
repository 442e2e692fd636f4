//! Runs the Python interop suite (`interop/python`, the official `durabletask` SDK from PyPI)
//! against this build's `cairn` binary. The suite starts its own `cairn serve` processes.
//!
//! Needs a virtualenv with the suite's requirements: `.ci/run` creates it
//! (`python3 -m venv .venv && .venv/bin/pip install -r interop/python/requirements.txt`);
//! `CAIRN_PYTHON` may point at another interpreter that has them.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn official_python_sdk_runs_unchanged_on_cairn() {
    run_suite(&[]);
}

/// The same suite with every `cairn serve` it starts in cluster mode, its hub in JetStream on a
/// `nats-server` started here (the crash test's kill -9 and restart included).
#[test]
fn official_python_sdk_runs_unchanged_on_a_cluster_node() {
    let nats = cairn_cluster::nats_server::NatsCluster::single()
        .unwrap_or_else(|e| panic!("starting nats-server: {e}"));
    run_suite(&[("CAIRN_CLUSTER_NATS", nats.urls().join(","))]);
}

fn run_suite(env: &[(&str, String)]) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = std::env::var("CAIRN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join(".venv/bin/python"));
    assert!(
        python.exists(),
        "no Python environment for the interop suite at {}: run \
         `python3 -m venv .venv && .venv/bin/pip install -r interop/python/requirements.txt` \
         at the repository root (or set CAIRN_PYTHON)",
        python.display()
    );
    let status = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "interop/python",
        ])
        .current_dir(&root)
        .env("CAIRN_BIN", env!("CARGO_BIN_EXE_cairn"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .status()
        .expect("pytest runs");
    assert!(
        status.success(),
        "the Python interop suite failed (its output is above)"
    );
}

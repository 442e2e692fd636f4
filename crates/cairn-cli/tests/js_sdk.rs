//! Runs the JavaScript SDK smoke test (`interop/js`, `@microsoft/durabletask-js` from npm)
//! against this build's `cairn` binary. `.ci/run` installs it with `npm ci` in `interop/js`.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn official_javascript_sdk_runs_on_cairn() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../interop/js");
    assert!(
        dir.join("node_modules/@microsoft/durabletask-js").exists(),
        "the JavaScript SDK is not installed: run `npm ci` in {}",
        dir.display()
    );
    let status = Command::new("node")
        .args(["--test"])
        .current_dir(&dir)
        .env("CAIRN_BIN", env!("CARGO_BIN_EXE_cairn"))
        .status()
        .expect("node runs");
    assert!(
        status.success(),
        "the JavaScript smoke test failed (its output is above)"
    );
}

//! Runs the dashboard's end-to-end test (`interop/dashboard`: Playwright driving Debian's
//! headless Chromium against a real `cairn serve` with a JavaScript SDK worker). `.ci/run`
//! installs Chromium and runs `npm ci` there. Screenshots land in `interop/dashboard/screenshots/`.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn dashboard_works_in_headless_chromium() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../interop/dashboard");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci` in {}",
        dir.display()
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "Chromium is not installed at {chromium}: `apt-get install chromium` (or set CHROMIUM)"
    );
    let status = Command::new("node")
        .args(["--test"])
        .current_dir(&dir)
        .env("CAIRN_BIN", env!("CARGO_BIN_EXE_cairn"))
        .env("CHROMIUM", &chromium)
        .status()
        .expect("node runs");
    assert!(
        status.success(),
        "the dashboard end-to-end test failed (its output is above)"
    );
}

//! A full disk: the workload runs on a small tmpfs until it is full. Cairn must stop with a
//! clear error, and everything it acknowledged must still be there: the data directory, copied
//! to a disk with room, recovers and completes every acknowledged instance.
//!
//! Needs root (to mount a tmpfs), which Cairn's CI and development machines have.

use std::process::Command;
use std::time::{Duration, Instant};

struct Mount(std::path::PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

mod common;

use common::{finish, workload};

const ARGS: &[&str] = &["--partitions", "2", "--checkpoint-every", "500"];

#[test]
fn full_disk_gives_a_clear_error_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small-disk");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("the mount command runs");
    assert!(
        mounted.success(),
        "this test mounts a 4 MiB tmpfs and needs root to do so"
    );
    let guard = Mount(mnt.clone());
    let data = mnt.join("data");
    let ledger = dir.path().join("ledger");

    let started = Instant::now();
    let mut child = workload(&data, &ledger, ARGS)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            panic!("the workload did not stop on a full disk within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the workload should fail when the disk is full"
    );
    assert!(
        stderr.contains("disk full") || stderr.contains("No space left on device"),
        "the error does not say the disk is full:\n{stderr}"
    );
    let acknowledged = std::fs::read_to_string(&ledger)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("started"))
        .count();
    assert!(
        acknowledged > 20,
        "only {acknowledged} starts before the disk filled"
    );

    // Move the data to a disk with room and recover it there.
    let rescued = dir.path().join("rescued");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&data)
        .arg(&rescued)
        .status()
        .unwrap();
    assert!(cp.success());
    drop(guard);
    let summary = finish(&rescued, &ledger, ARGS);
    assert_eq!(
        summary["instances"].as_u64(),
        Some(acknowledged as u64),
        "{summary}"
    );
    assert_eq!(
        summary["ok"].as_u64(),
        Some(acknowledged as u64),
        "{summary}"
    );
}

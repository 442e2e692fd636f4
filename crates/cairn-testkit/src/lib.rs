//! # cairn-testkit: what Cairn's tests run and users never do
//!
//! * `cairn-crash-workload` (`src/bin/crash_workload.rs`): a mixed workload that the crash test
//!   (`tests/crash.rs`) kills with SIGKILL at random moments and restarts, then verifies that
//!   every acknowledged start completed with the right output and every result was applied
//!   exactly once; the full-disk test (`tests/disk_full.rs`) runs it on a 4 MiB tmpfs.
//!
//! It must never be a dependency of a shipped crate.

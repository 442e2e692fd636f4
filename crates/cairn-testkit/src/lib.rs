//! # cairn-testkit: what Cairn's tests run and users never do
//!
//! * `cairn-crash-workload` (`src/bin/crash_workload.rs`): a mixed workload that the crash test
//!   (`tests/crash.rs`) kills with SIGKILL at random moments and restarts, then verifies that
//!   every acknowledged start completed with the right output and every result was applied
//!   exactly once; the full-disk test (`tests/disk_full.rs`) runs it on a 4 MiB tmpfs.
//! * [`sim`] and `cairn-sim` (`src/bin/sim.rs`): the deterministic simulator, which runs the
//!   whole engine on one thread with simulated time, in-memory seams and a seeded fault
//!   injector, at every crash point; `tests/simulation.rs` runs it over many seeds.
//! * [`checks`]: the exactly-once checks both share.
//!
//! It must never be a dependency of a shipped crate.

pub mod checks;
pub mod sim;

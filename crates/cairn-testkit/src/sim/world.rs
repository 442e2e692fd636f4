//! The simulated world outside the engine: the seeded fault injector, the "disks" that survive
//! a crash, and the trace of everything that happened.
//!
//! Every seam operation (append, sync, checkpoint write, log trim, delivery between
//! partitions) and every answer a client sees is a *step*. The injector draws, per life of the
//! process, the step at which the process crashes; from that step on nothing reaches a disk and
//! nothing a client receives counts, exactly as if the process had died there.

use cairn_storage::seam::{
    MemoryCheckpointStore, MemoryCheckpointStores, MemoryDisk, MemoryPartitionLogs,
};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use tokio::sync::Notify;

/// What a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    Append,
    Sync,
    CheckpointWrite,
    Trim,
    Deliver,
    Answer,
}

/// What the injector says about a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Go,
    /// The process dies at this step (the caller decides how far the step itself got).
    Crash,
    /// The process is already dead: do nothing, tell nobody.
    Dead,
}

/// Fault rates of one seed, drawn from its seed.
#[derive(Debug, Clone)]
pub struct Faults {
    /// Crashes before the final life (each at a random step).
    pub crashes: u32,
    /// Steps of one life before its crash: drawn up to this.
    pub crash_within: u64,
    /// Chance (per mille) that a delivery between partitions is also delivered again later.
    pub duplicate_per_mille: u32,
    /// Largest delay of a delivery between partitions, in microseconds.
    pub max_delivery_delay_us: u64,
    /// Largest delay of a sync (an fsync's latency), in microseconds.
    pub max_sync_delay_us: u64,
    /// A sync that fails (the partition stops; the process is restarted), if any, by its
    /// number within the life.
    pub failing_sync: Option<u64>,
}

struct State {
    rng: StdRng,
    step: u64,
    crash_at: Option<u64>,
    failing_sync: Option<u64>,
    syncs: u64,
    crashed: Option<String>,
    trace: u64,
    trace_lines: Option<Vec<String>>,
    crashes_seen: u32,
    /// Steps at the start of this life, and whether the life ran past its step budget.
    life_start: u64,
    runaway: bool,
}

/// Steps one life may take: the workload needs a few hundred; far more means the engine does
/// not settle (a livelock, such as messages bouncing for ever).
pub const MAX_STEPS_PER_LIFE: u64 = 100_000;

/// Shared by the seams, the workload and the driver of one seed.
pub struct World {
    state: Mutex<State>,
    /// Woken when the process dies.
    pub crash: Mutex<Arc<Notify>>,
    /// Partition logs and checkpoint stores: what survives a crash.
    disks: MemoryPartitionLogs,
    stores: MemoryCheckpointStores,
    pub faults: Faults,
}

/// FNV-1a, 64 bits: stable across builds and platforms, so a trace hash printed by one run
/// can be compared with any other.
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl World {
    pub fn new(seed: u64, faults: Faults, keep_trace: bool) -> World {
        World {
            state: Mutex::new(State {
                rng: StdRng::seed_from_u64(seed ^ 0x5eed_0fc0_ffee),
                step: 0,
                crash_at: None,
                failing_sync: None,
                syncs: 0,
                crashed: None,
                trace: 0xcbf2_9ce4_8422_2325,
                trace_lines: keep_trace.then(Vec::new),
                crashes_seen: 0,
                life_start: 0,
                runaway: false,
            }),
            crash: Mutex::new(Arc::new(Notify::new())),
            disks: MemoryPartitionLogs::default(),
            stores: MemoryCheckpointStores::default(),
            faults,
        }
    }

    /// A random number in `range` from the seed's stream.
    pub fn draw(&self, range: std::ops::Range<u64>) -> u64 {
        if range.is_empty() {
            return range.start;
        }
        self.state.lock().rng.random_range(range)
    }

    /// True with the given chance (per mille).
    pub fn chance(&self, per_mille: u32) -> bool {
        self.draw(0..1000) < per_mille as u64
    }

    /// Starts a new life of the process: with `crash`, one that dies at a random step.
    pub fn begin_life(&self, crash: bool) {
        let mut s = self.state.lock();
        s.crashed = None;
        s.syncs = 0;
        s.life_start = s.step;
        s.crash_at = crash.then(|| {
            let within = self.faults.crash_within.max(1);
            s.step + 1 + s.rng.random_range(0..within)
        });
        s.failing_sync = if crash {
            self.faults.failing_sync
        } else {
            None
        };
        drop(s);
        *self.crash.lock() = Arc::new(Notify::new());
    }

    /// Why the process died in this life, if it did.
    pub fn crashed(&self) -> Option<String> {
        self.state.lock().crashed.clone()
    }

    /// Whether a life ran past [`MAX_STEPS_PER_LIFE`] (and was stopped).
    pub fn ran_away(&self) -> bool {
        self.state.lock().runaway
    }

    pub fn crashes_seen(&self) -> u32 {
        self.state.lock().crashes_seen
    }

    /// The process dies now.
    pub fn kill(&self, why: String) {
        let mut s = self.state.lock();
        if s.crashed.is_some() {
            return;
        }
        let line = format!("crash at step {}: {why}", s.step);
        Self::record(&mut s, &line);
        s.crashed = Some(why);
        s.crashes_seen += 1;
        drop(s);
        self.crash.lock().notify_one();
    }

    /// One step: recorded in the trace, and perhaps the one the process dies at.
    pub fn step(&self, kind: StepKind, detail: &str) -> Verdict {
        let mut s = self.state.lock();
        if s.crashed.is_some() {
            return Verdict::Dead;
        }
        s.step += 1;
        let line = format!("{} {kind:?} {detail}", s.step);
        Self::record(&mut s, &line);
        if s.step - s.life_start > MAX_STEPS_PER_LIFE {
            s.runaway = true;
            drop(s);
            self.kill(format!("more than {MAX_STEPS_PER_LIFE} steps in one life"));
            return Verdict::Dead;
        }
        if s.crash_at == Some(s.step) {
            drop(s);
            self.kill(format!("{kind:?} {detail}"));
            return Verdict::Crash;
        }
        Verdict::Go
    }

    /// Whether this sync is the one the injector fails.
    pub fn sync_fails(&self) -> bool {
        let mut s = self.state.lock();
        s.syncs += 1;
        s.failing_sync == Some(s.syncs)
    }

    /// Adds bytes (a record's) to the trace.
    pub fn trace_bytes(&self, bytes: &[u8]) {
        let mut s = self.state.lock();
        s.trace = fnv(s.trace, bytes);
    }

    /// Adds a line to the trace.
    pub fn note(&self, line: &str) {
        let mut s = self.state.lock();
        Self::record(&mut s, line);
    }

    /// Adds a line to the printed trace only (not to its hash, so `--trace` does not change
    /// a run): details worth reading, costly to format.
    pub fn detail(&self, line: impl FnOnce() -> String) {
        let mut s = self.state.lock();
        if let Some(lines) = &mut s.trace_lines {
            lines.push(format!("    {}", line()));
        }
    }

    fn record(s: &mut State, line: &str) {
        s.trace = fnv(s.trace, line.as_bytes());
        s.trace = fnv(s.trace, b"\n");
        if let Some(lines) = &mut s.trace_lines {
            lines.push(line.to_string());
        }
    }

    pub fn trace_hash(&self) -> u64 {
        self.state.lock().trace
    }

    pub fn steps(&self) -> u64 {
        self.state.lock().step
    }

    pub fn take_trace_lines(&self) -> Vec<String> {
        self.state.lock().trace_lines.take().unwrap_or_default()
    }

    pub fn disk(&self, partition: u32) -> MemoryDisk {
        self.disks.disk(partition)
    }

    pub fn store(&self, partition: u32) -> MemoryCheckpointStore {
        self.stores.store(partition)
    }
}

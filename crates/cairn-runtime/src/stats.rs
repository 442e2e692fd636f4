//! What a partition exposes for observability: counters, status counts, cache figures and the
//! work-item queues (how many items wait for a worker slot, and for how long).
//!
//! Everything here is written by the partition's own tasks with relaxed atomics or a short
//! lock, and read by whoever renders metrics. Nothing here influences what the engine does.

use cairn_core::RuntimeStatus;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counters a partition exposes (benchmarks, metrics, the dashboard).
#[derive(Default, Debug)]
pub struct LeaderStats {
    pub records: AtomicU64,
    pub batches: AtomicU64,
    pub episodes: AtomicU64,
    pub replays: AtomicU64,
    pub activities: AtomicU64,
    pub checkpoints: AtomicU64,
    pub cached_instances: AtomicU64,
    /// Approximate memory held by cached instances and live orchestrators, in bytes (measured
    /// when the cache is trimmed, after each checkpoint).
    pub cache_bytes: AtomicU64,
    /// Replay cursors and last-use times the partition keeps beside instances' cache slots
    /// (both leave with the instance), counted together; measured when the cache is trimmed.
    pub tracked_ids: AtomicU64,
    /// Instance lookups answered from memory / read from the checkpoint store.
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    /// Orchestration instances by status, in [`RuntimeStatus::ALL`] order.
    pub status_counts: [AtomicU64; RuntimeStatus::ALL.len()],
    /// Instances purged (by request or by retention) through this process.
    pub purged: AtomicU64,
    /// Orchestration instances by name (published by the leader when they change).
    pub name_counts: Mutex<Arc<BTreeMap<String, u64>>>,
    /// Instances with work to run (dispatched or waiting in the store), by orchestration or
    /// entity name.
    pub backlog: Mutex<Arc<BTreeMap<String, u64>>>,
    /// Queued activities (running, or waiting in the store for a worker), by activity name.
    pub activity_backlog: Mutex<Arc<BTreeMap<String, u64>>>,
    /// Armed durable timers (in the timer wheel, or waiting in the store).
    pub timers_armed: AtomicU64,
    /// Episodes and entity batches dispatched now (at most the dispatch window per name).
    pub dispatched: AtomicU64,
    /// Episodes waiting for an orchestration slot or a remote worker.
    pub orchestrator_queue: Arc<WorkGauge>,
    /// Activities waiting for an activity slot or a remote worker.
    pub activity_queue: Arc<WorkGauge>,
    /// Entity batches waiting for a slot or a remote worker.
    pub entity_queue: Arc<WorkGauge>,
    /// Why the partition stopped accepting writes, once it has.
    pub failure: Mutex<Option<String>>,
}

impl LeaderStats {
    /// Forgets what describes the partition's current state (counts, backlogs, cache), when
    /// it stops running here: the node that runs it now publishes them. Counters of what this
    /// process did stay.
    pub fn clear(&self) {
        for slot in &self.status_counts {
            slot.store(0, Ordering::Relaxed);
        }
        for map in [&self.name_counts, &self.backlog, &self.activity_backlog] {
            *map.lock() = Arc::default();
        }
        for gauge in [
            &self.timers_armed,
            &self.dispatched,
            &self.cached_instances,
            &self.cache_bytes,
            &self.tracked_ids,
        ] {
            gauge.store(0, Ordering::Relaxed);
        }
    }

    /// (status, count) for every status.
    pub fn instances_by_status(&self) -> Vec<(RuntimeStatus, u64)> {
        RuntimeStatus::ALL
            .iter()
            .zip(&self.status_counts)
            .map(|(s, n)| (*s, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Orchestration instances by name.
    pub fn instances_by_name(&self) -> Arc<BTreeMap<String, u64>> {
        self.name_counts.lock().clone()
    }

    /// Instances with work to run, by orchestration or entity name.
    pub fn backlog_by_name(&self) -> Arc<BTreeMap<String, u64>> {
        self.backlog.lock().clone()
    }

    /// Queued activities, by activity name.
    pub fn activity_backlog_by_name(&self) -> Arc<BTreeMap<String, u64>> {
        self.activity_backlog.lock().clone()
    }
}

/// Work items waiting to start, with the time each was queued.
#[derive(Default, Debug)]
pub struct WorkGauge {
    next: AtomicU64,
    /// Ticket number -> queued at. Numbers grow with time, so the first entry is the oldest.
    waiting: Mutex<BTreeMap<u64, Instant>>,
}

impl WorkGauge {
    /// Counts an item as waiting until the ticket is dropped.
    pub fn enter(self: &Arc<Self>) -> WorkTicket {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.waiting.lock().insert(id, Instant::now());
        WorkTicket {
            gauge: Arc::clone(self),
            id,
        }
    }

    /// Items waiting now.
    pub fn len(&self) -> usize {
        self.waiting.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How long the oldest waiting item has waited (zero when none waits).
    pub fn oldest_age(&self) -> Duration {
        self.waiting
            .lock()
            .first_key_value()
            .map(|(_, at)| at.elapsed())
            .unwrap_or_default()
    }
}

/// An item's place in a [`WorkGauge`]; dropping it means the item started.
#[derive(Debug)]
pub struct WorkTicket {
    gauge: Arc<WorkGauge>,
    id: u64,
}

impl Drop for WorkTicket {
    fn drop(&mut self) {
        self.gauge.waiting.lock().remove(&self.id);
    }
}

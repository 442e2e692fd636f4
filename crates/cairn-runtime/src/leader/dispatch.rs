//! The dispatch window: how much of a partition's backlog is in memory at once.
//!
//! An instance with work ([`cairn_core::is_runnable`]) costs memory once its episode is
//! dispatched: its state in the cache, its history, a task and, for remote workers, a queued
//! work item. A backlog of a million starts that no connected worker runs must not cost a
//! million of those. So each partition dispatches at most `dispatch_window` episodes (or entity
//! batches) per orchestration or entity name at a time; the rest of the backlog stays in the
//! checkpoint store under its backlog index key, oldest first, and is read back a window at a
//! time as dispatched work finishes.
//!
//! The window is per name so that one name's backlog (say, of an orchestration no connected
//! worker runs) never holds back another's.
//!
//! Every runnable instance not dispatched is found again by one of two routes:
//! * it changed since the last checkpoint (it is dirty): the state machine asked for its
//!   episode ([`cairn_core::Effect::RunEpisode`]) when it changed, and a full window put it in
//!   `overflow`;
//! * it did not: the store (with the checkpoint being written overlaid) files it under its
//!   backlog key, which a refill scans.
//!
//! Overflowed ids are forgotten when a checkpoint takes them (they are in the store from then
//! on), so `overflow` is bounded by the dirty set, and the window by `dispatch_window` times
//! the names with a backlog.
//!
//! This module only decides *which* runnable instances start; it never changes state.

use super::*;

/// Dispatched work and the backlog not yet dispatched, by name.
#[derive(Default)]
pub(super) struct Dispatch {
    /// Instances whose episode (or entity batch) runs now, with the name it counts under.
    running: HashMap<String, String>,
    in_flight: HashMap<String, usize>,
    /// Dirty runnable instances that found their name's window full, by name.
    overflow: HashMap<String, BTreeSet<String>>,
    /// Names that may have runnable instances not dispatched.
    behind: BTreeSet<String>,
}

impl Dispatch {
    pub(super) fn is_running(&self, id: &str) -> bool {
        self.running.contains_key(id)
    }

    pub(super) fn running_count(&self) -> usize {
        self.running.len()
    }

    /// Takes a slot in `name`'s window (of `window` slots) for `id`; false (and `id`
    /// remembered as overflow) if the window is full.
    pub(super) fn admit(&mut self, id: &str, name: &str, window: usize) -> bool {
        let n = self.in_flight.entry(name.to_string()).or_default();
        if *n >= window {
            self.overflow
                .entry(name.to_string())
                .or_default()
                .insert(id.to_string());
            self.behind.insert(name.to_string());
            return false;
        }
        *n += 1;
        self.running.insert(id.to_string(), name.to_string());
        true
    }

    /// Frees the slot `id` held (its episode or batch is done).
    pub(super) fn finished(&mut self, id: &str) {
        if let Some(name) = self.running.remove(id) {
            if let Some(n) = self.in_flight.get_mut(&name) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.in_flight.remove(&name);
                }
            }
        }
    }

    /// A checkpoint took every dirty instance: overflowed ones are in the store now.
    pub(super) fn checkpointed(&mut self) {
        self.overflow.clear();
    }

    /// Names whose window has room for a refill: at most half full, so that refills (a store
    /// scan each) come in batches rather than one per finished episode.
    fn refillable(&self, window: usize) -> Vec<String> {
        self.behind
            .iter()
            .filter(|name| {
                let n = self.in_flight.get(*name).copied().unwrap_or(0);
                n <= window / 2
            })
            .cloned()
            .collect()
    }
}

impl Leader {
    /// Slots per name (at least one, whatever the configuration says).
    pub(super) fn window(&self) -> usize {
        self.shared.config.dispatch_window.max(1)
    }

    /// Dispatches backlog into every window with room: overflowed instances first, then the
    /// oldest of the store's backlog index.
    pub(super) fn refill(&mut self) {
        if self.failed.is_some() || self.dispatch.behind.is_empty() {
            return;
        }
        let window = self.window();
        for name in self.dispatch.refillable(window) {
            let room =
                window.saturating_sub(self.dispatch.in_flight.get(&name).copied().unwrap_or(0));
            let overflowed = self.dispatch.overflow.remove(&name).unwrap_or_default();
            let mut started = 0;
            let mut left = overflowed.into_iter();
            while started < room {
                let Some(id) = left.next() else { break };
                if self.start_episode(&id) {
                    started += 1;
                }
            }
            let rest: BTreeSet<String> = left.collect();
            if !rest.is_empty() {
                // The window is full again: the store's part waits for the next refill.
                self.dispatch
                    .overflow
                    .entry(name.clone())
                    .or_default()
                    .extend(rest);
                continue;
            }
            // The store's backlog, oldest first. Instances that run now, or changed since the
            // checkpoint (the store's entry may be stale; memory has them), are skipped.
            let want = room - started;
            let mut candidates = Vec::with_capacity(want);
            let mut exhausted = true;
            if want > 0 {
                let r = self.store.scan_index_desc(
                    &cairn_core::index::backlog_prefix(&name),
                    None,
                    &mut |_, id| {
                        if !self.dispatch.is_running(id) && !self.state.is_dirty(id) {
                            candidates.push(id.to_string());
                            if candidates.len() >= want {
                                exhausted = false;
                                return false;
                            }
                        }
                        true
                    },
                );
                if let Err(e) = r {
                    self.fail(format!("reading the backlog of '{name}' failed: {e}"));
                    return;
                }
            }
            for id in candidates {
                self.start_episode(&id);
            }
            let overflowed_again = self.dispatch.overflow.contains_key(&name);
            if exhausted && !overflowed_again {
                self.dispatch.behind.remove(&name);
            }
        }
    }

    /// After recovery: every name with a backlog is behind, and the instances replayed from
    /// the log that have work (dirty, so not in the store's index yet) are its overflow.
    pub(super) fn resume_backlog(&mut self) {
        let names: Vec<String> = self.state.globals().backlog.keys().cloned().collect();
        self.dispatch.behind.extend(names);
        let dirty: Vec<(String, String)> = self
            .state
            .dirty_ids()
            .filter_map(|id| {
                let inst = self.state.loaded(id)?;
                is_runnable(&inst.state).then(|| (inst.state.name.clone(), id.clone()))
            })
            .collect();
        for (name, id) in dirty {
            self.dispatch.behind.insert(name.clone());
            self.dispatch.overflow.entry(name).or_default().insert(id);
        }
        self.refill();
    }
}

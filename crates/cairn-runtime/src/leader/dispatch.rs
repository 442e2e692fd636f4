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
//! Queued activities go the same way, with windows of their own per activity name
//! (`activity_window`, larger: an activity in flight costs far less than an instance): one queued
//! since the last checkpoint is in memory (the state machine asked to start it, and a full
//! window put it in `overflow`); any other is in the store's `work` table
//! ([`cairn_core::work`]), filed by name, oldest first, which a refill scans.
//!
//! This module only decides *which* work starts; it never changes state.

use super::*;

/// Dispatched work and the backlog not yet dispatched, by name: of instances (keyed by
/// instance id) or of activities (by activity id).
pub(super) struct Dispatch<K> {
    /// Work that runs now, with the name it counts under.
    running: HashMap<K, Arc<str>>,
    /// How much runs per name. A name's entry stays when its count falls to zero, so that
    /// dispatching allocates nothing once a name has been seen (names are few; work is not).
    in_flight: HashMap<Arc<str>, usize>,
    /// Work changed since the last checkpoint that found its name's window full, by name.
    overflow: HashMap<String, BTreeSet<K>>,
    /// Names that may have work not dispatched.
    behind: BTreeSet<String>,
}

impl<K> Default for Dispatch<K> {
    fn default() -> Self {
        Dispatch {
            running: HashMap::new(),
            in_flight: HashMap::new(),
            overflow: HashMap::new(),
            behind: BTreeSet::new(),
        }
    }
}

impl<K: Clone + Ord + std::hash::Hash> Dispatch<K> {
    pub(super) fn is_running<Q>(&self, id: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.running.contains_key(id)
    }

    pub(super) fn running_count(&self) -> usize {
        self.running.len()
    }

    /// Takes a slot in `name`'s window (of `window` slots) for `id`; false (and `id`
    /// remembered as overflow) if the window is full.
    pub(super) fn admit(&mut self, id: K, name: &str, window: usize) -> bool {
        // Looked up before inserting: this runs once per activity of a fan-out, and a name's
        // entries exist but for its first.
        let name: Arc<str> = match self.in_flight.get_key_value(name) {
            Some((known, _)) => known.clone(),
            None => Arc::from(name),
        };
        let n = self.in_flight.entry(name.clone()).or_default();
        if *n >= window {
            let name = &*name;
            match self.overflow.get_mut(name) {
                Some(ids) => {
                    ids.insert(id);
                }
                None => {
                    self.overflow.insert(name.to_string(), BTreeSet::from([id]));
                }
            }
            if !self.behind.contains(name) {
                self.behind.insert(name.to_string());
            }
            return false;
        }
        *n += 1;
        self.running.insert(id, name);
        true
    }

    /// Frees the slot `id` held (its episode, batch or activity is done).
    pub(super) fn finished<Q>(&mut self, id: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        if let Some(name) = self.running.remove(id) {
            if let Some(n) = self.in_flight.get_mut(&name) {
                *n = n.saturating_sub(1);
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
                let n = self.in_flight.get(name.as_str()).copied().unwrap_or(0);
                n <= window / 2
            })
            .cloned()
            .collect()
    }

    /// How many more `name` may start now (of `window` slots), and the overflowed work to
    /// start first.
    fn room(&mut self, name: &str, window: usize) -> (usize, BTreeSet<K>) {
        let room = window.saturating_sub(self.in_flight.get(name).copied().unwrap_or(0));
        (room, self.overflow.remove(name).unwrap_or_default())
    }

    /// After a refill of `name` started what it could: work left over goes back to overflow
    /// (the window is full again); a name with nothing left in the store or overflow is
    /// caught up.
    fn refilled(&mut self, name: &str, left: BTreeSet<K>, store_exhausted: bool) {
        if !left.is_empty() {
            self.overflow
                .entry(name.to_string())
                .or_default()
                .extend(left);
        } else if store_exhausted && !self.overflow.contains_key(name) {
            self.behind.remove(name);
        }
    }
}

/// What a refill found in the store: work to start, and whether that was all of it.
type Filed<K> = (Vec<K>, bool);

impl Leader {
    /// Slots per name (at least one, whatever the configuration says).
    pub(super) fn window(&self) -> usize {
        self.shared.config.dispatch_window.max(1)
    }

    /// Activity slots per activity name (at least one).
    pub(super) fn activity_window(&self) -> usize {
        self.shared.config.activity_window.max(1)
    }

    /// Dispatches backlog into every window with room: overflowed work first, then the
    /// oldest of the store's (instances by their backlog index, activities by their work key).
    pub(super) fn refill(&mut self) {
        let window = self.window();
        self.refill_windows(
            |l| &mut l.dispatch,
            window,
            |l, id: String| l.start_episode(&id),
            Leader::filed_backlog,
        );
        let window = self.activity_window();
        self.refill_windows(
            |l| &mut l.activity_dispatch,
            window,
            Leader::start_activity,
            Leader::filed_activities,
        );
    }

    /// Refills the windows of one dispatcher (`dispatch`) that have room, starting work with
    /// `start`: its overflow first, then what `filed` reads of the store (at most `want` of a
    /// name that neither runs nor changed since the checkpoint, and whether that was all).
    fn refill_windows<K: Clone + Ord + std::hash::Hash>(
        &mut self,
        dispatch: fn(&mut Leader) -> &mut Dispatch<K>,
        window: usize,
        start: fn(&mut Leader, K) -> bool,
        filed: fn(&Leader, &str, usize) -> Result<Filed<K>, String>,
    ) {
        if self.failed.is_some() {
            return;
        }
        for name in dispatch(self).refillable(window) {
            let (room, overflowed) = dispatch(self).room(&name, window);
            let mut started = 0;
            let mut left = overflowed.into_iter();
            while started < room {
                let Some(id) = left.next() else { break };
                if start(self, id) {
                    started += 1;
                }
            }
            let left: BTreeSet<K> = left.collect();
            let want = if left.is_empty() { room - started } else { 0 };
            // Caught up only if a scan ran out (a window filled from overflow knows nothing of
            // the store).
            let (candidates, exhausted) = if want > 0 {
                match filed(self, &name, want) {
                    Ok(found) => found,
                    Err(e) => {
                        self.fail(e);
                        return;
                    }
                }
            } else {
                (Vec::new(), false)
            };
            for id in candidates {
                start(self, id);
            }
            dispatch(self).refilled(&name, left, exhausted);
        }
    }

    /// The store's backlog of `name`, oldest first: at most `want` instances that do not run
    /// now and did not change since the checkpoint (the store's entry may be stale; memory
    /// has them), and whether that was all of them.
    fn filed_backlog(&self, name: &str, want: usize) -> Result<Filed<String>, String> {
        let mut candidates = Vec::with_capacity(want);
        let mut exhausted = true;
        self.store
            .scan_index_desc(
                &cairn_core::index::backlog_prefix(name),
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
            )
            .map_err(|e| format!("reading the backlog of '{name}' failed: {e}"))?;
        Ok((candidates, exhausted))
    }

    /// The filed activities of `name`, oldest first: at most `want` that do not run now and
    /// did not complete since the checkpoint, and whether that was all of them.
    fn filed_activities(&self, name: &str, want: usize) -> Result<Filed<u64>, String> {
        let mut candidates = Vec::with_capacity(want);
        let mut exhausted = true;
        self.store
            .scan_work(
                &cairn_core::work::activity_name_prefix(name),
                None,
                &mut |key, _| {
                    let Some(id) = cairn_core::work::id_of(key) else {
                        return true;
                    };
                    if !self.activity_dispatch.is_running(&id) && !self.state.activity_done(id) {
                        candidates.push(id);
                        if candidates.len() >= want {
                            exhausted = false;
                            return false;
                        }
                    }
                    true
                },
            )
            .map_err(|e| format!("reading the queued activities '{name}' failed: {e}"))?;
        Ok((candidates, exhausted))
    }

    /// After recovery: every name with a backlog is behind, and the instances replayed from
    /// the log that have work (dirty, so not in the store's index yet) are its overflow; the
    /// same for activities.
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
        // Activities likewise: every name with some queued is behind, and those queued since
        // the checkpoint (replayed from the log) are its overflow.
        let names: Vec<String> = self
            .state
            .globals()
            .activity_backlog
            .keys()
            .cloned()
            .collect();
        self.activity_dispatch.behind.extend(names);
        let queued: Vec<(String, u64)> = self
            .state
            .activities_queued()
            .map(|(id, a)| (a.name.clone(), id))
            .collect();
        for (name, id) in queued {
            self.activity_dispatch.behind.insert(name.clone());
            self.activity_dispatch
                .overflow
                .entry(name)
                .or_default()
                .insert(id);
        }
        self.refill();
    }
}

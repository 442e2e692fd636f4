//! Instances and their cache slots: loading from the checkpoint source on demand, taking an
//! instance out to change it and putting it back (marking it dirty), eviction, and the status
//! counts kept as instances change.

use super::*;

impl PartitionState {
    /// A loaded instance (None if not in memory or absent).
    pub fn loaded(&self, id: &str) -> Option<&Instance> {
        match self.instances.get(id) {
            Some(Slot::Live(i)) => Some(i),
            _ => None,
        }
    }

    /// Whether the state machine knows the instance's current state without the source (an
    /// instance deleted since the last checkpoint is known absent).
    pub fn is_resident(&self, id: &str) -> bool {
        self.instances.contains_key(id) || self.gone.contains(id)
    }

    /// The instance as the state machine sees it, loading it from the source if needed.
    pub fn get(
        &mut self,
        id: &str,
        src: &dyn InstanceSource,
    ) -> Result<Option<&Instance>, SourceError> {
        self.ensure(id, src)?;
        Ok(self.loaded(id))
    }

    /// Instances held in memory (including ones known absent).
    pub fn loaded_count(&self) -> usize {
        self.instances.len()
    }

    pub fn loaded_ids(&self) -> impl Iterator<Item = &String> {
        self.instances.keys()
    }

    pub fn is_dirty(&self, id: &str) -> bool {
        self.dirty.contains(id)
    }

    /// Instances changed (or deleted: [`Self::loaded`] is None) since the last checkpoint. Every
    /// other instance reads the same from the checkpoint (with the batch being written, if
    /// any) as from memory: reads off the partition's task rely on it.
    pub fn dirty_ids(&self) -> impl Iterator<Item = &String> {
        self.dirty.iter()
    }

    /// The instances changed since the last checkpoint that exist now (a subset of
    /// [`Self::dirty_ids`]: what is not here was deleted).
    pub fn changed_live_ids(&self) -> impl Iterator<Item = &String> {
        self.dirty_live.iter()
    }

    /// The instances changed since the last checkpoint, as they are now: a copy that costs
    /// O(1), for a read to take off the partition's task.
    pub fn dirty_set(&self) -> DirtySet {
        self.dirty.clone()
    }

    pub fn dirty_count(&self) -> usize {
        self.dirty.len()
    }

    /// How many of the changed instances still exist (those that hold memory until saved).
    pub fn dirty_live_count(&self) -> usize {
        self.dirty_live.len()
    }

    /// (lookups answered from memory, lookups that went to the source) since this state was
    /// created.
    pub fn cache_counters(&self) -> (u64, u64) {
        (self.cache_hits, self.cache_misses)
    }

    /// Drops a clean instance from memory; returns false if it has unsaved changes.
    pub fn evict(&mut self, id: &str) -> bool {
        if self.dirty.contains(id) {
            return false;
        }
        if self.instances.remove(id).is_some() {
            self.evictions += 1;
        }
        true
    }

    /// Takes out of memory every clean instance that `leave` picks, and returns them, for the
    /// caller to free where it costs least (freeing thousands of instances took milliseconds).
    /// `leave` sees every instance in memory (None: known absent) with its rough footprint and
    /// whether it has unsaved changes (such an instance stays, whatever `leave` says).
    pub fn evict_where(
        &mut self,
        mut leave: impl FnMut(&str, Option<&Instance>, usize, bool) -> bool,
    ) -> Evicted {
        let dirty = &self.dirty;
        let gone: Vec<(String, Slot)> = self
            .instances
            .extract_if(|id, slot| {
                let inst = match slot {
                    Slot::Live(i) => Some(&**i),
                    Slot::Absent => None,
                };
                let size = inst.map_or(0, |i| i.approx_size());
                let is_dirty = dirty.contains(id);
                leave(id, inst, size, is_dirty) && !is_dirty
            })
            .collect();
        self.evictions += gone.len() as u64;
        Evicted(gone)
    }

    /// A count that grows whenever instances stop being resident (evicted, or deleted ones
    /// handed to a checkpoint): while it does not change, an instance that is not resident now
    /// was not resident at any time since, so its stored state did not change either (only
    /// checkpoints of changed, resident instances write it).
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Puts an instance read from the checkpoint source into memory ahead of the record that
    /// needs it, so that applying the record does not wait for the read: `state` must be what
    /// the source held while [`Self::evictions`] read `evictions_then`, and the instance is
    /// taken only if it is still not resident and nothing left memory since. Returns whether it
    /// was taken. Memory is a cache of the source, so this changes no outcome of any record.
    pub fn warm(&mut self, id: &str, state: Option<InstanceState>, evictions_then: u64) -> bool {
        if self.evictions != evictions_then || self.is_resident(id) {
            return false;
        }
        self.instances.insert(id.to_string(), Slot::stored(state));
        true
    }

    pub(super) fn ensure(&mut self, id: &str, src: &dyn InstanceSource) -> Result<(), SourceError> {
        if self.is_resident(id) {
            self.cache_hits += 1;
        } else {
            self.cache_misses += 1;
            let slot = Slot::stored(src.load(id)?);
            self.instances.insert(id.to_string(), slot);
        }
        Ok(())
    }

    pub(super) fn take(
        &mut self,
        id: &str,
        src: &dyn InstanceSource,
    ) -> Result<Option<Box<Instance>>, SourceError> {
        self.ensure(id, src)?;
        match self.instances.insert(id.to_string(), Slot::Absent) {
            Some(Slot::Live(inst)) => {
                // Taken out: it no longer counts until it is put back (a purge never is).
                self.count_status(&inst.state, false);
                Ok(Some(inst))
            }
            _ => Ok(None),
        }
    }

    pub(super) fn put(&mut self, inst: Box<Instance>) {
        let id = inst.state.instance_id.clone();
        self.dirty.insert(id.clone());
        self.dirty_live.insert(id.clone());
        self.count_status(&inst.state, true);
        self.instances.insert(id, Slot::Live(inst));
    }

    /// Marks an instance deleted since the last checkpoint. Until the checkpoint takes it, the
    /// set of those deleted says it is absent, not a cache slot: a purge of hundreds of
    /// thousands would otherwise fill the cache with slots that every trim walks through.
    pub(super) fn mark_gone(&mut self, id: &str) {
        self.dirty.insert(id.to_string());
        self.dirty_live.remove(id);
        self.instances.remove(id);
        self.gone.insert(id.to_string());
    }

    /// Puts back an instance that was only inspected, not changed.
    pub(super) fn put_clean(&mut self, inst: Box<Instance>) {
        let id = inst.state.instance_id.clone();
        self.count_status(&inst.state, true);
        self.instances.insert(id, Slot::Live(inst));
    }

    /// Every change of an instance goes through `take` and `put`, so counting there keeps
    /// `status_counts`, `name_counts` and `backlog` exact without a scan.
    pub(super) fn count_status(&mut self, s: &InstanceState, add: bool) {
        if is_runnable(s) {
            count(&mut self.globals.backlog, &s.name, add);
        }
        if s.entity.is_some() {
            return;
        }
        count(&mut self.globals.status_counts, &s.status, add);
        count(&mut self.globals.name_counts, &s.name, add);
    }
}

/// Instances taken out of memory by [`PartitionState::evict_where`], to be dropped.
pub struct Evicted(Vec<(String, Slot)>);

impl Evicted {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Slot {
    /// The slot of an instance as the checkpoint source holds it (None: absent).
    fn stored(state: Option<InstanceState>) -> Slot {
        match state {
            Some(state) => Slot::Live(Box::new(Instance {
                state,
                tail: Vec::new(),
                reset: false,
            })),
            None => Slot::Absent,
        }
    }
}

/// Adds one to `key`'s count, or takes one away (dropping a count that reaches 0).
pub(super) fn count<K: Ord + Clone>(counts: &mut BTreeMap<K, u64>, key: &K, add: bool) {
    match counts.get_mut(key) {
        Some(n) if add => *n += 1,
        None if add => {
            counts.insert(key.clone(), 1);
        }
        Some(n) => {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(key);
            }
        }
        None => {}
    }
}

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

    /// Whether the state machine knows the instance's current state without the source.
    pub fn is_resident(&self, id: &str) -> bool {
        self.instances.contains_key(id)
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

    pub fn dirty_count(&self) -> usize {
        self.dirty.len()
    }

    /// (lookups answered from memory, lookups that went to the source) since this state was
    /// created.
    pub fn cache_counters(&self) -> (u64, u64) {
        (self.cache_hits, self.cache_misses)
    }

    /// Rough memory footprint of a loaded instance (for the instance cache).
    pub fn footprint(&self, id: &str) -> usize {
        self.loaded(id).map_or(0, |i| i.approx_size())
    }

    /// Drops a clean instance from memory; returns false if it has unsaved changes.
    pub fn evict(&mut self, id: &str) -> bool {
        if self.dirty.contains(id) {
            return false;
        }
        self.instances.remove(id);
        true
    }

    pub(super) fn ensure(&mut self, id: &str, src: &dyn InstanceSource) -> Result<(), SourceError> {
        if self.instances.contains_key(id) {
            self.cache_hits += 1;
        } else {
            self.cache_misses += 1;
            let slot = match src.load(id)? {
                Some(state) => Slot::Live(Box::new(Instance {
                    state,
                    tail: Vec::new(),
                    reset: false,
                })),
                None => Slot::Absent,
            };
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
        self.count_status(&inst.state, true);
        self.instances.insert(id, Slot::Live(inst));
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

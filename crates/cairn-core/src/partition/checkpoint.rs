//! Checkpoint data: everything changed since the last checkpoint, encoded for the store.

use super::*;

impl PartitionState {
    /// Collects everything changed since the last checkpoint and marks it clean. An encoding
    /// failure is returned before anything of the instance it concerns is marked clean; the
    /// shell then stops the partition (recovery replays the log), writing nothing.
    pub fn checkpoint(&mut self) -> Result<CheckpointData, crate::EncodeError> {
        let mut data = CheckpointData {
            position: self.globals.position,
            globals: self.globals.encode()?,
            ..CheckpointData::default()
        };
        // Only the instances that exist are sorted and saved; those deleted are listed in the
        // order they went. A purge leaves thousands of them, and this runs on the partition's
        // task: consuming and sorting the whole set cost ~2 µs each (20 ms per checkpoint).
        // The set itself is dropped here; a caller that wants that off its task holds a copy
        // ([`Self::dirty_set`]) and drops it elsewhere.
        self.dirty = DirtySet::new();
        let mut live: Vec<String> = std::mem::take(&mut self.dirty_live).into_iter().collect();
        live.sort();
        let mut listed = std::collections::HashSet::new();
        for id in live {
            match self.instances.get_mut(&id) {
                Some(Slot::Live(inst)) => {
                    let base = inst.persisted_len();
                    let mut appends = Vec::with_capacity(inst.tail.len());
                    for (i, ev) in inst.tail.iter().enumerate() {
                        let bytes = crate::encode("a history event", ev)?;
                        appends.push((id.clone(), base + i as u32, bytes));
                    }
                    let state = inst.state.encode()?;
                    if inst.reset {
                        data.history_resets.push(id.clone());
                        inst.reset = false;
                    }
                    inst.tail.clear();
                    data.history_appends.extend(appends);
                    data.index_keys
                        .push((id.clone(), crate::index::keys(&inst.state)));
                    data.puts.push((id.clone(), state));
                }
                // Deleted since it was marked (not through `mark_gone`).
                _ => {
                    listed.insert(id.clone());
                    data.history_resets.push(id.clone());
                    data.deletes.push(id);
                }
            }
        }
        let gone = std::mem::take(&mut self.gone);
        listed.reserve(gone.len());
        for id in gone {
            // Created again since (saved above), or deleted twice.
            if matches!(self.instances.get(&id), Some(Slot::Live(_))) || !listed.insert(id.clone())
            {
                continue;
            }
            data.history_resets.push(id.clone());
            data.deletes.push(id);
        }
        (data.work_puts, data.work_deletes) = self.take_work()?;
        Ok(data)
    }

    /// The changes to the store's `work` table since the last checkpoint, as (puts, deletes),
    /// taken: activities queued and timers armed since are filed under their keys
    /// ([`crate::work`]), those completed or fired since unfiled. A checkpoint takes them; so
    /// does the upgrade of a hub of an older format, which rewrites the globals without the
    /// activities and timers they held.
    pub fn take_work(&mut self) -> Result<crate::work::WorkChanges, crate::EncodeError> {
        let (mut puts, mut deletes) = (Vec::new(), Vec::new());
        self.activities.take_changes(
            "a queued activity",
            crate::work::activity_keys,
            &mut puts,
            &mut deletes,
        )?;
        self.timers.take_changes(
            "an armed timer",
            crate::work::timer_keys,
            &mut puts,
            &mut deletes,
        )?;
        Ok((puts, deletes))
    }
}

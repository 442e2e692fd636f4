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
        self.dirty_live = DirtySet::new();
        let mut dirty: Vec<String> = std::mem::take(&mut self.dirty).into_iter().collect();
        dirty.sort();
        for id in dirty {
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
                _ => {
                    data.history_resets.push(id.clone());
                    data.deletes.push(id);
                }
            }
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

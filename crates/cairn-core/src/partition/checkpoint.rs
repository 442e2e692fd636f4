//! Checkpoint data: everything changed since the last checkpoint, taken from the state machine
//! (on the partition's task) and encoded for the store (anywhere).

use super::*;

/// Everything changed since the last checkpoint, taken from the state machine but not yet
/// encoded: what [`PartitionState::take_checkpoint`] hands the shell. Taking it moves the new
/// history events out and copies the changed states, which is all the partition's task must
/// do; [`Self::encode`] (sorting, encoding, listing deletions) can run anywhere. A purge's
/// checkpoint lists tens of thousands of deletions and a busy partition's encodes hundreds of
/// instances: done on the partition's task, that held every step of the partition for 20–30 ms.
///
/// Until the batch is in the store, a take also answers point reads of what it holds
/// ([`Self::changed`], [`Self::deletes`]) without being encoded first: the partition reads
/// instances and pending work while a checkpoint is written, and must not wait for it.
#[derive(Debug)]
pub struct CheckpointTake {
    pub position: u64,
    /// The partition's globals, encoded.
    pub globals: Vec<u8>,
    changed: HashMap<String, Changed>,
    /// Deleted since the last checkpoint (some may be among `changed`: created again since).
    gone: HashSet<String>,
    /// Pending work to file, encoded, and work keys to unfile ([`crate::work`]).
    pub work_puts: Vec<(Vec<u8>, Vec<u8>)>,
    pub work_deletes: Vec<Vec<u8>>,
}

/// A changed instance as it was when the checkpoint was taken.
#[derive(Debug)]
pub struct Changed {
    pub state: InstanceState,
    /// Its history events not yet in the store, the first of them at `first_seq`.
    pub events: Vec<HistoryEvent>,
    pub first_seq: u32,
    /// The store's history rows of an older execution are dropped before `events` go in.
    pub reset: bool,
}

impl Changed {
    /// Its new history rows, encoded: (seq, bytes).
    pub fn history_rows(&self) -> Result<Vec<(u32, Vec<u8>)>, crate::EncodeError> {
        (self.first_seq..)
            .zip(&self.events)
            .map(|(seq, ev)| Ok((seq, crate::encode("a history event", ev)?)))
            .collect()
    }
}

impl CheckpointTake {
    /// A take assembled by hand, for tests of what reads one: `changed` instances (each keyed
    /// by its state's id) and the ids deleted since (`gone`, some possibly among `changed`).
    pub fn from_parts(
        position: u64,
        globals: Vec<u8>,
        changed: Vec<Changed>,
        gone: Vec<String>,
        work_puts: Vec<(Vec<u8>, Vec<u8>)>,
        work_deletes: Vec<Vec<u8>>,
    ) -> CheckpointTake {
        CheckpointTake {
            position,
            globals,
            changed: changed
                .into_iter()
                .map(|c| (c.state.instance_id.clone(), c))
                .collect(),
            gone: gone.into_iter().collect(),
            work_puts,
            work_deletes,
        }
    }

    /// The instance as the batch writes it, if the batch writes it.
    pub fn changed(&self, id: &str) -> Option<&Changed> {
        self.changed.get(id)
    }

    /// The instances the batch writes, in no particular order.
    pub fn changed_instances(&self) -> impl Iterator<Item = &Changed> {
        self.changed.values()
    }

    /// Whether the batch deletes the instance (with its history and index entries).
    pub fn deletes(&self, id: &str) -> bool {
        !self.changed.contains_key(id) && self.gone.contains(id)
    }

    /// Whether the batch replaces or drops what the store holds of the instance.
    pub fn touches(&self, id: &str) -> bool {
        self.changed.contains_key(id) || self.gone.contains(id)
    }

    /// The changed instances encoded (state and index keys), in id order: what scans of a
    /// batch in flight read, and the part of [`Self::encode_with`] that scans need first.
    pub fn encode_instances(&self) -> Result<Vec<EncodedInstance>, crate::EncodeError> {
        let mut out = self
            .changed
            .values()
            .map(|c| {
                Ok(EncodedInstance {
                    id: c.state.instance_id.clone(),
                    state: c.state.encode()?,
                    index_keys: crate::index::keys(&c.state),
                })
            })
            .collect::<Result<Vec<_>, crate::EncodeError>>()?;
        out.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The checkpoint as the store writes it: changed instances and deletions, each in id
    /// order (neighbouring keys are cheaper to write), the instances created again since they
    /// were deleted written, not deleted.
    pub fn encode(&self) -> Result<CheckpointData, crate::EncodeError> {
        self.encode_with(self.encode_instances()?)
    }

    /// [`Self::encode`], with the changed instances already encoded by
    /// [`Self::encode_instances`] (each encoded once, whoever needed them first). `instances`
    /// must be exactly what that returned: an id the take did not change would be written
    /// without its history.
    pub fn encode_with(
        &self,
        instances: Vec<EncodedInstance>,
    ) -> Result<CheckpointData, crate::EncodeError> {
        let mut data = CheckpointData {
            position: self.position,
            globals: self.globals.clone(),
            work_puts: self.work_puts.clone(),
            work_deletes: self.work_deletes.clone(),
            ..CheckpointData::default()
        };
        data.puts.reserve(instances.len());
        data.index_keys.reserve(instances.len());
        for EncodedInstance {
            id,
            state,
            index_keys,
        } in instances
        {
            debug_assert!(self.changed.contains_key(&id), "{id} is not in the take");
            if let Some(c) = self.changed.get(&id) {
                if c.reset {
                    data.history_resets.push(id.clone());
                }
                for (seq, bytes) in c.history_rows()? {
                    data.history_appends.push((id.clone(), seq, bytes));
                }
            }
            data.index_keys.push((id.clone(), index_keys));
            data.puts.push((id, state));
        }
        let mut deletes: Vec<&String> = self
            .gone
            .iter()
            .filter(|id| !self.changed.contains_key(*id))
            .collect();
        deletes.sort_unstable();
        data.deletes = deletes.into_iter().cloned().collect();
        data.history_resets.extend(data.deletes.iter().cloned());
        Ok(data)
    }
}

/// A changed instance of a [`CheckpointTake`], encoded for the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedInstance {
    pub id: String,
    /// Its state ([`InstanceState::encode`]).
    pub state: Vec<u8>,
    /// Its index keys ([`crate::index::keys`]).
    pub index_keys: Vec<Vec<u8>>,
}

impl PartitionState {
    /// Takes everything changed since the last checkpoint and marks it clean; the take is
    /// encoded later ([`CheckpointTake::encode`]). If that fails, nothing may be written: the
    /// shell stops the partition, and recovery replays the log.
    pub fn take_checkpoint(&mut self) -> Result<CheckpointTake, crate::EncodeError> {
        let globals = self.globals.encode()?;
        let (work_puts, work_deletes) = self.take_work()?;
        // The dirty set is dropped here; a caller that wants that off its task holds a copy
        // ([`Self::dirty_set`]) and drops it elsewhere.
        self.dirty = DirtySet::new();
        let mut gone = std::mem::take(&mut self.gone);
        let live = std::mem::take(&mut self.dirty_live);
        let mut changed = HashMap::with_capacity(live.len());
        for id in live {
            match self.instances.get_mut(&id) {
                Some(Slot::Live(inst)) => {
                    let first_seq = inst.persisted_len();
                    let c = Changed {
                        state: inst.state.clone(),
                        events: std::mem::take(&mut inst.tail),
                        first_seq,
                        reset: std::mem::take(&mut inst.reset),
                    };
                    changed.insert(id, c);
                }
                // Deleted since it was marked (not through `mark_gone`).
                _ => {
                    gone.insert(id);
                }
            }
        }
        // The deleted leave the state machine's knowledge with the take (the batch knows them
        // until it is written): a store read begun before now must not put one back.
        if !gone.is_empty() {
            self.evictions += 1;
        }
        Ok(CheckpointTake {
            position: self.globals.position,
            globals,
            changed,
            gone,
            work_puts,
            work_deletes,
        })
    }

    /// Takes everything changed since the last checkpoint, encoded, and marks it clean.
    pub fn checkpoint(&mut self) -> Result<CheckpointData, crate::EncodeError> {
        self.take_checkpoint()?.encode()
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

//! Checkpoints: write what changed since the last one to the store, truncate the log below it,
//! and trim the instance cache to its budget.
//!
//! The periodic checkpoint is written in the background: the leader takes the batch (the
//! changed states copied, their new history moved out, the deleted ids handed over; nothing
//! encoded), puts it in the read overlay, and a thread encodes and writes it while the
//! partition goes on committing. When the write is done the overlay is dropped, the log is
//! truncated and the cache trimmed. Explicit checkpoints and the one at shutdown are written in
//! place, after any background one has finished.

use super::overlay::Overlay;
use super::*;

/// A checkpoint being written in the background.
pub(super) enum Writer {
    Thread(std::thread::JoinHandle<Result<(), String>>),
    /// Already written (on a single-threaded runtime), waiting for its `CheckpointWritten`.
    Finished(Result<(), String>),
}

impl Leader {
    /// Starts writing a checkpoint in the background (one at a time).
    ///
    /// Nothing here waits on the disk: the writer thread first waits until the log is durable
    /// up to the batch (a checkpoint must never get ahead of the log: its state would outlive a
    /// crash that loses the records it came from), then writes the batch, then drops the log
    /// below it. The partition meanwhile goes on committing; reads see the batch through the
    /// overlay, and their answers wait for durability like every answer. A purge of hundreds of
    /// thousands of instances checkpoints often, and each of these waits used to stop the
    /// partition for milliseconds.
    pub(super) fn start_background_checkpoint(&mut self) -> Result<(), EngineError> {
        if self.writing.is_some() {
            return Ok(());
        }
        let log = self.log.clone().ok_or(EngineError::ShuttingDown)?;
        let take = self.take_checkpoint()?;
        // Whoever asked before this batch was taken has everything they saw in it.
        self.checkpoint_promised.append(&mut self.checkpoint_asked);
        let position = take.position;
        let overlay = Arc::new(Overlay::new(take));
        self.overlay.set(Some(overlay.clone()));
        let base = self.overlay.base();
        let tx = self.me.clone();
        let partition = self.partition;
        let slots = self.shared.checkpoint_writers.clone();
        let write = move || {
            // What the partition's own reads may need at once first (work keys, the changed
            // instances in key order), then the batch encoded, all off the partition's task.
            overlay.prepare_reads();
            let result = overlay.encode().and_then(|encoded| {
                // One writer per slot in the whole process: twelve partitions writing a
                // purge's deletions at once took both cores for a second, and every other step
                // waited for its turn behind them. The partition goes on meanwhile; reads see
                // the overlay.
                let _slot = futures::executor::block_on(slots.acquire_owned());
                log.flush()
                    .map_err(|e| format!("the log could not be made durable for a checkpoint: {e}"))
                    .and_then(|_| base.write_checkpoint(&encoded).map_err(|e| e.to_string()))
            });
            if result.is_ok() {
                truncate_log(partition, log.as_ref().as_ref(), position);
            }
            // Freed here, not while the partition joins this thread.
            drop((overlay, base, log));
            let _ = tx.send(Input::CheckpointWritten { position });
            result
        };
        if crate::blocking::single_threaded() {
            // One thread (the simulator): write now, but finish through the same input as a
            // writer thread would, so reads still go through the overlay until then.
            self.writing = Some((position, Writer::Finished(write())));
            return Ok(());
        }
        let spawned = std::thread::Builder::new()
            .name(format!("cairn-checkpoint-p{:02}", self.partition))
            .spawn(write);
        match spawned {
            Ok(handle) => {
                self.writing = Some((position, Writer::Thread(handle)));
                Ok(())
            }
            Err(e) => {
                Err(self.storage_error(format!("cannot start the checkpoint writer thread: {e}")))
            }
        }
    }

    /// A background checkpoint finished: drop the overlay, truncate the log, trim the cache.
    pub(super) fn checkpoint_written(&mut self, position: u64) {
        match &self.writing {
            Some((p, _)) if *p == position => {}
            // Already finished by a checkpoint written in place.
            _ => return,
        }
        if let Err(e) = self.finish_background_checkpoint() {
            self.fail(raw_message(e));
        }
    }

    /// Waits for the background checkpoint, if any, and completes it.
    fn finish_background_checkpoint(&mut self) -> Result<(), EngineError> {
        let Some((_, writer)) = self.writing.take() else {
            return Ok(());
        };
        let result = match writer {
            Writer::Thread(handle) => crate::blocking::blocking(|| handle.join())
                .unwrap_or_else(|_| Err("the checkpoint writer thread panicked".to_string())),
            Writer::Finished(result) => result,
        };
        result.map_err(|e| self.storage_error(e))?;
        // The batch's last owner: freeing tens of thousands of rows is no work for the
        // partition's task.
        crate::blocking::drop_off_task(self.overlay.take(), true);
        // The writer has dropped the log below the checkpoint.
        self.after_checkpoint();
        Ok(())
    }

    /// Takes everything changed since the last checkpoint (the state machine marks it clean),
    /// to be encoded by whoever writes it. The batch may be ahead of the durable log: whoever
    /// writes it makes the log durable up to it first.
    fn take_checkpoint(&mut self) -> Result<CheckpointTake, EngineError> {
        if let Some(f) = &self.failed {
            return Err(self.storage_error(f.clone()));
        }
        // The state machine drops its dirty set; with this copy the set's thousands of ids (a
        // purge's) are freed on the blocking pool instead.
        let released = self.state.dirty_set();
        let take = self
            .state
            .take_checkpoint()
            .map_err(|e| self.storage_error(e.to_string()))?;
        let large = released.len() > 64;
        crate::blocking::drop_off_task(released, large);
        // From here the batch is what the store reads (overlaid until written).
        self.dispatch.checkpointed();
        self.activity_dispatch.checkpointed();
        self.records_since_checkpoint = 0;
        self.last_checkpoint = self.shared.clock.now_millis();
        Ok(take)
    }

    /// After a checkpoint is in the store (and the log below it dropped): clean instances
    /// beyond the cache budget go.
    fn after_checkpoint(&mut self) {
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        for reply in self.checkpoint_promised.drain(..) {
            let _ = reply.send(Ok(()));
        }
        self.trim_cache();
    }

    /// Writes everything changed since the last checkpoint to the store, in place (after any
    /// background checkpoint has finished), then truncates the log and trims the cache.
    pub(super) fn checkpoint(&mut self) -> Result<(), EngineError> {
        self.finish_background_checkpoint()?;
        if let Some(f) = &self.failed {
            return Err(self.storage_error(f.clone()));
        }
        let log = self.log.clone().ok_or(EngineError::ShuttingDown)?;
        let take = self.take_checkpoint()?;
        self.checkpoint_promised.append(&mut self.checkpoint_asked);
        let batch = take
            .encode()
            .map(super::overlay::batch_of)
            .map_err(|e| self.storage_error(e.to_string()))?;
        let durable = crate::blocking::blocking(|| log.flush())
            .map_err(|e| self.storage_error(e.to_string()))?;
        self.durable = self.durable.max(durable);
        crate::blocking::blocking(|| self.store.write_checkpoint(&batch))
            .map_err(|e| self.storage_error(e.to_string()))?;
        crate::blocking::blocking(|| {
            truncate_log(self.partition, log.as_ref().as_ref(), batch.position)
        });
        self.after_checkpoint();
        Ok(())
    }

    /// Drops a clean instance from memory with its cursor; false if it has unsaved changes.
    fn evict(&mut self, id: &str) -> bool {
        if !self.state.evict(id) {
            return false;
        }
        self.cursors.remove(id);
        self.touched.remove(id);
        true
    }

    /// Evicts what need not stay in memory, then least recently used clean instances (and
    /// their cursors) beyond the cache budget. One pass over the cache, copying only the ids
    /// that may still have to go: it runs after every checkpoint, on the partition's task.
    pub(super) fn trim_cache(&mut self) {
        let budget = self.shared.config.instance_cache_mb * 1024 * 1024
            / self.shared.partition_count as usize;
        let mut total = 0usize;
        let mut candidates = Vec::new();
        let mut forget = Vec::new();
        let (dispatch, cursors, touched) = (&self.dispatch, &mut self.cursors, &self.touched);
        let evicted = self.state.evict_where(|id, inst, size, dirty| {
            let size = size + if cursors.contains_key(id) { 4096 } else { 0 };
            // A runnable instance not running is in the store's backlog index: it may go.
            if dirty || dispatch.is_running(id) {
                total += size;
                return false;
            }
            // An ended orchestration rarely runs again (a rewind or restart reloads it): it
            // leaves memory at the first checkpoint that has it, so that a hub of millions of
            // finished instances costs memory for its live ones only. So does one that waits
            // in the backlog for a dispatch window: it is loaded again when dispatched, and a
            // backlog of a million must not fill the cache. An instance known absent (purged,
            // or looked up and not found) leaves too: a purge of hundreds of thousands would
            // otherwise fill memory with its ids, and make every trim slower than the last.
            let leaves = inst.is_none_or(|i| {
                (i.state.entity.is_none() && i.state.status.is_terminal()) || is_runnable(&i.state)
            });
            if leaves {
                if cursors.remove(id).is_some() || touched.contains_key(id) {
                    forget.push(id.to_string());
                }
                return true;
            }
            total += size;
            candidates.push((touched.get(id).copied().unwrap_or(0), size, id.to_string()));
            false
        });
        let large = evicted.len() > 64;
        crate::blocking::drop_off_task(evicted, large);
        for id in forget {
            self.touched.remove(&id);
        }
        if total > budget {
            candidates.sort();
            for (_, size, id) in candidates {
                if total <= budget * 8 / 10 {
                    break;
                }
                if self.evict(&id) {
                    total = total.saturating_sub(size);
                }
            }
        }
        self.stats
            .cache_bytes
            .store(total as u64, Ordering::Relaxed);
        self.stats
            .cached_instances
            .store(self.state.loaded_count() as u64, Ordering::Relaxed);
        self.stats.tracked_ids.store(
            (self.touched.len() + self.cursors.len()) as u64,
            Ordering::Relaxed,
        );
    }
}

/// Drops the log's records covered by a checkpoint at `position`; a failure only delays it to
/// the next checkpoint.
fn truncate_log(partition: u32, log: &dyn PartitionLog, position: u64) {
    if let Err(e) = log.truncate_below(position + 1) {
        tracing::warn!(
            partition,
            "log truncation failed (will retry next checkpoint): {e}"
        );
    }
}

//! Checkpoints: write what changed since the last one to the store, truncate the log below it,
//! and trim the instance cache to its budget.
//!
//! The periodic checkpoint is written in the background: the leader takes the batch (a frozen
//! copy of the dirty set), puts it in the read overlay, and a thread writes it while the
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
    pub(super) fn start_background_checkpoint(&mut self) -> Result<(), EngineError> {
        if self.writing.is_some() {
            return Ok(());
        }
        let batch = Arc::new(self.take_checkpoint()?);
        let position = batch.position;
        self.overlay
            .set(Some(Arc::new(Overlay::new(batch.clone()))));
        let base = self.overlay.base();
        let tx = self.me.clone();
        if crate::blocking::single_threaded() {
            // One thread (the simulator): write now, but finish through the same input as a
            // writer thread would, so reads still go through the overlay until then.
            let result = base.write_checkpoint(&batch).map_err(|e| e.to_string());
            let _ = tx.send(Input::CheckpointWritten { position });
            self.writing = Some((position, Writer::Finished(result)));
            return Ok(());
        }
        let spawned = std::thread::Builder::new()
            .name(format!("cairn-checkpoint-p{:02}", self.partition))
            .spawn(move || {
                let result = base.write_checkpoint(&batch).map_err(|e| e.to_string());
                let _ = tx.send(Input::CheckpointWritten { position });
                result
            });
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
        let Some((position, writer)) = self.writing.take() else {
            return Ok(());
        };
        let result = match writer {
            Writer::Thread(handle) => crate::blocking::blocking(|| handle.join())
                .unwrap_or_else(|_| Err("the checkpoint writer thread panicked".to_string())),
            Writer::Finished(result) => result,
        };
        result.map_err(|e| self.storage_error(e))?;
        self.overlay.set(None);
        self.after_checkpoint(position);
        Ok(())
    }

    /// Takes everything changed since the last checkpoint as a batch (the state machine marks
    /// it clean), after making the log durable up to where the state is.
    fn take_checkpoint(&mut self) -> Result<CheckpointBatch, EngineError> {
        if let Some(f) = &self.failed {
            return Err(self.storage_error(f.clone()));
        }
        let log = self.log.as_ref().ok_or(EngineError::ShuttingDown)?;
        let durable = crate::blocking::blocking(|| log.flush())
            .map_err(|e| self.storage_error(e.to_string()))?;
        self.durable = self.durable.max(durable);
        let data = self
            .state
            .checkpoint()
            .map_err(|e| self.storage_error(e.to_string()))?;
        // From here the batch is what the store reads (overlaid until written).
        self.dispatch.checkpointed();
        self.activity_dispatch.checkpointed();
        self.records_since_checkpoint = 0;
        self.last_checkpoint = self.shared.clock.now_millis();
        Ok(CheckpointBatch {
            position: data.position,
            globals: data.globals,
            instance_puts: data.puts,
            instance_deletes: data.deletes,
            history_truncates: data.history_resets,
            history_appends: data.history_appends,
            index_keys: data.index_keys,
            work_puts: data.work_puts,
            work_deletes: data.work_deletes,
        })
    }

    /// After a checkpoint at `position` is in the store: the log below it can go, and clean
    /// instances beyond the cache budget.
    fn after_checkpoint(&mut self, position: u64) {
        if let Some(log) = self.log.as_ref() {
            if let Err(e) = crate::blocking::blocking(|| log.truncate_below(position + 1)) {
                tracing::warn!(
                    partition = self.partition,
                    "log truncation failed (will retry next checkpoint): {e}"
                );
            }
        }
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.trim_cache();
    }

    /// Writes everything changed since the last checkpoint to the store, in place (after any
    /// background checkpoint has finished), then truncates the log and trims the cache.
    pub(super) fn checkpoint(&mut self) -> Result<(), EngineError> {
        self.finish_background_checkpoint()?;
        if let Some(f) = &self.failed {
            return Err(self.storage_error(f.clone()));
        }
        let batch = self.take_checkpoint()?;
        crate::blocking::blocking(|| self.store.write_checkpoint(&batch))
            .map_err(|e| self.storage_error(e.to_string()))?;
        self.after_checkpoint(batch.position);
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

    /// Evicts least recently used clean instances (and their cursors) beyond the cache budget.
    pub(super) fn trim_cache(&mut self) {
        let budget = self.shared.config.instance_cache_mb * 1024 * 1024
            / self.shared.partition_count as usize;
        let ids: Vec<String> = self.state.loaded_ids().cloned().collect();
        let mut total = 0usize;
        let mut candidates = Vec::new();
        for id in ids {
            let size = self.state.footprint(&id)
                + if self.cursors.contains_key(&id) {
                    4096
                } else {
                    0
                };
            // A runnable instance not running is in the store's backlog index: it may go.
            let busy = self.dispatch.is_running(&id) || self.state.is_dirty(&id);
            if busy {
                total += size;
                continue;
            }
            // An ended orchestration rarely runs again (a rewind or restart reloads it): it
            // leaves memory at the first checkpoint that has it, so that a hub of millions of
            // finished instances costs memory for its live ones only. So does one that waits
            // in the backlog for a dispatch window: it is loaded again when dispatched, and a
            // backlog of a million must not fill the cache.
            let leaves = self.state.loaded(&id).is_some_and(|i| {
                (i.state.entity.is_none() && i.state.status.is_terminal()) || is_runnable(&i.state)
            });
            if leaves && self.evict(&id) {
                continue;
            }
            total += size;
            candidates.push((self.touched.get(&id).copied().unwrap_or(0), size, id));
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
        // Instances known absent are cheap but unbounded in number: forget them too.
        self.stats
            .cached_instances
            .store(self.state.loaded_count() as u64, Ordering::Relaxed);
    }
}

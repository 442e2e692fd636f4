//! Checkpoints: write what changed since the last one to the store, truncate the log below it,
//! and trim the instance cache to its budget.

use super::*;

impl Leader {
    /// Writes everything changed since the last checkpoint to the store, then truncates the
    /// log segments the checkpoint covers and trims the instance cache.
    pub(super) fn checkpoint(&mut self) -> Result<(), EngineError> {
        if let Some(f) = &self.failed {
            return Err(self.storage_error(f.clone()));
        }
        let log = self.log.as_ref().ok_or(EngineError::ShuttingDown)?;
        let durable = tokio::task::block_in_place(|| log.flush())
            .map_err(|e| self.storage_error(e.to_string()))?;
        self.durable = self.durable.max(durable);
        let data = self
            .state
            .checkpoint()
            .map_err(|e| self.storage_error(e.to_string()))?;
        let position = data.position;
        let batch = CheckpointBatch {
            position,
            globals: data.globals,
            instance_puts: data.puts,
            instance_deletes: data.deletes,
            history_truncates: data.history_resets,
            history_appends: data.history_appends,
        };
        tokio::task::block_in_place(|| self.store.write_checkpoint(&batch))
            .map_err(|e| self.storage_error(e.to_string()))?;
        if let Some(log) = self.log.as_ref() {
            if let Err(e) = tokio::task::block_in_place(|| log.truncate_below(position + 1)) {
                tracing::warn!(
                    partition = self.partition,
                    "log truncation failed (will retry next checkpoint): {e}"
                );
            }
        }
        self.records_since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.trim_cache();
        Ok(())
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
            total += size;
            let busy = self.running.contains(&id)
                || self.state.globals().runnable.contains(&id)
                || self.state.is_dirty(&id);
            if !busy {
                candidates.push((self.touched.get(&id).copied().unwrap_or(0), size, id));
            }
        }
        if total > budget {
            candidates.sort();
            for (_, size, id) in candidates {
                if total <= budget * 8 / 10 {
                    break;
                }
                if self.state.evict(&id) {
                    self.cursors.remove(&id);
                    self.touched.remove(&id);
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

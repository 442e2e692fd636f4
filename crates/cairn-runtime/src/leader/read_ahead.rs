//! Reading ahead: the stored instances a purge deletes are read and decoded off the partition's
//! task, before the purge is logged, so that applying it finds them in memory.
//!
//! A purge by filter deletes hundreds of thousands of cold instances, a hundred per record.
//! Loading each from the store while applying the record kept the partition's task busy for
//! milliseconds per record, and every other instance of the partition waited behind it. The
//! reads now run on the blocking pool (like other reads, a bounded number at once); the
//! partition goes on meanwhile, and logs the purge when they are done.
//!
//! This module never changes an outcome: memory is a cache of the store, and an instance read
//! ahead is taken only if the store cannot have changed since it was read
//! ([`PartitionState::warm`]); otherwise the record loads it again, as before.

use super::*;

/// Below this many cold instances a request is applied at once: the hand-off costs the
/// partition about what one cold read does.
const READ_AHEAD_FROM: usize = 2;

impl Leader {
    /// The request back if it can be logged now; None if its instances are being read first
    /// (it comes back as [`Input::ReadAhead`]).
    pub(super) fn read_ahead(
        &mut self,
        kind: ClientRequestKind,
        reply: Reply<ClientResponse>,
    ) -> Option<(ClientRequestKind, Reply<ClientResponse>)> {
        let ClientRequestKind::Purge { instance_ids } = &kind else {
            return Some((kind, reply));
        };
        if crate::blocking::single_threaded() || self.shared.config.reads_on_loop {
            return Some((kind, reply));
        }
        let cold: Vec<String> = instance_ids
            .iter()
            .filter(|id| !self.state.is_resident(id))
            .cloned()
            .collect();
        if cold.len() < READ_AHEAD_FROM {
            return Some((kind, reply));
        }
        // Without a snapshot the record reads the store itself, and reports what fails.
        let Ok(snapshot) = self.store.snapshot() else {
            return Some((kind, reply));
        };
        let evictions = self.state.evictions();
        let counted = InFlight::enter(&self.reads_in_flight);
        let permits = self.shared.read_permits.clone();
        let tx = self.me.clone();
        tokio::spawn(async move {
            let read = async {
                let _permit = permits.acquire_owned().await.ok()?;
                tokio::task::spawn_blocking(move || read_instances(&*snapshot, cold))
                    .await
                    .ok()
            };
            let instances = read.await.unwrap_or_default();
            // A partition that stopped meanwhile drops the reply: the client is told so.
            let _ = tx.send(Input::ReadAhead {
                evictions,
                instances,
                kind,
                reply,
            });
            drop(counted);
        });
        None
    }

    /// Takes what was read ahead into memory (what may still be current).
    pub(super) fn take_read_ahead(
        &mut self,
        evictions: u64,
        instances: Vec<(String, Option<InstanceState>)>,
    ) {
        for (id, state) in instances {
            self.state.warm(&id, state, evictions);
        }
    }
}

/// The stored state of each of `ids` that reads and decodes; one that does not is left out, for
/// the record to load (and report) itself.
fn read_instances(
    snapshot: &dyn cairn_storage::seam::StoreReads,
    ids: Vec<String>,
) -> Vec<(String, Option<InstanceState>)> {
    ids.into_iter()
        .filter_map(|id| {
            let state = match snapshot.get_instance(&id).ok()? {
                Some(bytes) => Some(InstanceState::decode(&bytes).ok()?),
                None => None,
            };
            Some((id, state))
        })
        .collect()
}

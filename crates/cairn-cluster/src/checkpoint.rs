//! # A partition's checkpoints in JetStream
//!
//! [`JetStreamCheckpointStore`] implements the [`CheckpointStore`] seam so that a partition's
//! checkpoints survive the loss of the node that wrote them. Every checkpoint batch is already
//! a delta (what changed since the previous checkpoint, as idempotent puts and deletes), so the
//! durable form is simply the sequence of batches: a second [`JetStreamLog`] per partition
//! (`CAIRN_<hub>_CKPT_<partition>`), fenced by owner epoch like the partition's own log, with
//! large batches split over messages. A checkpoint is written there first and counts only once
//! JetStream has acknowledged it; then it is applied to a local redb file, which serves every
//! read. That file is a cache: a node that takes a partition over with no cache (or a cache of
//! another incarnation of the stream) rebuilds it from the deltas, and one with a cache applies
//! only the deltas it lacks. Re-applying a delta is harmless, since a batch's puts and deletes
//! are idempotent.
//!
//! Not yet: compaction of the delta stream into a snapshot in the JetStream object store, so
//! that a new owner's catch-up is bounded by the state's size rather than its history.
//!
//! It never interprets a batch beyond its log position.

use crate::connection::Nats;
use crate::log::JetStreamLog;
use cairn_storage::log::LogError;
use cairn_storage::seam::{CheckpointStore, CheckpointStores, PartitionLog, StoreReads};
use cairn_storage::store::{CheckpointBatch, PartitionStore, StoreError};
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The stream holding partition `partition`'s checkpoint deltas in hub `hub`.
pub fn deltas_stream(hub: &str, partition: u32) -> String {
    format!("CAIRN_{hub}_CKPT_{partition:03}")
}

fn deltas_subject(hub: &str, partition: u32) -> String {
    format!("cairn.{hub}.ckpt.{partition}")
}

fn remote(what: &str, e: LogError) -> StoreError {
    StoreError::Io(format!(
        "{what}: {e}. Checkpoints already acknowledged are safe in JetStream"
    ))
}

/// A partition's checkpoint store: deltas in JetStream, a local cache for reads.
pub struct JetStreamCheckpointStore {
    local: PartitionStore,
    deltas: Mutex<Box<dyn PartitionLog>>,
    stream: String,
}

impl std::fmt::Debug for JetStreamCheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamCheckpointStore")
            .field("stream", &self.stream)
            .field("local", &self.local)
            .finish()
    }
}

impl JetStreamCheckpointStore {
    /// Opens partition `partition`'s checkpoints, taking its delta stream over (fencing any
    /// previous owner) and bringing the local cache in `cache_dir` up to date. Blocks.
    pub fn open(
        nats: Arc<Nats>,
        partition: u32,
        cache_dir: &Path,
        cache_bytes: usize,
    ) -> Result<JetStreamCheckpointStore, StoreError> {
        let hub = nats.config().hub.clone();
        let stream = deltas_stream(&hub, partition);
        let deltas = JetStreamLog::open_stream(
            nats.clone(),
            stream.clone(),
            deltas_subject(&hub, partition),
            1,
            Box::new(|_| {}),
        )
        .map_err(|e| remote(&format!("opening the checkpoint stream {stream}"), e))?
        .log;
        let incarnation = stream_incarnation(&nats, &stream)?;
        let path = cache_dir.join(format!("p{partition:02}.redb"));
        let stamp = cache_dir.join(format!("p{partition:02}.source"));
        // A cache built from another incarnation of the stream (the hub was deleted and made
        // again under the same name) would look ahead of the new one: start it afresh.
        if std::fs::read_to_string(&stamp).ok().as_deref() != Some(incarnation.as_str()) {
            remove_if_present(&path)?;
        }
        let local = PartitionStore::open_with_cache(&path, cache_bytes)?;
        write_stamp(&stamp, &incarnation)?;
        let have = local.checkpoint_position()?;
        let records = match deltas.read_from(1) {
            Err(LogError::Truncated { first_lsn, .. }) => deltas.read_from(first_lsn),
            other => other,
        }
        .map_err(|e| remote(&format!("reading the checkpoint stream {stream}"), e))?;
        let mut applied = 0usize;
        for (position, bytes) in records {
            let batch: CheckpointBatch = postcard::from_bytes(&bytes).map_err(|e| {
                StoreError::Corrupt(format!(
                    "checkpoint delta {position} in stream {stream} cannot be decoded: {e}. It \
                     was not written by this version of Cairn, or the stream is damaged"
                ))
            })?;
            if batch.position >= have {
                local.write_checkpoint(&batch)?;
                applied += 1;
            }
        }
        tracing::debug!(partition, applied, stream = %stream, "checkpoint cache up to date");
        Ok(JetStreamCheckpointStore {
            local,
            deltas: Mutex::new(deltas),
            stream,
        })
    }
}

/// What tells one life of a stream from another of the same name: its creation time.
fn stream_incarnation(nats: &Nats, stream: &str) -> Result<String, StoreError> {
    let js = nats.jetstream().clone();
    let name = stream.to_string();
    nats.run(async move {
        let mut stream = js.get_stream(&name).await.map_err(|e| e.to_string())?;
        let info = stream.info().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(format!("{name} {}", info.created.unix_timestamp_nanos()))
    })
    .ok_or_else(|| StoreError::Io("the NATS client has stopped".into()))?
    .map_err(|e| StoreError::Io(format!("reading the checkpoint stream {stream}: {e}")))
}

fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::Io(format!(
            "cannot remove the stale checkpoint cache {}: {e}",
            path.display()
        ))),
        _ => Ok(()),
    }
}

fn write_stamp(path: &Path, incarnation: &str) -> Result<(), StoreError> {
    std::fs::write(path, incarnation).map_err(|e| {
        StoreError::Io(format!(
            "cannot write the checkpoint cache's stamp {}: {e}",
            path.display()
        ))
    })
}

cairn_storage::forward_store_reads!(JetStreamCheckpointStore, |s| &s.local);

impl CheckpointStore for JetStreamCheckpointStore {
    fn snapshot(&self) -> Result<Box<dyn StoreReads>, StoreError> {
        self.local.snapshot()
    }

    fn write_checkpoint(&self, batch: &CheckpointBatch) -> Result<(), StoreError> {
        let bytes = postcard::to_allocvec(batch)
            .map_err(|e| StoreError::Io(format!("encoding a checkpoint: {e}")))?;
        // Held until the cache is written too, so that the cache applies deltas in the
        // stream's order.
        let deltas = self.deltas.lock();
        let at = deltas.next_position();
        deltas
            .append(at, vec![bytes])
            .and_then(|_| deltas.flush())
            .map_err(|e| remote(&format!("writing a checkpoint to {}", self.stream), e))?;
        self.local.write_checkpoint(batch)
    }
}

/// Opens each partition's [`JetStreamCheckpointStore`], with its cache in `cache_dir`.
#[derive(Debug, Clone)]
pub struct JetStreamCheckpointStores {
    pub nats: Arc<Nats>,
    pub cache_dir: PathBuf,
    pub cache_bytes: usize,
}

impl CheckpointStores for JetStreamCheckpointStores {
    fn open(&self, partition: u32) -> Result<Arc<dyn CheckpointStore>, StoreError> {
        Ok(Arc::new(JetStreamCheckpointStore::open(
            self.nats.clone(),
            partition,
            &self.cache_dir,
            self.cache_bytes,
        )?))
    }
}

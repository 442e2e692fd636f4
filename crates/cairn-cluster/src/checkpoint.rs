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
//! Every [`SNAPSHOT_EVERY`] checkpoints (by default) the owner compacts: it uploads its cache file, a
//! consistent copy of the whole state, to the JetStream object store (bucket
//! `CAIRN_<hub>_SNAP`, object `pNNN`, with the delta and checkpoint positions it covers), and
//! purges the deltas it covers. A new owner whose cache is behind the snapshot downloads it and
//! applies only the deltas after it, so taking a partition over costs the state's size plus at
//! most [`SNAPSHOT_EVERY`] deltas, never the partition's whole history.
//!
//! It never interprets a batch beyond its log position.

use crate::connection::Nats;
use crate::log::JetStreamLog;
use async_nats::jetstream::object_store;
use cairn_storage::log::LogError;
use cairn_storage::seam::{CheckpointStore, CheckpointStores, PartitionLog, StoreReads};
use cairn_storage::store::{CheckpointBatch, PartitionStore, StoreError};
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Checkpoints between two snapshots of a partition's state, by default
/// ([`crate::ClusterConfig::snapshot_every`]).
pub const SNAPSHOT_EVERY: u64 = 64;

/// The object store bucket of hub `hub`'s partition snapshots.
pub fn snapshot_bucket(hub: &str) -> String {
    format!("CAIRN_{hub}_SNAP")
}

fn snapshot_object(partition: u32) -> String {
    format!("p{partition:03}")
}

/// What a snapshot covers: every delta up to `delta` (a position in the delta stream), which
/// brings the state to checkpoint `position` (a position in the partition's log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Covers {
    pub(crate) delta: u64,
    pub(crate) position: u64,
}

impl Covers {
    fn describe(&self) -> String {
        format!("delta {} position {}", self.delta, self.position)
    }
    pub(crate) fn parse(text: &str) -> Option<Covers> {
        let mut words = text.split_whitespace();
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("delta"), Some(d), Some("position"), Some(p)) => Some(Covers {
                delta: d.parse().ok()?,
                position: p.parse().ok()?,
            }),
            _ => None,
        }
    }
}

/// The stream holding partition `partition`'s checkpoint deltas in hub `hub`.
pub fn deltas_stream(hub: &str, partition: u32) -> String {
    format!("CAIRN_{hub}_CKPT_{partition:03}")
}

fn deltas_subject(hub: &str, partition: u32) -> String {
    format!("cairn.{hub}.ckpt.{partition}")
}

/// Runs `future` on the NATS connection's runtime; its error, already worded, becomes a
/// [`StoreError::Io`].
fn on_nats<T: Send + 'static>(
    nats: &Nats,
    future: impl std::future::Future<Output = Result<T, String>> + Send + 'static,
) -> Result<T, StoreError> {
    nats.run(future)
        .ok_or_else(|| StoreError::Io("the NATS client has stopped".into()))?
        .map_err(StoreError::Io)
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
    nats: Arc<Nats>,
    partition: u32,
    path: PathBuf,
    /// Checkpoints written since the last snapshot.
    since_snapshot: Mutex<u64>,
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
        let mut local = PartitionStore::open_with_cache(&path, cache_bytes)?;
        write_stamp(&stamp, &incarnation)?;
        let mut have = local.checkpoint_position()?;
        // A cache behind the latest snapshot is replaced by it: the deltas the snapshot covers
        // may be gone from the stream.
        let snapshot = snapshot_covers(&nats, partition)?;
        if let Some(covers) = snapshot.filter(|c| c.position > have) {
            drop(local);
            download_snapshot(&nats, partition, &path)?;
            local = PartitionStore::open_with_cache(&path, cache_bytes)?;
            have = local.checkpoint_position()?;
            if have != covers.position {
                return Err(StoreError::Corrupt(format!(
                    "the snapshot of partition {partition} says it covers checkpoint {} but holds \
                     checkpoint {have}",
                    covers.position
                )));
            }
        }
        let from = snapshot.map_or(1, |c| c.delta + 1);
        let records = deltas
            .read_from(from)
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
            nats,
            partition,
            path,
            since_snapshot: Mutex::new(applied as u64),
        })
    }

    /// Uploads the cache file as the partition's snapshot and purges the deltas it covers.
    /// Called with the deltas lock held, so the file is between two checkpoints.
    fn snapshot_now(&self, deltas: &dyn PartitionLog, position: u64) -> Result<(), StoreError> {
        let covers = Covers {
            delta: deltas.next_position() - 1,
            position,
        };
        let copy = self.path.with_extension("snapshot");
        std::fs::copy(&self.path, &copy).map_err(|e| {
            StoreError::Io(format!(
                "copying the checkpoint cache {} for a snapshot: {e}",
                self.path.display()
            ))
        })?;
        let (js, bucket, object) = self.snapshot_target();
        let replicas = self.nats.config().replicas.max(1);
        let upload = copy.clone();
        let partition = self.partition;
        let result = on_nats(&self.nats, async move {
            let store = snapshot_store(&js, &bucket, replicas).await?;
            let mut file = tokio::fs::File::open(&upload).await.map_err(|e| {
                format!(
                    "snapshot of partition {partition}: {}: {e}",
                    upload.display()
                )
            })?;
            store
                .put(
                    object_store::ObjectMetadata {
                        name: object,
                        description: Some(covers.describe()),
                        ..Default::default()
                    },
                    &mut file,
                )
                .await
                .map_err(|e| {
                    format!("snapshot of partition {partition}: uploading the snapshot: {e}")
                })?;
            Ok(())
        });
        // The copy goes whatever happened, the runtime's stop included.
        let _ = std::fs::remove_file(&copy);
        result?;
        deltas
            .truncate_below(covers.delta + 1)
            .map_err(|e| remote("purging checkpoint deltas a snapshot covers", e))?;
        tracing::debug!(
            partition = self.partition,
            delta = covers.delta,
            position,
            "snapshot written"
        );
        Ok(())
    }

    fn snapshot_target(&self) -> (async_nats::jetstream::Context, String, String) {
        (
            self.nats.jetstream().clone(),
            snapshot_bucket(&self.nats.config().hub),
            snapshot_object(self.partition),
        )
    }
}

async fn snapshot_store(
    js: &async_nats::jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<object_store::ObjectStore, String> {
    match js.get_object_store(bucket).await {
        Ok(store) => Ok(store),
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: bucket.to_string(),
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("creating the object store {bucket}: {e}")),
    }
}

/// What the partition's latest snapshot covers, if it has one.
fn snapshot_covers(nats: &Nats, partition: u32) -> Result<Option<Covers>, StoreError> {
    let js = nats.jetstream().clone();
    let bucket = snapshot_bucket(&nats.config().hub);
    let object = snapshot_object(partition);
    on_nats(nats, async move {
        let Ok(store) = js.get_object_store(&bucket).await else {
            return Ok(None);
        };
        match store.info(&object).await {
            Ok(info) => {
                let description = info.description.unwrap_or_default();
                Covers::parse(&description).map(Some).ok_or_else(|| {
                    format!(
                        "the snapshot {bucket}/{object} has no valid description: {description:?}"
                    )
                })
            }
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("reading the snapshot {bucket}/{object}: {e}")),
        }
    })
}

/// Downloads the partition's snapshot to `path` (through a temporary file and a rename).
fn download_snapshot(nats: &Nats, partition: u32, path: &Path) -> Result<(), StoreError> {
    let js = nats.jetstream().clone();
    let bucket = snapshot_bucket(&nats.config().hub);
    let object = snapshot_object(partition);
    let part = path.with_extension("download");
    let target = part.clone();
    on_nats(nats, async move {
        let store = js
            .get_object_store(&bucket)
            .await
            .map_err(|e| format!("opening the object store {bucket}: {e}"))?;
        let mut reader = store
            .get(&object)
            .await
            .map_err(|e| format!("reading the snapshot {bucket}/{object}: {e}"))?;
        let mut file = tokio::fs::File::create(&target)
            .await
            .map_err(|e| format!("{}: {e}", target.display()))?;
        tokio::io::copy(&mut reader, &mut file)
            .await
            .map_err(|e| format!("downloading the snapshot {bucket}/{object}: {e}"))?;
        file.sync_all()
            .await
            .map_err(|e| format!("{}: {e}", target.display()))?;
        Ok(())
    })?;
    std::fs::rename(&part, path).map_err(|e| {
        StoreError::Io(format!(
            "installing the downloaded snapshot as {}: {e}",
            path.display()
        ))
    })
}

/// What tells one life of a stream from another of the same name: its creation time.
fn stream_incarnation(nats: &Nats, stream: &str) -> Result<String, StoreError> {
    let js = nats.jetstream().clone();
    let name = stream.to_string();
    on_nats(nats, async move {
        let read = |e: String| format!("reading the checkpoint stream {name}: {e}");
        let mut stream = js
            .get_stream(&name)
            .await
            .map_err(|e| read(e.to_string()))?;
        let info = stream.info().await.map_err(|e| read(e.to_string()))?;
        Ok(format!("{name} {}", info.created.unix_timestamp_nanos()))
    })
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
        // stream's order, and a snapshot copies the cache between two checkpoints.
        let deltas = self.deltas.lock();
        let at = deltas.next_position();
        deltas
            .append(at, vec![bytes])
            .and_then(|_| deltas.flush())
            .map_err(|e| remote(&format!("writing a checkpoint to {}", self.stream), e))?;
        self.local.write_checkpoint(batch)?;
        let mut since = self.since_snapshot.lock();
        *since += 1;
        if *since >= self.nats.config().snapshot_every.max(1) {
            // The checkpoint is safe in the deltas whatever happens here: a failed snapshot
            // only leaves more deltas for a new owner to apply, and is tried again next time.
            match self.snapshot_now(&**deltas, batch.position) {
                Ok(()) => *since = 0,
                Err(e) => tracing::warn!(partition = self.partition, error = %e, "snapshot failed"),
            }
        }
        Ok(())
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

//! # What `cairn cluster status` shows
//!
//! A read-only look at a hub in JetStream: its partition count, its live nodes, and per
//! partition the node that runs it, the log's tail (next position, owner epoch, size), the
//! checkpoint deltas not yet folded into a snapshot, and what the snapshot covers. It writes
//! nothing: no epoch marker, no owner key.

use crate::checkpoint::{deltas_stream, snapshot_bucket, Covers};
use crate::connection::{ClusterError, Nats};
use crate::frames;
use crate::log::stream_name;
use async_nats::jetstream::{self, kv, object_store};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HubStatus {
    pub hub: String,
    pub partitions: u32,
    /// The live nodes, serving and standing by.
    pub nodes: Vec<crate::nodes::NodeRecord>,
    pub partition_status: Vec<PartitionStatus>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionStatus {
    pub partition: u32,
    /// The node that runs it (its key's holder), if any.
    pub owner: Option<String>,
    /// The position the log's next record gets.
    pub next_position: u64,
    /// The epoch of the owner that wrote the log's last message (one more per takeover).
    pub owner_epoch: u64,
    pub log_messages: u64,
    pub log_bytes: u64,
    /// Checkpoint deltas not yet covered by a snapshot.
    pub checkpoint_deltas: u64,
    /// The log position the latest checkpoint covers, and the records after it (what a new
    /// owner replays): the partition's lag.
    pub checkpoint_position: Option<u64>,
    pub records_after_checkpoint: Option<u64>,
    /// The checkpoint (log position) the snapshot covers, and its size.
    pub snapshot_position: Option<u64>,
    pub snapshot_bytes: Option<usize>,
}

async fn stream_state(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<(jetstream::stream::Stream, jetstream::stream::State)>, String> {
    let Ok(mut stream) = js.get_stream(name).await else {
        return Ok(None);
    };
    let state = stream
        .info()
        .await
        .map_err(|e| format!("{name}: {e}"))?
        .state
        .clone();
    Ok(Some((stream, state)))
}

/// Reads the status of the connected hub.
pub fn hub_status(nats: &Nats) -> Result<HubStatus, ClusterError> {
    let hub = nats.config().hub.clone();
    let js = nats.jetstream().clone();
    nats.run(async move {
        let bucket = js
            .get_key_value(crate::hub::bucket(&hub))
            .await
            .map_err(|_| format!("there is no hub {hub:?} on these NATS servers"))?;
        let record = bucket
            .get("hub")
            .await
            .map_err(|e| format!("reading the hub record: {e}"))?
            .ok_or_else(|| format!("the hub {hub:?} has no record"))?;
        let record: crate::hub::HubRecord =
            serde_json::from_slice(&record).map_err(|e| format!("the hub record: {e}"))?;
        let nodes = crate::nodes::live_nodes(&js, &hub).await?;
        let snapshots: Option<object_store::ObjectStore> =
            js.get_object_store(snapshot_bucket(&hub)).await.ok();
        // Every partition's streams are read at once: a hub of many partitions answers in
        // a few round trips, not a few per partition.
        let mut partition_status = futures::future::try_join_all(
            (0..record.partitions).map(|p| partition_status(&js, &hub, p, snapshots.as_ref())),
        )
        .await?;
        for p in partition_status.iter_mut() {
            p.owner = match bucket.entry(format!("part.{}", p.partition)).await {
                Ok(Some(e)) if e.operation == kv::Operation::Put => {
                    Some(crate::ownership::holder(&e.value))
                }
                _ => None,
            };
        }
        Ok::<_, String>(HubStatus {
            hub,
            partitions: record.partitions,
            nodes,
            partition_status,
        })
    })
    .ok_or(ClusterError::Stopped)?
    .map_err(ClusterError::Remote)
}

/// The status of partition `p` of `hub` (see [`PartitionStatus`]).
async fn partition_status(
    js: &jetstream::Context,
    hub: &str,
    p: u32,
    snapshots: Option<&object_store::ObjectStore>,
) -> Result<PartitionStatus, String> {
    let (mut next_position, mut owner_epoch, mut log_messages, mut log_bytes) = (1, 0, 0, 0);
    if let Some((stream, state)) = stream_state(js, &stream_name(hub, p)).await? {
        log_messages = state.messages;
        log_bytes = state.bytes;
        if state.last_sequence > 0 {
            if let Ok(last) = stream.get_raw_message(state.last_sequence).await {
                if let Ok(decoded) = frames::decode(&last.payload) {
                    next_position = decoded.next_after().0;
                    owner_epoch = decoded.epoch();
                }
            }
        }
    }
    let (mut checkpoint_deltas, mut checkpoint_position) = (0, None);
    if let Some((stream, state)) = stream_state(js, &deltas_stream(hub, p)).await? {
        checkpoint_deltas = state.messages;
        checkpoint_position = latest_checkpoint(&stream, &state).await;
    }
    let (mut snapshot_position, mut snapshot_bytes) = (None, None);
    if let Some(store) = snapshots {
        if let Ok(info) = store.info(format!("p{p:03}")).await {
            snapshot_bytes = Some(info.size);
            snapshot_position = info
                .description
                .as_deref()
                .and_then(Covers::parse)
                .map(|c| c.position);
        }
    }
    let checkpoint_position = checkpoint_position.or(snapshot_position);
    Ok(PartitionStatus {
        owner: None,
        records_after_checkpoint: checkpoint_position
            .map(|at| next_position.saturating_sub(1).saturating_sub(at)),
        checkpoint_position,
        partition: p,
        next_position,
        owner_epoch,
        log_messages,
        log_bytes,
        checkpoint_deltas,
        snapshot_position,
        snapshot_bytes,
    })
}

/// The log position of the newest checkpoint delta in the stream: its last message holding a
/// whole delta (an owner's epoch marker may follow it).
async fn latest_checkpoint(
    stream: &jetstream::stream::Stream,
    state: &jetstream::stream::State,
) -> Option<u64> {
    let mut sequence = state.last_sequence;
    while sequence >= state.first_sequence.max(1) && state.last_sequence - sequence < 4 {
        let message = stream.get_raw_message(sequence).await.ok()?;
        if let Ok(frames::Decoded::Records { frames, .. }) = frames::decode(&message.payload) {
            return match frames.as_slice() {
                [.., last] if last.starts && last.ends => {
                    postcard::from_bytes::<cairn_storage::store::CheckpointBatch>(last.bytes)
                        .ok()
                        .map(|batch| batch.position)
                }
                _ => None,
            };
        }
        sequence -= 1;
    }
    None
}

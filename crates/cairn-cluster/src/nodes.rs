//! # Which nodes of a hub are alive
//!
//! Every node of a hub keeps a record under its name in the KV bucket
//! `CAIRN_<hub>_NODES`. The bucket's entries expire [`NODE_TTL`] after they were last written,
//! and each node rewrites its own every [`BEAT`]: a node that dies (`kill -9`, a lost machine)
//! drops out of the list by itself, with no clock compared between machines; one that stops
//! cleanly deletes its record at once.
//!
//! What it owns: the node records, for people (`cairn cluster status`, `/api/cluster`, the
//! dashboard) to see the hub's nodes and their fronts, and for [`crate::ownership`] to tell
//! the live nodes from the dead (a record that stops changing). Nothing here decides which
//! node runs a partition: that is the ownership's job, and the fenced logs'.

use crate::connection::{ClusterError, Nats};
use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// How long a node's record outlives its last renewal.
pub const NODE_TTL: Duration = Duration::from_secs(10);
/// How often a node renews its record.
pub const BEAT: Duration = Duration::from_secs(2);

/// The bucket of hub `hub`'s node records.
pub fn bucket(hub: &str) -> String {
    format!("CAIRN_{hub}_NODES")
}

/// What a node does for the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Starting: its fronts do not listen yet.
    Starting,
    /// Its fronts listen: it answers for every instance and runs its share of the partitions.
    Serving,
}

/// One node's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub node: String,
    pub role: Role,
    /// The addresses its fronts listen on (once it serves).
    pub grpc: Option<String>,
    pub http: Option<String>,
    /// When the node started, milliseconds since the Unix epoch (its own clock).
    pub started_at: u64,
    /// The Cairn version it runs.
    pub version: String,
}

impl NodeRecord {
    /// A record for node `node`, starting now.
    pub fn starting(node: &str) -> NodeRecord {
        NodeRecord {
            node: node.to_string(),
            role: Role::Starting,
            grpc: None,
            http: None,
            started_at: cairn_runtime::clock::Clock::now_millis(&cairn_runtime::clock::SystemClock),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

async fn open_bucket(
    js: &jetstream::Context,
    hub: &str,
    replicas: usize,
) -> Result<kv::Store, String> {
    let name = bucket(hub);
    js.create_or_update_key_value(kv::Config {
        bucket: name.clone(),
        history: 1,
        max_age: NODE_TTL,
        num_replicas: replicas.max(1),
        ..Default::default()
    })
    .await
    .map_err(|e| format!("creating the KV bucket {name}: {e}"))
}

/// This node's record, kept alive until [`NodeBeat::stop`] (or the process dies).
pub struct NodeBeat {
    record: tokio::sync::watch::Sender<NodeRecord>,
    renewing: tokio::task::JoinHandle<()>,
    store: kv::Store,
    nats: Arc<Nats>,
}

impl NodeBeat {
    /// Writes `record` and keeps renewing it, every `every` (at most [`BEAT`]). Blocks until
    /// the first write is acknowledged.
    pub fn start(
        nats: Arc<Nats>,
        record: NodeRecord,
        every: Duration,
    ) -> Result<NodeBeat, ClusterError> {
        let every = every.clamp(Duration::from_millis(50), BEAT);
        let js = nats.jetstream().clone();
        let config = nats.config().clone();
        let first = record.clone();
        let store = nats
            .run(async move {
                crate::connection::patiently(Duration::from_secs(10), || async {
                    let store = open_bucket(&js, &config.hub, config.replicas).await?;
                    put(&store, &first).await?;
                    Ok::<_, String>(store)
                })
                .await
                .map_err(|e| format!("registering this node: {e}"))
            })
            .ok_or(ClusterError::Stopped)?
            .map_err(ClusterError::Remote)?;
        let (tx, mut rx) = tokio::sync::watch::channel(record);
        let renew = store.clone();
        let renewing = nats.handle().spawn(async move {
            loop {
                // A change (the node starts serving) is written at once, else every beat.
                let _ = tokio::time::timeout(every, rx.changed()).await;
                let record = rx.borrow_and_update().clone();
                if let Err(e) = put(&renew, &record).await {
                    tracing::debug!("renewing this node's record failed (retried): {e}");
                }
            }
        });
        Ok(NodeBeat {
            record: tx,
            renewing,
            store,
            nats,
        })
    }

    /// Changes this node's record (written at once).
    pub fn update(&self, change: impl FnOnce(&mut NodeRecord)) {
        self.record.send_modify(change);
    }

    /// Stops renewing and deletes the record, so the node leaves the list at once. Blocks.
    pub fn stop(self) {
        self.renewing.abort();
        let store = self.store.clone();
        let key = self.record.borrow().node.clone();
        let _ = self.nats.run(async move {
            tokio::time::timeout(Duration::from_secs(2), store.delete(key)).await
        });
    }
}

async fn put(store: &kv::Store, record: &NodeRecord) -> Result<(), String> {
    let body = serde_json::to_vec(record).map_err(|e| e.to_string())?;
    store
        .put(&record.node, body.into())
        .await
        .map(|_| ())
        .map_err(|e| format!("writing the record of node {}: {e}", record.node))
}

/// The records of the hub's live nodes, by name (none if no node ever started).
pub async fn live_nodes(js: &jetstream::Context, hub: &str) -> Result<Vec<NodeRecord>, String> {
    let Ok(store) = js.get_key_value(bucket(hub)).await else {
        return Ok(Vec::new());
    };
    let mut keys = store
        .keys()
        .await
        .map_err(|e| format!("listing the hub's nodes: {e}"))?;
    let mut nodes = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| format!("listing the hub's nodes: {e}"))?;
        // A record that expired or was deleted in between is simply gone.
        if let Ok(Some(value)) = store.get(&key).await {
            if let Ok(record) = serde_json::from_slice::<NodeRecord>(&value) {
                nodes.push(record);
            }
        }
    }
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(nodes)
}

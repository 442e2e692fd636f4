//! # The task hub's identity in JetStream
//!
//! In cluster mode the hub is what JetStream holds, not a data directory: its partition count
//! is fixed when the first node creates it, in the KV bucket `CAIRN_<hub>` (key `hub`), and
//! every node that joins later reads it from there. The create is a compare-and-set on the key's
//! absence, so two nodes starting at once agree on one count.
//!
//! It owns the hub record and the hub's settings ([`KvSettings`]: the retention policy set
//! while running, under `settings.<key>` in the same bucket), nothing else.

use crate::connection::{ClusterError, Nats};
use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};

/// The hub record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HubRecord {
    pub partitions: u32,
}

/// The KV bucket of hub `hub`.
pub fn bucket(hub: &str) -> String {
    format!("CAIRN_{hub}")
}

/// The hub's KV bucket (hub record, lease, settings), created with `replicas` replicas if it
/// does not exist yet; an existing bucket is used as it is.
pub(crate) async fn open_bucket(
    js: &async_nats::jetstream::Context,
    hub: &str,
    replicas: usize,
) -> Result<kv::Store, String> {
    let name = bucket(hub);
    match js.get_key_value(&name).await {
        Ok(store) => Ok(store),
        Err(_) => js
            .create_or_update_key_value(kv::Config {
                bucket: name.clone(),
                history: 1,
                num_replicas: replicas.max(1),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("creating the KV bucket {name}: {e}")),
    }
}

/// The partition count of the connected hub: the one it was created with, or (creating it now)
/// `requested`, else `default`. A `requested` count that differs from an existing hub's is an
/// error, as with a local data directory.
pub fn partitions(nats: &Nats, requested: Option<u32>, default: u32) -> Result<u32, ClusterError> {
    let config = nats.config().clone();
    let js = nats.jetstream().clone();
    let wanted = HubRecord {
        partitions: requested.unwrap_or(default),
    };
    let bucket_name = bucket(&config.hub);
    let hub = config.hub.clone();
    let found = nats
        .run(async move {
            // A NATS cluster that has just started may not have elected its JetStream leader
            // yet ("no responders"): what fails for that is tried again for a while. A damaged
            // record is not: it is the inner error, returned at once.
            let attempt = || async {
                let store = open_bucket(&js, &config.hub, config.replicas).await?;
                let body = serde_json::to_vec(&wanted).map_err(|e| e.to_string())?;
                match store.create("hub", body.into()).await {
                    Ok(_) => return Ok(Ok((wanted.clone(), true))),
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                    Err(e) => return Err(format!("creating the hub record: {e}")),
                }
                let bytes = store
                    .get("hub")
                    .await
                    .map_err(|e| format!("reading the hub record: {e}"))?
                    .ok_or("the hub record vanished after it was created")?;
                Ok(serde_json::from_slice::<HubRecord>(&bytes)
                    .map(|record| (record, false))
                    .map_err(|e| format!("the hub record in {bucket_name} is damaged: {e}")))
            };
            crate::connection::patiently(std::time::Duration::from_secs(10), attempt)
                .await
                .and_then(|found| found)
        })
        .ok_or(ClusterError::Stopped)?
        .map_err(ClusterError::Remote)?;
    let (record, created) = found;
    if let Some(requested) = requested {
        if !created && requested != record.partitions {
            return Err(ClusterError::PartitionsDiffer {
                hub,
                has: record.partitions,
                requested,
            });
        }
    }
    if created {
        tracing::info!(hub = %hub, partitions = record.partitions, "created the task hub in JetStream");
    }
    Ok(record.partitions)
}

/// The hub's settings ([`HubSettings`]) in its KV bucket, key `settings.<key>`: a policy set
/// through one node is the policy of whichever node serves the hub next.
#[derive(Debug, Clone)]
pub struct KvSettings {
    nats: std::sync::Arc<Nats>,
}

impl KvSettings {
    /// The settings of the connected hub.
    pub fn new(nats: std::sync::Arc<Nats>) -> KvSettings {
        KvSettings { nats }
    }

    fn key(key: &str) -> String {
        format!("settings.{key}")
    }

    /// Runs `op` on the hub's bucket and `key`'s name in it; blocks.
    fn on_bucket<T, F>(
        &self,
        key: &str,
        op: impl FnOnce(kv::Store, String) -> F + Send + 'static,
    ) -> Result<T, String>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, String>> + Send,
    {
        let js = self.nats.jetstream().clone();
        let config = self.nats.config().clone();
        let bucket_name = bucket(&config.hub);
        let key = Self::key(key);
        self.nats
            .run(async move {
                let store = open_bucket(&js, &config.hub, config.replicas).await?;
                op(store, key)
                    .await
                    .map_err(|e| format!("{e} in the KV bucket {bucket_name}"))
            })
            .ok_or_else(|| ClusterError::Stopped.to_string())?
    }
}

impl cairn_storage::settings::HubSettings for KvSettings {
    fn load(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.on_bucket(key, |store, key| async move {
            let value = store
                .get(&key)
                .await
                .map_err(|e| format!("reading {key}: {e}"))?;
            Ok(value.map(|v| v.to_vec()))
        })
    }

    fn store(&self, key: &str, value: &[u8]) -> Result<(), String> {
        let value = bytes::Bytes::copy_from_slice(value);
        self.on_bucket(key, |store, key| async move {
            // A put is acknowledged once JetStream has stored it (on a majority, R3).
            store
                .put(&key, value)
                .await
                .map(|_| ())
                .map_err(|e| format!("writing {key}: {e}"))
        })
    }

    fn location(&self, key: &str) -> String {
        format!(
            "the key {} of the KV bucket {} in JetStream",
            Self::key(key),
            bucket(&self.nats.config().hub)
        )
    }
}

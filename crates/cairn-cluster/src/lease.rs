//! # Who serves the hub: a lease in the hub's KV bucket
//!
//! One node serves a hub at a time; the others wait as standbys and take over when it dies.
//! The lease is the key `owner` in the hub's KV bucket (`CAIRN_<hub>`), holding the owner's
//! name and a nonce of this acquisition:
//!
//! * **Holding it.** The owner renews the key every quarter of the lease's duration with a
//!   compare-and-set on the revision it last wrote. A renewal refused because the key moved
//!   on, or no renewal for a whole lease duration, and the lease is lost: the owner must stop
//!   serving at once.
//! * **Taking it.** A standby reads the key; an absent or released key is taken with a
//!   compare-and-set at once. A key whose revision has not changed for a whole lease duration,
//!   measured on the standby's own clock (no clocks are compared between machines), belongs to
//!   a dead or frozen owner and is taken with a compare-and-set on that revision.
//! * **Why two owners never both commit.** The lease decides who *tries* to serve; the fenced
//!   logs decide who *can*: the new owner's epoch markers make every append of an owner that
//!   has not noticed yet (frozen, partitioned away) fail, so it steps down without applying
//!   anything. The lease only has to be right most of the time; the logs must always be.
//! * **Leaving.** A node that stops cleanly deletes the key, so a standby takes over without
//!   waiting for the lease to run out.
//!
//! This is a hub-wide lease (active/standby). Leases per partition, so that several nodes
//! share a hub's partitions, are the next step of the cluster work.

use crate::connection::{ClusterError, Nats};
use async_nats::jetstream::kv;
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The key of the hub's KV bucket the lease is.
pub(crate) const KEY: &str = "owner";

/// How long an owner's silence means it is gone.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(2);

/// The hub's lease, held by this node until [`HubLease::lost`] says otherwise.
pub struct HubLease {
    lost: watch::Receiver<Option<String>>,
    released: Arc<AtomicBool>,
    store: kv::Store,
    /// What this node wrote in the key: its name and this acquisition's nonce.
    me: Bytes,
    nats: Arc<Nats>,
}

/// The node named in the lease's value (its name, then the acquisition's nonce).
pub(crate) fn holder(value: &[u8]) -> String {
    String::from_utf8_lossy(value)
        .split(' ')
        .next()
        .unwrap_or("")
        .to_string()
}

impl HubLease {
    /// Waits until this node holds the hub's lease (calling `waiting` once with the current
    /// holder's name if another node holds it), then keeps renewing it. Blocks.
    pub fn acquire(
        nats: Arc<Nats>,
        duration: Duration,
        waiting: impl FnOnce(&str) + Send + 'static,
    ) -> Result<HubLease, ClusterError> {
        let config = nats.config().clone();
        let js = nats.jetstream().clone();
        let me = format!("{} {:016x}", config.node_id, rand_nonce());
        let claim = me.clone();
        let (store, revision) = nats
            .run(async move {
                let me = claim;
                let store = crate::hub::open_bucket(&js, &config.hub, config.replicas).await?;
                let mut waiting = Some(waiting);
                // The revision a holder was last seen at, and since when (on this clock).
                let mut seen: Option<(u64, tokio::time::Instant)> = None;
                loop {
                    let entry = store
                        .entry(KEY)
                        .await
                        .map_err(|e| format!("reading the hub's lease: {e}"))?;
                    let taken = match entry {
                        None => store.create(KEY, Bytes::from(me.clone())).await.ok(),
                        Some(e) if e.operation != kv::Operation::Put => store
                            .update(KEY, Bytes::from(me.clone()), e.revision)
                            .await
                            .ok(),
                        Some(e) => {
                            let now = tokio::time::Instant::now();
                            match seen {
                                Some((revision, since))
                                    if revision == e.revision && now - since >= duration =>
                                {
                                    tracing::warn!(
                                        holder = %holder(&e.value),
                                        "the hub's owner stopped renewing its lease: taking over"
                                    );
                                    store
                                        .update(KEY, Bytes::from(me.clone()), e.revision)
                                        .await
                                        .ok()
                                }
                                Some((revision, _)) if revision == e.revision => None,
                                _ => {
                                    if let Some(tell) = waiting.take() {
                                        tell(&holder(&e.value));
                                    }
                                    seen = Some((e.revision, now));
                                    None
                                }
                            }
                        }
                    };
                    if let Some(revision) = taken {
                        return Ok::<_, String>((store, revision));
                    }
                    tokio::time::sleep(duration / 8).await;
                }
            })
            .ok_or(ClusterError::Stopped)?
            .map_err(ClusterError::Remote)?;
        let (tx, lost) = watch::channel(None);
        let revision = Arc::new(AtomicU64::new(revision));
        let released = Arc::new(AtomicBool::new(false));
        let me = Bytes::from(me);
        nats.handle().spawn(renew(
            store.clone(),
            me.clone(),
            revision,
            released.clone(),
            duration,
            tx,
        ));
        Ok(HubLease {
            lost,
            released,
            store,
            me,
            nats,
        })
    }

    /// Resolves with why, once the lease is lost (taken by another node, or not renewed in
    /// time): the node must stop serving.
    pub async fn lost(&self) -> String {
        let mut lost = self.lost.clone();
        loop {
            if let Some(why) = lost.borrow().clone() {
                return why;
            }
            if lost.changed().await.is_err() {
                return "the lease's renewal task stopped".into();
            }
        }
    }

    /// Gives the lease up (a clean stop), so that a standby takes over at once. Only if it is
    /// still this node's: the delete is a compare-and-set on the key's revision.
    pub fn release(self) {
        self.released.store(true, Ordering::SeqCst);
        let store = self.store.clone();
        let me = self.me.clone();
        let _ = self.nats.run(async move {
            // A renewal may be in flight and move the revision under the first attempt.
            for _ in 0..3 {
                let Ok(Ok(Some(entry))) =
                    tokio::time::timeout(Duration::from_secs(1), store.entry(KEY)).await
                else {
                    return;
                };
                if entry.operation != kv::Operation::Put || entry.value != me {
                    return;
                }
                let deleted = tokio::time::timeout(
                    Duration::from_secs(1),
                    store.delete_expect_revision(KEY, Some(entry.revision)),
                )
                .await;
                if matches!(deleted, Ok(Ok(()))) {
                    return;
                }
            }
        });
    }
}

fn rand_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

async fn renew(
    store: kv::Store,
    me: Bytes,
    revision: Arc<AtomicU64>,
    released: Arc<AtomicBool>,
    duration: Duration,
    lost: watch::Sender<Option<String>>,
) {
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(duration / 4).await;
        if released.load(Ordering::SeqCst) {
            return;
        }
        let at = revision.load(Ordering::SeqCst);
        let attempt = tokio::time::timeout(duration / 4, store.update(KEY, me.clone(), at)).await;
        match attempt {
            Ok(Ok(next)) => {
                revision.store(next, Ordering::SeqCst);
                renewed = tokio::time::Instant::now();
                continue;
            }
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                // Either another node took the key, or (rarely, on a replicated bucket) a
                // correct update was refused: the key's value says which.
                if let Ok(Some(entry)) = store.entry(KEY).await {
                    if entry.operation == kv::Operation::Put && entry.value == me {
                        revision.store(entry.revision, Ordering::SeqCst);
                        continue;
                    }
                    let _ = lost.send(Some(format!(
                        "node {} took the hub over",
                        holder(&entry.value)
                    )));
                    return;
                }
            }
            _ => {}
        }
        if renewed.elapsed() >= duration {
            let _ = lost.send(Some(format!(
                "the lease could not be renewed for {duration:?} (NATS unreachable?)"
            )));
            return;
        }
    }
}

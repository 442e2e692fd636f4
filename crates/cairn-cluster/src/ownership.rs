//! # Which node runs which partition
//!
//! The nodes of a hub share its partitions. Each partition's owner is named by the key
//! `part.<p>` in the hub's KV bucket (`CAIRN_<hub>`): the node's name and a nonce of its run.
//! Every node runs the same loop ([`Ownership`]), a few times per lease duration:
//!
//! 1. **Who is alive.** Every node rewrites its record in `CAIRN_<hub>_NODES` every quarter of
//!    the lease ([`crate::nodes`]). A node whose record has not changed for a whole lease
//!    duration, measured on the observer's own clock (no clocks are compared between
//!    machines), or that has none, is dead.
//! 2. **Who should own what.** [`assign`] gives every node the same answer from the same view:
//!    partitions spread evenly over the live nodes, each kept by its current owner where the
//!    balance allows, so that a joining node takes only its share and a leaving one moves only
//!    its own.
//! 3. **Acting on it.** A node takes a partition assigned to it whose key is absent, released,
//!    or held by a dead node, with a compare-and-set on the key's revision, then recovers it
//!    from its checkpoint and log. A node that holds a partition assigned to another live node
//!    drains it (makes it durable, checkpoints it, stops it) and then deletes its key; the new
//!    owner sees the key go and takes it. A node that finds its partition's key taken by
//!    another stops the partition at once, writing nothing.
//!
//! Why two owners can never both commit: the key decides who *tries* to run a partition; its
//! fenced log decides who *can*. The new owner's epoch marker makes every later append of the
//! old one fail (it was frozen, or cut off from NATS), and the old one steps down without
//! applying anything. The keys only have to be right most of the time; the logs always are.

use crate::connection::{ClusterError, Nats};
use crate::forwarding::Responders;
use crate::nodes;
use crate::routing::JetStreamRouter;
use async_nats::jetstream::kv;
use bytes::Bytes;
use cairn_runtime::Partitions;
use futures::StreamExt;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long a node's silence means it is gone, by default.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(2);

fn key(p: u32) -> String {
    format!("part.{p}")
}

/// The node named in an owner key's value (its name, then its run's nonce).
pub(crate) fn holder(value: &[u8]) -> String {
    String::from_utf8_lossy(value)
        .split(' ')
        .next()
        .unwrap_or("")
        .to_string()
}

/// The owner every partition should have: `live` are the live nodes' names, `owners` the
/// current owner of each owned partition (live or not). Every node computes the same answer
/// from the same view. Pure.
///
/// Each live node gets `partitions / live` partitions, and the first `partitions % live` of
/// them, in order of how many they own now (then by name), one more. Partitions stay with
/// their live owner within its share; the rest go, in partition order, to the nodes furthest
/// below their share.
pub fn assign(partitions: u32, live: &[String], owners: &BTreeMap<u32, String>) -> Vec<String> {
    let mut live: Vec<&String> = live.iter().collect();
    live.sort();
    live.dedup();
    if live.is_empty() {
        return vec![String::new(); partitions as usize];
    }
    let owned = |n: &String| owners.values().filter(|o| *o == n).count();
    let mut by_holding = live.clone();
    by_holding.sort_by(|a, b| owned(b).cmp(&owned(a)).then(a.cmp(b)));
    let base = partitions as usize / live.len();
    let extra = partitions as usize % live.len();
    let mut share: HashMap<&String, usize> = by_holding
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, base + usize::from(i < extra)))
        .collect();
    let mut target = vec![String::new(); partitions as usize];
    let mut unplaced = Vec::new();
    for p in 0..partitions {
        match owners
            .get(&p)
            .and_then(|o| share.get_mut(o).map(|s| (o, s)))
        {
            Some((owner, room)) if *room > 0 => {
                *room -= 1;
                target[p as usize] = owner.clone();
            }
            _ => unplaced.push(p),
        }
    }
    for p in unplaced {
        let Some(node) = live
            .iter()
            .copied()
            .max_by(|a, b| share[a].cmp(&share[b]).then(b.cmp(a)))
        else {
            break;
        };
        if let Some(room) = share.get_mut(node) {
            *room = room.saturating_sub(1);
        }
        target[p as usize] = node.clone();
    }
    target
}

/// What a node sees of the others: when each node's record last changed, on this clock.
#[derive(Default)]
struct Liveness {
    seen: HashMap<String, (u64, Instant)>,
}

impl Liveness {
    fn live(&self, lease: Duration, now: Instant) -> Vec<String> {
        self.seen
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) < lease)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// This node's share of the hub's partitions, kept up to date until [`Ownership::stop`].
pub struct Ownership {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    live: Arc<Mutex<Vec<String>>>,
}

/// What the loop works with.
struct Node {
    nats: Arc<Nats>,
    me: String,
    value: Bytes,
    partitions: Partitions,
    count: u32,
    router: Arc<JetStreamRouter>,
    responders: Responders,
    store: kv::Store,
    lease: Duration,
    /// The partitions this node runs, with the revision of its key.
    owned: Mutex<BTreeMap<u32, u64>>,
    /// The live nodes, as of the last round.
    live: Arc<Mutex<Vec<String>>>,
}

impl Ownership {
    /// Starts taking this node's share of the hub's `count` partitions (on the calling
    /// runtime, where the partitions' leaders then run).
    pub async fn start(
        nats: Arc<Nats>,
        partitions: Partitions,
        count: u32,
        router: Arc<JetStreamRouter>,
        lease: Duration,
    ) -> Result<Ownership, ClusterError> {
        let config = nats.config().clone();
        let js = nats.jetstream().clone();
        let store = crate::connection::patiently(Duration::from_secs(10), || {
            crate::hub::open_bucket(&js, &config.hub, config.replicas)
        })
        .await
        .map_err(|e| ClusterError::Remote(format!("opening the hub's KV bucket: {e}")))?;
        let prepare = router.clone();
        tokio::task::spawn_blocking(move || prepare.prepare())
            .await
            .map_err(|e| ClusterError::Remote(e.to_string()))??;
        let live: Arc<Mutex<Vec<String>>> = Arc::default();
        let node = Node {
            live: live.clone(),
            responders: Responders::new(nats.clone(), partitions.clone()),
            me: config.node_id.clone(),
            value: Bytes::from(format!("{} {:016x}", config.node_id, nonce())),
            nats,
            partitions,
            count,
            router,
            store,
            lease,
            owned: Mutex::default(),
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(node.run(stopped));
        Ok(Ownership { stop, task, live })
    }

    /// The live nodes' names (this one included), kept up to date.
    pub fn live_nodes(&self) -> Arc<Mutex<Vec<String>>> {
        self.live.clone()
    }

    /// Hands every partition over: each is drained (made durable and checkpointed) and its
    /// key deleted, so that the other nodes take them at once.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn nonce() -> u64 {
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

/// Follows the hub's node records into `liveness`, until aborted.
async fn watch_nodes(nats: Arc<Nats>, liveness: Arc<Mutex<Liveness>>) {
    let bucket = nodes::bucket(&nats.config().hub);
    loop {
        let watch = async {
            let store = nats
                .jetstream()
                .get_key_value(&bucket)
                .await
                .map_err(|e| e.to_string())?;
            store
                .watch_with_history(">")
                .await
                .map_err(|e| e.to_string())
        };
        match watch.await {
            Ok(mut entries) => {
                while let Some(Ok(entry)) = entries.next().await {
                    let mut l = liveness.lock();
                    if entry.operation == kv::Operation::Put {
                        let now = Instant::now();
                        let changed = l
                            .seen
                            .get(&entry.key)
                            .is_none_or(|(revision, _)| *revision != entry.revision);
                        if changed {
                            l.seen.insert(entry.key.clone(), (entry.revision, now));
                        }
                    } else {
                        l.seen.remove(&entry.key);
                    }
                }
            }
            Err(e) => tracing::debug!("watching the hub's nodes (retried): {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Node {
    async fn run(self, mut stopped: tokio::sync::watch::Receiver<bool>) {
        let liveness: Arc<Mutex<Liveness>> = Arc::default();
        let watcher = self
            .nats
            .handle()
            .spawn(watch_nodes(self.nats.clone(), liveness.clone()));
        // Let the watch deliver the records that exist before deciding anything.
        let _ = tokio::time::timeout(Duration::from_millis(300), stopped.changed()).await;
        loop {
            if *stopped.borrow() {
                break;
            }
            let live = {
                let mut live = liveness.lock().live(self.lease, Instant::now());
                if !live.contains(&self.me) {
                    live.push(self.me.clone());
                }
                live.sort();
                live
            };
            *self.live.lock() = live.clone();
            if let Err(e) = self.step(&live).await {
                tracing::debug!("balancing the hub's partitions (retried): {e}");
            }
            let _ = tokio::time::timeout(self.lease / 8, stopped.changed()).await;
        }
        watcher.abort();
        let owned: Vec<u32> = self.owned.lock().keys().copied().collect();
        for p in owned {
            self.release(p).await;
        }
    }

    /// One round: read the keys, compare with the assignment, act.
    async fn step(&self, live: &[String]) -> Result<(), String> {
        let mut keys: BTreeMap<u32, Option<kv::Entry>> = BTreeMap::new();
        let reads = (0..self.count).map(|p| {
            let store = self.store.clone();
            async move { (p, store.entry(key(p)).await) }
        });
        for (p, entry) in futures::future::join_all(reads).await {
            let entry = entry.map_err(|e| format!("reading the owner of partition {p}: {e}"))?;
            keys.insert(p, entry.filter(|e| e.operation == kv::Operation::Put));
        }
        // Partitions whose key names another node, or which stopped here (their log refused
        // by a newer owner, or JetStream gone past the log's retries): stop at once.
        let failures: HashMap<u32, String> = self.partitions.failures().into_iter().collect();
        let mine: Vec<(u32, u64)> = self.owned.lock().iter().map(|(p, r)| (*p, *r)).collect();
        for (p, _) in &mine {
            let ours = keys[p].as_ref().is_some_and(|e| e.value == self.value);
            if !ours {
                tracing::warn!(
                    partition = p,
                    "another node took this partition over: stopping it here without writing"
                );
                self.abandon(*p);
            } else if let Some(why) = failures.get(p) {
                tracing::warn!(
                    partition = p,
                    "the partition stopped here ({why}): giving it up"
                );
                self.abandon(*p);
                if let Some(Some(e)) = keys.get(p) {
                    let _ = self
                        .store
                        .delete_expect_revision(key(*p), Some(e.revision))
                        .await;
                }
            }
        }
        let owners: BTreeMap<u32, String> = keys
            .iter()
            .filter_map(|(p, e)| e.as_ref().map(|e| (*p, holder(&e.value))))
            .filter(|(_, n)| live.contains(n))
            .collect();
        let target = assign(self.count, live, &owners);
        // Hand over what another live node should run.
        let owned: Vec<u32> = self.owned.lock().keys().copied().collect();
        for p in owned {
            if target[p as usize] != self.me {
                self.release(p).await;
            }
        }
        // Take what is ours to run and free: absent, released, held by a dead node or by an
        // earlier run of this one.
        let mut taken = Vec::new();
        for p in 0..self.count {
            if target[p as usize] != self.me || self.owned.lock().contains_key(&p) {
                continue;
            }
            let claim = match &keys[&p] {
                None => {
                    // Absent, or deleted: `create` refuses if it exists, `update` needs the
                    // revision of the deletion.
                    match self.store.entry(key(p)).await {
                        Ok(Some(e)) if e.operation != kv::Operation::Put => self
                            .store
                            .update(key(p), self.value.clone(), e.revision)
                            .await
                            .ok(),
                        Ok(None) => self.store.create(key(p), self.value.clone()).await.ok(),
                        _ => None,
                    }
                }
                Some(e) if !live.contains(&holder(&e.value)) || holder(&e.value) == self.me => self
                    .store
                    .update(key(p), self.value.clone(), e.revision)
                    .await
                    .ok(),
                Some(_) => None,
            };
            if let Some(revision) = claim {
                taken.push((p, revision));
            }
        }
        if !taken.is_empty() {
            self.take(&taken).await;
        }
        Ok(())
    }

    /// Recovers the partitions just claimed and starts running them here.
    async fn take(&self, taken: &[(u32, u64)]) {
        let started = Instant::now();
        let ps: Vec<u32> = taken.iter().map(|(p, _)| *p).collect();
        match self.partitions.open(&ps).await {
            Ok(reports) => {
                for (p, revision) in taken {
                    self.owned.lock().insert(*p, *revision);
                    self.router.attach(*p);
                    if let Err(e) = self.responders.attach(*p).await {
                        tracing::warn!(partition = p, "cannot answer for the partition: {e}");
                    }
                }
                let replayed: u64 = reports.iter().map(|r| r.replayed_records).sum();
                tracing::info!(
                    partitions = ?ps,
                    replayed,
                    "took partitions over in {:?}",
                    started.elapsed()
                );
            }
            Err(e) => {
                tracing::error!(partitions = ?ps, "cannot recover partitions here (released): {e}");
                for (p, revision) in taken {
                    let _ = self
                        .store
                        .delete_expect_revision(key(*p), Some(*revision))
                        .await;
                }
            }
        }
    }

    /// Drains partition `p` and gives its key up (if it is still this node's).
    async fn release(&self, p: u32) {
        let Some(revision) = self.owned.lock().remove(&p) else {
            return;
        };
        self.responders.detach(p);
        self.router.detach(p);
        let started = Instant::now();
        self.partitions.close(p).await;
        // The key's revision may have moved only if another node took it: then it is not
        // ours to delete.
        let _ = self
            .store
            .delete_expect_revision(key(p), Some(revision))
            .await;
        tracing::info!(
            partition = p,
            "handed the partition over in {:?}",
            started.elapsed()
        );
    }

    fn abandon(&self, p: u32) {
        self.owned.lock().remove(&p);
        self.responders.detach(p);
        self.router.detach(p);
        self.partitions.abandon(p);
    }
}

#[cfg(test)]
mod tests {
    use super::assign;
    use std::collections::BTreeMap;

    fn nodes(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn count(target: &[String], node: &str) -> usize {
        target.iter().filter(|t| *t == node).count()
    }

    #[test]
    fn an_empty_hub_is_spread_evenly() {
        let target = assign(12, &nodes(&["b", "a", "c"]), &BTreeMap::new());
        for n in ["a", "b", "c"] {
            assert_eq!(count(&target, n), 4, "{target:?}");
        }
        let target = assign(4, &nodes(&["a", "b", "c"]), &BTreeMap::new());
        assert_eq!(target.iter().filter(|t| t.is_empty()).count(), 0);
        assert!(
            count(&target, "a") == 2 && count(&target, "b") == 1,
            "{target:?}"
        );
    }

    #[test]
    fn a_joining_node_takes_only_its_share() {
        let owners: BTreeMap<u32, String> = (0..12).map(|p| (p, "a".to_string())).collect();
        let target = assign(12, &nodes(&["a", "b"]), &owners);
        assert_eq!(count(&target, "a"), 6);
        assert_eq!(count(&target, "b"), 6);
        // a keeps the ones it keeps: no partition moves from a to a.
        let owners: BTreeMap<u32, String> = target
            .iter()
            .enumerate()
            .map(|(p, n)| (p as u32, n.clone()))
            .collect();
        let third = assign(12, &nodes(&["a", "b", "c"]), &owners);
        let moved = (0..12).filter(|p| third[*p] != target[*p]).count();
        assert_eq!(moved, 4, "only c's share moves: {third:?}");
        assert_eq!(count(&third, "c"), 4);
    }

    #[test]
    fn a_dead_nodes_partitions_go_to_the_others_and_nothing_else_moves() {
        let owners: BTreeMap<u32, String> = (0..12)
            .map(|p| (p, ["a", "b", "c"][p as usize % 3].to_string()))
            .collect();
        let target = assign(12, &nodes(&["a", "c"]), &owners);
        for p in 0..12u32 {
            if owners[&p] != "b" {
                assert_eq!(target[p as usize], owners[&p], "partition {p} moved");
            }
        }
        assert_eq!(count(&target, "a"), 6);
        assert_eq!(count(&target, "c"), 6);
    }

    #[test]
    fn every_view_gives_the_same_answer_and_a_balanced_one() {
        // The order nodes are listed in does not matter.
        let owners: BTreeMap<u32, String> = [(0, "c"), (1, "c"), (2, "c"), (5, "a")]
            .into_iter()
            .map(|(p, n)| (p, n.to_string()))
            .collect();
        let one = assign(7, &nodes(&["a", "b", "c"]), &owners);
        let two = assign(7, &nodes(&["c", "b", "a"]), &owners);
        assert_eq!(one, two);
        let counts: Vec<usize> = ["a", "b", "c"].iter().map(|n| count(&one, n)).collect();
        assert!(
            counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
            "{one:?}"
        );
        // c, holding the most, keeps the extra one.
        assert_eq!(count(&one, "c"), 3, "{one:?}");
    }
}

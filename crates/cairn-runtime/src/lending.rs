//! # Work lent between the nodes of a cluster
//!
//! An SDK worker may connect to any node of a cluster, and a single worker connected to one
//! node runs the whole hub. Work for remote workers is queued on the node that runs its
//! partition; workers connected there take it first. A node whose workers wait with nothing to
//! do asks the other nodes for work on their behalf ([`Borrower`]'s side, driven by the
//! cluster): the owner's [`Lender`] takes an item for it as one of its own workers would
//! (through a peer handle that counts as a connected worker, so the work does not read as
//! unserved), remembers it under a token, and sends it over. The borrowing node queues the
//! item for its own workers; when one answers, the outcome travels back under the token and
//! the lender answers the item, exactly as a local worker's completion would.
//!
//! Exactly once does not rest on this path: an item is only *lent*. If the borrower never
//! answers (its worker died, the node died), the lender gives the item back to its queue after
//! the work-item lease; a late answer for a token the lender no longer holds is dropped, and
//! the partition ignores a second completion of the same task or episode anyway.
//!
//! This module owns the wire form of lent work (postcard, with the version byte of
//! [`crate::forward`]); the cluster moves the bytes.

use crate::forward::{decode, encode};
use crate::remote::{
    ActivityWork, EntityBatchOutput, EntityWork, OrchestratorWork, RemoteEpisode, RemoteQueue,
    RemoteWork, Room, Taken, WorkFilter, WorkerHandle,
};
use cairn_core::{Action, EntityAction, EntityOperation, HistoryEvent, TaskResult};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What a node asks another for: work its waiting workers run and have room for.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LendRequest {
    node: String,
    filter: WorkFilter,
    room: Room,
}

#[derive(Serialize, Deserialize)]
enum WireWork {
    Orchestrator {
        instance_id: String,
        execution_id: String,
        name: String,
        version: Option<String>,
        past_events: Vec<HistoryEvent>,
        new_events: Vec<HistoryEvent>,
    },
    Activity {
        instance_id: String,
        execution_id: String,
        name: String,
        version: Option<String>,
        task_id: i32,
        input: Option<String>,
    },
    Entity {
        entity_id: String,
        name: String,
        state: Option<String>,
        operations: Vec<EntityOperation>,
    },
}

#[derive(Serialize, Deserialize)]
enum WireOutcome {
    Episode {
        actions: Vec<Action>,
        custom_status: Option<String>,
    },
    Activity(TaskResult),
    Entity {
        state: Option<String>,
        results: Vec<TaskResult>,
        actions: Vec<EntityAction>,
    },
}

/// The answer to a lent item (`None`: the borrower gives it back unanswered).
#[derive(Serialize, Deserialize)]
struct Settlement {
    token: u64,
    outcome: Option<WireOutcome>,
}

/// Asks the lender for work: `filter` and `room` of a worker waiting on node `node`.
pub fn lend_request(node: &str, filter: &WorkFilter, room: Room) -> Vec<u8> {
    encode(&LendRequest {
        node: node.to_string(),
        filter: filter.clone(),
        room,
    })
}

/// A borrowing node and the filter of its waiting worker (as JSON).
type PeerKey = (String, String);

struct Lent {
    taken: Taken,
    since: Instant,
}

/// A node's side that lends its queued work to other nodes' workers.
pub struct Lender {
    queue: RemoteQueue,
    lease: Duration,
    next: AtomicU64,
    lent: Mutex<HashMap<u64, Lent>>,
    /// One peer handle per (node, filter), with when it was last used.
    peers: Mutex<HashMap<PeerKey, (Arc<WorkerHandle>, Instant)>>,
}

/// How long a peer handle outlives its last request (it keeps the work "served" meanwhile).
const PEER_IDLE: Duration = Duration::from_secs(5);

impl Lender {
    /// Lends `queue`'s items; an item not answered within `lease` goes back to the queue.
    pub fn new(queue: RemoteQueue, lease: Duration) -> Lender {
        Lender {
            queue,
            lease,
            next: AtomicU64::new(1),
            lent: Mutex::default(),
            peers: Mutex::default(),
        }
    }

    /// Answers a [`lend_request`]: waits up to `wait` for an item the asking worker runs, and
    /// lends it (the bytes to send back; they say "nothing" if none came).
    pub async fn lend(&self, request: &[u8], wait: Duration) -> Vec<u8> {
        let nothing = encode(&None::<(u64, WireWork)>);
        let Ok(request) = decode::<LendRequest>(request) else {
            return nothing;
        };
        let key = (
            request.node.clone(),
            serde_json::to_string(&request.filter).unwrap_or_default(),
        );
        let handle = {
            let mut peers = self.peers.lock();
            let entry = peers.entry(key).or_insert_with(|| {
                (
                    Arc::new(
                        self.queue
                            .connect_peer(&request.node, request.filter.clone()),
                    ),
                    Instant::now(),
                )
            });
            entry.1 = Instant::now();
            entry.0.clone()
        };
        let Ok(taken) = tokio::time::timeout(wait, handle.recv(request.room)).await else {
            return nothing;
        };
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let wire = match &taken.work {
            RemoteWork::Orchestrator(o) => WireWork::Orchestrator {
                instance_id: o.instance_id.clone(),
                execution_id: o.execution_id.clone(),
                name: o.name.clone(),
                version: o.version.clone(),
                past_events: o.past_events.clone(),
                new_events: o.new_events.clone(),
            },
            RemoteWork::Activity(a) => WireWork::Activity {
                instance_id: a.instance_id.clone(),
                execution_id: a.execution_id.clone(),
                name: a.name.clone(),
                version: a.version.clone(),
                task_id: a.task_id,
                input: a.input.clone(),
            },
            RemoteWork::Entity(e) => WireWork::Entity {
                entity_id: e.entity_id.clone(),
                name: e.name.clone(),
                state: e.state.clone(),
                operations: e.operations.clone(),
            },
        };
        let bytes = encode(&Some((token, wire)));
        self.lent.lock().insert(
            token,
            Lent {
                taken,
                since: Instant::now(),
            },
        );
        bytes
    }

    /// Applies a borrower's settlement: answers the lent item, or gives it back to the queue.
    /// A settlement for an item no longer lent (given back after its lease) is dropped.
    pub fn settle(&self, settlement: &[u8]) {
        let Ok(settlement) = decode::<Settlement>(settlement) else {
            return;
        };
        let Some(lent) = self.lent.lock().remove(&settlement.token) else {
            return;
        };
        match (lent.taken.work, settlement.outcome) {
            (
                RemoteWork::Orchestrator(o),
                Some(WireOutcome::Episode {
                    actions,
                    custom_status,
                }),
            ) => {
                let _ = o.reply.send(RemoteEpisode {
                    actions,
                    custom_status,
                });
            }
            (RemoteWork::Activity(a), Some(WireOutcome::Activity(result))) => {
                let _ = a.reply.send(result);
            }
            (
                RemoteWork::Entity(e),
                Some(WireOutcome::Entity {
                    state,
                    results,
                    actions,
                }),
            ) => {
                let _ = e.reply.send(EntityBatchOutput {
                    state,
                    results,
                    actions,
                });
            }
            (work, _) => self.queue.requeue(Taken::again(work)),
        }
    }

    /// Gives back items lent longer than the lease, and forgets idle peers. Call it
    /// periodically.
    pub fn expire(&self) {
        let now = Instant::now();
        let expired: Vec<Lent> = {
            let mut lent = self.lent.lock();
            let old: Vec<u64> = lent
                .iter()
                .filter(|(_, l)| now.duration_since(l.since) > self.lease)
                .map(|(t, _)| *t)
                .collect();
            old.into_iter().filter_map(|t| lent.remove(&t)).collect()
        };
        for l in expired {
            tracing::debug!(
                instance = l.taken.work.instance_id(),
                "work lent to another node was not answered within the lease: queued again"
            );
            self.queue.requeue(l.taken);
        }
        self.peers
            .lock()
            .retain(|_, (_, used)| now.duration_since(*used) < PEER_IDLE);
    }
}

/// Queues the item in a lender's answer (`answer`) for the workers here. `None` if the lender
/// had nothing. Otherwise the future resolves, once a worker here answers the item (or it is
/// dropped unanswered), with the settlement to send back to the lender.
pub fn borrow(queue: &RemoteQueue, answer: &[u8]) -> Option<BoxFuture<'static, Vec<u8>>> {
    let (token, work) = decode::<Option<(u64, WireWork)>>(answer).ok()??;
    Some(match work {
        WireWork::Orchestrator {
            instance_id,
            execution_id,
            name,
            version,
            past_events,
            new_events,
        } => queue_borrowed(
            queue,
            token,
            |reply| {
                RemoteWork::Orchestrator(OrchestratorWork {
                    instance_id,
                    execution_id,
                    name,
                    version,
                    past_events,
                    new_events,
                    reply,
                })
            },
            |e| WireOutcome::Episode {
                actions: e.actions,
                custom_status: e.custom_status,
            },
        ),
        WireWork::Activity {
            instance_id,
            execution_id,
            name,
            version,
            task_id,
            input,
        } => queue_borrowed(
            queue,
            token,
            |reply| {
                RemoteWork::Activity(ActivityWork {
                    instance_id,
                    execution_id,
                    name,
                    version,
                    task_id,
                    input,
                    reply: reply.into(),
                })
            },
            WireOutcome::Activity,
        ),
        WireWork::Entity {
            entity_id,
            name,
            state,
            operations,
        } => queue_borrowed(
            queue,
            token,
            |reply| {
                RemoteWork::Entity(EntityWork {
                    entity_id,
                    name,
                    state,
                    operations,
                    reply,
                })
            },
            |o| WireOutcome::Entity {
                state: o.state,
                results: o.results,
                actions: o.actions,
            },
        ),
    })
}

/// Queues the work `make` builds around a fresh reply for the workers here; resolves, once a
/// worker answers it (or it is dropped unanswered), with the settlement for token `token`.
fn queue_borrowed<T: Send + 'static>(
    queue: &RemoteQueue,
    token: u64,
    make: impl FnOnce(oneshot::Sender<T>) -> RemoteWork,
    outcome: fn(T) -> WireOutcome,
) -> BoxFuture<'static, Vec<u8>> {
    let (reply, answered) = oneshot::channel();
    queue.push_borrowed(make(reply));
    Box::pin(async move {
        encode(&Settlement {
            token,
            outcome: answered.await.ok().map(outcome),
        })
    })
}

//! # Workers connected to one node run work from every node
//!
//! Work for SDK workers is queued on the node that runs its partition. This module lets a
//! worker connected to any node run it (Netherite's load balancing, for orchestrations,
//! activities and entities alike): when workers here wait with nothing to do, this node asks
//! every other live node for work on their behalf (`cairn.<hub>.work.lend.<node>`, answered
//! within a second, with an item or nothing), queues what it gets for its own workers, and
//! sends each outcome back to the lender (`cairn.<hub>.work.settle.<node>`). The lender's side
//! is `cairn_runtime::lending::Lender`: a node's own workers always come first, and an item
//! lent and not answered within the work-item lease goes back to its queue.

use crate::connection::Nats;
use cairn_runtime::lending::{borrow, lend_request, Lender};
use cairn_runtime::remote::RemoteQueue;
use futures::StreamExt;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// How long a lender holds a request open waiting for an item.
const LEND_WAIT: Duration = Duration::from_secs(1);

fn lend_subject(hub: &str, node: &str) -> String {
    format!("cairn.{hub}.work.lend.{node}")
}

fn settle_subject(hub: &str, node: &str) -> String {
    format!("cairn.{hub}.work.settle.{node}")
}

/// This node's part in sharing work between nodes, until dropped.
pub struct WorkSharing {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for WorkSharing {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl WorkSharing {
    /// Lends `queue`'s work to the other nodes and borrows theirs for the workers waiting
    /// here. `peers` is kept up to date with the other live nodes' names; `lease` is the
    /// work-item lease.
    pub async fn start(
        nats: Arc<Nats>,
        queue: RemoteQueue,
        peers: Arc<Mutex<Vec<String>>>,
        lease: Duration,
    ) -> Result<WorkSharing, String> {
        let hub = nats.config().hub.clone();
        let me = nats.config().node_id.clone();
        let client = nats.client().clone();
        let lender = Arc::new(Lender::new(queue.clone(), lease));
        let mut lends = client
            .subscribe(lend_subject(&hub, &me))
            .await
            .map_err(|e| format!("subscribing to lend requests: {e}"))?;
        let mut settlements = client
            .subscribe(settle_subject(&hub, &me))
            .await
            .map_err(|e| format!("subscribing to settlements: {e}"))?;
        client.flush().await.map_err(|e| e.to_string())?;
        let mut tasks = Vec::new();
        let (l, c) = (lender.clone(), client.clone());
        tasks.push(nats.handle().spawn(async move {
            while let Some(request) = lends.next().await {
                let Some(reply) = request.reply.clone() else {
                    continue;
                };
                let (lender, client) = (l.clone(), c.clone());
                tokio::spawn(async move {
                    let answer = lender.lend(&request.payload, LEND_WAIT).await;
                    if client.publish(reply, answer.into()).await.is_err() {
                        tracing::debug!("a lent item's answer could not be sent");
                    }
                });
            }
        }));
        let (l, c) = (lender.clone(), client.clone());
        tasks.push(nats.handle().spawn(async move {
            while let Some(message) = settlements.next().await {
                l.settle(&message.payload);
                if let Some(reply) = message.reply {
                    let _ = c.publish(reply, bytes::Bytes::new()).await;
                }
            }
        }));
        let l = lender.clone();
        tasks.push(nats.handle().spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                l.expire();
            }
        }));
        tasks.push(
            nats.handle()
                .spawn(borrow_for_waiting_workers(nats.clone(), queue, peers)),
        );
        Ok(WorkSharing { tasks })
    }
}

/// Whenever workers here wait, keeps one lend request open per waiting worker and other node.
async fn borrow_for_waiting_workers(
    nats: Arc<Nats>,
    queue: RemoteQueue,
    peers: Arc<Mutex<Vec<String>>>,
) {
    let hub = nats.config().hub.clone();
    let me = nats.config().node_id.clone();
    let asking: Arc<Mutex<HashSet<(u64, String)>>> = Arc::default();
    loop {
        let changed = queue.changed();
        let demand = queue.demand();
        let others: Vec<String> = peers.lock().iter().filter(|p| **p != me).cloned().collect();
        for (worker, filter, room) in demand {
            for peer in &others {
                if !asking.lock().insert((worker, peer.clone())) {
                    continue;
                }
                let request = lend_request(&me, &filter, room);
                let (client, queue, asking, peer) = (
                    nats.client().clone(),
                    queue.clone(),
                    asking.clone(),
                    peer.clone(),
                );
                let (lend, settle) = (lend_subject(&hub, &peer), settle_subject(&hub, &peer));
                tokio::spawn(async move {
                    let answer =
                        tokio::time::timeout(LEND_WAIT * 3, client.request(lend, request.into()))
                            .await;
                    asking.lock().remove(&(worker, peer.clone()));
                    let Ok(Ok(answer)) = answer else {
                        // A node that stopped, or is slow: asked again on the next round.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        return;
                    };
                    let Some(outcome) = borrow(&queue, &answer.payload) else {
                        return;
                    };
                    let settlement: bytes::Bytes = outcome.await.into();
                    for _ in 0..5 {
                        let sent = tokio::time::timeout(
                            Duration::from_secs(5),
                            client.request(settle.clone(), settlement.clone()),
                        )
                        .await;
                        if matches!(sent, Ok(Ok(_))) {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    tracing::debug!(
                        "node {peer} did not take an outcome back: it gives the item out again"
                    );
                });
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), changed).await;
    }
}

//! Handing remote work to connected SDK workers.
//!
//! Each `GetWorkItems` stream gets a task that pulls from the engine's [`RemoteQueue`] while the
//! worker has capacity (its advertised concurrency limits: backpressure, so a slow worker is
//! not flooded), tags each item with a fresh completion token, and keeps it *in flight* until
//! the worker completes or abandons it. When a stream ends, everything still in flight on it is
//! handed to the next worker; a completion carrying a token that is no longer in flight (the
//! item was re-dispatched) is rejected. Idle streams get a `HealthPing` so SDKs that drop silent
//! connections (the Python worker after 120 s) stay connected.

use crate::convert;
use crate::proto as pb;
use cairn_runtime::remote::{RemoteQueue, RemoteWork};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tonic::Status;

struct InFlight {
    work: RemoteWork,
    stream: u64,
}

pub struct Dispatcher {
    queue: RemoteQueue,
    in_flight: Mutex<HashMap<String, InFlight>>,
    next_token: AtomicU64,
    next_stream: AtomicU64,
    /// Signalled when a stream's in-flight count drops (a completion or abandon).
    capacity: Notify,
    pub health_ping: Duration,
}

/// Work items a stream may hold when the worker advertises no limit.
const DEFAULT_LIMIT: usize = 1000;

impl Dispatcher {
    pub fn new(queue: RemoteQueue, health_ping: Duration) -> Arc<Dispatcher> {
        Arc::new(Dispatcher {
            queue,
            in_flight: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            next_stream: AtomicU64::new(1),
            capacity: Notify::new(),
            health_ping,
        })
    }

    fn outstanding(&self, stream: u64) -> usize {
        self.in_flight
            .lock()
            .values()
            .filter(|f| f.stream == stream)
            .count()
    }

    /// Work items waiting for a worker (for metrics and tests).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Starts serving one `GetWorkItems` stream; returns the receiving end for tonic.
    pub fn open_stream(
        self: &Arc<Self>,
        request: &pb::GetWorkItemsRequest,
    ) -> mpsc::Receiver<Result<pb::WorkItem, Status>> {
        let (tx, rx) = mpsc::channel(64);
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let limit = |v: i32| if v > 0 { v as usize } else { DEFAULT_LIMIT };
        let limit = limit(request.max_concurrent_orchestration_work_items)
            + limit(request.max_concurrent_activity_work_items);
        let this = self.clone();
        tokio::spawn(async move {
            tracing::info!(stream, limit, "worker connected");
            this.serve_stream(stream, limit, tx).await;
            let returned = this.release_stream(stream);
            tracing::info!(
                stream,
                returned,
                "worker disconnected; its unfinished work items go to the next worker"
            );
        });
        rx
    }

    async fn serve_stream(
        &self,
        stream: u64,
        limit: usize,
        tx: mpsc::Sender<Result<pb::WorkItem, Status>>,
    ) {
        loop {
            // Backpressure: wait until the worker has room.
            while self.outstanding(stream) >= limit {
                tokio::select! {
                    _ = self.capacity.notified() => {}
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(self.health_ping) => {
                        if tx.send(Ok(health_ping())).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let work = tokio::select! {
                w = self.queue.recv() => match w {
                    Some(w) => w,
                    None => return,
                },
                _ = tx.closed() => return,
                _ = tokio::time::sleep(self.health_ping) => {
                    if tx.send(Ok(health_ping())).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let token = format!("{}", self.next_token.fetch_add(1, Ordering::Relaxed));
            let item = work_item(&work, &token);
            self.in_flight
                .lock()
                .insert(token.clone(), InFlight { work, stream });
            if tx.send(Ok(item)).await.is_err() {
                return; // release_stream hands the item back
            }
        }
    }

    /// Returns every item still in flight on `stream` to the queue.
    fn release_stream(&self, stream: u64) -> usize {
        let mut map = self.in_flight.lock();
        let tokens: Vec<String> = map
            .iter()
            .filter(|(_, f)| f.stream == stream)
            .map(|(t, _)| t.clone())
            .collect();
        let n = tokens.len();
        for t in tokens {
            if let Some(f) = map.remove(&t) {
                self.queue.requeue(f.work);
            }
        }
        n
    }

    /// Takes an in-flight item for completion; an unknown token means it was already completed,
    /// abandoned or re-dispatched to another worker.
    pub fn complete(&self, token: &str) -> Result<RemoteWork, Status> {
        let taken = self.in_flight.lock().remove(token);
        self.capacity.notify_waiters();
        taken.map(|f| f.work).ok_or_else(|| {
            Status::not_found(format!(
                "completion token '{token}' is not in flight: the work item was already completed, abandoned, or \
                 re-dispatched to another worker after this worker's stream ended"
            ))
        })
    }

    /// Gives an abandoned item back for the next worker.
    pub fn abandon(&self, token: &str) -> Result<(), Status> {
        let work = self.complete(token)?;
        self.queue.requeue(work);
        Ok(())
    }
}

fn health_ping() -> pb::WorkItem {
    pb::WorkItem {
        completion_token: String::new(),
        request: Some(pb::work_item::Request::HealthPing(pb::HealthPing {})),
    }
}

fn work_item(work: &RemoteWork, token: &str) -> pb::WorkItem {
    let request = match work {
        RemoteWork::Orchestrator(o) => {
            pb::work_item::Request::OrchestratorRequest(pb::OrchestratorRequest {
                instance_id: o.instance_id.clone(),
                execution_id: Some(o.execution_id.clone()),
                past_events: o
                    .past_events
                    .iter()
                    .map(|e| convert::event_to_proto(&o.instance_id, e))
                    .collect(),
                new_events: o
                    .new_events
                    .iter()
                    .map(|e| convert::event_to_proto(&o.instance_id, e))
                    .collect(),
                ..Default::default()
            })
        }
        RemoteWork::Entity(e) => pb::work_item::Request::EntityRequestV2(pb::EntityRequest {
            instance_id: e.entity_id.clone(),
            execution_id: String::new(),
            entity_state: e.state.clone(),
            operation_requests: e
                .operations
                .iter()
                .map(|op| convert::entity_operation_to_proto(&e.entity_id, op))
                .collect(),
        }),
        RemoteWork::Activity(a) => pb::work_item::Request::ActivityRequest(pb::ActivityRequest {
            name: a.name.clone(),
            version: a.version.clone(),
            input: a.input.clone(),
            orchestration_instance: Some(pb::OrchestrationInstance {
                instance_id: a.instance_id.clone(),
                execution_id: Some(a.execution_id.clone()),
            }),
            task_id: a.task_id,
            ..Default::default()
        }),
    };
    pb::WorkItem {
        completion_token: token.to_string(),
        request: Some(request),
    }
}

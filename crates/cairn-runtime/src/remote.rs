//! Work for remote workers: orchestrator episodes and activities whose code is not registered
//! in this process, handed to whoever serves them (the Durable Task sidecar front: SDK workers
//! connected over gRPC).
//!
//! The engine pushes a [`RemoteWork`] item and awaits its `reply`. A front takes items with
//! [`RemoteQueue::recv`], and must either answer the reply or give the item back with
//! [`RemoteQueue::requeue`] (worker gone, work abandoned); an item whose reply is dropped
//! unanswered is retried by the engine. This module knows nothing about gRPC.

use crate::stats::WorkTicket;
use cairn_core::{Action, EntityAction, EntityOperation, HistoryEvent, TaskResult};
use tokio::sync::oneshot;

/// What a remote orchestrator decided in one episode.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteEpisode {
    pub actions: Vec<Action>,
    pub custom_status: Option<String>,
}

/// One orchestration episode to run remotely: replay `past_events`, then process `new_events`
/// (which always start with `OrchestratorStarted`).
#[derive(Debug)]
pub struct OrchestratorWork {
    pub instance_id: String,
    pub execution_id: String,
    pub name: String,
    pub past_events: Vec<HistoryEvent>,
    pub new_events: Vec<HistoryEvent>,
    pub reply: oneshot::Sender<RemoteEpisode>,
}

/// One activity to run remotely.
#[derive(Debug)]
pub struct ActivityWork {
    pub instance_id: String,
    pub execution_id: String,
    pub name: String,
    pub version: Option<String>,
    pub task_id: i32,
    pub input: Option<String>,
    pub reply: oneshot::Sender<TaskResult>,
}

/// A batch of entity operations to run remotely.
#[derive(Debug)]
pub struct EntityWork {
    pub entity_id: String,
    pub name: String,
    pub state: Option<String>,
    pub operations: Vec<EntityOperation>,
    pub reply: oneshot::Sender<EntityBatchOutput>,
}

/// What a remote entity batch produced: state after it, one result per operation, actions.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityBatchOutput {
    pub state: Option<String>,
    pub results: Vec<TaskResult>,
    pub actions: Vec<EntityAction>,
}

#[derive(Debug)]
pub enum RemoteWork {
    Orchestrator(OrchestratorWork),
    Activity(ActivityWork),
    Entity(EntityWork),
}

impl RemoteWork {
    pub fn name(&self) -> &str {
        match self {
            RemoteWork::Orchestrator(o) => &o.name,
            RemoteWork::Activity(a) => &a.name,
            RemoteWork::Entity(e) => &e.name,
        }
    }

    /// True if nobody waits for the answer any more (the instance moved on, the engine stopped).
    pub fn is_abandoned(&self) -> bool {
        match self {
            RemoteWork::Orchestrator(o) => o.reply.is_closed(),
            RemoteWork::Activity(a) => a.reply.is_closed(),
            RemoteWork::Entity(e) => e.reply.is_closed(),
        }
    }
}

/// A multi-producer, multi-consumer queue of remote work (one per engine).
#[derive(Clone)]
pub struct RemoteQueue {
    tx: async_channel::Sender<Queued>,
    rx: async_channel::Receiver<Queued>,
}

/// An item with its place in its partition's queue gauge (released when a worker takes it).
struct Queued {
    work: RemoteWork,
    _ticket: Option<WorkTicket>,
}

impl Default for RemoteQueue {
    fn default() -> Self {
        let (tx, rx) = async_channel::unbounded();
        RemoteQueue { tx, rx }
    }
}

impl RemoteQueue {
    pub(crate) fn push(&self, work: RemoteWork, ticket: Option<WorkTicket>) {
        // The queue lives as long as the engine; a failed send means it is shutting down and
        // dropping `work` tells the waiting episode to stop.
        let _ = self.tx.try_send(Queued {
            work,
            _ticket: ticket,
        });
    }

    /// Gives an item back (its worker disconnected or abandoned it) for the next worker.
    pub fn requeue(&self, work: RemoteWork) {
        if !work.is_abandoned() {
            self.push(work, None);
        }
    }

    /// The next item of work, waiting for one; skips items nobody waits for any more.
    pub async fn recv(&self) -> Option<RemoteWork> {
        loop {
            let queued = self.rx.recv().await.ok()?;
            if !queued.work.is_abandoned() {
                return Some(queued.work);
            }
        }
    }

    /// Items waiting for a worker.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

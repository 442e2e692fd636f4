//! Work for remote workers: orchestrator episodes, activities and entity batches whose code is
//! not registered in this process, handed to whoever serves them (the Durable Task sidecar
//! front: SDK workers connected over gRPC).
//!
//! The engine pushes a [`RemoteWork`] item and awaits its `reply` (an activity's answer goes
//! straight to its partition instead: see [`Responder`]). A worker connects with
//! [`RemoteQueue::connect`], saying what it runs (a [`WorkFilter`]), and takes only items that
//! match; an item that no connected worker runs waits here (and is reported by
//! [`RemoteQueue::unserved`]) until one connects. The taker must either answer the reply or give
//! the item back with [`RemoteQueue::requeue`] (worker gone, work abandoned, lease expired); it
//! goes back to its old place in line. An item whose reply is dropped unanswered is run again
//! when its partition next recovers (here or on its next owner). An item nobody can take the
//! answer of any more (its partition stopped here, its instance ended) is abandoned: it is shed,
//! never handed out. This module knows nothing about gRPC.
//!
//! Items wait in *lanes*, one per (kind, name, version), so a worker finds its next item by
//! looking at the heads of the lanes it runs, not by scanning a backlog of work it cannot run.

use crate::stats::WorkTicket;
use cairn_core::{Action, EntityAction, EntityOperation, HistoryEvent, TaskResult};
use parking_lot::Mutex;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::sync::{oneshot, Notify};

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
    pub version: Option<String>,
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
    pub reply: Responder<TaskResult>,
}

/// Where the answer to a piece of remote work goes: to a task that awaits it, or handed
/// straight to a [`Deliver`]. An activity's answer is delivered into its partition's inbox, so
/// an activity waiting here for a worker costs its item and nothing more: a task awaiting each
/// one was ~1 KB (its future), which a fresh `cairn serve` on a queue of a million activities
/// paid for every activity of its windows (24,576 of them).
pub struct Responder<T> {
    to: ResponderTo<T>,
}

enum ResponderTo<T> {
    Waiter(oneshot::Sender<T>),
    Deliver(Box<dyn Deliver<T>>),
}

/// Takes an answer to remote work where it is needed, without a task waiting for it.
pub trait Deliver<T>: Send {
    /// Hands `answer` over.
    fn deliver(self: Box<Self>, answer: T);
    /// True once nobody can take the answer any more (the partition stopped): the item is
    /// abandoned, and the queue sheds it rather than hand it to a worker.
    fn is_closed(&self) -> bool;
}

impl<T> Responder<T> {
    /// Answers go to `deliver`.
    pub fn deliver(deliver: impl Deliver<T> + 'static) -> Responder<T> {
        Responder {
            to: ResponderTo::Deliver(Box::new(deliver)),
        }
    }

    /// Hands the answer over; gives it back if nobody takes it any more.
    pub fn send(self, answer: T) -> Result<(), T> {
        match self.to {
            ResponderTo::Waiter(tx) => tx.send(answer),
            ResponderTo::Deliver(d) if d.is_closed() => Err(answer),
            ResponderTo::Deliver(d) => {
                d.deliver(answer);
                Ok(())
            }
        }
    }

    /// True if nobody takes the answer any more.
    pub fn is_closed(&self) -> bool {
        match &self.to {
            ResponderTo::Waiter(tx) => tx.is_closed(),
            ResponderTo::Deliver(d) => d.is_closed(),
        }
    }
}

impl<T> From<oneshot::Sender<T>> for Responder<T> {
    /// Answers go to whoever awaits `tx`'s receiver.
    fn from(tx: oneshot::Sender<T>) -> Responder<T> {
        Responder {
            to: ResponderTo::Waiter(tx),
        }
    }
}

impl<T> std::fmt::Debug for Responder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let to = match &self.to {
            ResponderTo::Waiter(_) => "waiter",
            ResponderTo::Deliver(_) => "deliver",
        };
        f.debug_struct("Responder")
            .field("to", &to)
            .field("closed", &self.is_closed())
            .finish()
    }
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

    pub fn kind(&self) -> WorkKind {
        match self {
            RemoteWork::Orchestrator(_) => WorkKind::Orchestration,
            RemoteWork::Activity(_) => WorkKind::Activity,
            RemoteWork::Entity(_) => WorkKind::Entity,
        }
    }

    /// The version the work was scheduled with (entities have none).
    pub fn version(&self) -> Option<&str> {
        match self {
            RemoteWork::Orchestrator(o) => o.version.as_deref(),
            RemoteWork::Activity(a) => a.version.as_deref(),
            RemoteWork::Entity(_) => None,
        }
    }

    /// The orchestration instance (or entity id) the work belongs to.
    pub fn instance_id(&self) -> &str {
        match self {
            RemoteWork::Orchestrator(o) => &o.instance_id,
            RemoteWork::Activity(a) => &a.instance_id,
            RemoteWork::Entity(e) => &e.entity_id,
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

/// Drops a lane's abandoned items (with their places in the gauges); true if any are left.
fn keep_live(items: &mut VecDeque<Queued>) -> bool {
    items.retain(|q| !q.work.is_abandoned());
    !items.is_empty()
}

/// The three kinds of work a worker may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkKind {
    Orchestration,
    Activity,
    Entity,
}

impl WorkKind {
    pub const ALL: [WorkKind; 3] = [
        WorkKind::Orchestration,
        WorkKind::Activity,
        WorkKind::Entity,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkKind::Orchestration => "orchestration",
            WorkKind::Activity => "activity",
            WorkKind::Entity => "entity",
        }
    }
}

/// One name a worker runs, with the versions it accepts (none listed: any version).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NameFilter {
    pub name: String,
    pub versions: Vec<String>,
}

/// What a connected worker runs. `None` for a kind means every name of that kind (a worker
/// that sends no filters receives everything, as with the reference backend).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkFilter {
    pub orchestrations: Option<Vec<NameFilter>>,
    pub activities: Option<Vec<NameFilter>>,
    pub entities: Option<Vec<NameFilter>>,
}

impl WorkFilter {
    /// Receives every item.
    pub fn everything() -> WorkFilter {
        WorkFilter::default()
    }

    fn names(&self, kind: WorkKind) -> Option<&[NameFilter]> {
        match kind {
            WorkKind::Orchestration => self.orchestrations.as_deref(),
            WorkKind::Activity => self.activities.as_deref(),
            WorkKind::Entity => self.entities.as_deref(),
        }
    }

    /// Whether a worker with this filter runs `name` at `version`, as the reference backend
    /// decides it: the versions of every entry with that name are pooled; none listed accepts
    /// any version, otherwise the work's version must be one of them (work scheduled without a
    /// version counts as the empty string). Names compare exactly, except entity names, which
    /// compare case-insensitively (the SDKs lowercase them).
    pub fn matches(&self, kind: WorkKind, name: &str, version: Option<&str>) -> bool {
        let Some(names) = self.names(kind) else {
            return true;
        };
        let mut found = false;
        let mut accepted: Vec<&str> = Vec::new();
        for f in names {
            let same_name = match kind {
                WorkKind::Entity => f.name.eq_ignore_ascii_case(name),
                _ => f.name == name,
            };
            if same_name {
                found = true;
                accepted.extend(f.versions.iter().map(String::as_str));
            }
        }
        found && (accepted.is_empty() || accepted.contains(&version.unwrap_or("")))
    }
}

/// Kinds a worker has room for right now (its concurrency limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Room {
    pub orchestrations: bool,
    pub activities: bool,
    pub entities: bool,
}

impl Room {
    pub const ALL: Room = Room {
        orchestrations: true,
        activities: true,
        entities: true,
    };

    fn allows(&self, kind: WorkKind) -> bool {
        match kind {
            WorkKind::Orchestration => self.orchestrations,
            WorkKind::Activity => self.activities,
            WorkKind::Entity => self.entities,
        }
    }
}

/// Items of one kind, name and version wait in one lane.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct LaneKey {
    kind: WorkKind,
    name: String,
    version: Option<String>,
}

/// An item with its place in line and in its partition's queue gauge (released when a worker
/// takes it).
struct Queued {
    seq: u64,
    since: Instant,
    work: RemoteWork,
    _ticket: Option<WorkTicket>,
    /// Borrowed from another node's queue (see [`crate::lending`]): never lent on again.
    borrowed: bool,
}

/// A connected worker as the queue knows it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerInfo {
    pub id: u64,
    /// What the front knows of it (e.g. its address).
    pub label: String,
    /// Milliseconds since the Unix epoch.
    pub connected_at: u64,
    pub filter: WorkFilter,
    /// Items it has taken since it connected.
    pub taken: u64,
    /// Another node of the cluster, taking work for its own workers (see [`crate::lending`]).
    pub peer: bool,
}

/// Work that waits because no connected worker runs it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Unserved {
    pub kind: WorkKind,
    pub name: String,
    pub version: Option<String>,
    pub waiting: usize,
    pub oldest_seconds: f64,
    /// The instances (or entities) of the first few waiting items.
    pub instances: Vec<String>,
}

#[derive(Default)]
struct QueueState {
    lanes: BTreeMap<LaneKey, VecDeque<Queued>>,
    next_seq: u64,
    next_worker: u64,
    workers: BTreeMap<u64, WorkerInfo>,
    /// Workers (not peers) waiting for an item now, with the room they have.
    waiting: BTreeMap<u64, Room>,
}

impl QueueState {
    fn served(&self, key: &LaneKey) -> bool {
        self.workers.values().any(|w| {
            w.filter
                .matches(key.kind, &key.name, key.version.as_deref())
        })
    }

    /// Takes the oldest live item among the lanes `filter` and `room` allow (for a peer, the
    /// oldest not itself borrowed).
    fn take(&mut self, filter: &WorkFilter, room: Room, peer: bool) -> Option<Queued> {
        if peer {
            return self.take_lendable(filter, room);
        }
        let mut best: Option<(u64, LaneKey)> = None;
        let mut emptied = Vec::new();
        for (key, lane) in self.lanes.iter_mut() {
            if !room.allows(key.kind)
                || !filter.matches(key.kind, &key.name, key.version.as_deref())
            {
                continue;
            }
            while lane.front().is_some_and(|q| q.work.is_abandoned()) {
                lane.pop_front();
            }
            match lane.front() {
                None => emptied.push(key.clone()),
                Some(q) if best.as_ref().is_none_or(|(s, _)| q.seq < *s) => {
                    best = Some((q.seq, key.clone()))
                }
                Some(_) => {}
            }
        }
        for key in emptied {
            self.lanes.remove(&key);
        }
        let (_, key) = best?;
        let lane = self.lanes.get_mut(&key)?;
        let item = lane.pop_front();
        if lane.is_empty() {
            self.lanes.remove(&key);
        }
        item
    }

    /// What a peer may take: never an item borrowed itself, and nothing a worker connected
    /// here waits for (the node's own workers come first).
    fn take_lendable(&mut self, filter: &WorkFilter, room: Room) -> Option<Queued> {
        let mut best: Option<(u64, LaneKey, usize)> = None;
        for (key, lane) in self.lanes.iter() {
            if !room.allows(key.kind)
                || !filter.matches(key.kind, &key.name, key.version.as_deref())
            {
                continue;
            }
            let wanted_here = self.waiting.iter().any(|(id, r)| {
                r.allows(key.kind)
                    && self.workers.get(id).is_some_and(|w| {
                        w.filter
                            .matches(key.kind, &key.name, key.version.as_deref())
                    })
            });
            if wanted_here {
                continue;
            }
            if let Some((at, q)) = lane
                .iter()
                .enumerate()
                .find(|(_, q)| !q.borrowed && !q.work.is_abandoned())
            {
                if best.as_ref().is_none_or(|(s, _, _)| q.seq < *s) {
                    best = Some((q.seq, key.clone(), at));
                }
            }
        }
        let (_, key, at) = best?;
        let lane = self.lanes.get_mut(&key)?;
        let item = lane.remove(at);
        if lane.is_empty() {
            self.lanes.remove(&key);
        }
        item
    }
}

/// An item a worker took: give it back with [`RemoteQueue::requeue`] if it is not answered.
#[derive(Debug)]
pub struct Taken {
    seq: u64,
    pub work: RemoteWork,
    borrowed: bool,
}

impl Taken {
    /// An item lent to another node and given back: it returns to its place in line.
    pub(crate) fn again(work: RemoteWork) -> Taken {
        Taken {
            seq: 0,
            work,
            borrowed: false,
        }
    }
}

/// The queue of remote work (one per engine), shared by the engine and the fronts.
#[derive(Clone, Default)]
pub struct RemoteQueue {
    inner: Arc<QueueInner>,
}

#[derive(Default)]
struct QueueInner {
    state: Mutex<QueueState>,
    /// Signalled when items arrive.
    changed: Notify,
}

/// The lane `work` waits in.
pub(crate) fn lane_key(work: &RemoteWork) -> LaneKey {
    LaneKey {
        kind: work.kind(),
        name: work.name().to_string(),
        version: work.version().map(str::to_string),
    }
}

impl RemoteQueue {
    pub(crate) fn push(&self, work: RemoteWork, ticket: Option<WorkTicket>) {
        self.push_item(work, ticket, false);
    }

    /// Queues an item borrowed from another node, for the workers connected here.
    pub(crate) fn push_borrowed(&self, work: RemoteWork) {
        self.push_item(work, None, true);
    }

    fn push_item(&self, work: RemoteWork, ticket: Option<WorkTicket>, borrowed: bool) {
        {
            let mut state = self.inner.state.lock();
            let seq = state.next_seq;
            state.next_seq += 1;
            state
                .lanes
                .entry(lane_key(&work))
                .or_default()
                .push_back(Queued {
                    seq,
                    since: Instant::now(),
                    work,
                    _ticket: ticket,
                    borrowed,
                });
        }
        self.inner.changed.notify_waiters();
    }

    /// Notes that an item of `lane` was withdrawn (its answer dropped: the instance ended while
    /// it waited). Abandoned items would be skipped when taken anyway; this sweeps them out of
    /// the lane now, with their places in the gauges. A lane holds at most the dispatch
    /// windows' worth of items of one name, so even terminating every instance of a large
    /// backlog costs little.
    pub(crate) fn withdrawn(&self, lane: &LaneKey) {
        let mut state = self.inner.state.lock();
        if let Some(items) = state.lanes.get_mut(lane) {
            if !keep_live(items) {
                state.lanes.remove(lane);
            }
        }
    }

    /// Sweeps every abandoned item out of every lane, with its place in the gauges: what a
    /// partition that stopped here (closed, or taken over by another node) left queued. Its
    /// activities' answers would go nowhere, and a lane whose only takers are peers would
    /// otherwise keep them (and the partition's gauge) until a worker connected here.
    pub(crate) fn shed_abandoned(&self) {
        self.inner
            .state
            .lock()
            .lanes
            .retain(|_, items| keep_live(items));
    }

    /// Drops every queued item (the engine shuts down): whoever waits for one is told it will
    /// not come, and recovery runs the work again.
    pub(crate) fn clear(&self) {
        let lanes = std::mem::take(&mut self.inner.state.lock().lanes);
        drop(lanes);
        self.inner.changed.notify_waiters();
    }

    /// Gives a taken item back (its worker disconnected, abandoned it, or held it past its
    /// lease): it goes back to its old place in line, ahead of work that came after it.
    pub fn requeue(&self, taken: Taken) {
        if taken.work.is_abandoned() {
            return;
        }
        {
            let mut state = self.inner.state.lock();
            let lane = state.lanes.entry(lane_key(&taken.work)).or_default();
            let at = lane.partition_point(|q| q.seq < taken.seq);
            lane.insert(
                at,
                Queued {
                    seq: taken.seq,
                    since: Instant::now(),
                    work: taken.work,
                    _ticket: None,
                    borrowed: taken.borrowed,
                },
            );
        }
        self.inner.changed.notify_waiters();
    }

    /// Registers a worker that runs what `filter` names; it takes work with
    /// [`WorkerHandle::recv`] and is forgotten when the handle is dropped.
    pub fn connect(&self, label: impl Into<String>, filter: WorkFilter) -> WorkerHandle {
        self.connect_as(label, filter, false)
    }

    /// Registers another node taking work for its workers (see [`crate::lending`]).
    pub(crate) fn connect_peer(&self, node: &str, filter: WorkFilter) -> WorkerHandle {
        self.connect_as(format!("node {node}"), filter, true)
    }

    fn connect_as(&self, label: impl Into<String>, filter: WorkFilter, peer: bool) -> WorkerHandle {
        let id = {
            let mut state = self.inner.state.lock();
            let id = state.next_worker;
            state.next_worker += 1;
            let connected_at = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            state.workers.insert(
                id,
                WorkerInfo {
                    id,
                    label: label.into(),
                    connected_at,
                    filter: filter.clone(),
                    taken: 0,
                    peer,
                },
            );
            id
        };
        WorkerHandle {
            queue: self.clone(),
            id,
            filter,
            peer,
        }
    }

    /// The workers (not peers) waiting for an item now: what they run and have room for.
    pub fn demand(&self) -> Vec<(u64, WorkFilter, Room)> {
        let state = self.inner.state.lock();
        state
            .waiting
            .iter()
            .filter_map(|(id, room)| Some((*id, state.workers.get(id)?.filter.clone(), *room)))
            .collect()
    }

    /// Resolves when items arrive or a worker starts waiting.
    pub async fn changed(&self) {
        self.inner.changed.notified().await
    }

    /// The workers connected now.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.inner.state.lock().workers.values().cloned().collect()
    }

    /// Work that waits because no connected worker runs it, by kind, name and version. Costs
    /// the number of lanes (it looks at the first few items of each), not the backlog.
    pub fn unserved(&self) -> Vec<Unserved> {
        const SHOWN: usize = 20;
        let state = self.inner.state.lock();
        state
            .lanes
            .iter()
            .filter(|(key, _)| !state.served(key))
            .filter_map(|(key, lane)| {
                let first: Vec<&Queued> = lane
                    .iter()
                    .filter(|q| !q.work.is_abandoned())
                    .take(SHOWN)
                    .collect();
                let oldest = first.iter().map(|q| q.since).min()?;
                Some(Unserved {
                    kind: key.kind,
                    name: key.name.clone(),
                    version: key.version.clone(),
                    waiting: lane.iter().filter(|q| !q.work.is_abandoned()).count(),
                    oldest_seconds: oldest.elapsed().as_secs_f64(),
                    instances: first
                        .iter()
                        .map(|q| q.work.instance_id().to_string())
                        .collect(),
                })
            })
            .collect()
    }

    /// Items waiting for a worker.
    pub fn len(&self) -> usize {
        self.inner
            .state
            .lock()
            .lanes
            .values()
            .map(VecDeque::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A connected worker's end of the queue.
pub struct WorkerHandle {
    queue: RemoteQueue,
    id: u64,
    filter: WorkFilter,
    peer: bool,
}

/// Marks a worker as waiting while it is in [`WorkerHandle::recv`].
struct Waiting<'a>(&'a WorkerHandle);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.queue.inner.state.lock().waiting.remove(&self.0.id);
    }
}

impl WorkerHandle {
    /// The oldest item this worker runs and has `room` for, waiting for one.
    pub async fn recv(&self, room: Room) -> Taken {
        let inner = &self.queue.inner;
        let mut waiting = None;
        loop {
            // Registered before looking, so an item pushed in between is not missed.
            let changed = inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = inner.state.lock();
                if let Some(q) = state.take(&self.filter, room, self.peer) {
                    if let Some(w) = state.workers.get_mut(&self.id) {
                        w.taken += 1;
                    }
                    return Taken {
                        seq: q.seq,
                        work: q.work,
                        borrowed: q.borrowed,
                    };
                }
                if !self.peer && waiting.is_none() {
                    state.waiting.insert(self.id, room);
                    waiting = Some(Waiting(self));
                    // Peers' lenders learn that a worker here waits.
                    inner.changed.notify_waiters();
                }
            }
            changed.await;
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.queue.inner.state.lock().workers.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[(&str, &[&str])]) -> Option<Vec<NameFilter>> {
        Some(
            list.iter()
                .map(|(n, v)| NameFilter {
                    name: n.to_string(),
                    versions: v.iter().map(|s| s.to_string()).collect(),
                })
                .collect(),
        )
    }

    /// Delivers into a channel, as a partition's inbox takes an activity's answer.
    struct IntoChannel(tokio::sync::mpsc::UnboundedSender<TaskResult>);

    impl Deliver<TaskResult> for IntoChannel {
        fn deliver(self: Box<Self>, answer: TaskResult) {
            let _ = self.0.send(answer);
        }
        fn is_closed(&self) -> bool {
            self.0.is_closed()
        }
    }

    #[test]
    fn a_delivered_answer_needs_no_waiter_and_a_closed_one_is_abandoned() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let item = |tx| {
            RemoteWork::Activity(ActivityWork {
                instance_id: "i".into(),
                execution_id: "e".into(),
                name: "a".into(),
                version: None,
                task_id: 1,
                input: None,
                reply: Responder::deliver(IntoChannel(tx)),
            })
        };
        let RemoteWork::Activity(work) = item(tx.clone()) else {
            unreachable!()
        };
        assert!(!work.reply.is_closed());
        work.reply.send(Ok(Some("7".into()))).unwrap();
        assert_eq!(rx.try_recv().unwrap(), Ok(Some("7".into())));

        // Nobody takes answers any more (the partition stopped): the queue sheds the item and
        // the answer comes back to whoever tried to give it.
        let waiting = item(tx);
        drop(rx);
        assert!(waiting.is_abandoned());
        let RemoteWork::Activity(work) = waiting else {
            unreachable!()
        };
        assert_eq!(work.reply.send(Ok(None)), Err(Ok(None)));
    }

    fn activity(name: &str, instance: &str) -> (RemoteWork, oneshot::Receiver<TaskResult>) {
        let (reply, rx) = oneshot::channel();
        let work = RemoteWork::Activity(ActivityWork {
            instance_id: instance.into(),
            execution_id: "e".into(),
            name: name.into(),
            version: None,
            task_id: 0,
            input: None,
            reply: reply.into(),
        });
        (work, rx)
    }

    #[test]
    fn filters_match_as_the_reference_backend_does() {
        let all = WorkFilter::everything();
        assert!(all.matches(WorkKind::Orchestration, "x", None));
        let f = WorkFilter {
            orchestrations: names(&[("o", &[]), ("v", &["2"]), ("blank", &[""])]),
            activities: Some(Vec::new()),
            entities: names(&[("counter", &[])]),
        };
        assert!(f.matches(WorkKind::Orchestration, "o", None));
        assert!(f.matches(WorkKind::Orchestration, "o", Some("7")));
        assert!(
            !f.matches(WorkKind::Orchestration, "O", None),
            "names are exact"
        );
        assert!(f.matches(WorkKind::Orchestration, "v", Some("2")));
        assert!(!f.matches(WorkKind::Orchestration, "v", Some("1")));
        assert!(
            !f.matches(WorkKind::Orchestration, "v", None),
            "no version does not match a worker that lists versions"
        );
        assert!(f.matches(WorkKind::Orchestration, "blank", None));
        assert!(
            !f.matches(WorkKind::Activity, "a", None),
            "an empty list: none of that kind"
        );
        assert!(f.matches(WorkKind::Entity, "Counter", None));
        // Entries with the same name pool their versions.
        let pooled = WorkFilter {
            orchestrations: names(&[("v", &["1"]), ("v", &["2"])]),
            ..WorkFilter::everything()
        };
        assert!(pooled.matches(WorkKind::Orchestration, "v", Some("1")));
        assert!(pooled.matches(WorkKind::Orchestration, "v", Some("2")));
        assert!(!pooled.matches(WorkKind::Orchestration, "v", Some("3")));
    }

    #[tokio::test]
    async fn a_worker_takes_only_what_it_runs_in_order_and_requeues_in_place() {
        let q = RemoteQueue::default();
        let mut answers = Vec::new();
        for (name, id) in [("a", "1"), ("b", "2"), ("a", "3"), ("b", "4")] {
            let (w, rx) = activity(name, id);
            q.push(w, None);
            answers.push(rx);
        }
        let only_b = WorkFilter {
            activities: names(&[("b", &[])]),
            ..WorkFilter::everything()
        };
        let worker = q.connect("b-worker", only_b);
        let first = worker.recv(Room::ALL).await;
        assert_eq!(first.work.instance_id(), "2");
        // Nobody runs `a`: it is reported, with its instances in order.
        let unserved = q.unserved();
        assert_eq!(unserved.len(), 1);
        assert_eq!(unserved[0].name, "a");
        assert_eq!(unserved[0].instances, vec!["1", "3"]);
        // Given back, it is first in line again, ahead of the later `b`.
        q.requeue(first);
        assert_eq!(worker.recv(Room::ALL).await.work.instance_id(), "2");
        assert_eq!(worker.recv(Room::ALL).await.work.instance_id(), "4");
        // No room for activities: nothing is taken.
        let none = Room {
            activities: false,
            ..Room::ALL
        };
        let (w, _rx) = activity("b", "5");
        q.push(w, None);
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(50), worker.recv(none)).await;
        assert!(waited.is_err(), "took work it had no room for");
        // A catch-all worker takes the oldest item of any lane.
        let all = q.connect("all", WorkFilter::everything());
        assert_eq!(all.recv(Room::ALL).await.work.instance_id(), "1");
        assert!(q.unserved().is_empty());
        drop(all);
        drop(worker);
        assert!(q.workers().is_empty());
        drop(answers);
    }

    /// An item whose answer was dropped (its instance ended while it waited) leaves the lane and
    /// the queue gauge when withdrawn, is not counted as unserved, and is never handed out.
    #[test]
    fn a_stopped_partitions_activities_are_shed_with_their_place_in_the_gauge() {
        let q = RemoteQueue::default();
        let gauge = std::sync::Arc::new(crate::stats::WorkGauge::default());
        // Two partitions' inboxes; activities of two names from each.
        let (stopped, stopped_rx) = tokio::sync::mpsc::unbounded_channel();
        let (running, _running_rx) = tokio::sync::mpsc::unbounded_channel();
        for (i, inbox) in [&stopped, &running, &stopped, &running]
            .into_iter()
            .enumerate()
        {
            for name in ["resize", "upload"] {
                let work = RemoteWork::Activity(ActivityWork {
                    instance_id: format!("i{i}"),
                    execution_id: "e".into(),
                    name: name.into(),
                    version: None,
                    task_id: i as i32,
                    input: None,
                    reply: Responder::deliver(IntoChannel(inbox.clone())),
                });
                q.push(work, Some(gauge.enter()));
            }
        }
        assert_eq!((q.len(), gauge.len()), (8, 8));
        drop((stopped, stopped_rx));
        q.shed_abandoned();
        assert_eq!((q.len(), gauge.len()), (4, 4));
        for lane in q.unserved() {
            assert_eq!(lane.instances, vec!["i1", "i3"], "{lane:?}");
        }
    }

    #[tokio::test]
    async fn withdrawn_items_leave_the_lane_and_the_gauge() {
        let q = RemoteQueue::default();
        let gauge = std::sync::Arc::new(crate::stats::WorkGauge::default());
        let mut answers = Vec::new();
        let mut lane = None;
        for id in ["1", "2", "3"] {
            let (w, rx) = activity("a", id);
            lane = Some(lane_key(&w));
            q.push(w, Some(gauge.enter()));
            answers.push(rx);
        }
        let lane = lane.unwrap();
        assert_eq!((gauge.len(), q.unserved()[0].waiting), (3, 3));
        // "2" ends while it waits: its answer is dropped, then it is withdrawn.
        drop(answers.remove(1));
        assert_eq!(
            q.unserved()[0].waiting,
            2,
            "an abandoned item is not waiting"
        );
        q.withdrawn(&lane);
        assert_eq!(gauge.len(), 2);
        assert_eq!(q.unserved()[0].instances, vec!["1", "3"]);
        let worker = q.connect("w", WorkFilter::everything());
        assert_eq!(worker.recv(Room::ALL).await.work.instance_id(), "1");
        assert_eq!(worker.recv(Room::ALL).await.work.instance_id(), "3");
        // Withdrawing a lane's last item removes the lane.
        let (w, rx) = activity("a", "4");
        q.push(w, Some(gauge.enter()));
        assert_eq!((q.len(), gauge.len()), (1, 1));
        drop(rx);
        q.withdrawn(&lane);
        assert_eq!((q.len(), gauge.len()), (0, 0));
        drop(answers);
    }
}

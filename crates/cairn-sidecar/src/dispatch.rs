//! Handing remote work to connected SDK workers.
//!
//! Each `GetWorkItems` stream becomes a worker of the engine's [`RemoteQueue`] with the work-item
//! filters it sent (no filters: it runs everything), and gets a task that takes the items it
//! runs while it has room under its advertised concurrency limits, per kind (backpressure, so a
//! slow worker is not flooded). Each item is tagged with a fresh completion token and stays *in
//! flight* until the worker completes or abandons it, its stream ends, or its **lease** runs
//! out (the worker hung, or its completion was lost while the stream stayed open); in the last
//! three cases it goes back to its place in line for the next worker, and a completion carrying
//! the old token is refused. Idle streams get a `HealthPing` so SDKs that drop silent
//! connections (the Python worker after 120 s) stay connected.
//!
//! Work that no connected worker runs waits in the queue; a background task logs it once per
//! name when it has waited `unserved_grace`, so a missing registration is visible.

use crate::convert;
use crate::proto as pb;
use cairn_runtime::remote::{
    NameFilter, RemoteQueue, RemoteWork, Room, Taken, WorkFilter, WorkKind,
};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};
use tonic::Status;

struct InFlight {
    taken: Taken,
    stream: u64,
    kind: WorkKind,
    deadline: Instant,
}

/// The items handed to workers and not yet answered, by token, with each stream's count per
/// kind kept alongside (a stream's room is read on every item it takes).
#[derive(Default)]
struct InFlightTable {
    items: HashMap<String, InFlight>,
    held: HashMap<u64, [usize; 3]>,
}

impl InFlightTable {
    fn insert(&mut self, token: String, f: InFlight) {
        self.held.entry(f.stream).or_default()[slot(f.kind)] += 1;
        self.items.insert(token, f);
    }

    fn remove(&mut self, token: &str) -> Option<InFlight> {
        let f = self.items.remove(token)?;
        if let Some(held) = self.held.get_mut(&f.stream) {
            held[slot(f.kind)] = held[slot(f.kind)].saturating_sub(1);
        }
        Some(f)
    }

    fn held(&self, stream: u64) -> [usize; 3] {
        self.held.get(&stream).copied().unwrap_or_default()
    }

    /// Removes the items that match `pred`.
    fn remove_where(&mut self, pred: impl Fn(&InFlight) -> bool) -> Vec<(String, InFlight)> {
        let tokens: Vec<String> = self
            .items
            .iter()
            .filter(|(_, f)| pred(f))
            .map(|(t, _)| t.clone())
            .collect();
        tokens
            .into_iter()
            .filter_map(|t| self.remove(&t).map(|f| (t, f)))
            .collect()
    }
}

pub struct Dispatcher {
    queue: RemoteQueue,
    in_flight: Mutex<InFlightTable>,
    /// Each connected stream's wake-up for freed room.
    streams: Mutex<HashMap<u64, Arc<Notify>>>,
    next_token: AtomicU64,
    /// Random per process: a worker that completes an item it got from an earlier `cairn serve`
    /// (it reconnected after a restart) must never hit an item of this one with the same number.
    token_prefix: u64,
    next_stream: AtomicU64,
    pub health_ping: Duration,
    /// How long a worker may hold an item before it is dispatched again.
    pub lease: Duration,
    /// How long work waits for a worker that runs it before the log says none does.
    pub unserved_grace: Duration,
    /// Names already reported as unserved (reported again after a worker served them).
    warned: Mutex<HashSet<(WorkKind, String, Option<String>)>>,
}

/// Work items of one kind a stream may hold when the worker advertises no limit.
const DEFAULT_LIMIT: usize = 1000;

fn slot(kind: WorkKind) -> usize {
    match kind {
        WorkKind::Orchestration => 0,
        WorkKind::Activity => 1,
        WorkKind::Entity => 2,
    }
}

/// The filters a stream sent, as the queue's [`WorkFilter`]. As with the reference backend: no
/// filters at all means everything; once filters are sent, a kind with no entries means none
/// of that kind; a name listing versions accepts only those (work with no version matches
/// only an empty-string version).
pub fn filter_from_proto(filters: Option<&pb::WorkItemFilters>) -> WorkFilter {
    let Some(f) = filters else {
        return WorkFilter::everything();
    };
    let names = |it: Vec<(String, Vec<String>)>| {
        Some(
            it.into_iter()
                .map(|(name, versions)| NameFilter { name, versions })
                .collect(),
        )
    };
    WorkFilter {
        orchestrations: names(
            f.orchestrations
                .iter()
                .map(|o| (o.name.clone(), o.versions.clone()))
                .collect(),
        ),
        activities: names(
            f.activities
                .iter()
                .map(|a| (a.name.clone(), a.versions.clone()))
                .collect(),
        ),
        entities: names(
            f.entities
                .iter()
                .map(|e| (e.name.clone(), Vec::new()))
                .collect(),
        ),
    }
}

impl Dispatcher {
    /// A dispatcher over `queue`; its lease and report task runs until the dispatcher is dropped.
    pub fn new(
        queue: RemoteQueue,
        health_ping: Duration,
        lease: Duration,
        unserved_grace: Duration,
    ) -> Arc<Dispatcher> {
        let d = Arc::new(Dispatcher {
            queue,
            in_flight: Mutex::new(InFlightTable::default()),
            streams: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            token_prefix: rand::random(),
            next_stream: AtomicU64::new(1),
            health_ping,
            lease,
            unserved_grace,
            warned: Mutex::new(HashSet::new()),
        });
        let tick = (lease / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::spawn(housekeeping(Arc::downgrade(&d), tick));
        d
    }

    /// Work items waiting for a worker (for metrics and tests).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Kinds `stream` has room for now.
    fn room(&self, stream: u64, limits: [usize; 3]) -> Room {
        let held = self.in_flight.lock().held(stream);
        Room {
            orchestrations: held[0] < limits[0],
            activities: held[1] < limits[1],
            entities: held[2] < limits[2],
        }
    }

    /// Starts serving one `GetWorkItems` stream; returns the receiving end for tonic.
    pub fn open_stream(
        self: &Arc<Self>,
        request: &pb::GetWorkItemsRequest,
        peer: String,
    ) -> mpsc::Receiver<Result<pb::WorkItem, Status>> {
        let (tx, rx) = mpsc::channel(64);
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let limit = |v: i32| if v > 0 { v as usize } else { DEFAULT_LIMIT };
        let limits = [
            limit(request.max_concurrent_orchestration_work_items),
            limit(request.max_concurrent_activity_work_items),
            limit(request.max_concurrent_entity_work_items),
        ];
        let filter = filter_from_proto(request.work_item_filters.as_ref());
        let room_freed = Arc::new(Notify::new());
        self.streams.lock().insert(stream, room_freed.clone());
        let this = self.clone();
        tokio::spawn(async move {
            tracing::info!(stream, %peer, ?limits, filters = %describe(&filter), "worker connected");
            let worker = this.queue.connect(peer, filter);
            this.serve_stream(stream, limits, &worker, &room_freed, tx)
                .await;
            drop(worker);
            this.streams.lock().remove(&stream);
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
        limits: [usize; 3],
        worker: &cairn_runtime::remote::WorkerHandle,
        room_freed: &Notify,
        tx: mpsc::Sender<Result<pb::WorkItem, Status>>,
    ) {
        loop {
            let room = self.room(stream, limits);
            let taken = tokio::select! {
                t = worker.recv(room) => t,
                // A completion, abandon or expired lease made room: look again.
                _ = room_freed.notified() => continue,
                _ = tx.closed() => return,
                _ = tokio::time::sleep(self.health_ping) => {
                    if tx.send(Ok(health_ping())).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let token = format!(
                "{:016x}-{}",
                self.token_prefix,
                self.next_token.fetch_add(1, Ordering::Relaxed)
            );
            let item = work_item(&taken.work, &token);
            let kind = taken.work.kind();
            self.in_flight.lock().insert(
                token,
                InFlight {
                    taken,
                    stream,
                    kind,
                    deadline: Instant::now() + self.lease,
                },
            );
            if tx.send(Ok(item)).await.is_err() {
                return; // release_stream hands the item back
            }
        }
    }

    /// Tells `stream` it has room again (a permit is kept if it is not waiting right now).
    fn wake(&self, stream: u64) {
        if let Some(s) = self.streams.lock().get(&stream) {
            s.notify_one();
        }
    }

    /// Returns every item still in flight on `stream` to the queue.
    fn release_stream(&self, stream: u64) -> usize {
        let released = {
            let mut table = self.in_flight.lock();
            let released = table.remove_where(|f| f.stream == stream);
            table.held.remove(&stream);
            released
        };
        let n = released.len();
        for (_, f) in released {
            self.queue.requeue(f.taken);
        }
        n
    }

    /// Hands items whose lease ran out to the next worker; their old tokens are refused.
    fn expire_leases(&self) {
        let now = Instant::now();
        let expired = self.in_flight.lock().remove_where(|f| f.deadline <= now);
        for (token, f) in expired {
            tracing::warn!(
                token,
                kind = f.kind.as_str(),
                name = f.taken.work.name(),
                instance = f.taken.work.instance_id(),
                "a worker held this work item past its lease of {:?} without completing or abandoning it; \
                 it is dispatched again, and a late completion with the old token will be refused \
                 (raise --work-item-lease if the work legitimately takes longer)",
                self.lease
            );
            self.queue.requeue(f.taken);
            self.wake(f.stream);
        }
    }

    /// Logs, once per name, work that has waited `unserved_grace` for a worker that runs it.
    fn report_unserved(&self) {
        let unserved = self.queue.unserved();
        let mut warned = self.warned.lock();
        let now: HashSet<(WorkKind, String, Option<String>)> = unserved
            .iter()
            .map(|u| (u.kind, u.name.clone(), u.version.clone()))
            .collect();
        warned.retain(|k| now.contains(k));
        for u in unserved {
            if u.oldest_seconds < self.unserved_grace.as_secs_f64() {
                continue;
            }
            if warned.insert((u.kind, u.name.clone(), u.version.clone())) {
                let version = u
                    .version
                    .as_deref()
                    .map(|v| format!(" version '{v}'"))
                    .unwrap_or_default();
                let workers = self.streams.lock().len();
                tracing::warn!(
                    kind = u.kind.as_str(),
                    name = %u.name,
                    waiting = u.waiting,
                    "no connected worker runs {} '{}'{version} ({workers} workers connected): {} work items \
                     wait until a worker that registers it connects (check the worker's registrations, \
                     versions and work-item filters)",
                    u.kind.as_str(),
                    u.name,
                    u.waiting
                );
            }
        }
    }

    /// Takes an in-flight item of `kind` for completion. An unknown token means it was already
    /// completed, abandoned or dispatched again; a token of another kind of item is refused and
    /// leaves that item in flight (its own completion may still come).
    pub fn complete(&self, token: &str, kind: WorkKind) -> Result<RemoteWork, Status> {
        let taken = {
            let mut table = self.in_flight.lock();
            match table.items.get(token) {
                Some(f) if f.kind != kind => {
                    return Err(Status::invalid_argument(format!(
                        "completion token '{token}' belongs to {} work item of '{}', not to {} one",
                        article(f.kind),
                        f.taken.work.instance_id(),
                        article(kind)
                    )));
                }
                _ => table.remove(token),
            }
        };
        match taken {
            Some(f) => {
                self.wake(f.stream);
                Ok(f.taken.work)
            }
            None => Err(not_in_flight(token)),
        }
    }

    /// Gives an abandoned item back for the next worker, at its old place in line.
    pub fn abandon(&self, token: &str) -> Result<(), Status> {
        let taken = self.in_flight.lock().remove(token);
        match taken {
            Some(f) => {
                self.queue.requeue(f.taken);
                self.wake(f.stream);
                Ok(())
            }
            None => Err(not_in_flight(token)),
        }
    }
}

/// The answer to a completion or abandon whose token is not (or no longer) in flight.
fn not_in_flight(token: &str) -> Status {
    Status::not_found(format!(
        "completion token '{token}' is not in flight: the work item was already completed or \
         abandoned, or was dispatched again because this worker's stream ended or it held the \
         item past its lease (--work-item-lease)"
    ))
}

fn article(kind: WorkKind) -> &'static str {
    match kind {
        WorkKind::Orchestration => "an orchestration",
        WorkKind::Activity => "an activity",
        WorkKind::Entity => "an entity",
    }
}

async fn housekeeping(dispatcher: Weak<Dispatcher>, tick: Duration) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(d) = dispatcher.upgrade() else {
            return;
        };
        d.expire_leases();
        d.report_unserved();
    }
}

/// A filter as a short line for the log.
fn describe(f: &WorkFilter) -> String {
    let part = |label: &str, names: &Option<Vec<NameFilter>>| match names {
        None => format!("{label}: all"),
        Some(v) if v.is_empty() => format!("{label}: none"),
        Some(v) => format!(
            "{label}: {}",
            v.iter()
                .map(|n| if n.versions.is_empty() {
                    n.name.clone()
                } else {
                    format!("{}@{}", n.name, n.versions.join("|"))
                })
                .collect::<Vec<_>>()
                .join(",")
        ),
    };
    format!(
        "{}; {}; {}",
        part("orchestrations", &f.orchestrations),
        part("activities", &f.activities),
        part("entities", &f.entities)
    )
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

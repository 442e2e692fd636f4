//! Work execution: orchestration episodes, activities and entity batches, run in this process
//! or handed to remote workers (SDK workers through the remote queue), results sent back as inputs.

use super::*;

impl Leader {
    /// Starts an episode (or entity batch) of `id` if it has work, none runs yet and its
    /// name's dispatch window has room; true if it started.
    pub(super) fn start_episode(&mut self, id: &str) -> bool {
        if self.dispatch.is_running(id) || self.failed.is_some() {
            return false;
        }
        let store = self.store.clone();
        let name = match self.state.get(id, &StoreSource(&*store)) {
            Ok(Some(i)) if is_runnable(&i.state) => i.state.name.clone(),
            Ok(_) => return false,
            Err(e) => {
                self.fail(e.to_string());
                return false;
            }
        };
        // A full window remembers `id`: a refill finds it again.
        let window = self.window();
        if !self.dispatch.admit(id.to_string(), &name, window) {
            return false;
        }
        let Some(inst) = self.state.loaded(id) else {
            return false;
        };
        if let Some(entity) = &inst.state.entity {
            let name = inst.state.name.clone();
            let state = entity.state.clone();
            let ops: Vec<EntityOperation> =
                entity.eligible(self.shared.config.max_entity_batch.max(1));
            self.stats.episodes.fetch_add(1, Ordering::Relaxed);
            let shared = self.shared.clone();
            let tx = self.me.clone();
            let entity_id = id.to_string();
            let ticket = self.stats.entity_queue.enter();
            tokio::spawn(async move {
                let placement = place(shared.registry.get_entity(&name), &shared.remote);
                let processed: Vec<String> = ops.iter().map(|op| op.request_id.clone()).collect();
                let out = execute(
                    placement,
                    &shared.orchestration_permits,
                    ticket,
                    (entity_id.clone(), name, state, ops),
                    |run, (entity_id, _, state, ops)| async move { run(&entity_id, state, &ops) },
                    |(entity_id, name, state, operations), reply| {
                        RemoteWork::Entity(EntityWork {
                            entity_id,
                            name,
                            state,
                            operations,
                            reply,
                        })
                    },
                    |out| crate::entity::BatchOutput {
                        state: out.state,
                        results: out.results,
                        actions: out.actions,
                    },
                    |(_, name, state, ops)| {
                        let f = shared.registry.entity_not_found(&name);
                        crate::entity::BatchOutput {
                            state,
                            results: ops.iter().map(|_| Err(f.clone())).collect(),
                            actions: Vec::new(),
                        }
                    },
                    None,
                )
                .await;
                let Some(out) = out else {
                    let _ = tx.send(Input::EpisodeDone {
                        instance_id: entity_id,
                        result: None,
                        cursor: None,
                    });
                    return;
                };
                let result = EntityBatchResult {
                    entity_id: entity_id.clone(),
                    processed,
                    state: out.state,
                    results: out.results,
                    actions: out.actions,
                };
                let _ = tx.send(Input::EntityDone { entity_id, result });
            });
            return true;
        }
        let s = &inst.state;
        let execution_id = s.execution_id.clone();
        let name = s.name.clone();
        let version = s.version.clone();
        let history_len = s.history_len;
        let persisted = inst.persisted_len();
        let new_events = s.pending.clone();
        // Orchestrations not registered here run on remote workers (when a front serves them):
        // they always get the full history, as the Durable Task protocol expects.
        let remote = match self.shared.registry.get_orchestration(&name) {
            Some(_) => None,
            None => self.shared.remote.clone(),
        };
        // A rewind rewrites history: a live orchestrator would be out of step with it.
        let rewound = new_events
            .iter()
            .any(|e| matches!(e.kind, EventKind::ExecutionRewound { .. }));
        let cursor = self.cursors.remove(id).filter(|c| {
            remote.is_none()
                && !rewound
                && c.execution_id == execution_id
                && c.history_len == history_len
        });
        // The history is only needed to rebuild a cursor; a cached cursor continues without it.
        let tail = if cursor.is_none() {
            inst.tail.clone()
        } else {
            Vec::new()
        };
        self.tick += 1;
        self.touched.insert(id.to_string(), self.tick);
        if cursor.is_none() {
            self.stats.replays.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.episodes.fetch_add(1, Ordering::Relaxed);
        let work = EpisodeWork {
            shared: self.shared.clone(),
            store: StoreLease::new(store, &self.store_users),
            tx: self.me.clone(),
            instance_id: id.to_string(),
            execution_id,
            name,
            version,
            history_len,
            persisted,
            tail,
            new_events,
        };
        let ticket = self.stats.orchestrator_queue.enter();
        let withdraw = remote.is_some().then(|| {
            let (withdraw, withdrawn) = oneshot::channel();
            self.remote_episodes.insert(id.to_string(), withdraw);
            withdrawn
        });
        tokio::spawn(work.run(cursor, remote, ticket, withdraw));
        true
    }

    /// Withdraws the remote episode of `id` if the instance has ended (or is gone) while the
    /// episode waits: its answer could only be ignored. Ending is speculative here (not yet
    /// durable), which is fine: a withdrawn episode is reported as not run, and an instance
    /// that turns out not to have ended after all (a crash lost the change) is dispatched
    /// again by recovery.
    pub(super) fn withdraw_if_ended(&mut self, id: &str) {
        if !self.remote_episodes.contains_key(id) || !self.state.is_resident(id) {
            return;
        }
        let ended = self
            .state
            .loaded(id)
            .is_none_or(|i| i.state.status.is_terminal());
        if ended {
            if let Some(withdraw) = self.remote_episodes.remove(id) {
                let _ = withdraw.send(());
            }
        }
    }

    /// Starts queued activity `activity_id` if it is not running yet and its name's window
    /// has room; true if it started.
    pub(super) fn start_activity(&mut self, activity_id: u64) -> bool {
        if self.activity_dispatch.is_running(&activity_id) || self.failed.is_some() {
            return false;
        }
        // A full window remembers the id (a refill finds it again): asked before the item is
        // copied, since most of a large fan-out finds the window full.
        let window = self.activity_window();
        let item = match self.state.activity(activity_id) {
            Some(item) => {
                if !self
                    .activity_dispatch
                    .admit(activity_id, &item.name, window)
                {
                    return false;
                }
                item.clone()
            }
            None if self.state.activity_done(activity_id) => return false,
            None => match self.filed_activity(activity_id) {
                Ok(Some(item)) => {
                    if !self
                        .activity_dispatch
                        .admit(activity_id, &item.name, window)
                    {
                        return false;
                    }
                    item
                }
                Ok(None) => return false,
                Err(e) => {
                    self.fail(e);
                    return false;
                }
            },
        };
        self.stats.activities.fetch_add(1, Ordering::Relaxed);
        let ticket = self.stats.activity_queue.enter();
        let answer = ActivityAnswer {
            tx: self.me.clone(),
            activity_id,
            name: item.name.clone(),
            limit: self.shared.config.max_payload_bytes,
        };
        match place(
            self.shared.registry.get_activity(&item.name),
            &self.shared.remote,
        ) {
            // No task waits for a remote worker: its answer goes straight to the inbox.
            Placement::Remote(queue) => {
                let work = ActivityWork {
                    instance_id: item.instance_id,
                    execution_id: item.execution_id,
                    name: item.name,
                    version: item.version,
                    task_id: item.task_id,
                    input: item.input,
                    reply: Responder::deliver(answer),
                };
                queue.push(RemoteWork::Activity(work), Some(ticket));
            }
            Placement::Local(f) => {
                let f = f.clone();
                let permits = self.shared.activity_permits.clone();
                tokio::spawn(async move {
                    let ctx = ActivityContext {
                        instance_id: item.instance_id,
                        name: item.name,
                        task_id: item.task_id,
                    };
                    let name = ctx.name.clone();
                    let run = || AssertUnwindSafe(f(ctx, item.input)).catch_unwind();
                    let result = match run_here(&permits, ticket, run).await {
                        Ok(r) => r,
                        Err(_) => Err(FailureDetails::new(
                            "Panic",
                            format!("activity '{name}' panicked"),
                        )),
                    };
                    answer.send(result);
                });
            }
            Placement::Missing => {
                drop(ticket);
                answer.send(Err(self.shared.registry.activity_not_found(&item.name)));
            }
        }
        true
    }

    /// Activity `id` as filed in the store (with the checkpoint being written overlaid).
    fn filed_activity(&self, id: u64) -> Result<Option<ActivityWorkItem>, String> {
        StoreSource(&*self.store)
            .load_activity(id)
            .map_err(|e| e.to_string())
    }
}

/// Where an activity's result goes, wherever it ran: into the partition's inbox, after the
/// `max_payload_bytes` check. A remote worker's answer gets there with no task waiting for it
/// (see [`Responder`]).
struct ActivityAnswer {
    tx: mpsc::UnboundedSender<Input>,
    activity_id: u64,
    name: String,
    limit: usize,
}

impl ActivityAnswer {
    fn send(self, result: TaskResult) {
        let result = within_limit(&self.name, result, self.limit);
        let _ = self.tx.send(Input::ActivityDone {
            activity_id: self.activity_id,
            result,
        });
    }
}

impl Deliver<TaskResult> for ActivityAnswer {
    fn deliver(self: Box<Self>, result: TaskResult) {
        (*self).send(result);
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// `result`, or a non-retriable failure if it is larger than `limit` bytes
/// (`max_payload_bytes`).
fn within_limit(name: &str, result: TaskResult, limit: usize) -> TaskResult {
    match result {
        Ok(Some(s)) if s.len() > limit => Err(FailureDetails::new(
            "PayloadTooLarge",
            format!(
                "activity '{name}' returned {} bytes; the limit is {limit} bytes (max_payload_bytes)",
                s.len()
            ),
        )
        .non_retriable()),
        r => r,
    }
}

/// Where one piece of work runs: the one place that decides between this process, a remote
/// worker, or nowhere (no one registers the name).
enum Placement<L> {
    Local(L),
    Remote(RemoteQueue),
    Missing,
}

fn place<L>(local: Option<L>, remote: &Option<RemoteQueue>) -> Placement<L> {
    match (local, remote) {
        (Some(l), _) => Placement::Local(l),
        (None, Some(queue)) => Placement::Remote(queue.clone()),
        (None, None) => Placement::Missing,
    }
}

/// Runs one piece of work (an episode, an activity, an entity batch) where `placement` says.
///
/// Local work takes a permit from `permits` (bounding what this process runs at once) and
/// leaves the queue gauge (`ticket`) when it starts. Remote work holds no permit (the workers'
/// own concurrency limits bound it, and work that no connected worker runs must not starve the
/// rest) and keeps its place in the gauge until a worker takes it. `None` means the remote
/// answer was dropped (the queue closed, or nobody waits any more): the caller retries later or
/// leaves it to recovery.
// One argument per way the work can go (and its admission); grouping them would only hide that.
#[allow(clippy::too_many_arguments)]
async fn execute<L, I, R, A, Fut>(
    placement: Placement<L>,
    permits: &Arc<tokio::sync::Semaphore>,
    ticket: WorkTicket,
    input: I,
    run_local: impl FnOnce(L, I) -> Fut,
    remote_item: impl FnOnce(I, oneshot::Sender<A>) -> RemoteWork,
    from_remote: impl FnOnce(A) -> R,
    missing: impl FnOnce(I) -> R,
    withdrawn: Option<oneshot::Receiver<()>>,
) -> Option<R>
where
    Fut: std::future::Future<Output = R>,
{
    match placement {
        Placement::Local(l) => Some(run_here(permits, ticket, || run_local(l, input)).await),
        Placement::Remote(queue) => {
            let (reply, answer) = oneshot::channel();
            let item = remote_item(input, reply);
            let lane = crate::remote::lane_key(&item);
            queue.push(item, Some(ticket));
            let Some(withdrawn) = withdrawn else {
                return answer.await.ok().map(from_remote);
            };
            // Only an explicit withdrawal counts: a dropped sender (the leader gone) is not one.
            let withdrawn = async {
                if withdrawn.await.is_err() {
                    std::future::pending::<()>().await
                }
            };
            let answered = tokio::select! {
                answer = answer => Some(answer),
                () = withdrawn => None,
            };
            match answered {
                Some(answer) => answer.ok().map(from_remote),
                None => {
                    // `answer` is dropped by now, which abandons the item; the queue sheds it
                    // (and its place in the gauges) without waiting for a worker to come along.
                    queue.withdrawn(&lane);
                    None
                }
            }
        }
        Placement::Missing => {
            drop(ticket);
            Some(missing(input))
        }
    }
}

/// Runs work in this process: starts `run` once a permit is free (the work leaves the queue's
/// gauge then), and holds the permit until it is done.
async fn run_here<F: std::future::Future>(
    permits: &Arc<tokio::sync::Semaphore>,
    ticket: WorkTicket,
    run: impl FnOnce() -> F,
) -> F::Output {
    let _permit = permits.clone().acquire_owned().await;
    drop(ticket);
    run().await
}

/// Everything an episode needs, moved onto a worker task.
struct EpisodeWork {
    shared: Arc<Shared>,
    store: StoreLease,
    tx: mpsc::UnboundedSender<Input>,
    instance_id: String,
    execution_id: String,
    name: String,
    version: Option<String>,
    history_len: u32,
    persisted: u32,
    tail: Vec<HistoryEvent>,
    new_events: Vec<HistoryEvent>,
}

impl EpisodeWork {
    /// Runs the episode (locally with a cursor, or on a remote worker) and reports the result
    /// to the leader.
    async fn run(
        self,
        cursor: Option<Cursor>,
        remote: Option<RemoteQueue>,
        ticket: WorkTicket,
        withdrawn: Option<oneshot::Receiver<()>>,
    ) {
        let fail = |f: FailureDetails| vec![Action::Complete(Completion::Failed { failure: f })];
        let retry_later = |tx: &mpsc::UnboundedSender<Input>, instance_id: String| {
            let _ = tx.send(Input::EpisodeDone {
                instance_id,
                result: None,
                cursor: None,
            });
        };
        let mut episode = EpisodeResult {
            instance_id: self.instance_id.clone(),
            execution_id: self.execution_id.clone(),
            history_len: self.history_len,
            consumed: self.new_events.len() as u32,
            started_at: 0,
            actions: Vec::new(),
            custom_status: None,
        };
        // The store is let go before the episode waits for a slot or a worker: work waiting
        // for a worker that never comes must not keep the store open after shutdown.
        let store = self.store;
        let past = if cursor.is_none() {
            match read_history(&*store.store, &self.instance_id, self.persisted, self.tail) {
                Some(p) => p,
                // The instance changed under us; let the leader look again.
                None => return retry_later(&self.tx, self.instance_id),
            }
        } else {
            Vec::new()
        };
        drop(store);
        let placement = match remote {
            Some(queue) => Placement::Remote(queue),
            None => place(self.shared.registry.get_orchestration(&self.name), &None),
        };
        let shared = self.shared.clone();
        // Borrowed, not cloned: the episode runs right here (only a rebuild or a remote
        // worker needs them).
        let (instance_id, execution_id, name) = (&self.instance_id, &self.execution_id, &self.name);
        let new_events = self.new_events;
        // A remote episode's time is when it is handed over (the worker replays with it).
        let handed_over_at = self.shared.clock.now_millis();
        let decided = execute(
            placement,
            &shared.orchestration_permits,
            ticket,
            (past, new_events),
            |func, (past, new_events)| {
                let clock = &shared.clock;
                async move {
                    let started_at = clock.now_millis();
                    let cursor = match cursor {
                        Some(c) => Ok(c),
                        None => {
                            Cursor::rebuild(func.clone(), instance_id, execution_id, name, &past)
                        }
                    };
                    match cursor {
                        Ok(mut cursor) => {
                            let out = cursor.run_episode(&new_events, started_at);
                            let keep = (!cursor.is_finished()).then_some(cursor);
                            (started_at, out.actions, out.custom_status, keep)
                        }
                        Err(f) => (started_at, fail(f), None, None),
                    }
                }
            },
            |(past, new_events), reply| {
                // Remote workers always get the full history, and new events that start with
                // the episode's `OrchestratorStarted`.
                let mut events = Vec::with_capacity(new_events.len() + 1);
                events.push(HistoryEvent::new(
                    handed_over_at,
                    EventKind::OrchestratorStarted,
                ));
                events.extend(new_events);
                RemoteWork::Orchestrator(OrchestratorWork {
                    instance_id: instance_id.clone(),
                    execution_id: execution_id.clone(),
                    name: name.clone(),
                    version: self.version.clone(),
                    past_events: past,
                    new_events: events,
                    reply,
                })
            },
            |out: crate::remote::RemoteEpisode| {
                (handed_over_at, out.actions, out.custom_status, None)
            },
            |_| {
                (
                    shared.clock.now_millis(),
                    fail(shared.registry.orchestration_not_found(name)),
                    None,
                    None,
                )
            },
            withdrawn,
        )
        .await;
        let Some((started_at, actions, custom_status, cursor)) = decided else {
            return retry_later(&self.tx, self.instance_id);
        };
        episode.started_at = started_at;
        episode.actions = actions;
        episode.custom_status = custom_status;
        let mut cursor_out = cursor;
        for action in episode.actions.iter_mut() {
            match action {
                Action::CreateSubOrchestration { execution_id, .. } => {
                    *execution_id = self.shared.ids.next_id()
                }
                Action::Complete(Completion::ContinuedAsNew {
                    new_execution_id: e,
                    ..
                }) => *e = self.shared.ids.next_id(),
                _ => {}
            }
        }
        if let Some(f) = oversized_action(&episode.actions, self.shared.config.max_payload_bytes) {
            episode.actions = fail(f);
            cursor_out = None;
        }
        let _ = self.tx.send(Input::EpisodeDone {
            instance_id: self.instance_id,
            result: Some(episode),
            cursor: cursor_out,
        });
    }
}

/// Reads the first `persisted` history rows from the store and appends the in-memory tail.
/// None if the store no longer has them (the instance was restarted or purged meanwhile).
pub(super) fn read_history(
    store: &dyn cairn_storage::seam::StoreReads,
    id: &str,
    persisted: u32,
    tail: Vec<HistoryEvent>,
) -> Option<Vec<HistoryEvent>> {
    let mut events = Vec::with_capacity(persisted as usize + tail.len());
    if persisted > 0 {
        let rows = store.read_history(id).ok()?;
        if rows.len() < persisted as usize {
            return None;
        }
        for row in rows.iter().take(persisted as usize) {
            events.push(cairn_core::partition::decode_history_event(row).ok()?);
        }
    }
    events.extend(tail);
    Some(events)
}

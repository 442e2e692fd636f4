//! `TaskHubSidecarService`: the client calls map onto Cairn's [`Client`], the worker calls onto
//! the [`Dispatcher`]. Errors become gRPC statuses a caller can act on.

use crate::convert::{
    self, actions_from_proto, failure_from_proto, state_to_proto, status_from_proto,
};
use crate::dispatch::Dispatcher;
use crate::proto as pb;
use crate::proto::task_hub_sidecar_service_server::TaskHubSidecarService;
use cairn_core::{ExistingPolicy, RuntimeStatus};
use cairn_runtime::remote::{RemoteEpisode, RemoteWork, WorkKind};
use cairn_runtime::{Client, EngineError, InstanceQuery, QueryFilter, StartOptions};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub struct Sidecar {
    pub client: Client,
    pub dispatcher: Arc<Dispatcher>,
}

type Reply<T> = Result<Response<T>, Status>;

/// How an engine error reads as a gRPC status.
pub fn status(e: EngineError) -> Status {
    let msg = e.to_string();
    match e {
        EngineError::InvalidInstanceId(_)
        | EngineError::InvalidArgument(_)
        | EngineError::Serialization(_) => Status::invalid_argument(msg),
        EngineError::NotFound(_) => Status::not_found(msg),
        EngineError::AlreadyExists { .. } => Status::already_exists(msg),
        EngineError::WrongStatus { .. } | EngineError::Refused { .. } => {
            Status::failed_precondition(msg)
        }
        EngineError::PayloadTooLarge { .. } | EngineError::Busy { .. } => {
            Status::resource_exhausted(msg)
        }
        EngineError::Timeout(_) => Status::deadline_exceeded(msg),
        EngineError::Storage { .. } | EngineError::ShuttingDown => Status::unavailable(msg),
        EngineError::DataDir { .. } => Status::internal(msg),
    }
}

/// `Dispatcher::complete` checked the kind; a mismatch here is a bug, answered as one.
fn unreachable_kind<T>() -> Result<T, Status> {
    Err(Status::internal(
        "the work item's kind changed between checking and completing it",
    ))
}

/// `@name@key` as (name, key).
fn entity_parts(entity_id: &str) -> Result<(&str, &str), Status> {
    let rest = entity_id.strip_prefix('@').unwrap_or_default();
    rest.split_once('@')
        .filter(|(name, _)| !name.is_empty())
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "entity instance id {entity_id:?} is not of the form @name@key"
            ))
        })
}

fn entity_metadata(e: &cairn_runtime::EntityStatus, include_state: bool) -> pb::EntityMetadata {
    pb::EntityMetadata {
        instance_id: e.entity_id.clone(),
        last_modified_time: Some(convert::timestamp(e.last_modified)),
        backlog_queue_size: e.queued.min(i32::MAX as usize) as i32,
        locked_by: e.locked_by.clone(),
        serialized_state: if include_state { e.state.clone() } else { None },
    }
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is not supported by this Cairn version (see the README's protocol table)"
    ))
}

fn require_id(id: &str) -> Result<(), Status> {
    cairn_core::validate_instance_id(id)
        .map_err(|e| Status::invalid_argument(format!("invalid instance id: {e}")))
}

/// The runtime statuses of a filter. `Ok(None)` means the list named only statuses Cairn never
/// produces (`CANCELED`, which the JS SDK always puts in reuse policies): such a filter matches
/// nothing, which is not the same as an empty list (no filter at all).
fn statuses(values: &[i32]) -> Result<Option<Vec<RuntimeStatus>>, Status> {
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        match pb::OrchestrationStatus::try_from(*v) {
            Ok(pb::OrchestrationStatus::Canceled) => {}
            _ => {
                out.push(status_from_proto(*v).ok_or_else(|| {
                    Status::invalid_argument(format!("unknown runtime status {v}"))
                })?)
            }
        }
    }
    Ok((out.is_empty() == values.is_empty()).then_some(out))
}

/// Terminate, suspend, resume and raise-event on an instance that has ended succeed and change
/// nothing, as with the Durable Task reference backends (SDK helpers terminate recursively
/// before cleaning up, and must not break on a child that already finished). The HTTP API keeps
/// its documented `410 Gone` for the same cases.
fn ended_is_done(r: Result<(), EngineError>) -> Result<(), Status> {
    match r {
        Err(EngineError::WrongStatus { status: s, .. }) if s.is_terminal() => Ok(()),
        other => other.map_err(status),
    }
}

/// Waits can last as long as the caller keeps the call open; this bounds them at a day.
const LONG_WAIT: Duration = Duration::from_secs(24 * 3600);

impl Sidecar {
    async fn instance_response(
        &self,
        id: &str,
        with_payloads: bool,
    ) -> Reply<pb::GetInstanceResponse> {
        let s = self.client.get_status(id, false).await.map_err(status)?;
        Ok(Response::new(pb::GetInstanceResponse {
            exists: s.is_some(),
            orchestration_state: s.map(|s| state_to_proto(&s, with_payloads)),
        }))
    }

    /// Ids of the sub-orchestrations an instance started (from its history).
    async fn children(&self, id: &str) -> Result<Vec<String>, Status> {
        let s = self.client.get_status(id, true).await.map_err(status)?;
        Ok(s.and_then(|s| s.history)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| match e.kind {
                cairn_core::EventKind::SubOrchestrationCreated { instance_id, .. } => {
                    Some(instance_id)
                }
                _ => None,
            })
            .collect())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[tonic::async_trait]
impl TaskHubSidecarService for Sidecar {
    async fn hello(&self, _: Request<()>) -> Reply<()> {
        Ok(Response::new(()))
    }

    async fn start_instance(
        &self,
        request: Request<pb::CreateInstanceRequest>,
    ) -> Reply<pb::CreateInstanceResponse> {
        let r = request.into_inner();
        if r.name.is_empty() {
            return Err(Status::invalid_argument(
                "the orchestration name must not be empty",
            ));
        }
        let if_exists = match &r.orchestration_id_reuse_policy {
            Some(policy) => {
                ExistingPolicy::ReplaceIf(statuses(&policy.replaceable_status)?.unwrap_or_default())
            }
            None => ExistingPolicy::Fail,
        };
        let options = StartOptions {
            instance_id: Some(if r.instance_id.is_empty() {
                self.client.new_id()
            } else {
                r.instance_id.clone()
            }),
            scheduled_start: r
                .scheduled_start_timestamp
                .as_ref()
                .map(|t| UNIX_EPOCH + Duration::from_millis(convert::millis(t))),
            tags: r.tags.into_iter().collect(),
            version: r.version,
            if_exists,
        };
        let id = self
            .client
            .start_raw(&r.name, r.input, options)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateInstanceResponse {
            instance_id: id,
        }))
    }

    async fn get_instance(
        &self,
        request: Request<pb::GetInstanceRequest>,
    ) -> Reply<pb::GetInstanceResponse> {
        let r = request.into_inner();
        require_id(&r.instance_id)?;
        self.instance_response(&r.instance_id, r.get_inputs_and_outputs)
            .await
    }

    async fn rewind_instance(
        &self,
        request: Request<pb::RewindInstanceRequest>,
    ) -> Reply<pb::RewindInstanceResponse> {
        let r = request.into_inner();
        require_id(&r.instance_id)?;
        self.client
            .rewind(&r.instance_id, r.reason.as_deref())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RewindInstanceResponse {}))
    }

    async fn restart_instance(
        &self,
        request: Request<pb::RestartInstanceRequest>,
    ) -> Reply<pb::RestartInstanceResponse> {
        let r = request.into_inner();
        require_id(&r.instance_id)?;
        let id = self
            .client
            .restart(&r.instance_id, !r.restart_with_new_instance_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RestartInstanceResponse {
            instance_id: id,
        }))
    }

    async fn wait_for_instance_start(
        &self,
        request: Request<pb::GetInstanceRequest>,
    ) -> Reply<pb::GetInstanceResponse> {
        let r = request.into_inner();
        require_id(&r.instance_id)?;
        self.client
            .wait_for_start(&r.instance_id, LONG_WAIT)
            .await
            .map_err(status)?;
        self.instance_response(&r.instance_id, r.get_inputs_and_outputs)
            .await
    }

    async fn wait_for_instance_completion(
        &self,
        request: Request<pb::GetInstanceRequest>,
    ) -> Reply<pb::GetInstanceResponse> {
        let r = request.into_inner();
        require_id(&r.instance_id)?;
        self.client
            .wait_for_completion(&r.instance_id, LONG_WAIT)
            .await
            .map_err(status)?;
        self.instance_response(&r.instance_id, r.get_inputs_and_outputs)
            .await
    }

    async fn raise_event(
        &self,
        request: Request<pb::RaiseEventRequest>,
    ) -> Reply<pb::RaiseEventResponse> {
        let r = request.into_inner();
        ended_is_done(
            self.client
                .raise_event_raw(&r.instance_id, &r.name, r.input)
                .await,
        )?;
        Ok(Response::new(pb::RaiseEventResponse {}))
    }

    async fn terminate_instance(
        &self,
        request: Request<pb::TerminateRequest>,
    ) -> Reply<pb::TerminateResponse> {
        let r = request.into_inner();
        ended_is_done(
            self.client
                .terminate_raw(&r.instance_id, r.output, r.recursive)
                .await,
        )?;
        Ok(Response::new(pb::TerminateResponse {}))
    }

    async fn suspend_instance(
        &self,
        request: Request<pb::SuspendRequest>,
    ) -> Reply<pb::SuspendResponse> {
        let r = request.into_inner();
        ended_is_done(
            self.client
                .suspend(&r.instance_id, r.reason.as_deref())
                .await,
        )?;
        Ok(Response::new(pb::SuspendResponse {}))
    }

    async fn resume_instance(
        &self,
        request: Request<pb::ResumeRequest>,
    ) -> Reply<pb::ResumeResponse> {
        let r = request.into_inner();
        ended_is_done(
            self.client
                .resume(&r.instance_id, r.reason.as_deref())
                .await,
        )?;
        Ok(Response::new(pb::ResumeResponse {}))
    }

    async fn query_instances(
        &self,
        request: Request<pb::QueryInstancesRequest>,
    ) -> Reply<pb::QueryInstancesResponse> {
        let q = request.into_inner().query.unwrap_or_default();
        let Some(wanted) = statuses(&q.runtime_status)? else {
            return Ok(Response::new(pb::QueryInstancesResponse::default()));
        };
        let query = InstanceQuery {
            filter: QueryFilter {
                statuses: wanted,
                created_from: q.created_time_from.as_ref().map(convert::millis),
                created_to: q.created_time_to.as_ref().map(convert::millis),
                instance_id_prefix: q.instance_id_prefix.filter(|p| !p.is_empty()),
                name: None,
            },
            page_size: if q.max_instance_count > 0 {
                (q.max_instance_count as usize).min(1000)
            } else {
                100
            },
            continuation_token: q.continuation_token.filter(|t| !t.is_empty()),
            fetch_inputs_and_outputs: q.fetch_inputs_and_outputs,
        };
        let page = self.client.query(&query).await.map_err(status)?;
        Ok(Response::new(pb::QueryInstancesResponse {
            orchestration_state: page
                .instances
                .iter()
                .map(|s| state_to_proto(s, query.fetch_inputs_and_outputs))
                .collect(),
            continuation_token: page.continuation_token,
        }))
    }

    async fn list_instance_ids(
        &self,
        request: Request<pb::ListInstanceIdsRequest>,
    ) -> Reply<pb::ListInstanceIdsResponse> {
        let r = request.into_inner();
        let Some(mut wanted) = statuses(&r.runtime_status)? else {
            return Ok(Response::new(pb::ListInstanceIdsResponse::default()));
        };
        if wanted.is_empty() {
            wanted = vec![
                RuntimeStatus::Completed,
                RuntimeStatus::Failed,
                RuntimeStatus::Terminated,
            ];
        }
        let from = r.completed_time_from.as_ref().map(convert::millis);
        let to = r.completed_time_to.as_ref().map(convert::millis);
        // Ordered by (completion time, id); the key of the last one returned continues the list.
        let mut all: Vec<(u64, String)> = Vec::new();
        let mut query = InstanceQuery {
            filter: QueryFilter {
                statuses: wanted,
                ..QueryFilter::default()
            },
            page_size: 1000,
            fetch_inputs_and_outputs: false,
            ..InstanceQuery::default()
        };
        loop {
            let page = self.client.query(&query).await.map_err(status)?;
            for s in page.instances {
                let done = s.completed_at.unwrap_or(0);
                if from.is_none_or(|f| done >= f) && to.is_none_or(|t| done <= t) {
                    all.push((done, s.instance_id));
                }
            }
            match page.continuation_token {
                Some(t) => query.continuation_token = Some(t),
                None => break,
            }
        }
        all.sort();
        let after = r.last_instance_key.as_deref().and_then(|k| {
            let (t, id) = k.split_once(':')?;
            Some((t.parse::<u64>().ok()?, id.to_string()))
        });
        let page_size = if r.page_size > 0 {
            r.page_size as usize
        } else {
            100
        };
        let rest: Vec<(u64, String)> = all
            .into_iter()
            .filter(|k| after.as_ref().is_none_or(|a| k > a))
            .collect();
        let more = rest.len() > page_size;
        let page: Vec<(u64, String)> = rest.into_iter().take(page_size).collect();
        let last = if more {
            page.last().map(|(t, id)| format!("{t}:{id}"))
        } else {
            None
        };
        Ok(Response::new(pb::ListInstanceIdsResponse {
            instance_ids: page.into_iter().map(|(_, id)| id).collect(),
            last_instance_key: last,
        }))
    }

    async fn purge_instances(
        &self,
        request: Request<pb::PurgeInstancesRequest>,
    ) -> Reply<pb::PurgeInstancesResponse> {
        use pb::purge_instances_request::Request as R;
        let r = request.into_inner();
        let count = match r.request {
            Some(R::InstanceId(id)) => {
                require_id(&id)?;
                let mut ids = vec![id];
                let mut count = 0u64;
                let mut depth = 0;
                while let Some(id) = ids.pop() {
                    if r.recursive && depth < 10_000 {
                        ids.extend(self.children(&id).await?);
                        depth += 1;
                    }
                    count += self.client.purge(&id).await.map_err(status)?;
                }
                count
            }
            Some(R::PurgeInstanceFilter(f)) => match statuses(&f.runtime_status)? {
                None => 0,
                Some(wanted) => self
                    .client
                    .purge_by_filter(QueryFilter {
                        statuses: wanted,
                        created_from: f.created_time_from.as_ref().map(convert::millis),
                        created_to: f.created_time_to.as_ref().map(convert::millis),
                        instance_id_prefix: None,
                        name: None,
                    })
                    .await
                    .map_err(status)?,
            },
            _ => {
                return Err(Status::invalid_argument(
                    "PurgeInstances needs an instanceId or a purgeInstanceFilter",
                ))
            }
        };
        Ok(Response::new(pb::PurgeInstancesResponse {
            deleted_instance_count: count.min(i32::MAX as u64) as i32,
            is_complete: Some(true),
        }))
    }

    type StreamInstanceHistoryStream =
        Pin<Box<dyn Stream<Item = Result<pb::HistoryChunk, Status>> + Send>>;

    async fn stream_instance_history(
        &self,
        request: Request<pb::StreamInstanceHistoryRequest>,
    ) -> Reply<Self::StreamInstanceHistoryStream> {
        let r = request.into_inner();
        require_id(&r.instance_id)?;
        let Some(s) = self
            .client
            .get_status(&r.instance_id, true)
            .await
            .map_err(status)?
        else {
            return Err(Status::not_found(format!(
                "instance '{}' not found",
                r.instance_id
            )));
        };
        if let Some(e) = r.execution_id.as_deref().filter(|e| !e.is_empty()) {
            if e != s.execution_id {
                return Err(Status::not_found(format!(
                    "execution '{e}' of instance '{}' is not its current execution; Cairn keeps the current execution's history",
                    r.instance_id
                )));
            }
        }
        let events: Vec<pb::HistoryEvent> = s
            .history
            .unwrap_or_default()
            .iter()
            .map(|e| convert::event_to_proto(&r.instance_id, e))
            .collect();
        let chunks: Vec<Result<pb::HistoryChunk, Status>> = events
            .chunks(500)
            .map(|c| Ok(pb::HistoryChunk { events: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn skip_graceful_orchestration_terminations(
        &self,
        _: Request<pb::SkipGracefulOrchestrationTerminationsRequest>,
    ) -> Reply<pb::SkipGracefulOrchestrationTerminationsResponse> {
        Err(unimplemented("SkipGracefulOrchestrationTerminations"))
    }

    type GetWorkItemsStream = ReceiverStream<Result<pb::WorkItem, Status>>;

    async fn get_work_items(
        &self,
        request: Request<pb::GetWorkItemsRequest>,
    ) -> Reply<Self::GetWorkItemsStream> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown peer".to_string(), |a| a.to_string());
        let rx = self.dispatcher.open_stream(request.get_ref(), peer);
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn complete_activity_task(
        &self,
        request: Request<pb::ActivityResponse>,
    ) -> Reply<pb::CompleteTaskResponse> {
        let r = request.into_inner();
        match self
            .dispatcher
            .complete(&r.completion_token, WorkKind::Activity)?
        {
            RemoteWork::Activity(a) => {
                let result = match &r.failure_details {
                    Some(f) => Err(failure_from_proto(f)),
                    None => Ok(r.result),
                };
                let _ = a.reply.send(result);
                Ok(Response::new(pb::CompleteTaskResponse {}))
            }
            _ => unreachable_kind(),
        }
    }

    async fn complete_orchestrator_task(
        &self,
        request: Request<pb::OrchestratorResponse>,
    ) -> Reply<pb::CompleteTaskResponse> {
        let r = request.into_inner();
        match self
            .dispatcher
            .complete(&r.completion_token, WorkKind::Orchestration)?
        {
            RemoteWork::Orchestrator(o) => {
                let (actions, bad) = match actions_from_proto(&o.instance_id, &r.actions) {
                    Ok(a) => (a, None),
                    Err(e) => {
                        // The orchestration cannot go on with actions Cairn cannot carry out:
                        // fail it with the reason rather than retrying forever.
                        let failure =
                            cairn_core::FailureDetails::new("UnsupportedAction", e.to_string())
                                .non_retriable();
                        (
                            vec![cairn_core::Action::Complete(
                                cairn_core::Completion::Failed { failure },
                            )],
                            Some(e),
                        )
                    }
                };
                let _ = o.reply.send(RemoteEpisode {
                    actions,
                    custom_status: r.custom_status,
                });
                if let Some(e) = bad {
                    return Err(Status::invalid_argument(format!(
                        "orchestration '{}' failed: {e}",
                        o.instance_id
                    )));
                }
                Ok(Response::new(pb::CompleteTaskResponse {}))
            }
            _ => unreachable_kind(),
        }
    }

    async fn complete_entity_task(
        &self,
        request: Request<pb::EntityBatchResult>,
    ) -> Reply<pb::CompleteTaskResponse> {
        let r = request.into_inner();
        match self
            .dispatcher
            .complete(&r.completion_token, WorkKind::Entity)?
        {
            RemoteWork::Entity(e) => {
                let out = convert::entity_batch_from_proto(&r, e.operations.len(), e.state.clone());
                let _ = e.reply.send(out);
                Ok(Response::new(pb::CompleteTaskResponse::default()))
            }
            _ => unreachable_kind(),
        }
    }

    async fn abandon_task_activity_work_item(
        &self,
        request: Request<pb::AbandonActivityTaskRequest>,
    ) -> Reply<pb::AbandonActivityTaskResponse> {
        self.dispatcher
            .abandon(&request.into_inner().completion_token)?;
        Ok(Response::new(pb::AbandonActivityTaskResponse {}))
    }

    async fn abandon_task_orchestrator_work_item(
        &self,
        request: Request<pb::AbandonOrchestrationTaskRequest>,
    ) -> Reply<pb::AbandonOrchestrationTaskResponse> {
        self.dispatcher
            .abandon(&request.into_inner().completion_token)?;
        Ok(Response::new(pb::AbandonOrchestrationTaskResponse {}))
    }

    async fn abandon_task_entity_work_item(
        &self,
        request: Request<pb::AbandonEntityTaskRequest>,
    ) -> Reply<pb::AbandonEntityTaskResponse> {
        self.dispatcher
            .abandon(&request.into_inner().completion_token)?;
        Ok(Response::new(pb::AbandonEntityTaskResponse {}))
    }

    async fn create_task_hub(
        &self,
        _: Request<pb::CreateTaskHubRequest>,
    ) -> Reply<pb::CreateTaskHubResponse> {
        // `cairn serve` opened (or created) the hub already.
        Ok(Response::new(pb::CreateTaskHubResponse {}))
    }

    async fn delete_task_hub(
        &self,
        _: Request<pb::DeleteTaskHubRequest>,
    ) -> Reply<pb::DeleteTaskHubResponse> {
        // Empties the hub: terminate what runs, then purge everything.
        let mut query = InstanceQuery {
            page_size: 1000,
            fetch_inputs_and_outputs: false,
            ..InstanceQuery::default()
        };
        loop {
            let page = self.client.query(&query).await.map_err(status)?;
            for s in &page.instances {
                if !s.status.is_terminal() {
                    match self.client.terminate_raw(&s.instance_id, None, false).await {
                        Ok(())
                        | Err(EngineError::WrongStatus { .. })
                        | Err(EngineError::NotFound(_)) => {}
                        Err(e) => return Err(status(e)),
                    }
                }
            }
            match page.continuation_token {
                Some(t) => query.continuation_token = Some(t),
                None => break,
            }
        }
        self.client
            .purge_by_filter(QueryFilter::default())
            .await
            .map_err(status)?;
        tracing::info!(at = now_ms(), "task hub emptied by DeleteTaskHub");
        Ok(Response::new(pb::DeleteTaskHubResponse {}))
    }

    async fn signal_entity(
        &self,
        request: Request<pb::SignalEntityRequest>,
    ) -> Reply<pb::SignalEntityResponse> {
        let r = request.into_inner();
        let (name, key) = entity_parts(&r.instance_id)?;
        let at = r
            .scheduled_time
            .as_ref()
            .map(|t| UNIX_EPOCH + Duration::from_millis(convert::millis(t)));
        self.client
            .signal_entity_raw(name, key, &r.name, r.input, at)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SignalEntityResponse {}))
    }

    async fn get_entity(
        &self,
        request: Request<pb::GetEntityRequest>,
    ) -> Reply<pb::GetEntityResponse> {
        let r = request.into_inner();
        let (name, key) = entity_parts(&r.instance_id)?;
        let e = self.client.get_entity(name, key).await.map_err(status)?;
        Ok(Response::new(pb::GetEntityResponse {
            exists: e.is_some(),
            entity: e.map(|e| entity_metadata(&e, r.include_state)),
        }))
    }

    async fn query_entities(
        &self,
        request: Request<pb::QueryEntitiesRequest>,
    ) -> Reply<pb::QueryEntitiesResponse> {
        let q = request.into_inner().query.unwrap_or_default();
        // "@name@keyprefix", "@name", or nothing.
        let prefix = q.instance_id_starts_with.unwrap_or_default();
        let (name, key_prefix) = match prefix.strip_prefix('@').filter(|p| !p.is_empty()) {
            None => (None, None),
            Some(rest) => match rest.split_once('@') {
                Some((name, key)) => (
                    Some(name.to_string()),
                    Some(key.to_string()).filter(|k| !k.is_empty()),
                ),
                None => (Some(rest.to_string()), None),
            },
        };
        let from = q.last_modified_from.as_ref().map(convert::millis);
        let to = q.last_modified_to.as_ref().map(convert::millis);
        let query = cairn_runtime::EntityQuery {
            name,
            key_prefix,
            page_size: q.page_size.filter(|p| *p > 0).map_or(100, |p| p as usize),
            continuation_token: q.continuation_token.filter(|t| !t.is_empty()),
            include_state: q.include_state,
        };
        let page = self.client.query_entities(&query).await.map_err(status)?;
        Ok(Response::new(pb::QueryEntitiesResponse {
            entities: page
                .entities
                .iter()
                .filter(|e| {
                    from.is_none_or(|f| e.last_modified >= f)
                        && to.is_none_or(|t| e.last_modified <= t)
                })
                .filter(|e| q.include_transient || e.state.is_some() || !q.include_state)
                .map(|e| entity_metadata(e, q.include_state))
                .collect(),
            continuation_token: page.continuation_token,
        }))
    }

    async fn clean_entity_storage(
        &self,
        request: Request<pb::CleanEntityStorageRequest>,
    ) -> Reply<pb::CleanEntityStorageResponse> {
        let r = request.into_inner();
        let released = if r.release_orphaned_locks {
            self.client
                .clean_entities()
                .await
                .map_err(status)?
                .orphaned_locks_released
        } else {
            0
        };
        // Entities without state, work or lock are deleted as they empty: none are left to remove.
        Ok(Response::new(pb::CleanEntityStorageResponse {
            continuation_token: None,
            empty_entities_removed: 0,
            orphaned_locks_released: released.min(i32::MAX as u64) as i32,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SDK clients retry RESOURCE_EXHAUSTED; a full partition queue must read as that.
    #[test]
    fn busy_is_resource_exhausted() {
        let s = status(EngineError::Busy {
            partition: 1,
            queued: 10_000,
        });
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert!(s.message().contains("busy"), "{}", s.message());
    }
}

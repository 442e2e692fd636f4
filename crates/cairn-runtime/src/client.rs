//! The client: start, inspect, signal and manage orchestration instances.
//!
//! Every call is routed to the partition that owns the instance (`partition_of(id)`), and every
//! answer is released only once what it reports is durable (see [`crate::leader`]).

use crate::error::EngineError;
use crate::inbox::Input;
use crate::shared::Shared;
use crate::status::{
    from_token_text, sort_for, token_text, QueryPosition, ReadRequest, ReadResponse,
};
pub use crate::status::{
    CleanResult, EntityPage, EntityQuery, EntityStatus, InstanceQuery, InstanceStatus, QueryFilter,
    QueryPage, StartOptions, WaitFor,
};
use cairn_core::*;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// Instances one purge request deletes: each batch is one record the partition applies between
/// other work, so a purge of hundreds of thousands never stalls it for long.
pub const PURGE_BATCH: usize = 100;

/// A handle to a running engine; cheap to clone.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    /// Wait for room in a full partition queue instead of failing with `Busy`.
    wait_for_room: bool,
}

fn payload<T: Serialize>(value: &T) -> Result<Option<String>, EngineError> {
    Ok(Some(serde_json::to_string(value)?))
}

fn to_millis(t: SystemTime) -> Millis {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

impl Client {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Client {
            shared,
            wait_for_room: false,
        }
    }

    /// This client, but one that waits for room when a partition's request queue is full,
    /// instead of failing with [`EngineError::Busy`]: backpressure by waiting, for programs
    /// that would only retry anyway.
    pub fn waiting_for_room(&self) -> Client {
        Client {
            shared: self.shared.clone(),
            wait_for_room: true,
        }
    }

    pub fn partition_count(&self) -> u32 {
        self.shared.partition_count
    }

    /// A new id from the engine's id source (`EngineConfig::ids`): for instance ids a front
    /// generates, so a seeded engine generates the same ones.
    pub fn new_id(&self) -> String {
        self.shared.ids.next_id()
    }

    fn check_payload(&self, p: &Option<String>) -> Result<(), EngineError> {
        let size = p.as_ref().map_or(0, |s| s.len());
        let limit = self.shared.config.max_payload_bytes;
        if size > limit {
            return Err(EngineError::PayloadTooLarge { size, limit });
        }
        Ok(())
    }

    async fn request(
        &self,
        instance_id: &str,
        kind: ClientRequestKind,
    ) -> Result<ClientResponse, EngineError> {
        let (reply, rx) = oneshot::channel();
        let p = partition_of(instance_id, self.shared.partition_count);
        self.shared
            .send_request(p, Input::Client { kind, reply }, self.wait_for_room)
            .await?;
        rx.await.map_err(|_| EngineError::ShuttingDown)?
    }

    async fn read(
        &self,
        partition: u32,
        request: ReadRequest,
    ) -> Result<ReadResponse, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.shared
            .send_request(
                partition,
                Input::Read { request, reply },
                self.wait_for_room,
            )
            .await?;
        rx.await.map_err(|_| EngineError::ShuttingDown)?
    }

    /// Starts an orchestration with a generated instance id; returns the id.
    pub async fn start<I: Serialize>(&self, name: &str, input: &I) -> Result<String, EngineError> {
        self.start_raw(name, payload(input)?, StartOptions::default())
            .await
    }

    /// Starts an orchestration with options; returns the instance id.
    pub async fn start_with<I: Serialize>(
        &self,
        name: &str,
        input: &I,
        options: StartOptions,
    ) -> Result<String, EngineError> {
        self.start_raw(name, payload(input)?, options).await
    }

    /// Starts an orchestration with an already-serialized input (used by the protocol fronts).
    pub async fn start_raw(
        &self,
        name: &str,
        input: Option<String>,
        options: StartOptions,
    ) -> Result<String, EngineError> {
        if name.is_empty() {
            return Err(EngineError::InvalidArgument(
                "orchestration name must not be empty".into(),
            ));
        }
        self.check_payload(&input)?;
        let instance_id = options
            .instance_id
            .unwrap_or_else(|| self.shared.ids.next_id());
        validate_instance_id(&instance_id)?;
        let request = StartRequest {
            instance_id: instance_id.clone(),
            name: name.to_string(),
            version: options.version,
            input,
            scheduled_start: options.scheduled_start.map(to_millis),
            tags: options.tags,
            execution_id: self.shared.ids.next_id(),
            if_exists: options.if_exists,
        };
        match self
            .request(&instance_id, ClientRequestKind::Start(request))
            .await?
        {
            ClientResponse::Started { .. } => Ok(instance_id),
            ClientResponse::AlreadyExists {
                rejected: false, ..
            } => Ok(instance_id),
            ClientResponse::AlreadyExists { status, .. } => Err(EngineError::AlreadyExists {
                instance_id,
                status,
            }),
            other => Err(EngineError::InvalidArgument(format!(
                "unexpected answer to start: {other:?}"
            ))),
        }
    }

    /// The instance's status, or None if it does not exist.
    pub async fn get_status(
        &self,
        instance_id: &str,
        with_history: bool,
    ) -> Result<Option<InstanceStatus>, EngineError> {
        validate_instance_id(instance_id)?;
        let p = partition_of(instance_id, self.shared.partition_count);
        match self
            .read(
                p,
                ReadRequest::Status {
                    instance_id: instance_id.to_string(),
                    with_history,
                },
            )
            .await?
        {
            ReadResponse::Status(s) => Ok(s.map(|b| *b)),
            _ => Err(EngineError::InvalidArgument(
                "unexpected answer to a status read".into(),
            )),
        }
    }

    async fn wait(
        &self,
        instance_id: &str,
        until: WaitFor,
        timeout: Duration,
    ) -> Result<InstanceStatus, EngineError> {
        validate_instance_id(instance_id)?;
        let (reply, rx) = oneshot::channel();
        let p = partition_of(instance_id, self.shared.partition_count);
        self.shared
            .send_request(
                p,
                Input::Wait {
                    instance_id: instance_id.to_string(),
                    until,
                    reply,
                },
                self.wait_for_room,
            )
            .await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(r) => r.map_err(|_| EngineError::ShuttingDown)?,
            Err(_) => Err(EngineError::Timeout(timeout)),
        }
    }

    /// Waits until the instance has started running (or finished).
    pub async fn wait_for_start(
        &self,
        instance_id: &str,
        timeout: Duration,
    ) -> Result<InstanceStatus, EngineError> {
        self.wait(instance_id, WaitFor::Start, timeout).await
    }

    /// Waits until the instance is Completed, Failed or Terminated.
    pub async fn wait_for_completion(
        &self,
        instance_id: &str,
        timeout: Duration,
    ) -> Result<InstanceStatus, EngineError> {
        self.wait(instance_id, WaitFor::Completion, timeout).await
    }

    /// Sends a request about one instance that is answered with `Ok` (or why not).
    async fn command(&self, instance_id: &str, kind: ClientRequestKind) -> Result<(), EngineError> {
        validate_instance_id(instance_id)?;
        let r = self.request(instance_id, kind).await?;
        self.expect_ok(instance_id, r)
    }

    fn expect_ok(&self, instance_id: &str, r: ClientResponse) -> Result<(), EngineError> {
        match r {
            ClientResponse::Ok => Ok(()),
            ClientResponse::NotFound => Err(EngineError::NotFound(instance_id.to_string())),
            ClientResponse::WrongStatus { status } => Err(EngineError::WrongStatus {
                instance_id: instance_id.to_string(),
                status,
            }),
            ClientResponse::Refused { reason } => Err(EngineError::Refused {
                instance_id: instance_id.to_string(),
                reason,
            }),
            other => Err(EngineError::InvalidArgument(format!(
                "unexpected answer: {other:?}"
            ))),
        }
    }

    /// Sends an external event to a running instance.
    pub async fn raise_event<I: Serialize>(
        &self,
        instance_id: &str,
        name: &str,
        data: &I,
    ) -> Result<(), EngineError> {
        self.raise_event_raw(instance_id, name, payload(data)?)
            .await
    }

    pub async fn raise_event_raw(
        &self,
        instance_id: &str,
        name: &str,
        data: Option<String>,
    ) -> Result<(), EngineError> {
        if name.is_empty() {
            return Err(EngineError::InvalidArgument(
                "event name must not be empty".into(),
            ));
        }
        self.check_payload(&data)?;
        let kind = ClientRequestKind::RaiseEvent {
            instance_id: instance_id.to_string(),
            name: name.to_string(),
            input: data,
        };
        self.command(instance_id, kind).await
    }

    /// Terminates a running instance; with `recursive`, its running sub-orchestrations too.
    /// The reason becomes the instance's output (as a JSON string).
    pub async fn terminate(
        &self,
        instance_id: &str,
        reason: Option<&str>,
        recursive: bool,
    ) -> Result<(), EngineError> {
        let output = reason.map(serde_json::to_string).transpose()?;
        self.terminate_raw(instance_id, output, recursive).await
    }

    /// Terminates with an already-serialized output payload (used by the protocol fronts).
    pub async fn terminate_raw(
        &self,
        instance_id: &str,
        output: Option<String>,
        recursive: bool,
    ) -> Result<(), EngineError> {
        self.check_payload(&output)?;
        let kind = ClientRequestKind::Terminate {
            instance_id: instance_id.to_string(),
            reason: output,
            recursive,
        };
        self.command(instance_id, kind).await
    }

    /// Suspends a running instance: events queue up until it is resumed.
    pub async fn suspend(
        &self,
        instance_id: &str,
        reason: Option<&str>,
    ) -> Result<(), EngineError> {
        let kind = ClientRequestKind::Suspend {
            instance_id: instance_id.to_string(),
            reason: reason.map(String::from),
        };
        self.command(instance_id, kind).await
    }

    pub async fn resume(&self, instance_id: &str, reason: Option<&str>) -> Result<(), EngineError> {
        let kind = ClientRequestKind::Resume {
            instance_id: instance_id.to_string(),
            reason: reason.map(String::from),
        };
        self.command(instance_id, kind).await
    }

    /// Puts a Failed instance back to Running: the failures that ended it are forgotten and
    /// the failed activities and sub-orchestrations run again (with the code deployed now).
    /// Any other status is [`EngineError::WrongStatus`].
    pub async fn rewind(&self, instance_id: &str, reason: Option<&str>) -> Result<(), EngineError> {
        let kind = ClientRequestKind::Rewind {
            instance_id: instance_id.to_string(),
            reason: reason.map(String::from),
        };
        self.command(instance_id, kind).await
    }

    /// Starts the instance's orchestration again with its original input, tags and version:
    /// under a new random id, or (`same_id`) replacing the instance, which must have ended.
    /// Returns the id started.
    pub async fn restart(&self, instance_id: &str, same_id: bool) -> Result<String, EngineError> {
        let Some(old) = self.get_status(instance_id, false).await? else {
            return Err(EngineError::NotFound(instance_id.to_string()));
        };
        if same_id && !old.status.is_terminal() {
            return Err(EngineError::WrongStatus {
                instance_id: instance_id.to_string(),
                status: old.status,
            });
        }
        let options = StartOptions {
            instance_id: same_id.then(|| instance_id.to_string()),
            tags: old.tags.clone(),
            version: old.version.clone(),
            if_exists: ExistingPolicy::ReplaceIf(vec![
                RuntimeStatus::Completed,
                RuntimeStatus::Failed,
                RuntimeStatus::Terminated,
            ]),
            ..StartOptions::default()
        };
        self.start_raw(&old.name, old.input, options).await
    }

    /// Queues an operation on the entity `(name, key)` (created on its first operation),
    /// optionally not before `at`. Returns once the signal is durable.
    pub async fn signal_entity<I: Serialize>(
        &self,
        name: &str,
        key: &str,
        operation: &str,
        input: &I,
        at: Option<SystemTime>,
    ) -> Result<(), EngineError> {
        self.signal_entity_raw(name, key, operation, payload(input)?, at)
            .await
    }

    pub async fn signal_entity_raw(
        &self,
        name: &str,
        key: &str,
        operation: &str,
        input: Option<String>,
        at: Option<SystemTime>,
    ) -> Result<(), EngineError> {
        if name.is_empty() || name.contains('@') {
            return Err(EngineError::InvalidArgument(format!(
                "entity name {name:?} must be non-empty and must not contain '@'"
            )));
        }
        if operation.is_empty() {
            return Err(EngineError::InvalidArgument(
                "operation name must not be empty".into(),
            ));
        }
        self.check_payload(&input)?;
        let entity_id = entity_instance_id(name, key);
        let kind = ClientRequestKind::SignalEntity {
            entity_id: entity_id.clone(),
            operation: EntityOperation {
                request_id: self.shared.ids.next_id(),
                operation: operation.to_string(),
                input,
                caller: None,
                scheduled_time: at.map(to_millis),
                sender: None,
                kind: cairn_core::EntityRequestKind::Operation,
            },
        };
        self.command(&entity_id, kind).await
    }

    /// The entity's state and queue length, or None if it does not exist.
    pub async fn get_entity(
        &self,
        name: &str,
        key: &str,
    ) -> Result<Option<EntityStatus>, EngineError> {
        let entity_id = entity_instance_id(name, key);
        validate_instance_id(&entity_id)?;
        let p = partition_of(&entity_id, self.shared.partition_count);
        match self.read(p, ReadRequest::Entity { entity_id }).await? {
            ReadResponse::Entity(e) => Ok(e),
            _ => Err(EngineError::InvalidArgument("unexpected answer".into())),
        }
    }

    /// Lists entities by name and key prefix, ordered by entity id, one page at a time.
    pub async fn query_entities(&self, query: &EntityQuery) -> Result<EntityPage, EngineError> {
        if query.key_prefix.is_some() && query.name.is_none() {
            return Err(EngineError::InvalidArgument(
                "a key prefix needs an entity name".into(),
            ));
        }
        let prefix = match &query.name {
            Some(name) => format!(
                "@{}@{}",
                name.to_lowercase(),
                query.key_prefix.as_deref().unwrap_or("")
            ),
            None => "@".to_string(),
        };
        let page_size = query.page_size.clamp(1, 10_000);
        let after = query
            .continuation_token
            .as_deref()
            .map(|t| {
                from_token_text(t).ok_or_else(|| {
                    EngineError::InvalidArgument(format!(
                        "continuation token '{t}' is not one an entity query returned"
                    ))
                })
            })
            .transpose()?;
        let mut asks = Vec::new();
        for p in 0..self.shared.partition_count {
            asks.push(self.read(
                p,
                ReadRequest::Entities {
                    prefix: prefix.clone(),
                    after: after.clone(),
                    limit: page_size + 1,
                    include_state: query.include_state,
                },
            ));
        }
        let mut all = Vec::new();
        for r in futures::future::join_all(asks).await {
            if let ReadResponse::Entities(v) = r? {
                all.extend(v);
            }
        }
        all.sort_by(|a, b| a.entity_id.cmp(&b.entity_id));
        let more = all.len() > page_size;
        all.truncate(page_size);
        let continuation_token = if more {
            all.last().map(|e| token_text(&e.entity_id))
        } else {
            None
        };
        Ok(EntityPage {
            entities: all,
            continuation_token,
        })
    }

    /// Releases entity locks whose orchestration no longer runs (completed, failed, terminated
    /// or purged). Entities without state, work or lock are deleted as they empty, so there are
    /// no empty entities left to remove.
    pub async fn clean_entities(&self) -> Result<CleanResult, EngineError> {
        let mut result = CleanResult::default();
        let mut query = EntityQuery {
            include_state: false,
            page_size: 1000,
            ..EntityQuery::default()
        };
        loop {
            let page = self.query_entities(&query).await?;
            for e in &page.entities {
                let (Some(holder), Some(cs)) = (&e.locked_by, &e.critical_section) else {
                    continue;
                };
                let running = match self.get_status(holder, false).await? {
                    Some(s) => !s.status.is_terminal(),
                    None => false,
                };
                if !running {
                    let kind = ClientRequestKind::SignalEntity {
                        entity_id: e.entity_id.clone(),
                        operation: EntityOperation {
                            request_id: format!("{cs}:clean"),
                            operation: String::new(),
                            input: None,
                            caller: None,
                            scheduled_time: None,
                            sender: None,
                            kind: cairn_core::EntityRequestKind::Unlock {
                                critical_section: cs.clone(),
                            },
                        },
                    };
                    self.command(&e.entity_id, kind).await?;
                    result.orphaned_locks_released += 1;
                }
            }
            match page.continuation_token {
                Some(t) => query.continuation_token = Some(t),
                None => return Ok(result),
            }
        }
    }

    /// Deletes a terminal instance and its history; returns how many were deleted (0 or 1).
    pub async fn purge(&self, instance_id: &str) -> Result<u64, EngineError> {
        validate_instance_id(instance_id)?;
        match self
            .request(
                instance_id,
                ClientRequestKind::Purge {
                    instance_ids: vec![instance_id.to_string()],
                },
            )
            .await?
        {
            ClientResponse::Purged { count } => {
                self.count_purged(
                    partition_of(instance_id, self.shared.partition_count),
                    count,
                );
                Ok(count)
            }
            other => Err(EngineError::InvalidArgument(format!(
                "unexpected answer: {other:?}"
            ))),
        }
    }

    /// Deletes every terminal instance matching `filter` (non-terminal ones are never purged),
    /// newest first, partition by partition, in batches of [`PURGE_BATCH`].
    pub async fn purge_by_filter(&self, filter: QueryFilter) -> Result<u64, EngineError> {
        let mut filter = filter;
        if filter.statuses.is_empty() {
            filter.statuses = vec![
                RuntimeStatus::Completed,
                RuntimeStatus::Failed,
                RuntimeStatus::Terminated,
            ];
        }
        filter.statuses.retain(|s| s.is_terminal());
        if filter.statuses.is_empty() {
            // Only live statuses were asked for: nothing may be purged (an empty list would
            // mean "any status").
            return Ok(0);
        }
        let mut total = 0;
        for p in 0..self.shared.partition_count {
            let mut after: Option<QueryPosition> = None;
            loop {
                let page = match self
                    .read(
                        p,
                        ReadRequest::Query {
                            filter: filter.clone(),
                            after: after.clone(),
                            limit: PURGE_BATCH,
                        },
                    )
                    .await?
                {
                    ReadResponse::Page(v) => v,
                    _ => Vec::new(),
                };
                if page.is_empty() {
                    break;
                }
                after = page.last().map(|s| QueryPosition::of(&filter, s));
                let ids: Vec<String> = page.into_iter().map(|s| s.instance_id).collect();
                total += self.purge_batch(p, ids).await?;
            }
        }
        Ok(total)
    }

    /// Purges `ids` of partition `p` (terminal ones; others stay): one logged request.
    async fn purge_batch(&self, p: u32, ids: Vec<String>) -> Result<u64, EngineError> {
        let (reply, rx) = oneshot::channel();
        // A purge in progress waits for room rather than stopping half way.
        self.shared
            .send_request(
                p,
                Input::Client {
                    kind: ClientRequestKind::Purge { instance_ids: ids },
                    reply,
                },
                true,
            )
            .await?;
        match rx.await.map_err(|_| EngineError::ShuttingDown)?? {
            ClientResponse::Purged { count } => {
                self.count_purged(p, count);
                Ok(count)
            }
            _ => Ok(0),
        }
    }

    /// Counts `count` instances purged in `partition` (`cairn_purged_total`).
    fn count_purged(&self, partition: u32, count: u64) {
        if let Some(stats) = self.shared.stats.get(partition as usize) {
            stats
                .purged
                .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Purges the ended orchestrations with `status` (of `name`, or any) completed at or
    /// before `completed_by`, in batches of [`PURGE_BATCH`], in the partitions running in this
    /// process: what a retention policy does (each node of a cluster sweeps its own).
    pub(crate) async fn purge_expired(
        &self,
        status: RuntimeStatus,
        name: Option<&str>,
        completed_by: Millis,
    ) -> Result<u64, EngineError> {
        let mut total = 0;
        // Each node of a cluster sweeps the partitions it runs (embedded: all of them).
        for p in self.shared.slots.running() {
            loop {
                let ids = match self
                    .read(
                        p,
                        ReadRequest::Expired {
                            status,
                            name: name.map(String::from),
                            completed_by,
                            limit: PURGE_BATCH,
                        },
                    )
                    .await?
                {
                    ReadResponse::Ids(ids) => ids,
                    _ => Vec::new(),
                };
                if ids.is_empty() {
                    break;
                }
                let purged = self.purge_batch(p, ids).await?;
                total += purged;
                if purged == 0 {
                    // Changed since the read (rewound, say): the next sweep looks again.
                    break;
                }
            }
        }
        Ok(total)
    }

    /// Lists instances matching a filter one page at a time: newest first, or by instance id
    /// when the filter has an id prefix. Each partition serves its part from an index (or the
    /// id range) and the pages are merged here; the continuation token is a position in that
    /// order, so it stays right while instances are created and purged between pages.
    pub async fn query(&self, query: &InstanceQuery) -> Result<QueryPage, EngineError> {
        let page_size = query.page_size.clamp(1, 10_000);
        let after = query
            .continuation_token
            .as_deref()
            .map(|t| QueryPosition::parse(t, &query.filter))
            .transpose()?;
        let mut all = Vec::new();
        let mut asks = Vec::new();
        for p in 0..self.shared.partition_count {
            asks.push(self.read(
                p,
                ReadRequest::Query {
                    filter: query.filter.clone(),
                    after: after.clone(),
                    limit: page_size + 1,
                },
            ));
        }
        for r in futures::future::join_all(asks).await {
            if let ReadResponse::Page(v) = r? {
                all.extend(v);
            }
        }
        sort_for(&query.filter, &mut all);
        let more = all.len() > page_size;
        all.truncate(page_size);
        if !query.fetch_inputs_and_outputs {
            all.iter_mut().for_each(InstanceStatus::strip_payloads);
        }
        let continuation_token = if more {
            all.last()
                .map(|s| QueryPosition::of(&query.filter, s).token())
        } else {
            None
        };
        Ok(QueryPage {
            instances: all,
            continuation_token,
        })
    }
}

//! What clients ask a partition and get back: instance and entity status, queries and their
//! pages, start options, and the read requests a partition answers. Plain data, shared by the
//! client (which sends them) and the partition leader (which answers them); neither depends on
//! the other through it.

use crate::error::EngineError;
use cairn_core::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// What a status query returns about an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub instance_id: String,
    pub name: String,
    pub version: Option<String>,
    pub execution_id: String,
    pub status: RuntimeStatus,
    pub input: Option<String>,
    pub output: Option<String>,
    pub failure: Option<FailureDetails>,
    pub custom_status: Option<String>,
    pub created_at: Millis,
    pub last_updated_at: Millis,
    pub completed_at: Option<Millis>,
    pub scheduled_start: Option<Millis>,
    pub tags: BTreeMap<String, String>,
    pub parent: Option<ParentInstance>,
    /// The current execution's history, when asked for.
    pub history: Option<Vec<HistoryEvent>>,
}

impl InstanceStatus {
    pub(crate) fn from_state(s: &InstanceState) -> Self {
        InstanceStatus {
            instance_id: s.instance_id.clone(),
            name: s.name.clone(),
            version: s.version.clone(),
            execution_id: s.execution_id.clone(),
            status: s.status,
            input: s.input.clone(),
            output: s.output.clone(),
            failure: s.failure.clone(),
            custom_status: s.custom_status.clone(),
            created_at: s.created_at,
            last_updated_at: s.last_updated_at,
            completed_at: s.completed_at,
            scheduled_start: s.scheduled_start,
            tags: s.tags.clone(),
            parent: s.parent.clone(),
            history: None,
        }
    }

    /// Deserializes the output.
    pub fn output<T: DeserializeOwned>(&self) -> Result<T, EngineError> {
        Ok(serde_json::from_str(
            self.output.as_deref().unwrap_or("null"),
        )?)
    }

    /// Deserializes the custom status.
    pub fn custom_status<T: DeserializeOwned>(&self) -> Result<T, EngineError> {
        Ok(serde_json::from_str(
            self.custom_status.as_deref().unwrap_or("null"),
        )?)
    }

    pub(crate) fn strip_payloads(&mut self) {
        self.input = None;
        self.output = None;
    }
}

/// What Cairn knows about an entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityStatus {
    pub entity_id: String,
    pub name: String,
    pub key: String,
    /// Serialized state (None: the entity exists only through queued operations).
    pub state: Option<String>,
    pub last_modified: Millis,
    /// Operations waiting to be processed.
    pub queued: usize,
    /// The orchestration holding this entity's lock (a critical section), if any.
    pub locked_by: Option<String>,
    /// The critical section holding the lock.
    pub critical_section: Option<String>,
}

/// Filter and paging of [`Client::query_entities`].
#[derive(Debug, Clone)]
pub struct EntityQuery {
    /// Only entities of this name.
    pub name: Option<String>,
    /// Only keys starting with this (needs `name`).
    pub key_prefix: Option<String>,
    pub page_size: usize,
    pub continuation_token: Option<String>,
    pub include_state: bool,
}

impl Default for EntityQuery {
    fn default() -> Self {
        EntityQuery {
            name: None,
            key_prefix: None,
            page_size: 100,
            continuation_token: None,
            include_state: true,
        }
    }
}

/// One page of entities, ordered by entity id.
#[derive(Debug, Clone)]
pub struct EntityPage {
    pub entities: Vec<EntityStatus>,
    pub continuation_token: Option<String>,
}

/// What [`Client::clean_entities`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanResult {
    /// Locks released because their orchestration no longer runs.
    pub orphaned_locks_released: u64,
}

impl EntityStatus {
    pub(crate) fn from_state(s: &InstanceState) -> Option<EntityStatus> {
        let e = s.entity.as_ref()?;
        Some(EntityStatus {
            entity_id: s.instance_id.clone(),
            name: s.name.clone(),
            key: s
                .instance_id
                .splitn(3, '@')
                .nth(2)
                .unwrap_or_default()
                .to_string(),
            state: e.state.clone(),
            last_modified: e.last_modified,
            queued: e.queue.len(),
            locked_by: e.locked_by.as_ref().map(|(_, holder)| holder.clone()),
            critical_section: e.locked_by.as_ref().map(|(cs, _)| cs.clone()),
        })
    }

    /// Deserializes the state.
    pub fn state<T: DeserializeOwned>(&self) -> Result<T, EngineError> {
        Ok(serde_json::from_str(
            self.state.as_deref().unwrap_or("null"),
        )?)
    }
}

/// Options of [`Client::start_with`].
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Instance id; a random one is generated when absent.
    pub instance_id: Option<String>,
    /// Do not run before this time (the instance is Pending until then).
    pub scheduled_start: Option<SystemTime>,
    pub tags: BTreeMap<String, String>,
    pub version: Option<String>,
    /// What to do if the id is already Pending/Running/Suspended (default: return it).
    pub if_exists: ExistingPolicy,
}

impl StartOptions {
    pub fn with_id(id: impl Into<String>) -> Self {
        StartOptions {
            instance_id: Some(id.into()),
            ..StartOptions::default()
        }
    }
}

/// Filter of [`Client::query`] and [`Client::purge_by_filter`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QueryFilter {
    /// Statuses to include (empty = all).
    pub statuses: Vec<RuntimeStatus>,
    pub created_from: Option<Millis>,
    pub created_to: Option<Millis>,
    pub instance_id_prefix: Option<String>,
    /// Only instances of this orchestration name.
    pub name: Option<String>,
}

impl QueryFilter {
    pub(crate) fn matches(&self, s: &InstanceState) -> bool {
        s.entity.is_none()
            && (self.statuses.is_empty() || self.statuses.contains(&s.status))
            && self.name.as_deref().is_none_or(|n| s.name == n)
            && self.created_from.is_none_or(|f| s.created_at >= f)
            && self.created_to.is_none_or(|t| s.created_at <= t)
            && self
                .instance_id_prefix
                .as_deref()
                .is_none_or(|p| s.instance_id.starts_with(p))
    }
}

impl QueryFilter {
    /// The order of this query's pages: by id when it has an id prefix (a prefix is a range of
    /// ids), newest first otherwise (served from the indexes by status, name and time).
    pub(crate) fn by_id(&self) -> bool {
        self.instance_id_prefix.is_some()
    }
}

/// Where a query's next page starts: just after this instance in the query's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum QueryPosition {
    /// Newest first: after the instance created at `created` with id `id` (ties by id, descending).
    Newest { created: Millis, id: String },
    /// By id: after this id.
    Id(String),
}

impl QueryPosition {
    /// The position of `s` in the order of `filter`.
    pub(crate) fn of(filter: &QueryFilter, s: &InstanceStatus) -> QueryPosition {
        if filter.by_id() {
            QueryPosition::Id(s.instance_id.clone())
        } else {
            QueryPosition::Newest {
                created: s.created_at,
                id: s.instance_id.clone(),
            }
        }
    }

    /// The opaque continuation token of this position (plain ASCII, so that it fits an HTTP
    /// header whatever the id).
    pub(crate) fn token(&self) -> String {
        match self {
            QueryPosition::Newest { created, id } => format!("n.{created}.{}", token_text(id)),
            QueryPosition::Id(id) => format!("i.{}", token_text(id)),
        }
    }

    /// Reads a continuation token of a query with `filter`.
    pub(crate) fn parse(token: &str, filter: &QueryFilter) -> Result<QueryPosition, EngineError> {
        let bad = || {
            EngineError::InvalidArgument(format!(
                "continuation token '{token}' is not one this query returned: pass back the \
                 token of the previous page of the same query, unchanged"
            ))
        };
        let position = if let Some(rest) = token.strip_prefix("n.") {
            let (created, id) = rest.split_once('.').ok_or_else(bad)?;
            QueryPosition::Newest {
                created: created.parse().map_err(|_| bad())?,
                id: from_token_text(id).ok_or_else(bad)?,
            }
        } else if let Some(id) = token.strip_prefix("i.") {
            QueryPosition::Id(from_token_text(id).ok_or_else(bad)?)
        } else {
            return Err(bad());
        };
        if matches!(position, QueryPosition::Id(_)) != filter.by_id() {
            return Err(bad());
        }
        Ok(position)
    }

    /// Whether `s` comes after this position (on a later page).
    pub(crate) fn is_past(&self, created_at: Millis, instance_id: &str) -> bool {
        match self {
            QueryPosition::Newest { created, id } => {
                (created_at, instance_id) < (*created, id.as_str())
            }
            QueryPosition::Id(id) => instance_id > id.as_str(),
        }
    }
}

/// `text` with every byte outside `[A-Za-z0-9._~@:-]` as `%XX`: a token part that is plain
/// ASCII (an HTTP header value) whatever the instance id holds.
pub(crate) fn token_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"._~@:-".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The text [`token_text`] encoded (None if it is not such an encoding).
pub(crate) fn from_token_text(token: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(token.len());
    let mut rest = token.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// Sorts statuses into a query's order: by id, or newest first (ties by id, descending).
pub(crate) fn sort_for(filter: &QueryFilter, page: &mut [InstanceStatus]) {
    if filter.by_id() {
        page.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    } else {
        page.sort_by(|a, b| (b.created_at, &b.instance_id).cmp(&(a.created_at, &a.instance_id)));
    }
}

/// A query: filter plus paging.
#[derive(Debug, Clone)]
pub struct InstanceQuery {
    pub filter: QueryFilter,
    /// At most this many instances per page (default 100).
    pub page_size: usize,
    /// The token of the previous page, if any.
    pub continuation_token: Option<String>,
    /// Include inputs and outputs (default true).
    pub fetch_inputs_and_outputs: bool,
}

impl Default for InstanceQuery {
    fn default() -> Self {
        InstanceQuery {
            filter: QueryFilter::default(),
            page_size: 100,
            continuation_token: None,
            fetch_inputs_and_outputs: true,
        }
    }
}

/// One page of query results: newest first, or by instance id when the filter has an id
/// prefix.
#[derive(Debug, Clone)]
pub struct QueryPage {
    pub instances: Vec<InstanceStatus>,
    /// Pass it back to get the next page; None on the last page.
    pub continuation_token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaitFor {
    Start,
    Completion,
}

impl WaitFor {
    pub(crate) fn satisfied_by(self, status: RuntimeStatus) -> bool {
        match self {
            WaitFor::Start => status != RuntimeStatus::Pending,
            WaitFor::Completion => status.is_terminal(),
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) enum ReadRequest {
    Status {
        instance_id: String,
        with_history: bool,
    },
    Query {
        filter: QueryFilter,
        after: Option<QueryPosition>,
        limit: usize,
    },
    Entity {
        entity_id: String,
    },
    /// Ended orchestrations with `status` (of `name`, or any) completed at or before
    /// `completed_by`: what a retention policy purges. At most `limit` ids.
    Expired {
        status: RuntimeStatus,
        name: Option<String>,
        completed_by: Millis,
        limit: usize,
    },
    Entities {
        prefix: String,
        after: Option<String>,
        limit: usize,
        include_state: bool,
    },
}

#[derive(Serialize, Deserialize)]
pub(crate) enum ReadResponse {
    Status(Option<Box<InstanceStatus>>),
    Page(Vec<InstanceStatus>),
    Entity(Option<EntityStatus>),
    Entities(Vec<EntityStatus>),
    Ids(Vec<String>),
}

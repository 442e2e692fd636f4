//! Reads: instance status, history, queries and entity scans.
//!
//! A read is split where memory ends. On the partition's task it takes what only memory knows —
//! the instances changed since the last checkpoint (the dirty set), and the state of a resident
//! instance — together with a snapshot of the checkpoint store (with the checkpoint being
//! written, if any, laid over it). Every instance not changed since the last checkpoint reads
//! the same from that snapshot as from memory (`PartitionState::dirty_ids`), so the two parts
//! together are the partition's state at one log position. The part that decodes rows —
//! scanning a table for a query, reading a history — then runs on the blocking pool, while the
//! partition goes on committing; its answer waits, like every answer, until that position is
//! durable. On a current-thread runtime (the simulator) and with
//! [`EngineConfig::reads_on_loop`](crate::EngineConfig) it runs on the task, as before.
//!
//! This module never changes the state machine: a read does not even load an instance into the
//! cache.

use super::*;
use crate::status::{sort_for, QueryPosition};
use cairn_core::index;
use cairn_storage::seam::StoreReads;

/// The part of a read that decodes rows from a snapshot of the store.
pub(super) struct StoreRead {
    snapshot: Box<dyn StoreReads>,
    partition: u32,
    what: FromStore,
}

enum FromStore {
    /// An instance that is not in memory (so its stored state is current).
    Status {
        instance_id: String,
        with_history: bool,
    },
    /// A resident instance's history: the first `persisted` events from the store, then `tail`.
    History {
        status: Box<InstanceStatus>,
        persisted: u32,
        tail: Vec<HistoryEvent>,
    },
    Entity {
        entity_id: String,
    },
    /// A query with an id prefix: a range of ids.
    Instances {
        filter: QueryFilter,
        page: ScanPage<InstanceStatus>,
    },
    /// Any other query: newest first, from the indexes.
    Newest {
        filter: QueryFilter,
        after: Option<QueryPosition>,
        limit: usize,
        /// Every instance changed since the checkpoint: their index entries are stale.
        changed: DirtySet,
        /// Those of them that match, as they are now, in order.
        found: Vec<InstanceStatus>,
    },
    Entities {
        include_state: bool,
        page: ScanPage<EntityStatus>,
    },
    /// Ended orchestrations past a retention age, from the completion-time index.
    Expired {
        prefix: Vec<u8>,
        completed_by: Millis,
        limit: usize,
        changed: DirtySet,
        found: Vec<String>,
    },
}

/// A page of instances in id order: what memory has, and the range to fill from the store.
struct ScanPage<T> {
    prefix: Option<String>,
    after: Option<String>,
    limit: usize,
    /// Instances changed since the last checkpoint: their stored rows are stale.
    changed: DirtySet,
    /// Those of them that match, as they are now.
    found: Vec<(String, T)>,
}

/// A read after its part on the partition's task.
pub(super) enum Prepared {
    Done(Result<ReadResponse, EngineError>),
    FromStore(StoreRead),
}

impl Leader {
    /// A status snapshot of an instance as the state machine sees it now (loading it into the
    /// cache if needed), without its history. For waiters and change notices.
    pub(super) fn snapshot(&mut self, id: &str) -> Option<InstanceStatus> {
        let store = self.store.clone();
        let inst = self.state.get(id, &StoreSource(&*store)).ok()??;
        Some(InstanceStatus::from_state(&inst.state))
    }

    /// Answers a read: at once if memory had it all, else after decoding rows from a snapshot
    /// of the store, off the partition's task when there is another thread to do it on.
    pub(super) fn read(&mut self, request: ReadRequest, reply: Reply<ReadResponse>) {
        let position = self.state.position();
        match self.prepare_read(request) {
            Prepared::Done(result) => self.answer_read(position, reply, result),
            Prepared::FromStore(work) => {
                if crate::blocking::single_threaded() || self.shared.config.reads_on_loop {
                    let result = work.run();
                    self.answer_read(position, reply, result);
                } else {
                    self.read_off_task(position, reply, work);
                }
            }
        }
    }

    /// Sends a read's answer, holding a successful one until `position` is durable.
    pub(super) fn answer_read(
        &mut self,
        position: u64,
        reply: Reply<ReadResponse>,
        result: Result<ReadResponse, EngineError>,
    ) {
        match result {
            Ok(_) if position > self.durable && self.failed.is_some() => {
                // Held answers were failed with the partition; this one would wait forever.
                let message = self.failed.clone().unwrap_or_default();
                let _ = reply.send(Err(self.storage_error(message)));
            }
            Ok(response) if position > self.durable => {
                self.held.push_back((position, Held::Read(reply, response)));
            }
            Ok(response) => {
                let _ = reply.send(Ok(response));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Runs `work` on the blocking pool (a bounded number at once, for all partitions). The
    /// answer goes straight to the client if the state it saw was durable when the read was
    /// taken, else back through the partition to be held.
    fn read_off_task(&mut self, position: u64, reply: Reply<ReadResponse>, work: StoreRead) {
        let durable = position <= self.durable;
        let counted = InFlight::enter(&self.reads_in_flight);
        let permits = self.shared.read_permits.clone();
        let tx = self.me.clone();
        let partition = self.partition;
        tokio::spawn(async move {
            let result = match permits.acquire_owned().await {
                Ok(_permit) => tokio::task::spawn_blocking(move || work.run())
                    .await
                    .unwrap_or_else(|e| {
                        Err(EngineError::Storage {
                            partition,
                            message: format!("a read failed: {e}"),
                        })
                    }),
                Err(_) => Err(EngineError::ShuttingDown),
            };
            if durable || result.is_err() {
                let _ = reply.send(result);
            } else if let Err(mpsc::error::SendError(Input::ReadDone { reply, .. })) =
                tx.send(Input::ReadDone {
                    position,
                    reply,
                    result,
                })
            {
                let _ = reply.send(Err(EngineError::ShuttingDown));
            }
            drop(counted);
        });
    }

    /// The part of a read that needs the partition's state: everything memory knows, and a
    /// snapshot of the store for the rest.
    fn prepare_read(&mut self, request: ReadRequest) -> Prepared {
        match request {
            ReadRequest::Status {
                instance_id,
                with_history,
            } => {
                if !self.state.is_resident(&instance_id) {
                    return self.with_snapshot(FromStore::Status {
                        instance_id,
                        with_history,
                    });
                }
                let Some(inst) = self.state.loaded(&instance_id) else {
                    return Prepared::Done(Ok(ReadResponse::Status(None)));
                };
                let status = Box::new(InstanceStatus::from_state(&inst.state));
                let (persisted, tail) = (inst.persisted_len(), inst.tail.clone());
                self.tick += 1;
                self.touched.insert(instance_id, self.tick);
                if !with_history {
                    return Prepared::Done(Ok(ReadResponse::Status(Some(status))));
                }
                self.with_snapshot(FromStore::History {
                    status,
                    persisted,
                    tail,
                })
            }
            ReadRequest::Entity { entity_id } => {
                if !self.state.is_resident(&entity_id) {
                    return self.with_snapshot(FromStore::Entity { entity_id });
                }
                let status = self
                    .state
                    .loaded(&entity_id)
                    .and_then(|i| EntityStatus::from_state(&i.state));
                Prepared::Done(Ok(ReadResponse::Entity(status)))
            }
            ReadRequest::Query {
                filter,
                after,
                limit,
            } if filter.by_id() => {
                let after = match after {
                    Some(QueryPosition::Id(id)) => Some(id),
                    _ => None,
                };
                let page =
                    self.changed_in_range(filter.instance_id_prefix.clone(), after, limit, |s| {
                        filter.matches(s).then(|| InstanceStatus::from_state(s))
                    });
                self.with_snapshot(FromStore::Instances { filter, page })
            }
            ReadRequest::Query {
                filter,
                after,
                limit,
            } => {
                let (changed, mut found) = self.changed(|id, s| {
                    (filter.matches(s)
                        && after.as_ref().is_none_or(|a| a.is_past(s.created_at, id)))
                    .then(|| InstanceStatus::from_state(s))
                });
                sort_for(&filter, &mut found);
                found.truncate(limit);
                self.with_snapshot(FromStore::Newest {
                    filter,
                    after,
                    limit,
                    changed,
                    found,
                })
            }
            ReadRequest::Expired {
                status,
                name,
                completed_by,
                limit,
            } => {
                let (changed, mut found) = self.changed(|id, s| {
                    (s.entity.is_none()
                        && s.status == status
                        && name.as_deref().is_none_or(|n| s.name == n)
                        && s.completed_at.is_some_and(|c| c <= completed_by))
                    .then(|| id.to_string())
                });
                found.truncate(limit);
                self.with_snapshot(FromStore::Expired {
                    prefix: index::ended_prefix(name.as_deref(), status),
                    completed_by,
                    limit,
                    changed,
                    found,
                })
            }
            ReadRequest::Entities {
                prefix,
                after,
                limit,
                include_state,
            } => {
                let page = self.changed_in_range(Some(prefix), after, limit, |s| {
                    entity_status(s, include_state)
                });
                self.with_snapshot(FromStore::Entities {
                    include_state,
                    page,
                })
            }
        }
    }

    fn with_snapshot(&self, what: FromStore) -> Prepared {
        match self.store.snapshot() {
            Ok(snapshot) => Prepared::FromStore(StoreRead {
                snapshot,
                partition: self.partition,
                what,
            }),
            Err(e) => Prepared::Done(Err(self.storage_error(e.to_string()))),
        }
    }

    /// Every instance changed since the last checkpoint (their index entries in the store are
    /// stale), and what `pick` makes of those that still exist.
    fn changed<T>(
        &self,
        mut pick: impl FnMut(&str, &InstanceState) -> Option<T>,
    ) -> (DirtySet, Vec<T>) {
        // A copy in O(1): a purge keeps thousands of deleted instances changed until the next
        // checkpoint, and copying their ids for every page of it stalled the partition.
        let changed = self.state.dirty_set();
        let mut picked = Vec::new();
        for id in self.state.changed_live_ids() {
            if let Some(t) = self.state.loaded(id).and_then(|i| pick(id, &i.state)) {
                picked.push(t);
            }
        }
        (changed, picked)
    }

    /// The instances changed since the last checkpoint, and the first `limit` of those in
    /// range (ids after `after`, starting with `prefix`) that `select` keeps, by id.
    fn changed_in_range<T>(
        &self,
        prefix: Option<String>,
        after: Option<String>,
        limit: usize,
        select: impl Fn(&InstanceState) -> Option<T>,
    ) -> ScanPage<T> {
        let in_range = |id: &str| {
            after.as_deref().is_none_or(|a| id > a)
                && prefix.as_deref().is_none_or(|p| id.starts_with(p))
        };
        let (changed, mut found) = self.changed(|id, s| {
            in_range(id)
                .then(|| select(s))
                .flatten()
                .map(|t| (id.to_string(), t))
        });
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found.truncate(limit);
        ScanPage {
            prefix,
            after,
            limit,
            changed,
            found,
        }
    }
}

/// The index prefixes a newest-first query reads: one per status asked for (or one for all),
/// within the orchestration name if one is given.
fn index_prefixes(filter: &QueryFilter) -> Vec<Vec<u8>> {
    let name = filter.name.as_deref();
    if filter.statuses.is_empty() {
        return vec![index::orchestration_prefix(name, None)];
    }
    let statuses: BTreeSet<RuntimeStatus> = filter.statuses.iter().copied().collect();
    statuses
        .into_iter()
        .map(|s| index::orchestration_prefix(name, Some(s)))
        .collect()
}

fn entity_status(s: &InstanceState, include_state: bool) -> Option<EntityStatus> {
    EntityStatus::from_state(s).map(|mut e| {
        if !include_state {
            e.state = None;
        }
        e
    })
}

impl StoreRead {
    /// Decodes what the read needs from the snapshot. Touches nothing of the partition's.
    pub(super) fn run(self) -> Result<ReadResponse, EngineError> {
        let store = &*self.snapshot;
        let partition = self.partition;
        let error = |message: String| EngineError::Storage { partition, message };
        let stored = |id: &str| -> Result<Option<InstanceState>, EngineError> {
            let Some(bytes) = store.get_instance(id).map_err(|e| error(e.to_string()))? else {
                return Ok(None);
            };
            InstanceState::decode(&bytes)
                .map(Some)
                .map_err(|e| error(format!("instance '{id}' in the store is unreadable: {e}")))
        };
        match self.what {
            FromStore::Status {
                instance_id,
                with_history,
            } => {
                let Some(state) = stored(&instance_id)? else {
                    return Ok(ReadResponse::Status(None));
                };
                let mut status = InstanceStatus::from_state(&state);
                if with_history {
                    status.history = read_history(store, &instance_id, state.history_len, vec![]);
                }
                Ok(ReadResponse::Status(Some(Box::new(status))))
            }
            FromStore::History {
                mut status,
                persisted,
                tail,
            } => {
                status.history = read_history(store, &status.instance_id, persisted, tail);
                Ok(ReadResponse::Status(Some(status)))
            }
            FromStore::Entity { entity_id } => Ok(ReadResponse::Entity(
                stored(&entity_id)?.and_then(|s| EntityStatus::from_state(&s)),
            )),
            FromStore::Instances { filter, page } => {
                let page = scan(store, page, |s| {
                    filter.matches(s).then(|| InstanceStatus::from_state(s))
                })
                .map_err(error)?;
                Ok(ReadResponse::Page(page))
            }
            FromStore::Newest {
                filter,
                after,
                limit,
                changed,
                mut found,
            } => {
                let mut failure = None;
                for prefix in index_prefixes(&filter) {
                    let mut below = after.as_ref().and_then(|a| match a {
                        QueryPosition::Newest { created, id } => {
                            Some(index::key_at(&prefix, *created, id))
                        }
                        QueryPosition::Id(_) => None,
                    });
                    if let Some(to) = filter.created_to {
                        let bound = index::after_time(&prefix, to);
                        below = Some(below.map_or(bound.clone(), |b| b.min(bound)));
                    }
                    let mut from_store = 0;
                    store
                        .scan_index_desc(&prefix, below.as_deref(), &mut |key, id| {
                            if let Some(from) = filter.created_from {
                                if index::time_of(key, prefix.len()).is_none_or(|t| t < from) {
                                    return false;
                                }
                            }
                            if changed.contains(id) {
                                return true;
                            }
                            match stored(id) {
                                // Index and rows come from one snapshot, so they agree.
                                Ok(Some(s)) if filter.matches(&s) => {
                                    found.push(InstanceStatus::from_state(&s));
                                    from_store += 1;
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    failure = Some(e);
                                    return false;
                                }
                            }
                            from_store < limit
                        })
                        .map_err(|e| error(e.to_string()))?;
                    if let Some(e) = failure.take() {
                        return Err(e);
                    }
                }
                sort_for(&filter, &mut found);
                found.truncate(limit);
                Ok(ReadResponse::Page(found))
            }
            FromStore::Expired {
                prefix,
                completed_by,
                limit,
                changed,
                mut found,
            } => {
                let below = index::after_time(&prefix, completed_by);
                if found.len() < limit {
                    store
                        .scan_index_desc(&prefix, Some(&below), &mut |_, id| {
                            if !changed.contains(id) {
                                found.push(id.to_string());
                            }
                            found.len() < limit
                        })
                        .map_err(|e| error(e.to_string()))?;
                }
                Ok(ReadResponse::Ids(found))
            }
            FromStore::Entities {
                include_state,
                page,
            } => {
                let page = scan(store, page, |s| entity_status(s, include_state)).map_err(error)?;
                Ok(ReadResponse::Entities(page))
            }
        }
    }
}

/// Fills `page` from the store: instances in range that `select` keeps, skipping those changed
/// since the checkpoint (memory's version is in the page already); at most `limit`, by id.
fn scan<T>(
    store: &dyn StoreReads,
    page: ScanPage<T>,
    select: impl Fn(&InstanceState) -> Option<T>,
) -> Result<Vec<T>, String> {
    let ScanPage {
        prefix,
        after,
        limit,
        changed,
        mut found,
    } = page;
    let mut from_store = 0;
    let mut scan_error = None;
    store
        .scan_instances(after.as_deref(), prefix.as_deref(), &mut |id, bytes| {
            if changed.contains(id) {
                return true;
            }
            match InstanceState::decode(bytes) {
                Ok(s) => {
                    if let Some(t) = select(&s) {
                        found.push((id.to_string(), t));
                        from_store += 1;
                    }
                }
                Err(e) => {
                    scan_error = Some(format!("instance '{id}' in the store is unreadable: {e}"));
                    return false;
                }
            }
            from_store < limit
        })
        .map_err(|e| e.to_string())?;
    if let Some(e) = scan_error {
        return Err(e);
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found.truncate(limit);
    Ok(found.into_iter().map(|(_, t)| t).collect())
}

//! State machine tests: hand-written scenarios and the recovery property
//! "apply a prefix, checkpoint, recover, apply the rest" == "apply everything".

use super::*;
use crate::ids::entity_instance_id;
use proptest::prelude::*;
use std::collections::HashMap;

/// An in-memory checkpoint store with the same semantics as the real one.
#[derive(Default, Clone)]
struct MemStore {
    globals: Option<Vec<u8>>,
    instances: HashMap<String, Vec<u8>>,
    history: HashMap<String, Vec<Vec<u8>>>,
    work: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The index as checkpoints maintain it (each put instance's keys replace its old ones, a
    /// deleted one loses them), and each instance's keys.
    index: BTreeMap<Vec<u8>, String>,
    index_keys: HashMap<String, Vec<Vec<u8>>>,
}

impl InstanceSource for MemStore {
    fn load(&self, id: &str) -> Result<Option<InstanceState>, SourceError> {
        Ok(self
            .instances
            .get(id)
            .map(|b| InstanceState::decode(b).unwrap()))
    }
    fn load_history(&self, id: &str) -> Result<Vec<HistoryEvent>, SourceError> {
        Ok(self
            .history
            .get(id)
            .map(|rows| {
                rows.iter()
                    .map(|b| decode_history_event(b).unwrap())
                    .collect()
            })
            .unwrap_or_default())
    }
    fn load_activity(&self, id: u64) -> Result<Option<ActivityWorkItem>, SourceError> {
        Ok(self.item(&crate::work::activity_key(id)))
    }
    fn activities_of(&self, instance: &str) -> Result<Vec<(u64, ActivityWorkItem)>, SourceError> {
        Ok(self.filed(
            &crate::work::activity_instance_prefix(instance),
            crate::work::activity_key,
        ))
    }
    fn load_timer(&self, id: u64) -> Result<Option<TimerEntry>, SourceError> {
        Ok(self.item(&crate::work::timer_key(id)))
    }
    fn timers_of(&self, instance: &str) -> Result<Vec<(u64, TimerEntry)>, SourceError> {
        Ok(self.filed(
            &crate::work::timer_instance_prefix(instance),
            crate::work::timer_key,
        ))
    }
}

impl MemStore {
    fn item<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Option<T> {
        self.work.get(key).map(|b| postcard::from_bytes(b).unwrap())
    }

    fn unfile(&mut self, id: &str) {
        for key in self.index_keys.remove(id).unwrap_or_default() {
            self.index.remove(&key);
        }
    }

    /// The index a full scan of the instances gives.
    fn scanned_index(&self) -> BTreeMap<Vec<u8>, String> {
        self.instances
            .iter()
            .flat_map(|(id, bytes)| {
                let state = InstanceState::decode(bytes).unwrap();
                crate::index::keys(&state)
                    .into_iter()
                    .map(move |k| (k, id.clone()))
            })
            .collect()
    }

    /// The work whose ids are listed under `prefix`, each read from its `key`.
    fn filed<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &[u8],
        key: fn(u64) -> Vec<u8>,
    ) -> Vec<(u64, T)> {
        self.work
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| {
                let id = crate::work::id_of(k).unwrap();
                (
                    id,
                    self.item(&key(id)).expect("filed under a list and by id"),
                )
            })
            .collect()
    }

    /// Every work item whose own key starts like `key`'s, by id.
    fn all<T: serde::de::DeserializeOwned>(&self, key: fn(u64) -> Vec<u8>) -> BTreeMap<u64, T> {
        let kind = key(0)[..1].to_vec();
        self.work
            .iter()
            .filter(|(k, _)| k.starts_with(&kind))
            .map(|(k, v)| {
                (
                    crate::work::id_of(k).unwrap(),
                    postcard::from_bytes(v).unwrap(),
                )
            })
            .collect()
    }

    /// The armed timers filed in the store, by id.
    fn armed_timers(&self) -> BTreeMap<u64, TimerEntry> {
        self.all(crate::work::timer_key)
    }

    /// The queued activities filed in the store, by id.
    fn queued_activities(&self) -> BTreeMap<u64, ActivityWorkItem> {
        self.all(crate::work::activity_key)
    }

    fn write(&mut self, data: CheckpointData) {
        self.globals = Some(data.globals);
        for id in data.history_resets {
            self.history.remove(&id);
        }
        for (id, seq, bytes) in data.history_appends {
            let rows = self.history.entry(id).or_default();
            assert_eq!(
                rows.len(),
                seq as usize,
                "history rows are appended in order"
            );
            rows.push(bytes);
        }
        for (id, bytes) in data.puts {
            self.instances.insert(id, bytes);
        }
        for (id, keys) in data.index_keys {
            self.unfile(&id);
            for key in &keys {
                self.index.insert(key.clone(), id.clone());
            }
            self.index_keys.insert(id, keys);
        }
        for id in data.deletes {
            self.instances.remove(&id);
            self.unfile(&id);
        }
        for (key, bytes) in data.work_puts {
            self.work.insert(key, bytes);
        }
        for key in data.work_deletes {
            assert!(
                self.work.remove(&key).is_some(),
                "only filed work is unfiled"
            );
        }
    }
}

/// Globals plus, per instance id, its state and full history (None if absent).
type Observed = (Globals, Vec<Option<(InstanceState, Vec<HistoryEvent>)>>);

/// Everything observable about a partition: globals, and each instance with its full history.
fn observe(state: &mut PartitionState, store: &MemStore, ids: &[String]) -> Observed {
    let mut out = Vec::new();
    for id in ids {
        let inst = state.get(id, store).unwrap().cloned();
        out.push(inst.map(|i| {
            let mut h: Vec<HistoryEvent> = store
                .history
                .get(id)
                .map(|rows| {
                    rows.iter()
                        .take(i.persisted_len() as usize)
                        .map(|r| decode_history_event(r).unwrap())
                        .collect()
                })
                .unwrap_or_default();
            h.extend(i.tail.iter().cloned());
            assert_eq!(h.len() as u32, i.state.history_len);
            (i.state, h)
        }));
    }
    (state.globals().clone(), out)
}

/// Tiny deterministic RNG for the record generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

fn local_ids() -> Vec<String> {
    (0..40)
        .map(|i| format!("inst-{i}"))
        .filter(|id| partition_of(id, 2) == 0)
        .take(6)
        .collect()
}

fn remote_ids() -> Vec<String> {
    (0..40)
        .map(|i| format!("inst-{i}"))
        .filter(|id| partition_of(id, 2) == 1)
        .take(3)
        .collect()
}

fn entity_ids() -> Vec<String> {
    (0..40)
        .map(|i| entity_instance_id("counter", &format!("k{i}")))
        .filter(|id| partition_of(id, 2) == 0)
        .take(3)
        .collect()
}

/// The runnable instances of a state that holds every instance in memory, in id order.
fn runnable_ids(state: &PartitionState) -> Vec<String> {
    let mut ids: Vec<String> = state
        .loaded_ids()
        .filter(|id| state.loaded(id).is_some_and(|i| is_runnable(&i.state)))
        .cloned()
        .collect();
    ids.sort();
    ids
}

/// Generates `n` records by driving a partition with random but plausible inputs.
fn generate(seed: u64, n: usize) -> Vec<LogRecord> {
    let mut rng = Rng(seed);
    let mut state = PartitionState::new(0, 2);
    let ids = local_ids();
    let remote = remote_ids();
    let mut records = Vec::new();
    let mut now: Millis = 1_000_000;
    let mut msg_pos = 0u64;
    while records.len() < n {
        now += rng.below(50);
        let id = ids[rng.below(ids.len() as u64) as usize].clone();
        let entities = entity_ids();
        let event = match rng.below(15) {
            12 | 13 => {
                // An operation for an entity: a signal, or a call from a local orchestration.
                let caller = if rng.below(2) == 0 {
                    Some(EntityCaller {
                        instance_id: id.clone(),
                        execution_id: "e".into(),
                        task_id: rng.below(5) as i32,
                    })
                } else {
                    None
                };
                if rng.below(3) != 0 || msg_pos == 0 {
                    msg_pos += 1;
                }
                let mut sorted = entities.clone();
                sorted.sort();
                let kind = match rng.below(8) {
                    0 => EntityRequestKind::Lock {
                        critical_section: format!("cs{}", rng.below(3)),
                        lock_set: sorted,
                        position: 0,
                    },
                    1 => EntityRequestKind::Unlock {
                        critical_section: format!("cs{}", rng.below(3)),
                    },
                    _ => EntityRequestKind::Operation,
                };
                let op = EntityOperation {
                    request_id: format!("r{}", rng.next()),
                    operation: "add".into(),
                    input: Some("1".into()),
                    sender: caller.as_ref().map(|c| c.instance_id.clone()),
                    caller,
                    scheduled_time: if rng.below(5) == 0 {
                        Some(now + rng.below(100))
                    } else {
                        None
                    },
                    kind,
                };
                let target = entities[rng.below(entities.len() as u64) as usize].clone();
                PartitionEvent::Messages {
                    from: 1,
                    batch: vec![(
                        MessageId {
                            position: msg_pos,
                            index: 0,
                        },
                        Message::EntityOperation {
                            entity_id: target,
                            operation: op,
                        },
                    )],
                }
            }
            14 => {
                let runnable: Vec<String> = runnable_ids(&state)
                    .into_iter()
                    .filter(|id| id.starts_with('@'))
                    .collect();
                let Some(target) = runnable.first().cloned() else {
                    continue;
                };
                let eligible = state
                    .loaded(&target)
                    .and_then(|i| i.state.entity.as_ref())
                    .map(|e| e.eligible(100))
                    .unwrap_or_default();
                let take = rng.below(eligible.len() as u64 + 1) as usize;
                let processed: Vec<String> = eligible
                    .iter()
                    .take(take)
                    .map(|op| op.request_id.clone())
                    .collect();
                PartitionEvent::EntityBatchCompleted(EntityBatchResult {
                    entity_id: target,
                    results: processed.iter().map(|_| Ok(Some("1".into()))).collect(),
                    processed,
                    state: if rng.below(6) == 0 {
                        None
                    } else {
                        Some(format!("{}", rng.below(1000)))
                    },
                    actions: if rng.below(3) == 0 {
                        vec![EntityAction::Signal {
                            entity_id: entities[0].clone(),
                            operation: "add".into(),
                            input: None,
                            scheduled_time: None,
                            request_id: "x".into(),
                        }]
                    } else {
                        vec![]
                    },
                })
            }
            0 | 1 => PartitionEvent::Client(ClientRequest {
                request_id: rng.next(),
                kind: ClientRequestKind::Start(StartRequest {
                    instance_id: id.clone(),
                    name: "orch".into(),
                    version: None,
                    input: Some(format!("{}", rng.below(100))),
                    scheduled_start: if rng.below(4) == 0 {
                        Some(now + rng.below(100))
                    } else {
                        None
                    },
                    tags: BTreeMap::new(),
                    execution_id: format!("{:032x}", rng.next()),
                    if_exists: match rng.below(4) {
                        0 => ExistingPolicy::ReturnExisting,
                        1 => ExistingPolicy::Fail,
                        2 => ExistingPolicy::TerminateAndRestart,
                        _ => ExistingPolicy::ReplaceIf(vec![
                            RuntimeStatus::Completed,
                            RuntimeStatus::Running,
                        ]),
                    },
                }),
            }),
            2 => PartitionEvent::Client(ClientRequest {
                request_id: rng.next(),
                kind: match rng.below(6) {
                    5 => ClientRequestKind::Rewind {
                        instance_id: id.clone(),
                        reason: Some("again".into()),
                    },
                    0 => ClientRequestKind::RaiseEvent {
                        instance_id: id.clone(),
                        name: "e".into(),
                        input: Some("1".into()),
                    },
                    1 => ClientRequestKind::Terminate {
                        instance_id: id.clone(),
                        reason: None,
                        recursive: rng.below(2) == 0,
                    },
                    2 => ClientRequestKind::Suspend {
                        instance_id: id.clone(),
                        reason: None,
                    },
                    3 => ClientRequestKind::Resume {
                        instance_id: id.clone(),
                        reason: None,
                    },
                    // As a purge by filter does: every ended instance, with one more id (which
                    // may be running, absent or purged already) that it must leave alone.
                    _ => ClientRequestKind::Purge {
                        instance_ids: ids
                            .iter()
                            .filter(|i| {
                                state
                                    .loaded(i)
                                    .is_some_and(|i| i.state.status.is_terminal())
                            })
                            .chain([&id])
                            .cloned()
                            .collect(),
                    },
                },
            }),
            3..=6 => {
                let runnable: Vec<String> = runnable_ids(&state)
                    .into_iter()
                    .filter(|id| !id.starts_with('@'))
                    .collect();
                if runnable.is_empty() {
                    continue;
                }
                let target = runnable[rng.below(runnable.len() as u64) as usize].clone();
                let inst = state.loaded(&target).unwrap().state.clone();
                let mut actions = Vec::new();
                let base = inst.history_len as i32;
                for k in 0..rng.below(4) as i32 {
                    let seq = base + k;
                    actions.push(match rng.below(4) {
                        0 => Action::ScheduleTask {
                            id: seq,
                            name: "act".into(),
                            version: None,
                            input: None,
                        },
                        1 => Action::CreateTimer {
                            id: seq,
                            fire_at: now + rng.below(200),
                        },
                        2 => Action::CreateSubOrchestration {
                            id: seq,
                            instance_id: if rng.below(2) == 0 {
                                ids[rng.below(ids.len() as u64) as usize].clone()
                            } else {
                                remote[rng.below(remote.len() as u64) as usize].clone()
                            },
                            name: "orch".into(),
                            version: None,
                            input: None,
                            execution_id: format!("{:032x}", rng.next()),
                        },
                        _ => Action::SendEvent {
                            id: seq,
                            instance_id: if rng.below(2) == 0 {
                                ids[rng.below(ids.len() as u64) as usize].clone()
                            } else {
                                remote[rng.below(remote.len() as u64) as usize].clone()
                            },
                            name: "e".into(),
                            input: None,
                        },
                    });
                }
                match rng.below(6) {
                    0 => actions.push(Action::Complete(Completion::Completed {
                        result: Some("42".into()),
                    })),
                    1 => actions.push(Action::Complete(Completion::Failed {
                        failure: FailureDetails::new("E", "m"),
                    })),
                    2 => actions.push(Action::Complete(Completion::ContinuedAsNew {
                        input: None,
                        version: None,
                        carryover: vec![],
                        new_execution_id: format!("{:032x}", rng.next()),
                    })),
                    _ => {}
                }
                PartitionEvent::EpisodeCompleted(EpisodeResult {
                    instance_id: target,
                    execution_id: if rng.below(10) == 0 {
                        "stale".into()
                    } else {
                        inst.execution_id.clone()
                    },
                    history_len: inst.history_len,
                    consumed: rng.below(inst.pending.len() as u64 + 1) as u32,
                    started_at: now,
                    actions,
                    custom_status: Some(format!("{}", rng.below(3))),
                })
            }
            7 | 8 => {
                let acts: Vec<u64> = state.activities_queued().map(|(id, _)| id).collect();
                let activity_id = if acts.is_empty() || rng.below(8) == 0 {
                    rng.below(1000)
                } else {
                    acts[rng.below(acts.len() as u64) as usize]
                };
                let result = if rng.below(4) == 0 {
                    Err(FailureDetails::new("X", "y"))
                } else {
                    Ok(Some("1".into()))
                };
                PartitionEvent::ActivityCompleted {
                    activity_id,
                    result,
                }
            }
            9 => {
                let timers: Vec<u64> = state.timers_armed().map(|(id, _)| id).collect();
                if timers.is_empty() {
                    continue;
                }
                PartitionEvent::TimerFired {
                    timer_id: timers[rng.below(timers.len() as u64) as usize],
                }
            }
            10 => {
                // Messages from partition 1, sometimes re-sent (must be dropped by dedup).
                if rng.below(3) != 0 || msg_pos == 0 {
                    msg_pos += 1;
                }
                let msg = match rng.below(5) {
                    // A rewound parent's child, started afresh if it is gone.
                    4 => Message::RewindSubOrchestration {
                        instance_id: id.clone(),
                        reason: None,
                        parent: ParentInstance {
                            instance_id: remote[0].clone(),
                            execution_id: "p".into(),
                            name: "orch".into(),
                            task_id: 3,
                        },
                        name: "orch".into(),
                        version: None,
                        input: None,
                        execution_id: format!("{:032x}", rng.next()),
                    },
                    3 => Message::Rewind {
                        instance_id: id.clone(),
                        reason: None,
                        parent: ParentInstance {
                            instance_id: remote[0].clone(),
                            execution_id: "p".into(),
                            name: "orch".into(),
                            task_id: 3,
                        },
                    },
                    0 => Message::RaiseEvent {
                        instance_id: id.clone(),
                        name: "e".into(),
                        input: None,
                    },
                    1 => Message::Terminate {
                        instance_id: id.clone(),
                        reason: None,
                        recursive: false,
                    },
                    _ => Message::StartSubOrchestration {
                        parent: ParentInstance {
                            instance_id: remote[0].clone(),
                            execution_id: "p".into(),
                            name: "orch".into(),
                            task_id: 3,
                        },
                        instance_id: id.clone(),
                        name: "orch".into(),
                        version: None,
                        input: None,
                        execution_id: format!("{:032x}", rng.next()),
                    },
                };
                PartitionEvent::Messages {
                    from: 1,
                    batch: vec![(
                        MessageId {
                            position: msg_pos,
                            index: 0,
                        },
                        msg,
                    )],
                }
            }
            _ => {
                let Some((up_to, _)) = state.outbox(1).next().cloned() else {
                    continue;
                };
                PartitionEvent::OutboxAck { to: 1, up_to }
            }
        };
        let record = LogRecord {
            timestamp: now,
            event,
        };
        let position = records.len() as u64 + 1;
        state.apply(position, &record, &EmptySource).unwrap();
        records.push(record);
    }
    records
}

fn apply_all(
    state: &mut PartitionState,
    records: &[LogRecord],
    first_position: u64,
    src: &MemStore,
) -> Vec<Vec<Effect>> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| state.apply(first_position + i as u64, r, src).unwrap())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn checkpoint_and_recover_at_any_point_equals_applying_everything(seed in any::<u64>(), len in 1usize..300, split_frac in 0.0f64..1.0, evict in any::<bool>()) {
        let records = generate(seed, len);
        let split = ((records.len() as f64) * split_frac) as usize;
        let ids: Vec<String> = local_ids();

        // A: everything in one go, never checkpointed.
        let empty = MemStore::default();
        let mut a = PartitionState::new(0, 2);
        let effects_a = apply_all(&mut a, &records, 1, &empty);

        // B: a prefix, a checkpoint, a "crash" (only the store survives), recovery, the rest.
        let mut store = MemStore::default();
        let mut b = PartitionState::new(0, 2);
        apply_all(&mut b, &records[..split], 1, &store);
        store.write(b.checkpoint().unwrap());
        let mut b = match &store.globals {
            Some(g) => PartitionState::recover(g).unwrap(),
            None => PartitionState::new(0, 2),
        };
        if evict {
            // Recovery starts with an empty instance cache anyway; evicting again is a no-op.
            for id in &ids { b.evict(id); }
        }
        let effects_b = apply_all(&mut b, &records[split..], split as u64 + 1, &store);
        prop_assert_eq!(&effects_a[split..], &effects_b[..], "effects after recovery differ");

        // Also checkpoint A at the end and B at the end into their stores: same observations.
        let mut store_a = MemStore::default();
        store_a.write(a.checkpoint().unwrap());
        store.write(b.checkpoint().unwrap());
        let observed = observe(&mut a, &store_a, &ids);
        prop_assert_eq!(&observed, &observe(&mut b, &store, &ids));
        // The indexes the checkpoints maintained, through a recovery or without, equal the
        // index of a full scan.
        let scanned = store.scanned_index();
        prop_assert_eq!(&store.index, &scanned);
        prop_assert_eq!(&store_a.index, &scanned);
        // The queued activities, all filed in the store now, with their keys by name and
        // instance, and counted by name.
        prop_assert_eq!(&store_a.work, &store.work);
        let queued = store.queued_activities();
        let armed = store.armed_timers();
        prop_assert_eq!(store.work.len(), queued.len() * 3 + armed.len() * 3);
        prop_assert_eq!(observed.0.timer_count, armed.len() as u64);
        for (id, t) in &armed {
            prop_assert!(store.work.contains_key(&crate::work::timer_due_key(t.due, *id)));
        }
        let mut by_name: BTreeMap<String, u64> = BTreeMap::new();
        for a in queued.values() {
            *by_name.entry(a.name.clone()).or_insert(0) += 1;
        }
        prop_assert_eq!(&observed.0.activity_backlog, &by_name);

        // The status counts kept incrementally match the instances themselves.
        let mut counted: BTreeMap<RuntimeStatus, u64> = BTreeMap::new();
        for (state, _) in observed.1.iter().flatten() {
            *counted.entry(state.status).or_insert(0) += 1;
        }
        prop_assert_eq!(&observed.0.status_counts, &counted);
        let mut by_name: BTreeMap<String, u64> = BTreeMap::new();
        for (state, _) in observed.1.iter().flatten().filter(|(s, _)| s.entity.is_none()) {
            *by_name.entry(state.name.clone()).or_insert(0) += 1;
        }
        prop_assert_eq!(&observed.0.name_counts, &by_name);
        // So do the backlog counts, orchestrations and entities alike.
        let mut backlog: BTreeMap<String, u64> = BTreeMap::new();
        for id in ids.iter().chain(entity_ids().iter()) {
            if let Some(i) = b.get(id, &store).unwrap().filter(|i| is_runnable(&i.state)) {
                *backlog.entry(i.state.name.clone()).or_insert(0) += 1;
            }
        }
        prop_assert_eq!(&observed.0.backlog, &backlog);
    }

    /// What reads off the partition's task rely on: an instance not changed since the last
    /// checkpoint reads the same from the store as from memory (resident or known absent).
    #[test]
    fn clean_instances_read_the_same_from_the_store(seed in any::<u64>(), len in 1usize..300, split_frac in 0.0f64..1.0) {
        let records = generate(seed, len);
        let split = ((records.len() as f64) * split_frac) as usize;
        let mut store = MemStore::default();
        let mut state = PartitionState::new(0, 2);
        apply_all(&mut state, &records[..split], 1, &store);
        store.write(state.checkpoint().unwrap());
        apply_all(&mut state, &records[split..], split as u64 + 1, &store);
        let mut clean = 0;
        for (id, slot) in &state.instances {
            if state.dirty_ids().any(|d| d == id) {
                continue;
            }
            clean += 1;
            let stored = store.load(id).unwrap();
            match slot {
                Slot::Live(inst) => {
                    prop_assert!(inst.tail.is_empty(), "{} is clean with unsaved history", id);
                    prop_assert_eq!(Some(&inst.state), stored.as_ref(), "{} differs", id);
                }
                Slot::Absent => prop_assert!(stored.is_none(), "{} is absent but stored", id),
            }
        }
        let dirty_slots = state.dirty_ids().filter(|d| state.instances.contains_key(*d)).count();
        prop_assert_eq!(clean + dirty_slots, state.instances.len());
        // A changed instance without a slot was deleted: known absent, without the store.
        for id in state.dirty_ids().filter(|d| !state.instances.contains_key(*d)) {
            prop_assert!(state.is_resident(id) && state.loaded(id).is_none(), "{} deleted but not known absent", id);
        }
        // Reads look for what changed and still exists among the live changed instances only.
        let mut live: Vec<&String> = state.changed_live_ids().collect();
        let mut expected: Vec<&String> = state
            .dirty_ids()
            .filter(|id| state.loaded(id).is_some())
            .collect();
        live.sort();
        expected.sort();
        prop_assert_eq!(live, expected);
    }

    #[test]
    fn records_round_trip_through_the_log_encoding(seed in any::<u64>(), len in 1usize..100) {
        for r in generate(seed, len) {
            prop_assert_eq!(LogRecord::decode(&r.encode().unwrap()).unwrap(), r);
        }
    }
}

fn start(id: &str, at: Millis) -> LogRecord {
    LogRecord {
        timestamp: at,
        event: PartitionEvent::Client(ClientRequest {
            request_id: 7,
            kind: ClientRequestKind::Start(StartRequest {
                instance_id: id.into(),
                name: "orch".into(),
                version: None,
                input: Some("1".into()),
                scheduled_start: None,
                tags: BTreeMap::new(),
                execution_id: "e1".into(),
                if_exists: ExistingPolicy::ReturnExisting,
            }),
        }),
    }
}

#[test]
fn start_then_episode_schedules_activity_and_completes() {
    let mut s = PartitionState::new(0, 1);
    let fx = s.apply(1, &start("a", 10), &EmptySource).unwrap();
    assert!(fx.contains(&Effect::RunEpisode("a".into())));
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Respond {
            request_id: 7,
            response: ClientResponse::Started { .. }
        }
    )));
    let ep = LogRecord {
        timestamp: 20,
        event: PartitionEvent::EpisodeCompleted(EpisodeResult {
            instance_id: "a".into(),
            execution_id: "e1".into(),
            history_len: 0,
            consumed: 1,
            started_at: 15,
            actions: vec![Action::ScheduleTask {
                id: 0,
                name: "act".into(),
                version: None,
                input: None,
            }],
            custom_status: None,
        }),
    };
    let fx = s.apply(2, &ep, &EmptySource).unwrap();
    assert_eq!(
        fx,
        vec![
            Effect::StartActivity(1),
            Effect::InstanceChanged("a".into())
        ]
    );
    assert_eq!(s.loaded("a").unwrap().state.status, RuntimeStatus::Running);
    // The same activity result twice: applied once.
    let done = LogRecord {
        timestamp: 30,
        event: PartitionEvent::ActivityCompleted {
            activity_id: 1,
            result: Ok(Some("2".into())),
        },
    };
    let fx = s.apply(3, &done, &EmptySource).unwrap();
    assert_eq!(fx, vec![Effect::RunEpisode("a".into())]);
    let fx = s.apply(4, &done, &EmptySource).unwrap();
    assert!(fx.is_empty());
    assert_eq!(s.loaded("a").unwrap().state.pending.len(), 1);
    // The OrchestratorStarted timestamp is the episode's start, not the record's.
    assert_eq!(s.loaded("a").unwrap().tail[0].timestamp, 15);
}

#[test]
fn stale_episode_is_discarded() {
    let mut s = PartitionState::new(0, 1);
    s.apply(1, &start("a", 10), &EmptySource).unwrap();
    let ep = |exec: &str, len: u32| LogRecord {
        timestamp: 20,
        event: PartitionEvent::EpisodeCompleted(EpisodeResult {
            instance_id: "a".into(),
            execution_id: exec.into(),
            history_len: len,
            consumed: 1,
            started_at: 15,
            actions: vec![Action::Complete(Completion::Completed { result: None })],
            custom_status: None,
        }),
    };
    let fx = s.apply(2, &ep("other", 0), &EmptySource).unwrap();
    assert_eq!(
        fx,
        vec![Effect::RunEpisode("a".into())],
        "stale result re-requests an episode"
    );
    assert_eq!(s.loaded("a").unwrap().state.status, RuntimeStatus::Pending);
    s.apply(3, &ep("e1", 0), &EmptySource).unwrap();
    assert_eq!(
        s.loaded("a").unwrap().state.status,
        RuntimeStatus::Completed
    );
}

#[test]
fn messages_to_other_partitions_go_through_the_outbox_with_dedup_ids() {
    let ids = remote_ids();
    let mut s = PartitionState::new(0, 2);
    let local = local_ids();
    s.apply(1, &start(&local[0], 10), &EmptySource).unwrap();
    let ep = LogRecord {
        timestamp: 20,
        event: PartitionEvent::EpisodeCompleted(EpisodeResult {
            instance_id: local[0].clone(),
            execution_id: "e1".into(),
            history_len: 0,
            consumed: 1,
            started_at: 15,
            actions: vec![
                Action::SendEvent {
                    id: 0,
                    instance_id: ids[0].clone(),
                    name: "x".into(),
                    input: None,
                },
                Action::SendEvent {
                    id: 1,
                    instance_id: ids[1].clone(),
                    name: "x".into(),
                    input: None,
                },
            ],
            custom_status: None,
        }),
    };
    let fx = s.apply(2, &ep, &EmptySource).unwrap();
    assert!(fx.contains(&Effect::SendMessages { to: 1 }));
    let out: Vec<MessageId> = s.outbox(1).map(|(id, _)| *id).collect();
    assert_eq!(
        out,
        vec![
            MessageId {
                position: 2,
                index: 0
            },
            MessageId {
                position: 2,
                index: 1
            }
        ]
    );
    s.apply(
        3,
        &LogRecord {
            timestamp: 30,
            event: PartitionEvent::OutboxAck {
                to: 1,
                up_to: out[0],
            },
        },
        &EmptySource,
    )
    .unwrap();
    assert_eq!(s.outbox(1).count(), 1);
}

#[test]
fn activities_and_timers_of_format_4_are_filed_in_the_store_by_the_next_checkpoint() {
    let item = |name: &str, task_id| ActivityWorkItem {
        instance_id: "gone".into(),
        execution_id: "e".into(),
        task_id,
        name: name.into(),
        version: None,
        input: Some("1".into()),
    };
    let v4 = GlobalsV4 {
        partition_count: 2,
        position: 5,
        activities: BTreeMap::from([(3, item("a", 0)), (4, item("b", 1))]),
        next_activity_id: 5,
        timers: BTreeMap::from([(
            7,
            TimerEntry {
                instance_id: "gone".into(),
                execution_id: "e".into(),
                due: 99,
                kind: TimerKind::ScheduledStart,
            },
        )]),
        next_timer_id: 8,
        ..GlobalsV4::default()
    };
    let mut bytes = vec![GLOBALS_TAG, 4];
    bytes.extend(postcard::to_allocvec(&v4).unwrap());
    let mut state = PartitionState::recover(&bytes).unwrap();
    assert!(
        state.upgrade().is_none(),
        "nothing to rebuild from the store"
    );
    assert_eq!(state.activity(3), Some(&item("a", 0)));
    let counts = |s: &PartitionState| s.globals().activity_backlog.clone();
    assert_eq!(
        counts(&state),
        BTreeMap::from([("a".into(), 1), ("b".into(), 1)])
    );
    let mut store = MemStore::default();
    store.write(state.checkpoint().unwrap());
    assert_eq!(
        store.queued_activities().into_keys().collect::<Vec<_>>(),
        [3, 4]
    );
    assert_eq!(state.activity(3), None, "in the store now, not in memory");
    assert_eq!(store.armed_timers().into_keys().collect::<Vec<_>>(), [7]);
    assert_eq!(state.globals().timer_count, 1);

    // Recovered from today's format, a completion finds its activity in the store, and a
    // second completion of it changes nothing.
    let mut state = PartitionState::recover(store.globals.as_ref().unwrap()).unwrap();
    assert_eq!(
        counts(&state),
        BTreeMap::from([("a".into(), 1), ("b".into(), 1)])
    );
    let done = LogRecord {
        timestamp: 1,
        event: PartitionEvent::ActivityCompleted {
            activity_id: 3,
            result: Ok(None),
        },
    };
    state.apply(6, &done, &store).unwrap();
    assert!(state.activity_done(3));
    assert_eq!(counts(&state), BTreeMap::from([("b".into(), 1)]));
    state.apply(7, &done, &store).unwrap();
    assert_eq!(counts(&state), BTreeMap::from([("b".into(), 1)]));
    // The timer fires from the store, once.
    let fired = LogRecord {
        timestamp: 100,
        event: PartitionEvent::TimerFired { timer_id: 7 },
    };
    state.apply(8, &fired, &store).unwrap();
    assert!(state.timer_fired(7));
    state.apply(9, &fired, &store).unwrap();
    assert_eq!(state.globals().timer_count, 0);
    store.write(state.checkpoint().unwrap());
    assert_eq!(
        store.queued_activities().into_keys().collect::<Vec<_>>(),
        [4]
    );
    assert!(store.armed_timers().is_empty());
    assert_eq!(store.work.len(), 3, "unfiled under all three keys");
}

/// An execution that fails leaves its timers armed (they are on disk, and freeing them would
/// mean finding them); a rewind must then not arm them a second time.
#[test]
fn a_rewind_does_not_arm_again_a_timer_still_armed_in_the_store() {
    let mut s = PartitionState::new(0, 1);
    s.apply(1, &start("a", 10), &EmptySource).unwrap();
    let ep = LogRecord {
        timestamp: 20,
        event: PartitionEvent::EpisodeCompleted(EpisodeResult {
            instance_id: "a".into(),
            execution_id: "e1".into(),
            history_len: 0,
            consumed: 1,
            started_at: 15,
            actions: vec![Action::CreateTimer {
                id: 0,
                fire_at: 1_000,
            }],
            custom_status: None,
        }),
    };
    s.apply(2, &ep, &EmptySource).unwrap();
    // An event wakes it, and that step fails it (a failing step that scheduled nothing).
    let event = LogRecord {
        timestamp: 22,
        event: PartitionEvent::Client(ClientRequest {
            request_id: 9,
            kind: ClientRequestKind::RaiseEvent {
                instance_id: "a".into(),
                name: "e".into(),
                input: None,
            },
        }),
    };
    s.apply(3, &event, &EmptySource).unwrap();
    let fails = LogRecord {
        timestamp: 25,
        event: PartitionEvent::EpisodeCompleted(EpisodeResult {
            instance_id: "a".into(),
            execution_id: "e1".into(),
            history_len: s.loaded("a").unwrap().state.history_len,
            consumed: 1,
            started_at: 24,
            actions: vec![Action::Complete(Completion::Failed {
                failure: FailureDetails::new("E", "m"),
            })],
            custom_status: None,
        }),
    };
    s.apply(4, &fails, &EmptySource).unwrap();
    assert_eq!(s.loaded("a").unwrap().state.status, RuntimeStatus::Failed);
    assert_eq!(
        s.globals().timer_count,
        1,
        "the failed execution's timer stays armed"
    );
    let mut store = MemStore::default();
    store.write(s.checkpoint().unwrap());
    let mut s = PartitionState::recover(store.globals.as_ref().unwrap()).unwrap();
    let rewind = LogRecord {
        timestamp: 30,
        event: PartitionEvent::Client(ClientRequest {
            request_id: 8,
            kind: ClientRequestKind::Rewind {
                instance_id: "a".into(),
                reason: None,
            },
        }),
    };
    let fx = s.apply(5, &rewind, &store).unwrap();
    assert_eq!(
        s.get("a", &store).unwrap().unwrap().state.status,
        RuntimeStatus::Running
    );
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::ScheduleTimer { .. })),
        "armed again: {fx:?}"
    );
    assert_eq!(s.globals().timer_count, 1);
    // It fires once, into the rewound execution.
    let fired = LogRecord {
        timestamp: 1_000,
        event: PartitionEvent::TimerFired { timer_id: 1 },
    };
    s.apply(6, &fired, &store).unwrap();
    assert_eq!(s.globals().timer_count, 0);
    let inst = s.get("a", &store).unwrap().unwrap();
    let fired_events = inst
        .state
        .pending
        .iter()
        .filter(|e| matches!(e.kind, EventKind::TimerFired { .. }))
        .count();
    assert_eq!(fired_events, 1);
}

fn client(request: ClientRequestKind, at: Millis) -> LogRecord {
    LogRecord {
        timestamp: at,
        event: PartitionEvent::Client(ClientRequest {
            request_id: 9,
            kind: request,
        }),
    }
}

/// A purge's deletions reach the store with the next checkpoint (listed in the order they
/// went, not from the dirty set), and an instance purged and created again before it keeps its
/// new row and history.
#[test]
fn a_checkpoint_deletes_purged_instances_and_keeps_those_created_again() {
    let mut s = PartitionState::new(0, 1);
    let mut store = MemStore::default();
    let ids = ["a", "b", "c"];
    let mut position = 0;
    let mut apply = |s: &mut PartitionState, store: &MemStore, r: LogRecord| {
        position += 1;
        s.apply(position, &r, store).unwrap();
    };
    for id in ids {
        apply(&mut s, &store, start(id, 10));
        let terminate = ClientRequestKind::Terminate {
            instance_id: id.into(),
            reason: None,
            recursive: false,
        };
        apply(&mut s, &store, client(terminate, 11));
        assert!(s.loaded(id).unwrap().state.status.is_terminal());
    }
    store.write(s.checkpoint().unwrap());
    for id in ids {
        assert!(store.load(id).unwrap().is_some(), "{id} is stored");
        assert!(!store.load_history(id).unwrap().is_empty());
    }
    // All three purged (b twice), then b created again, all before the next checkpoint.
    let purge = |ids: &[&str]| ClientRequestKind::Purge {
        instance_ids: ids.iter().map(|i| i.to_string()).collect(),
    };
    apply(&mut s, &store, client(purge(&ids), 20));
    apply(&mut s, &store, client(purge(&["b"]), 21));
    apply(&mut s, &store, start("b", 22));
    assert_eq!(s.dirty_count(), 3);
    assert_eq!(s.dirty_live_count(), 1);
    let data = s.checkpoint().unwrap();
    assert_eq!(data.deletes, vec!["a".to_string(), "c".to_string()]);
    store.write(data);
    for id in ["a", "c"] {
        assert!(store.load(id).unwrap().is_none(), "{id} was purged");
        assert!(store.load_history(id).unwrap().is_empty());
    }
    let b = store.load("b").unwrap().expect("b was created again");
    assert_eq!(b.status, RuntimeStatus::Pending);
    assert_eq!(s.dirty_count(), 0);
}

/// A purged instance is known absent without a cache slot until the checkpoint takes it, and a
/// store read made before the purge can never bring it back: not while it waits for the
/// checkpoint, and not after the take has handed it over (the store still has it until the
/// batch is written).
#[test]
fn a_purged_instance_stays_absent_for_reads_begun_before_the_purge() {
    let mut s = PartitionState::new(0, 1);
    let mut store = MemStore::default();
    let mut position = 0;
    let mut apply = |s: &mut PartitionState, store: &MemStore, r: LogRecord| {
        position += 1;
        s.apply(position, &r, store).unwrap();
    };
    apply(&mut s, &store, start("a", 10));
    let terminate = ClientRequestKind::Terminate {
        instance_id: "a".into(),
        reason: None,
        recursive: false,
    };
    apply(&mut s, &store, client(terminate, 11));
    store.write(s.checkpoint().unwrap());
    assert!(s.evict("a"));
    // A read of the store begins (as a read-ahead does), then the purge is applied.
    let (read, evictions_then) = (store.load("a").unwrap(), s.evictions());
    assert!(read.is_some());
    let purge = ClientRequestKind::Purge {
        instance_ids: vec!["a".into()],
    };
    apply(&mut s, &store, client(purge, 20));
    assert!(s.is_resident("a") && s.loaded("a").is_none());
    assert_eq!(
        s.loaded_count(),
        0,
        "a deleted instance holds no cache slot"
    );
    assert!(!s.warm("a", read.clone(), evictions_then));
    let take = s.take_checkpoint().unwrap();
    assert!(take.deletes("a"));
    assert!(
        !s.warm("a", read, evictions_then),
        "a stale read put a purged instance back"
    );
    assert!(s.loaded("a").is_none());
    store.write(take.encode().unwrap());
    assert!(store.load("a").unwrap().is_none());
}

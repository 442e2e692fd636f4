//! The partition state machine: `apply(state, record) -> effects`.
//!
//! A partition owns a set of instances (those whose id hashes to it) and what drives them: the
//! queued activities and armed durable timers (in memory only until a checkpoint files them in
//! the store, [`crate::work`]), the outbox towards other partitions, the dedup positions of
//! messages received, and counts of the instances with work to do (the instances themselves
//! are found through the store's backlog index, [`crate::index`]).
//!
//! **Purity.** Nothing here performs I/O, reads a clock or draws randomness. Instances that are
//! not in memory are read through [`InstanceSource`], a read-only view of the last checkpoint:
//! the logical state is "checkpoint overlaid with what was applied since", and the source only
//! lets the state machine keep the cold part of it on disk. State after position `n` is a pure
//! function of the log prefix (and that checkpoint, which was itself produced by this code).
//!
//! **Memory.** Only the global tables (bounded by in-flight work) are always in memory. Instances
//! are loaded on demand and may be evicted once clean (written by a checkpoint). A loaded
//! instance keeps only the *tail* of its history that is not yet in the checkpoint store.
//!
//! **Layout.** This file holds the types and [`PartitionState::apply`], which dispatches a record
//! to the concern that owns it, one file each: `instances` (cache slots, load/take/put, status
//! counts), `client` (client requests), `messages` (delivery, the outbox, queueing work),
//! `episode` (episode results, one function per action kind), `lifecycle` (terminate, finish,
//! rewind), `entities` (operations, batches, locks) and `checkpoint` (what a checkpoint writes).

use crate::event::*;
use crate::history::*;
use crate::ids::partition_of;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

mod checkpoint;
mod client;
mod entities;
mod episode;
mod instances;
mod lifecycle;
mod messages;
pub use checkpoint::{Changed, CheckpointTake, EncodedInstance};
pub use instances::Evicted;

/// Read-only access to instances as of the last checkpoint.
pub trait InstanceSource {
    fn load(&self, instance_id: &str) -> Result<Option<InstanceState>, SourceError>;
    /// The history rows of the instance's current execution as of the checkpoint (only a
    /// rewind, which rewrites history, needs more than the in-memory tail).
    fn load_history(&self, instance_id: &str) -> Result<Vec<HistoryEvent>, SourceError>;
    /// The queued activity `id` as of the checkpoint ([`crate::work`]).
    fn load_activity(&self, id: u64) -> Result<Option<ActivityWorkItem>, SourceError>;
    /// The activities of `instance_id` queued as of the checkpoint, by id.
    fn activities_of(&self, instance_id: &str)
        -> Result<Vec<(u64, ActivityWorkItem)>, SourceError>;
    /// The armed timer `id` as of the checkpoint.
    fn load_timer(&self, id: u64) -> Result<Option<TimerEntry>, SourceError>;
    /// The timers of `instance_id` armed as of the checkpoint, by id.
    fn timers_of(&self, instance_id: &str) -> Result<Vec<(u64, TimerEntry)>, SourceError>;
}

/// The checkpoint store could not be read; the partition cannot make progress.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reading instance state from the checkpoint store failed: {0}")]
pub struct SourceError(pub String);

/// A source with nothing in it: a partition that was never checkpointed.
pub struct EmptySource;

impl InstanceSource for EmptySource {
    fn load(&self, _: &str) -> Result<Option<InstanceState>, SourceError> {
        Ok(None)
    }
    fn load_history(&self, _: &str) -> Result<Vec<HistoryEvent>, SourceError> {
        Ok(Vec::new())
    }
    fn load_activity(&self, _: u64) -> Result<Option<ActivityWorkItem>, SourceError> {
        Ok(None)
    }
    fn activities_of(&self, _: &str) -> Result<Vec<(u64, ActivityWorkItem)>, SourceError> {
        Ok(Vec::new())
    }
    fn load_timer(&self, _: u64) -> Result<Option<TimerEntry>, SourceError> {
        Ok(None)
    }
    fn timers_of(&self, _: &str) -> Result<Vec<(u64, TimerEntry)>, SourceError> {
        Ok(Vec::new())
    }
}

/// Everything Cairn keeps about an instance except its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceState {
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
    /// Messages that arrived and wait for the next episode.
    pub pending: Vec<HistoryEvent>,
    /// Length of the current execution's history.
    pub history_len: u32,
    /// Running sub-orchestrations (task id -> instance id), for recursive terminate.
    pub children: BTreeMap<i32, String>,
    /// Set while a scheduled start time has not come yet.
    pub not_before: Option<Millis>,
    /// Present for entities (instance id `@name@key`): their state and queued operations.
    pub entity: Option<EntityRecord>,
    /// Critical sections this orchestration holds (id -> locked entities), released when it ends.
    pub held_locks: BTreeMap<String, Vec<String>>,
}

/// What an entity keeps: its state and the operations waiting for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityRecord {
    /// Serialized state; None when the entity has no state.
    pub state: Option<String>,
    /// Operations in arrival order (per sender, the order they were sent).
    pub queue: VecDeque<EntityOperation>,
    pub last_modified: Millis,
    /// (critical section, holding orchestration) while the entity is locked.
    pub locked_by: Option<(String, String)>,
}

impl EntityRecord {
    /// The operations that may run now, in order: while locked, only the holder's; otherwise
    /// those queued before the first lock request.
    pub fn eligible(&self, max: usize) -> Vec<EntityOperation> {
        match &self.locked_by {
            Some((_, holder)) => self
                .queue
                .iter()
                .filter(|op| {
                    op.kind == EntityRequestKind::Operation
                        && op.sender.as_deref() == Some(holder.as_str())
                })
                .take(max)
                .cloned()
                .collect(),
            None => self
                .queue
                .iter()
                .take_while(|op| op.kind == EntityRequestKind::Operation)
                .take(max)
                .cloned()
                .collect(),
        }
    }
}

/// The entity name of an entity instance id `@name@key`.
pub fn entity_name(entity_id: &str) -> Option<&str> {
    let rest = entity_id.strip_prefix('@')?;
    rest.split_once('@').map(|(name, _)| name)
}

impl InstanceState {
    pub fn encode(&self) -> Result<Vec<u8>, crate::EncodeError> {
        crate::encode("an instance's state", self)
    }
    pub fn decode(bytes: &[u8]) -> Result<InstanceState, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// A loaded instance: its state plus the part of its history not yet checkpointed.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub state: InstanceState,
    /// History events `[history_len - tail.len(), history_len)`; earlier ones are in the store.
    pub tail: Vec<HistoryEvent>,
    /// The store still holds rows of an older execution that the next checkpoint must delete.
    pub reset: bool,
}

impl Instance {
    /// Number of history events of the current execution that are in the checkpoint store.
    pub fn persisted_len(&self) -> u32 {
        self.state.history_len - self.tail.len() as u32
    }

    fn push(&mut self, event: HistoryEvent) {
        self.tail.push(event);
        self.state.history_len += 1;
    }

    /// What the instance costs in memory: the boxed instance and its cache slot (the map entry,
    /// the id as the key and in the state), its strings, and its events. Struct sizes are
    /// counted, not guessed: an estimate of payloads alone made a cache of tiny instances
    /// several times its budget.
    fn approx_size(&self) -> usize {
        const SLOT: usize = 64;
        let event = |e: &HistoryEvent| std::mem::size_of::<HistoryEvent>() + e.approx_size();
        let s = &self.state;
        let text = |x: &Option<String>| x.as_ref().map_or(0, |x| x.len());
        SLOT + std::mem::size_of::<Instance>()
            + 2 * s.instance_id.len()
            + s.name.len()
            + s.execution_id.len()
            + text(&s.input)
            + text(&s.output)
            + text(&s.custom_status)
            + s.tags
                .iter()
                .map(|(k, v)| 64 + k.len() + v.len())
                .sum::<usize>()
            + s.pending.iter().map(event).sum::<usize>()
            + self.tail.iter().map(event).sum::<usize>()
    }
}

enum Slot {
    Live(Box<Instance>),
    /// Known not to exist (checked against the source, or deleted since).
    Absent,
}

/// The tables every partition keeps in memory, checkpointed as one blob.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Globals {
    pub partition: u32,
    pub partition_count: u32,
    /// Position of the last applied record.
    pub position: u64,
    /// Queued activities by name (format 5; the activities themselves are in the store's
    /// `work` table, [`crate::work`], or, until the next checkpoint, in memory).
    pub activity_backlog: BTreeMap<String, u64>,
    pub next_activity_id: u64,
    /// Armed durable timers (format 5; the timers themselves are in the store's `work` table
    /// or, until the next checkpoint, in memory). A timer of an execution that ended stays
    /// armed until it fires, and then changes nothing.
    pub timer_count: u64,
    pub next_timer_id: u64,
    pub outbox: BTreeMap<u32, VecDeque<(MessageId, Message)>>,
    pub dedup: BTreeMap<u32, MessageId>,
    /// Instances that may run an episode now ([`is_runnable`]: pending messages, or eligible
    /// entity operations), counted by orchestration or entity name (format 4). The instances
    /// themselves are not listed here: a backlog of a million would make every checkpoint
    /// rewrite a million ids. The store files each under its backlog index key instead.
    pub backlog: BTreeMap<String, u64>,
    /// Orchestration instances (not entities) by runtime status, kept as instances change so
    /// metrics never scan the store.
    pub status_counts: BTreeMap<RuntimeStatus, u64>,
    /// Orchestration instances by orchestration name, kept the same way (format 3).
    pub name_counts: BTreeMap<String, u64>,
}

/// Globals of format 4 and later start with this byte and then their format version. Older
/// globals start with their partition number as a varint, and no partition number below 256
/// encodes as `0xff` followed by a byte of 2 or more (that would be 383 or more), so the two
/// never read as each other.
const GLOBALS_TAG: u8 = 0xff;
/// The format of [`Globals`] as this version writes them.
const GLOBALS_VERSION: u8 = 5;

impl Globals {
    /// The globals as a checkpoint stores them: tagged with their format version.
    pub fn encode(&self) -> Result<Vec<u8>, crate::EncodeError> {
        let mut bytes = vec![GLOBALS_TAG, GLOBALS_VERSION];
        bytes.extend(crate::encode("the partition's globals", self)?);
        Ok(bytes)
    }
}

/// Whether an instance may run an episode (or entity batch) now: it has work, is not waiting
/// for its scheduled start, is not suspended and has not ended.
pub fn is_runnable(s: &InstanceState) -> bool {
    let has_work = match &s.entity {
        Some(e) => !e.eligible(1).is_empty(),
        None => !s.pending.is_empty(),
    };
    has_work
        && s.not_before.is_none()
        && s.status != RuntimeStatus::Suspended
        && !s.status.is_terminal()
}

/// What globals of an older format leave for the shell to rebuild from the store when a hub
/// is upgraded (see [`PartitionState::upgrade`]).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Upgrade {
    /// Format 2 kept no counts by name: count the store's instances.
    pub count_names: bool,
    /// Formats 2 and 3 listed the runnable instances in the globals; format 4 files them
    /// under the store's backlog index and counts them in [`Globals::backlog`].
    pub runnable: Vec<String>,
}

/// [`Globals`] as format 4 wrote them: the queued activities themselves in the globals.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize, Default))]
struct GlobalsV4 {
    partition: u32,
    partition_count: u32,
    position: u64,
    activities: BTreeMap<u64, ActivityWorkItem>,
    next_activity_id: u64,
    timers: BTreeMap<u64, TimerEntry>,
    next_timer_id: u64,
    outbox: BTreeMap<u32, VecDeque<(MessageId, Message)>>,
    dedup: BTreeMap<u32, MessageId>,
    backlog: BTreeMap<String, u64>,
    status_counts: BTreeMap<RuntimeStatus, u64>,
    name_counts: BTreeMap<String, u64>,
}

impl GlobalsV4 {
    /// Today's globals, and the queued activities and armed timers, which the next checkpoint
    /// files in the store.
    fn upgrade(
        self,
    ) -> (
        Globals,
        BTreeMap<u64, ActivityWorkItem>,
        BTreeMap<u64, TimerEntry>,
    ) {
        let mut activity_backlog = BTreeMap::new();
        for item in self.activities.values() {
            instances::count(&mut activity_backlog, &item.name, true);
        }
        let globals = Globals {
            partition: self.partition,
            partition_count: self.partition_count,
            position: self.position,
            activity_backlog,
            next_activity_id: self.next_activity_id,
            timer_count: self.timers.len() as u64,
            next_timer_id: self.next_timer_id,
            outbox: self.outbox,
            dedup: self.dedup,
            backlog: self.backlog,
            status_counts: self.status_counts,
            name_counts: self.name_counts,
        };
        (globals, self.activities, self.timers)
    }
}

/// [`Globals`] as format 2 wrote them (no name counts), read to upgrade a hub.
#[derive(Deserialize)]
struct GlobalsV2 {
    partition: u32,
    partition_count: u32,
    position: u64,
    activities: BTreeMap<u64, ActivityWorkItem>,
    next_activity_id: u64,
    timers: BTreeMap<u64, TimerEntry>,
    next_timer_id: u64,
    outbox: BTreeMap<u32, VecDeque<(MessageId, Message)>>,
    dedup: BTreeMap<u32, MessageId>,
    runnable: BTreeSet<String>,
    status_counts: BTreeMap<RuntimeStatus, u64>,
}

/// [`Globals`] as format 3 wrote them: format 2's fields, then the name counts (postcard
/// encodes a struct as its fields in order, so a pair reads it).
type GlobalsV3 = (GlobalsV2, BTreeMap<String, u64>);

impl GlobalsV2 {
    /// Format 4's globals and what they lack: the runnable list, and the name counts when
    /// `name_counts` is None.
    fn upgrade(self, name_counts: Option<BTreeMap<String, u64>>) -> (GlobalsV4, Upgrade) {
        let upgrade = Upgrade {
            count_names: name_counts.is_none(),
            runnable: self.runnable.into_iter().collect(),
        };
        let globals = GlobalsV4 {
            partition: self.partition,
            partition_count: self.partition_count,
            position: self.position,
            activities: self.activities,
            next_activity_id: self.next_activity_id,
            timers: self.timers,
            next_timer_id: self.next_timer_id,
            outbox: self.outbox,
            dedup: self.dedup,
            backlog: BTreeMap::new(),
            status_counts: self.status_counts,
            name_counts: name_counts.unwrap_or_default(),
        };
        (globals, upgrade)
    }
}

/// What a checkpoint writes to the store (byte-encoded).
#[derive(Debug, Default)]
pub struct CheckpointData {
    pub position: u64,
    pub globals: Vec<u8>,
    pub puts: Vec<(String, Vec<u8>)>,
    /// Every index key of each put instance ([`crate::index::keys`]), replacing its old ones.
    pub index_keys: Vec<(String, Vec<Vec<u8>>)>,
    pub deletes: Vec<String>,
    pub history_resets: Vec<String>,
    pub history_appends: Vec<(String, u32, Vec<u8>)>,
    /// Pending work to file in the store's `work` table ([`crate::work`]): (key, bytes).
    pub work_puts: Vec<(Vec<u8>, Vec<u8>)>,
    /// Work keys to drop from it.
    pub work_deletes: Vec<Vec<u8>>,
}

/// Pending work filed in the store's `work` table (queued activities, armed timers): what
/// changed since the last checkpoint. The rest is in the store.
#[derive(Debug)]
struct Filed<T> {
    /// Added since the last checkpoint (and not yet taken).
    queued: BTreeMap<u64, T>,
    /// Taken since the last checkpoint, of those in the store: what to unfile.
    done: BTreeMap<u64, T>,
}

impl<T> Default for Filed<T> {
    fn default() -> Self {
        Filed {
            queued: BTreeMap::new(),
            done: BTreeMap::new(),
        }
    }
}

impl<T: Clone> Filed<T> {
    /// Takes `id`: from memory, or from the store (`load`), remembering to unfile it there.
    /// None if it is not pending (taken already).
    fn take(
        &mut self,
        id: u64,
        load: impl FnOnce(u64) -> Result<Option<T>, SourceError>,
    ) -> Result<Option<T>, SourceError> {
        if let Some(item) = self.queued.remove(&id) {
            return Ok(Some(item));
        }
        if self.done.contains_key(&id) {
            return Ok(None);
        }
        let item = load(id)?;
        if let Some(item) = &item {
            self.done.insert(id, item.clone());
        }
        Ok(item)
    }

    /// Whether something pending matches `is_it`: in memory, or else (read only then) among
    /// the store's `stored` not taken since.
    fn any(
        &self,
        is_it: impl Fn(&T) -> bool,
        stored: impl FnOnce() -> Result<Vec<(u64, T)>, SourceError>,
    ) -> Result<bool, SourceError> {
        if self.queued.values().any(&is_it) {
            return Ok(true);
        }
        Ok(stored()?
            .iter()
            .any(|(id, t)| !self.done.contains_key(id) && is_it(t)))
    }

    /// Puts for everything added, deletes for everything taken (each under `keys`), taken.
    fn take_changes<const N: usize>(
        &mut self,
        what: &'static str,
        keys: impl Fn(u64, &T) -> [Vec<u8>; N],
        puts: &mut Vec<(Vec<u8>, Vec<u8>)>,
        deletes: &mut Vec<Vec<u8>>,
    ) -> Result<(), crate::EncodeError>
    where
        T: Serialize,
    {
        for (id, item) in &self.queued {
            let mut keys = keys(*id, item).into_iter();
            if let Some(first) = keys.next() {
                puts.push((first, crate::encode(what, item)?));
            }
            puts.extend(keys.map(|k| (k, Vec::new())));
        }
        self.queued.clear();
        for (id, item) in std::mem::take(&mut self.done) {
            deletes.extend(keys(id, &item));
        }
        Ok(())
    }
}

/// A set of instance ids that is copied in O(1) and shares what the copies do not change.
pub type DirtySet = imbl::HashSet<String>;

pub struct PartitionState {
    globals: Globals,
    activities: Filed<ActivityWorkItem>,
    timers: Filed<TimerEntry>,
    instances: HashMap<String, Slot>,
    /// Instances changed (or deleted) since the last checkpoint. A persistent set: reads take
    /// a copy of it in O(1) (see [`PartitionState::dirty_set`]).
    dirty: DirtySet,
    /// Those of them that still exist (a purge leaves thousands deleted until the checkpoint,
    /// which reads of what changed need not look at).
    dirty_live: DirtySet,
    /// Those deleted (some may exist again): the checkpoint takes its deletions from here whole,
    /// instead of sorting the whole dirty set on the partition's task.
    gone: HashSet<String>,
    /// Lookups answered from memory / from the source (observability only; not state).
    cache_hits: u64,
    cache_misses: u64,
    /// Instances dropped from memory so far (see [`Self::warm`]).
    evictions: u64,
    /// Recovered from globals of an older format: what the shell must rebuild from the store.
    upgrade: Option<Upgrade>,
}

/// Per-apply scratch: effects produced, messages to deliver locally, message numbering.
struct Apply {
    position: u64,
    now: Millis,
    effects: Vec<Effect>,
    local: VecDeque<Message>,
    next_index: u32,
}

impl PartitionState {
    pub fn new(partition: u32, partition_count: u32) -> Self {
        PartitionState {
            globals: Globals {
                partition,
                partition_count,
                next_activity_id: 1,
                next_timer_id: 1,
                ..Globals::default()
            },
            activities: Filed::default(),
            timers: Filed::default(),
            instances: HashMap::new(),
            dirty: DirtySet::new(),
            dirty_live: DirtySet::new(),
            gone: HashSet::new(),
            cache_hits: 0,
            cache_misses: 0,
            evictions: 0,
            upgrade: None,
        }
    }

    /// Rebuilds the in-memory part from a checkpoint's globals blob: of format 4, or of format
    /// 3 or 2, which [`Self::upgrade`] then says what to rebuild from the store.
    pub fn recover(bytes: &[u8]) -> Result<Self, postcard::Error> {
        let (v4, upgrade) = match bytes {
            [GLOBALS_TAG, GLOBALS_VERSION, rest @ ..] => {
                return Ok(Self::recovered(
                    postcard::from_bytes::<Globals>(rest)?,
                    None,
                ));
            }
            [GLOBALS_TAG, 4, rest @ ..] => (postcard::from_bytes::<GlobalsV4>(rest)?, None),
            [GLOBALS_TAG, _, ..] => return Err(postcard::Error::DeserializeBadEncoding),
            // Format 3 first: format-2 bytes end where its name counts would start, so they
            // fail it, while format-3 bytes would pass as format 2 with the counts left unread.
            legacy => match postcard::from_bytes::<GlobalsV3>(legacy) {
                Ok((g, names)) => {
                    let (g, u) = g.upgrade(Some(names));
                    (g, Some(u))
                }
                Err(e) => match postcard::from_bytes::<GlobalsV2>(legacy) {
                    Ok(g) => {
                        let (g, u) = g.upgrade(None);
                        (g, Some(u))
                    }
                    Err(_) => return Err(e),
                },
            },
        };
        // Format 4 and older kept queued activities and armed timers in the globals: they
        // count as added since the checkpoint, so the next one files them in the store.
        let (globals, queued, armed) = v4.upgrade();
        let mut state = Self::recovered(globals, upgrade);
        state.activities.queued = queued;
        state.timers.queued = armed;
        Ok(state)
    }

    fn recovered(globals: Globals, upgrade: Option<Upgrade>) -> Self {
        PartitionState {
            activities: Filed::default(),
            timers: Filed::default(),
            globals,
            instances: HashMap::new(),
            dirty: DirtySet::new(),
            dirty_live: DirtySet::new(),
            gone: HashSet::new(),
            cache_hits: 0,
            cache_misses: 0,
            evictions: 0,
            upgrade,
        }
    }

    /// What globals of an older format lack (None: they were of today's format, or the
    /// upgrade is done).
    pub fn upgrade(&self) -> Option<&Upgrade> {
        self.upgrade.as_ref()
    }

    /// Completes an upgrade with what the shell rebuilt from the store, before any record is
    /// replayed: the name counts (when [`Upgrade::count_names`]) and the backlog counts.
    pub fn finish_upgrade(
        &mut self,
        name_counts: Option<BTreeMap<String, u64>>,
        backlog: BTreeMap<String, u64>,
    ) {
        if let Some(counts) = name_counts {
            self.globals.name_counts = counts;
        }
        self.globals.backlog = backlog;
        self.upgrade = None;
    }

    pub fn globals(&self) -> &Globals {
        &self.globals
    }

    pub fn position(&self) -> u64 {
        self.globals.position
    }

    pub fn partition(&self) -> u32 {
        self.globals.partition
    }

    /// Activity `id` if it was queued since the last checkpoint (else it is in the store, or
    /// done: see [`Self::activity_done`]).
    pub fn activity(&self, id: u64) -> Option<&ActivityWorkItem> {
        self.activities.queued.get(&id)
    }

    /// Whether activity `id`, filed in the store, completed since the last checkpoint.
    pub fn activity_done(&self, id: u64) -> bool {
        self.activities.done.contains_key(&id)
    }

    /// Activities queued since the last checkpoint, oldest first.
    pub fn activities_queued(&self) -> impl Iterator<Item = (u64, &ActivityWorkItem)> {
        self.activities.queued.iter().map(|(id, a)| (*id, a))
    }

    /// Takes activity `id` off the queue (it completed): from memory, or from the store,
    /// remembering to unfile it there. None if it is not queued (a duplicate completion).
    fn take_activity(
        &mut self,
        id: u64,
        src: &dyn InstanceSource,
    ) -> Result<Option<ActivityWorkItem>, SourceError> {
        let Some(item) = self.activities.take(id, |id| src.load_activity(id))? else {
            return Ok(None);
        };
        instances::count(&mut self.globals.activity_backlog, &item.name, false);
        Ok(Some(item))
    }

    /// Whether an activity for `task_id` of this execution is queued (in memory or filed).
    fn activity_queued_for(
        &self,
        instance_id: &str,
        execution_id: &str,
        task_id: i32,
        src: &dyn InstanceSource,
    ) -> Result<bool, SourceError> {
        let is_it = |a: &ActivityWorkItem| {
            a.instance_id == instance_id && a.execution_id == execution_id && a.task_id == task_id
        };
        self.activities
            .any(is_it, || src.activities_of(instance_id))
    }

    /// Timer `id` if it was armed since the last checkpoint (else it is in the store, or
    /// fired: see [`Self::timer_fired`]).
    pub fn timer(&self, id: u64) -> Option<&TimerEntry> {
        self.timers.queued.get(&id)
    }

    /// Whether timer `id`, filed in the store, fired since the last checkpoint.
    pub fn timer_fired(&self, id: u64) -> bool {
        self.timers.done.contains_key(&id)
    }

    /// Timers armed since the last checkpoint, by id.
    pub fn timers_armed(&self) -> impl Iterator<Item = (u64, &TimerEntry)> {
        self.timers.queued.iter().map(|(id, t)| (*id, t))
    }

    /// Whether a timer for `task_id` of this execution is armed (in memory or filed).
    fn timer_armed_for(
        &self,
        instance_id: &str,
        execution_id: &str,
        task_id: i32,
        src: &dyn InstanceSource,
    ) -> Result<bool, SourceError> {
        let is_it = |t: &TimerEntry| {
            t.instance_id == instance_id
                && t.execution_id == execution_id
                && matches!(t.kind, TimerKind::Orchestration { task_id: tid, .. } if tid == task_id)
        };
        self.timers.any(is_it, || src.timers_of(instance_id))
    }

    pub fn outbox(&self, to: u32) -> impl Iterator<Item = &(MessageId, Message)> {
        self.globals.outbox.get(&to).into_iter().flatten()
    }

    pub fn outbox_destinations(&self) -> Vec<u32> {
        self.globals
            .outbox
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| *k)
            .collect()
    }

    /// Applies the record at `position`. Positions must increase by one per record.
    pub fn apply(
        &mut self,
        position: u64,
        record: &LogRecord,
        src: &dyn InstanceSource,
    ) -> Result<Vec<Effect>, SourceError> {
        let mut cx = Apply {
            position,
            now: record.timestamp,
            effects: Vec::new(),
            local: VecDeque::new(),
            next_index: 0,
        };
        match &record.event {
            PartitionEvent::Client(req) => self.client_request(req, &mut cx, src)?,
            PartitionEvent::Messages { from, batch } => {
                let mut last = self.globals.dedup.get(from).copied();
                for (id, msg) in batch {
                    if last.is_some_and(|l| *id <= l)
                        && !crate::mutation::active(crate::mutation::Mutation::SkipDedup)
                    {
                        continue; // already applied: a re-send after recovery
                    }
                    last = Some(*id);
                    self.message(msg.clone(), &mut cx, src)?;
                }
                if let Some(last) = last {
                    self.globals.dedup.insert(*from, last);
                    cx.effects.push(Effect::AckMessages {
                        to: *from,
                        up_to: last,
                    });
                }
            }
            PartitionEvent::EpisodeCompleted(result) => {
                self.episode_completed(result, &mut cx, src)?
            }
            PartitionEvent::EntityBatchCompleted(result) => {
                self.entity_batch_completed(result, &mut cx, src)?
            }
            PartitionEvent::ActivityCompleted {
                activity_id,
                result,
            } => {
                if let Some(item) = self.take_activity(*activity_id, src)? {
                    let kind = match result {
                        Ok(r) => EventKind::TaskCompleted {
                            task_scheduled_id: item.task_id,
                            result: r.clone(),
                        },
                        Err(f) => EventKind::TaskFailed {
                            task_scheduled_id: item.task_id,
                            failure: f.clone(),
                        },
                    };
                    self.deliver(
                        &item.instance_id,
                        Some(&item.execution_id),
                        kind,
                        &mut cx,
                        src,
                    )?;
                }
            }
            PartitionEvent::TimerFired { timer_id } => {
                if let Some(timer) = self.timers.take(*timer_id, |id| src.load_timer(id))? {
                    self.globals.timer_count = self.globals.timer_count.saturating_sub(1);
                    match timer.kind {
                        TimerKind::Orchestration { task_id, fire_at } => {
                            let kind = EventKind::TimerFired {
                                timer_id: task_id,
                                fire_at,
                            };
                            self.deliver(
                                &timer.instance_id,
                                Some(&timer.execution_id),
                                kind,
                                &mut cx,
                                src,
                            )?;
                        }
                        TimerKind::EntityOperation(op) => {
                            self.entity_operation(&timer.instance_id, *op, &mut cx, src)?;
                        }
                        TimerKind::ScheduledStart => {
                            if let Some(mut inst) = self.take(&timer.instance_id, src)? {
                                if inst.state.execution_id == timer.execution_id {
                                    inst.state.not_before = None;
                                    self.run_if_runnable(&inst, &mut cx);
                                }
                                self.put(inst);
                            }
                        }
                    }
                }
            }
            PartitionEvent::OutboxAck { to, up_to } => {
                if let Some(q) = self.globals.outbox.get_mut(to) {
                    while q.front().is_some_and(|(id, _)| id <= up_to) {
                        q.pop_front();
                    }
                    if q.is_empty() {
                        self.globals.outbox.remove(to);
                    }
                }
            }
        }
        // Messages to instances of this same partition are applied at once, in order.
        while let Some(msg) = cx.local.pop_front() {
            self.message(msg, &mut cx, src)?;
        }
        self.globals.position = position;
        Ok(cx.effects)
    }
}

/// Decodes a history row written by [`PartitionState::checkpoint`].
pub fn decode_history_event(bytes: &[u8]) -> Result<HistoryEvent, postcard::Error> {
    postcard::from_bytes(bytes)
}

#[cfg(test)]
mod tests;

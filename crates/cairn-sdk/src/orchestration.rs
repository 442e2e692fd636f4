//! The Rust programming model for orchestrations: [`OrchestrationContext`] and its durable
//! futures.
//!
//! Orchestrator code is an ordinary `async fn` that awaits *durable futures*: activities,
//! sub-orchestrations, timers and external events. Each call that schedules work takes the next
//! sequence number; the replay executor ([`crate::replay`]) feeds history events into the
//! context, which resolves the futures by sequence number, and compares the work the code
//! schedules with what history says it scheduled (a mismatch is a non-determinism error).
//!
//! This module never touches storage, the network or the clock: time is the timestamp of the
//! episode being replayed, and new ids are derived from the instance id and that time.

use crate::error::TaskError;
use cairn_core::{Action, EventKind, FailureDetails, HistoryEvent, Millis};
use futures::future::Either;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What an awaited durable operation produced.
type Outcome = Result<Option<String>, FailureDetails>;

/// Key of a durable future inside the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[doc(hidden)] // for the engine that runs it, not for users
pub enum Slot {
    /// Activity, sub-orchestration or timer: the orchestrator's sequence number.
    Task(i32),
    /// An external-event wait: a local counter (waits are not recorded in history).
    Event(u64),
}

/// What the code scheduled, for comparison with history during replay.
#[derive(Debug, Clone, PartialEq, Eq)]
#[doc(hidden)] // for the engine that runs it, not for users
pub struct ScheduledStep {
    pub kind: &'static str,
    pub name: String,
}

impl ScheduledStep {
    #[doc(hidden)] // for the engine that runs it, not for users
    pub fn of_action(action: &Action) -> Option<(i32, ScheduledStep)> {
        let (id, kind, name) = match action {
            Action::ScheduleTask { id, name, .. } => (*id, "activity", name.clone()),
            Action::CreateSubOrchestration { id, name, .. } => {
                (*id, "sub-orchestration", name.clone())
            }
            Action::CreateTimer { id, .. } => (*id, "timer", String::new()),
            Action::SendEvent { id, name, .. } => (*id, "event", name.clone()),
            Action::CallEntity {
                id,
                entity_id,
                operation,
                ..
            } => (*id, "entity call", format!("{entity_id}.{operation}")),
            Action::SignalEntity {
                id,
                entity_id,
                operation,
                ..
            } => (*id, "entity signal", format!("{entity_id}.{operation}")),
            Action::LockEntities { id, lock_set, .. } => (*id, "entity lock", lock_set.join(",")),
            Action::UnlockEntities { id, lock_set, .. } => {
                (*id, "entity unlock", lock_set.join(","))
            }
            Action::Complete(_) => return None,
        };
        Some((id, ScheduledStep { kind, name }))
    }

    #[doc(hidden)] // for the engine that runs it, not for users
    pub fn of_event(event: &HistoryEvent) -> Option<(i32, ScheduledStep)> {
        let (kind, name) = match &event.kind {
            EventKind::TaskScheduled { name, .. } => ("activity", name.clone()),
            EventKind::SubOrchestrationCreated { name, .. } => ("sub-orchestration", name.clone()),
            EventKind::TimerCreated { .. } => ("timer", String::new()),
            EventKind::EventSent { name, .. } => ("event", name.clone()),
            EventKind::EntityOperationCalled {
                target_instance_id,
                operation,
                ..
            } => ("entity call", format!("{target_instance_id}.{operation}")),
            EventKind::EntityOperationSignaled {
                target_instance_id,
                operation,
                ..
            } => ("entity signal", format!("{target_instance_id}.{operation}")),
            EventKind::EntityLockRequested { lock_set, .. } => ("entity lock", lock_set.join(",")),
            EventKind::EntityUnlockSent { lock_set, .. } => ("entity unlock", lock_set.join(",")),
            _ => return None,
        };
        Some((event.event_id, ScheduledStep { kind, name }))
    }
}

impl std::fmt::Display for ScheduledStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.name.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{} '{}'", self.kind, self.name)
        }
    }
}

#[derive(Default)]
#[doc(hidden)] // for the engine that runs it, not for users
pub struct CtxState {
    pub instance_id: String,
    pub execution_id: String,
    pub name: String,
    pub is_replaying: bool,
    pub current_time: Millis,
    pub next_seq: i32,
    pub guid_counter: u64,
    /// Results that have arrived, with the order in which history delivered them.
    pub results: HashMap<Slot, (u64, Outcome)>,
    pub wakers: HashMap<Slot, Waker>,
    pub delivered: u64,
    /// External events received but not yet claimed by a wait, per name, in arrival order.
    pub event_buffer: HashMap<String, VecDeque<(u64, Option<String>)>>,
    /// Waits registered before their event arrived, per name, in registration order.
    pub event_waiters: HashMap<String, VecDeque<u64>>,
    pub next_event_slot: u64,
    /// Work scheduled by the code during the current episode.
    pub actions: Vec<Action>,
    pub custom_status: Option<String>,
    pub continue_as_new: Option<(Option<String>, bool)>,
    /// Set when the code's own (de)serialization failed in a way that must fail the instance.
    pub fatal: Option<FailureDetails>,
    /// The critical section held now: (id, locked entity ids).
    pub critical_section: Option<(String, Vec<String>)>,
}

impl CtxState {
    #[doc(hidden)] // for the engine that runs it, not for users
    pub fn deliver(&mut self, slot: Slot, outcome: Outcome) {
        self.delivered += 1;
        self.results.insert(slot, (self.delivered, outcome));
        if let Some(w) = self.wakers.remove(&slot) {
            w.wake();
        }
    }

    #[doc(hidden)] // for the engine that runs it, not for users
    pub fn deliver_event(&mut self, name: &str, input: Option<String>) {
        let key = name.to_lowercase();
        if let Some(slot) = self.event_waiters.get_mut(&key).and_then(|q| q.pop_front()) {
            self.deliver(Slot::Event(slot), Ok(input));
        } else {
            self.delivered += 1;
            let order = self.delivered;
            self.event_buffer
                .entry(key)
                .or_default()
                .push_back((order, input));
        }
    }
}

/// The handle orchestrator code uses to schedule durable work. Cheap to clone.
#[derive(Clone)]
pub struct OrchestrationContext {
    #[doc(hidden)] // for the engine that runs it, not for users
    pub inner: Arc<Mutex<CtxState>>,
}

impl OrchestrationContext {
    #[doc(hidden)] // for the engine that runs it, not for users
    pub fn new(instance_id: &str, execution_id: &str, name: &str) -> Self {
        OrchestrationContext {
            inner: Arc::new(Mutex::new(CtxState {
                instance_id: instance_id.to_string(),
                execution_id: execution_id.to_string(),
                name: name.to_string(),
                ..CtxState::default()
            })),
        }
    }

    pub fn instance_id(&self) -> String {
        self.inner.lock().instance_id.clone()
    }

    pub fn execution_id(&self) -> String {
        self.inner.lock().execution_id.clone()
    }

    pub fn name(&self) -> String {
        self.inner.lock().name.clone()
    }

    /// True while the code is re-executing steps already recorded in history.
    pub fn is_replaying(&self) -> bool {
        self.inner.lock().is_replaying
    }

    /// Deterministic current time: the start time of the episode being executed.
    pub fn current_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.inner.lock().current_time)
    }

    /// A deterministic, unique id (UUID-formatted), the same on every replay.
    pub fn new_guid(&self) -> String {
        let mut s = self.inner.lock();
        s.guid_counter += 1;
        let seed = format!("{}|{}|{}", s.instance_id, s.current_time, s.guid_counter);
        let a = fnv1a64(seed.as_bytes());
        let b = fnv1a64(format!("{seed}|b").as_bytes());
        // Version 5-like layout: the version nibble and variant bits are fixed.
        let b = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
        let a = (a & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_5000;
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xffff,
            b >> 48,
            b & 0xffff_ffff_ffff
        )
    }

    /// Sets the custom status shown by status queries (any serializable value).
    pub fn set_custom_status<T: Serialize>(&self, status: &T) {
        let json = serde_json::to_string(status).ok();
        self.inner.lock().custom_status = json;
    }

    /// Replay-safe logging: emits only when the code runs for the first time, not on replay.
    pub fn log(&self, message: impl AsRef<str>) {
        let s = self.inner.lock();
        if !s.is_replaying {
            tracing::info!(instance_id = %s.instance_id, orchestration = %s.name, "{}", message.as_ref());
        }
    }

    fn schedule(&self, make: impl FnOnce(i32) -> Action) -> i32 {
        let mut s = self.inner.lock();
        let id = s.next_seq;
        s.next_seq += 1;
        let action = make(id);
        s.actions.push(action);
        id
    }

    fn to_payload<T: Serialize>(&self, value: &T) -> Option<String> {
        match serde_json::to_string(value) {
            Ok(s) => Some(s),
            Err(e) => {
                let mut s = self.inner.lock();
                s.fatal.get_or_insert_with(|| {
                    FailureDetails::new(
                        "SerializationError",
                        format!("failed to serialize an input: {e}"),
                    )
                    .non_retriable()
                });
                None
            }
        }
    }

    /// Schedules an activity and returns a future of its result.
    pub fn call_activity<I: Serialize, O: DeserializeOwned>(
        &self,
        name: &str,
        input: I,
    ) -> DurableFuture<O> {
        let input = self.to_payload(&input);
        let id = self.schedule(|id| Action::ScheduleTask {
            id,
            name: name.to_string(),
            version: None,
            input,
        });
        DurableFuture::new(self, Slot::Task(id))
    }

    /// Calls an activity, retrying failures by `policy` with durable timers between attempts.
    pub async fn call_activity_with_retry<I: Serialize + Clone, O: DeserializeOwned>(
        &self,
        name: &str,
        input: I,
        policy: &RetryPolicy,
    ) -> Result<O, TaskError> {
        let started = self.current_time();
        let mut attempt = 1u32;
        loop {
            match self.call_activity::<I, O>(name, input.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => match policy.next_delay(attempt, &e, started, self.current_time()) {
                    Some(delay) => {
                        self.log(format!("activity '{name}' failed (attempt {attempt}): {e}; retrying in {delay:?}"));
                        self.sleep(delay).await?;
                        attempt += 1;
                    }
                    None => return Err(e),
                },
            }
        }
    }

    /// Starts a sub-orchestration. Without an instance id, one is derived from this instance's
    /// id and the call's sequence number (stable across replays).
    pub fn call_sub_orchestration<I: Serialize, O: DeserializeOwned>(
        &self,
        name: &str,
        instance_id: Option<&str>,
        input: I,
    ) -> DurableFuture<O> {
        let input = self.to_payload(&input);
        let parent = self.instance_id();
        let id = self.schedule(|id| Action::CreateSubOrchestration {
            id,
            instance_id: instance_id
                .map(|s| s.to_string())
                .unwrap_or_else(|| format!("{parent}:{id:04}")),
            name: name.to_string(),
            version: None,
            input,
            execution_id: String::new(),
        });
        DurableFuture::new(self, Slot::Task(id))
    }

    /// A durable timer that fires at `fire_at`.
    pub fn create_timer(&self, fire_at: SystemTime) -> DurableFuture<()> {
        let fire_at = fire_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as Millis)
            .unwrap_or(0);
        let id = self.schedule(|id| Action::CreateTimer { id, fire_at });
        DurableFuture::new(self, Slot::Task(id))
    }

    /// A durable timer that fires `delay` after the current (deterministic) time.
    pub fn sleep(&self, delay: Duration) -> DurableFuture<()> {
        self.create_timer(self.current_time() + delay)
    }

    /// Waits for the next external event called `name` (case-insensitive). Events that arrive
    /// before anyone waits are buffered and handed out in arrival order.
    pub fn wait_for_event<O: DeserializeOwned>(&self, name: &str) -> DurableFuture<O> {
        let mut s = self.inner.lock();
        let slot_id = s.next_event_slot;
        s.next_event_slot += 1;
        let key = name.to_lowercase();
        let buffered = s.event_buffer.get_mut(&key).and_then(|q| q.pop_front());
        match buffered {
            Some((order, input)) => {
                s.results.insert(Slot::Event(slot_id), (order, Ok(input)));
            }
            None => s.event_waiters.entry(key).or_default().push_back(slot_id),
        }
        drop(s);
        DurableFuture::new(self, Slot::Event(slot_id))
    }

    /// Sends an event to another instance (fire and forget).
    pub fn send_event<I: Serialize>(&self, instance_id: &str, name: &str, input: I) {
        let input = self.to_payload(&input);
        self.schedule(|id| Action::SendEvent {
            id,
            instance_id: instance_id.to_string(),
            name: name.to_string(),
            input,
        });
    }

    /// Calls an operation on the entity `(name, key)` and waits for its result (or the
    /// operation's error). Operations on one entity run one at a time, in order per caller.
    pub fn call_entity<I: Serialize, O: DeserializeOwned>(
        &self,
        name: &str,
        key: &str,
        operation: &str,
        input: I,
    ) -> DurableFuture<O> {
        let input = self.to_payload(&input);
        let request_id = self.new_guid();
        let entity_id = cairn_core::entity_instance_id(name, key);
        if let Some(failure) = self.outside_critical_section(&entity_id) {
            return self.failed_future(failure);
        }
        let id = self.schedule(|id| Action::CallEntity {
            id,
            entity_id,
            operation: operation.to_string(),
            input,
            request_id,
        });
        DurableFuture::new(self, Slot::Task(id))
    }

    /// Inside a critical section, only the locked entities may be called.
    fn outside_critical_section(&self, entity_id: &str) -> Option<FailureDetails> {
        let s = self.inner.lock();
        let (_, locked) = s.critical_section.as_ref()?;
        if locked.iter().any(|e| e == entity_id) {
            return None;
        }
        Some(
            FailureDetails::new(
                "EntityNotLocked",
                format!(
                    "cannot call {entity_id} inside a critical section that locked only {}; lock it too, or call it after the section",
                    locked.join(", ")
                ),
            )
            .non_retriable(),
        )
    }

    /// A future that is already failed (no work is scheduled; deterministic on replay).
    fn failed_future<T>(&self, failure: FailureDetails) -> DurableFuture<T> {
        let mut s = self.inner.lock();
        let slot = Slot::Event(s.next_event_slot);
        s.next_event_slot += 1;
        s.delivered += 1;
        let order = s.delivered;
        s.results.insert(slot, (order, Err(failure)));
        drop(s);
        DurableFuture::new(self, slot)
    }

    /// Locks the entities `(name, key)` for a critical section. Locks are acquired in one
    /// global order (sorted entity ids), so two orchestrations never deadlock. Inside the
    /// section only these entities may be called; the locks are released by
    /// [`CriticalSection::release`], when the guard is dropped, or when the orchestration ends.
    pub async fn lock_entities(
        &self,
        entities: &[(&str, &str)],
    ) -> Result<CriticalSection, TaskError> {
        if self.inner.lock().critical_section.is_some() {
            return Err(TaskError::non_retriable(
                "NestedCriticalSection",
                "a critical section is already held; release it before locking again",
            ));
        }
        let mut lock_set: Vec<String> = entities
            .iter()
            .map(|(n, k)| cairn_core::entity_instance_id(n, k))
            .collect();
        lock_set.sort();
        lock_set.dedup();
        if lock_set.is_empty() {
            return Err(TaskError::non_retriable(
                "EmptyLockSet",
                "lock_entities needs at least one entity",
            ));
        }
        let critical_section = self.new_guid();
        let (cs, set) = (critical_section.clone(), lock_set.clone());
        let id = self.schedule(|id| Action::LockEntities {
            id,
            critical_section: cs,
            lock_set: set,
        });
        let granted: DurableFuture<()> = DurableFuture::new(self, Slot::Task(id));
        granted.await?;
        self.inner.lock().critical_section = Some((critical_section.clone(), lock_set.clone()));
        Ok(CriticalSection {
            ctx: self.clone(),
            id: critical_section,
            lock_set,
            released: false,
        })
    }

    /// Sends a one-way operation to the entity `(name, key)`.
    pub fn signal_entity<I: Serialize>(&self, name: &str, key: &str, operation: &str, input: I) {
        let input = self.to_payload(&input);
        let request_id = self.new_guid();
        let entity_id = cairn_core::entity_instance_id(name, key);
        self.schedule(|id| Action::SignalEntity {
            id,
            entity_id,
            operation: operation.to_string(),
            input,
            scheduled_time: None,
            request_id,
        });
    }

    /// Ends this execution and starts a new one with `input` and a fresh history. With
    /// `keep_unprocessed_events`, events received but not yet awaited are handed to the new
    /// execution. Return from the orchestrator right after calling this.
    pub fn continue_as_new<I: Serialize>(&self, input: I, keep_unprocessed_events: bool) {
        let input = self.to_payload(&input);
        self.inner.lock().continue_as_new = Some((input, keep_unprocessed_events));
    }

    /// Resolves when all futures resolve, with their outputs in order.
    pub async fn when_all<F: Future>(&self, futures: Vec<F>) -> Vec<F::Output> {
        futures::future::join_all(futures).await
    }

    /// Resolves with the first of `futures` to complete *in history order* (deterministic on
    /// replay), returning its index and output. The others keep running.
    pub fn when_any<T>(&self, futures: Vec<DurableFuture<T>>) -> WhenAny<T> {
        WhenAny {
            futures: futures.into_iter().map(Some).collect(),
        }
    }

    /// Races two durable futures of different types (e.g. an event against a timeout timer);
    /// the one that completed first in history order wins.
    pub fn when_any2<A, B>(&self, a: DurableFuture<A>, b: DurableFuture<B>) -> WhenAny2<A, B> {
        WhenAny2 {
            a: Some(a),
            b: Some(b),
        }
    }
}

/// Locks held by an orchestration; released by [`CriticalSection::release`] or on drop.
pub struct CriticalSection {
    ctx: OrchestrationContext,
    id: String,
    lock_set: Vec<String>,
    released: bool,
}

impl CriticalSection {
    /// The locked entity ids.
    pub fn entities(&self) -> &[String] {
        &self.lock_set
    }

    /// Releases the locks now.
    pub fn release(mut self) {
        self.unlock();
    }

    fn unlock(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        let (cs, set) = (self.id.clone(), self.lock_set.clone());
        self.ctx.schedule(|id| Action::UnlockEntities {
            id,
            critical_section: cs,
            lock_set: set,
        });
        self.ctx.inner.lock().critical_section = None;
    }
}

impl Drop for CriticalSection {
    fn drop(&mut self) {
        self.unlock();
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A durable operation's result, resolved by the replay executor from history.
pub struct DurableFuture<T> {
    ctx: Arc<Mutex<CtxState>>,
    slot: Slot,
    _out: PhantomData<fn() -> T>,
}

impl<T> DurableFuture<T> {
    fn new(ctx: &OrchestrationContext, slot: Slot) -> Self {
        DurableFuture {
            ctx: ctx.inner.clone(),
            slot,
            _out: PhantomData,
        }
    }

    /// Position in history order at which this future completed (None while pending).
    pub fn completed_at(&self) -> Option<u64> {
        self.ctx.lock().results.get(&self.slot).map(|(o, _)| *o)
    }
}

impl<T> Unpin for DurableFuture<T> {}

impl<T: DeserializeOwned> Future for DurableFuture<T> {
    type Output = Result<T, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.ctx.lock();
        match s.results.get(&self.slot) {
            Some((_, Ok(payload))) => {
                let text = payload.as_deref().unwrap_or("null");
                let text = if text.is_empty() { "null" } else { text };
                Poll::Ready(serde_json::from_str::<T>(text).map_err(|e| {
                    TaskError::non_retriable(
                        "DeserializationError",
                        format!("result {text:.200} could not be deserialized into the expected type: {e}"),
                    )
                }))
            }
            Some((_, Err(f))) => Poll::Ready(Err(TaskError { failure: f.clone() })),
            None => {
                s.wakers.insert(self.slot, cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// See [`OrchestrationContext::when_any`].
pub struct WhenAny<T> {
    futures: Vec<Option<DurableFuture<T>>>,
}

impl<T: DeserializeOwned> Future for WhenAny<T> {
    type Output = (usize, Result<T, TaskError>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let winner = self
            .futures
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.as_ref().and_then(|f| f.completed_at()).map(|o| (o, i)))
            .min();
        match winner {
            Some((_, i)) => {
                let Some(mut f) = self.futures[i].take() else {
                    return Poll::Pending;
                };
                match Pin::new(&mut f).poll(cx) {
                    Poll::Ready(out) => Poll::Ready((i, out)),
                    Poll::Pending => Poll::Pending,
                }
            }
            None => {
                for f in self.futures.iter_mut().flatten() {
                    let _ = Pin::new(f).poll(cx);
                }
                Poll::Pending
            }
        }
    }
}

/// See [`OrchestrationContext::when_any2`].
pub struct WhenAny2<A, B> {
    a: Option<DurableFuture<A>>,
    b: Option<DurableFuture<B>>,
}

impl<A, B> Unpin for WhenAny2<A, B> {}

impl<A: DeserializeOwned, B: DeserializeOwned> Future for WhenAny2<A, B> {
    type Output = Either<Result<A, TaskError>, Result<B, TaskError>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let oa = self.a.as_ref().and_then(|f| f.completed_at());
        let ob = self.b.as_ref().and_then(|f| f.completed_at());
        let a_wins = match (oa, ob) {
            (Some(x), Some(y)) => x < y,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => {
                if let Some(a) = self.a.as_mut() {
                    let _ = Pin::new(a).poll(cx);
                }
                if let Some(b) = self.b.as_mut() {
                    let _ = Pin::new(b).poll(cx);
                }
                return Poll::Pending;
            }
        };
        if a_wins {
            match self.a.as_mut().map(|a| Pin::new(a).poll(cx)) {
                Some(Poll::Ready(v)) => Poll::Ready(Either::Left(v)),
                _ => Poll::Pending,
            }
        } else {
            match self.b.as_mut().map(|b| Pin::new(b).poll(cx)) {
                Some(Poll::Ready(v)) => Poll::Ready(Either::Right(v)),
                _ => Poll::Pending,
            }
        }
    }
}

/// How an activity call is retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts including the first (1 = no retry).
    pub max_attempts: u32,
    pub first_retry_interval: Duration,
    pub backoff_coefficient: f64,
    pub max_retry_interval: Duration,
    /// Give up retrying once this much (orchestration) time has passed since the first attempt.
    pub retry_timeout: Option<Duration>,
}

impl RetryPolicy {
    pub fn new(max_attempts: u32, first_retry_interval: Duration) -> Self {
        RetryPolicy {
            max_attempts,
            first_retry_interval,
            backoff_coefficient: 1.0,
            max_retry_interval: Duration::from_secs(3600),
            retry_timeout: None,
        }
    }

    pub fn with_backoff(mut self, coefficient: f64) -> Self {
        self.backoff_coefficient = coefficient;
        self
    }

    pub fn with_max_interval(mut self, max: Duration) -> Self {
        self.max_retry_interval = max;
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.retry_timeout = Some(timeout);
        self
    }

    /// The delay before attempt `attempt + 1`, or None to give up.
    pub fn next_delay(
        &self,
        attempt: u32,
        error: &TaskError,
        started: SystemTime,
        now: SystemTime,
    ) -> Option<Duration> {
        if attempt >= self.max_attempts || !error.failure.retriable {
            return None;
        }
        let factor = self.backoff_coefficient.max(1.0).powi(attempt as i32 - 1);
        let delay = self
            .first_retry_interval
            .mul_f64(factor)
            .min(self.max_retry_interval);
        if let Some(timeout) = self.retry_timeout {
            let elapsed = now.duration_since(started).unwrap_or_default();
            if elapsed + delay > timeout {
                return None;
            }
        }
        Some(delay)
    }
}

/// Boxed orchestrator future as stored in the registry and the cursor cache.
pub type OrchestratorFuture =
    Pin<Box<dyn Future<Output = Result<Option<String>, FailureDetails>> + Send>>;

/// Type-erased orchestrator function: context and input payload to a future of the output.
pub type OrchestratorFn =
    Arc<dyn Fn(OrchestrationContext, Option<String>) -> OrchestratorFuture + Send + Sync>;

/// Wraps a typed orchestrator function into an [`OrchestratorFn`].
#[doc(hidden)] // for the engine that runs it, not for users
pub fn erase_orchestrator<F, Fut, I, O>(f: F) -> OrchestratorFn
where
    F: Fn(OrchestrationContext, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, TaskError>> + Send + 'static,
    I: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
{
    let f = Arc::new(f);
    Arc::new(move |ctx: OrchestrationContext, input: Option<String>| {
        let f = f.clone();
        Box::pin(async move {
            let input: I = crate::error::decode_input(
                input.as_deref(),
                &format!("orchestration '{}'", ctx.name()),
            )?;
            let output = f(ctx, input).await.map_err(|e| e.failure)?;
            crate::error::encode_output(&output)
        }) as OrchestratorFuture
    })
}

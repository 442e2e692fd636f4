//! What the simulated users do, and what must hold when they are done.
//!
//! A seed draws a plan: instances of eight kinds (activity chains, fan-outs, sub-orchestrations,
//! timers, external events, continue-as-new, an entity critical section, and an orchestration
//! that fails until it is rewound) and signals to an entity. Clients drive the plan in every
//! life of the process, idempotently, and record what they saw acknowledged; the checks compare
//! that record with the engine after every recovery and at the end.

use super::world::{StepKind, Verdict, World};
use crate::checks::Tally;
use cairn_runtime::*;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// One planned instance.
#[derive(Debug, Clone)]
pub struct Planned {
    pub id: String,
    pub kind: Kind,
    /// When (simulated, from the start of a life) its client begins.
    pub start_delay_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chain(u64),
    Fan(u64),
    Parent(u64),
    Timer(u64),
    Events(u64),
    ContinueAsNew(u64),
    Locker,
    Flaky,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Chain(_) => "chain",
            Kind::Fan(_) => "fan",
            Kind::Parent(_) => "parent",
            Kind::Timer(_) => "timer",
            Kind::Events(_) => "events",
            Kind::ContinueAsNew(_) => "can",
            Kind::Locker => "locker",
            Kind::Flaky => "flaky",
        }
    }

    /// The orchestration's input.
    fn input(self) -> serde_json::Value {
        match self {
            Kind::Chain(n) | Kind::Fan(n) | Kind::Parent(n) | Kind::Timer(n) | Kind::Events(n) => {
                serde_json::json!(n)
            }
            Kind::ContinueAsNew(n) => serde_json::json!([0, n]),
            Kind::Locker | Kind::Flaky => serde_json::Value::Null,
        }
    }

    /// The output a correct engine produces (as JSON).
    pub fn expected_output(self) -> String {
        match self {
            Kind::Chain(n) | Kind::Fan(n) | Kind::Timer(n) | Kind::ContinueAsNew(n) => {
                n.to_string()
            }
            Kind::Parent(n) => (n + 2).to_string(),
            Kind::Events(k) => (k * (k + 1) / 2).to_string(),
            Kind::Locker => "2".into(),
            Kind::Flaky => "\"healed\"".into(),
        }
    }
}

/// Engine settings and workload of one seed.
#[derive(Debug, Clone)]
pub struct Plan {
    pub partitions: u32,
    pub checkpoint_every_records: u64,
    pub checkpoint_interval_ms: u64,
    pub checkpoints_in_place: bool,
    pub instance_cache_mb: usize,
    pub cache_orchestrators: bool,
    pub max_queued_requests: usize,
    pub max_concurrent: usize,
    pub max_entity_batch: usize,
    pub dispatch_window: usize,
    pub instances: Vec<Planned>,
    /// Client signals to the tally entity: (operation id, when).
    pub signals: Vec<(String, u64)>,
}

fn pick<T: Copy>(rng: &mut StdRng, options: &[T]) -> T {
    options[rng.random_range(0..options.len())]
}

impl Plan {
    pub fn draw(seed: u64) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed);
        let count = rng.random_range(4..10);
        let instances = (0..count)
            .map(|i| {
                let kind = match rng.random_range(0..8) {
                    0 => Kind::Chain(rng.random_range(1..6)),
                    1 => Kind::Fan(rng.random_range(1..6)),
                    2 => Kind::Parent(rng.random_range(1..4)),
                    3 => Kind::Timer(rng.random_range(1..3000)),
                    4 => Kind::Events(rng.random_range(1..4)),
                    5 => Kind::ContinueAsNew(rng.random_range(1..5)),
                    6 => Kind::Locker,
                    _ => Kind::Flaky,
                };
                Planned {
                    id: format!("{}-{i}", kind.name()),
                    kind,
                    start_delay_ms: rng.random_range(0..200),
                }
            })
            .collect();
        let signals = (0..rng.random_range(0..5))
            .map(|j| (format!("sig-{j}"), rng.random_range(0..300)))
            .collect();
        Plan {
            partitions: rng.random_range(1..5),
            checkpoint_every_records: pick(&mut rng, &[3, 10, 40, 100_000]),
            checkpoint_interval_ms: rng.random_range(100..3000),
            checkpoints_in_place: rng.random_bool(0.3),
            instance_cache_mb: pick(&mut rng, &[0, 256]),
            cache_orchestrators: rng.random_bool(0.5),
            max_queued_requests: pick(&mut rng, &[2, 8, 10_000]),
            max_concurrent: pick(&mut rng, &[1, 3, 1000]),
            max_entity_batch: pick(&mut rng, &[1, 5000]),
            dispatch_window: pick(&mut rng, &[1, 2, 512]),
            instances,
            signals,
        }
    }
}

/// What clients saw acknowledged, across every life of the process.
#[derive(Default)]
pub struct Seen {
    pub acked_starts: BTreeSet<String>,
    /// Completed instances and the output seen.
    pub outputs: BTreeMap<String, String>,
    /// Signals whose sending was attempted, and those acknowledged.
    pub signals_sent: BTreeSet<String>,
    pub signals_acked: BTreeSet<String>,
    /// Flaky instances whose activity now succeeds (the "outside world" was fixed).
    pub healed: BTreeSet<String>,
    pub problems: Vec<String>,
}

/// The orchestrations, activities and entity of the workload.
pub fn registry(world: Arc<World>, seen: Arc<Mutex<Seen>>) -> Registry {
    let w = world.clone();
    Registry::new()
        .entity::<Tally>("tally")
        .activity("add", move |_c, x: u64| {
            let pause = w.draw(0..3000);
            async move {
                tokio::time::sleep(Duration::from_micros(pause)).await;
                Ok::<_, TaskError>(x + 1)
            }
        })
        .activity("one", |_c, _: ()| async move { Ok::<_, TaskError>(1u64) })
        .activity("flaky", move |_c, id: String| {
            let healed = seen.lock().healed.contains(&id);
            async move {
                if healed {
                    Ok("healed".to_string())
                } else {
                    Err(TaskError::non_retriable(
                        "Flaky",
                        "the outside world is broken",
                    ))
                }
            }
        })
        .orchestration("chain", |ctx: OrchestrationContext, n: u64| async move {
            let mut x = 0u64;
            for _ in 0..n {
                x = ctx.call_activity("add", x).await?;
            }
            Ok(x)
        })
        .orchestration("fan", |ctx: OrchestrationContext, n: u64| async move {
            let tasks = (0..n)
                .map(|_| ctx.call_activity::<_, u64>("one", ()))
                .collect();
            let mut sum = 0;
            for r in ctx.when_all(tasks).await {
                sum += r?;
            }
            Ok(sum)
        })
        .orchestration("parent", |ctx: OrchestrationContext, n: u64| async move {
            let a: u64 = ctx.call_sub_orchestration("chain", None, n).await?;
            let b: u64 = ctx.call_sub_orchestration("fan", None, 2u64).await?;
            Ok(a + b)
        })
        .orchestration("timer", |ctx: OrchestrationContext, ms: u64| async move {
            ctx.sleep(Duration::from_millis(ms)).await?;
            ctx.call_activity::<_, u64>("one", ()).await?;
            Ok(ms)
        })
        .orchestration("events", |ctx: OrchestrationContext, k: u64| async move {
            // Events are at-least-once from a client that retries: count each index once.
            let mut got = BTreeSet::new();
            while (got.len() as u64) < k {
                got.insert(ctx.wait_for_event::<u64>("go").await?);
            }
            Ok(got.iter().sum::<u64>())
        })
        .orchestration(
            "can",
            |ctx: OrchestrationContext, (i, n): (u64, u64)| async move {
                if i >= n {
                    return Ok(i);
                }
                let next: u64 = ctx.call_activity("add", i).await?;
                ctx.continue_as_new((next, n), false);
                Ok(i)
            },
        )
        .orchestration("locker", |ctx: OrchestrationContext, _: ()| async move {
            let id = ctx.instance_id();
            let section = ctx.lock_entities(&[("tally", "t")]).await?;
            for step in 1..=2 {
                ctx.call_entity::<_, serde_json::Value>(
                    "tally",
                    "t",
                    "record",
                    format!("{id}/{step}"),
                )
                .await?;
            }
            section.release();
            ctx.signal_entity("tally", "t", "record", format!("{id}/s"));
            Ok(2u64)
        })
        .orchestration("flaky", |ctx: OrchestrationContext, _: ()| async move {
            let r: String = ctx.call_activity("flaky", ctx.instance_id()).await?;
            Ok(r)
        })
}

/// A client's view of one life of the process.
pub struct Life {
    pub world: Arc<World>,
    pub seen: Arc<Mutex<Seen>>,
    pub client: Client,
}

/// Retries while the engine is busy (backpressure is not a failure).
macro_rules! until_not_busy {
    ($e:expr) => {
        loop {
            match $e {
                Err(EngineError::Busy { .. }) => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                other => break other,
            }
        }
    };
}

impl Life {
    /// An answer reached the client: it counts unless the process was already dead.
    fn saw(&self, what: &str) -> bool {
        self.world.step(StepKind::Answer, what) != Verdict::Dead
    }

    /// Drives one instance as far as this life allows.
    pub async fn drive(&self, planned: &Planned) {
        tokio::time::sleep(Duration::from_millis(planned.start_delay_ms)).await;
        let id = planned.id.as_str();
        if self.seen.lock().outputs.contains_key(id) {
            return; // done in an earlier life
        }
        // Never replace: a retried start of an instance that exists (perhaps ended) is a no-op.
        let options = StartOptions {
            instance_id: Some(id.to_string()),
            if_exists: ExistingPolicy::ReplaceIf(Vec::new()),
            ..StartOptions::default()
        };
        let started = until_not_busy!(
            self.client
                .start_with(planned.kind.name(), &planned.kind.input(), options.clone())
                .await
        );
        match started {
            Ok(_) | Err(EngineError::AlreadyExists { .. }) => {}
            Err(_) => return, // the process is failing: the next life retries
        }
        if self.saw(&format!("started {id}")) {
            self.seen.lock().acked_starts.insert(id.to_string());
        }
        if let Kind::Events(k) = planned.kind {
            for i in 1..=k {
                let pause = self.world.draw(0..300);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                let _ = until_not_busy!(self.client.raise_event(id, "go", &i).await);
            }
        }
        loop {
            let status = match until_not_busy!(
                self.client
                    .wait_for_completion(id, Duration::from_secs(120))
                    .await
            ) {
                Ok(s) => s,
                Err(_) => return,
            };
            match status.status {
                RuntimeStatus::Failed if planned.kind == Kind::Flaky => {
                    self.seen.lock().healed.insert(id.to_string());
                    let _ = until_not_busy!(self.client.rewind(id, Some("healed")).await);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                RuntimeStatus::Completed => {
                    let output = status.output.unwrap_or_default();
                    if self.saw(&format!("completed {id} {output}")) {
                        self.seen.lock().outputs.insert(id.to_string(), output);
                    }
                    return;
                }
                other => {
                    if self.saw(&format!("ended {id} {other}")) {
                        self.seen.lock().problems.push(format!(
                            "{id} ({:?}) ended {other}: {:?}",
                            planned.kind, status.failure
                        ));
                    }
                    return;
                }
            }
        }
    }

    /// Sends one client signal (not retried once attempted: signals carry no idempotency key,
    /// so an unanswered one may or may not have been applied).
    pub async fn signal(&self, op: &str, delay_ms: u64) {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        if !self.seen.lock().signals_sent.insert(op.to_string()) {
            return;
        }
        let r = until_not_busy!(
            self.client
                .signal_entity("tally", "t", "record", &op, None)
                .await
        );
        if r.is_ok() && self.saw(&format!("signaled {op}")) {
            self.seen.lock().signals_acked.insert(op.to_string());
        }
    }

    /// After a recovery: everything a client saw acknowledged is still there.
    pub async fn check_nothing_lost(&self) {
        let (starts, outputs) = {
            let s = self.seen.lock();
            (s.acked_starts.clone(), s.outputs.clone())
        };
        for id in starts {
            match until_not_busy!(self.client.get_status(&id, false).await) {
                Ok(Some(status)) => {
                    if let Some(output) = outputs.get(&id) {
                        if status.status != RuntimeStatus::Completed
                            || status.output.as_deref() != Some(output.as_str())
                        {
                            self.problem(format!(
                                "{id}: a client saw it completed with {output}; after recovery it is {} with {:?}",
                                status.status, status.output
                            ));
                        }
                    }
                }
                Ok(None) => self.problem(format!(
                    "{id}: a client saw its start acknowledged; after recovery it does not exist"
                )),
                // The partition failed again in this life (an injected fsync failure): reads
                // of state that is not durable say so, and the next life checks again.
                Err(EngineError::Storage { .. }) => return,
                Err(e) => self.problem(format!("{id}: status read failed after recovery: {e}")),
            }
        }
    }

    /// Records a problem, unless the process is already dead (then nothing it says counts).
    fn problem(&self, p: String) {
        if self.world.crashed().is_none() {
            self.world.note(&format!("PROBLEM {p}"));
            self.seen.lock().problems.push(p);
        }
    }

    /// The final checks, once every instance has been driven to its end.
    pub async fn check_final(&self, plan: &Plan, engine: &Engine) {
        let outputs = self.seen.lock().outputs.clone();
        for p in &plan.instances {
            match outputs.get(&p.id) {
                Some(o) if *o == p.kind.expected_output() => {}
                Some(o) => self.problem(format!(
                    "{} ({:?}): output {o}, expected {}",
                    p.id,
                    p.kind,
                    p.kind.expected_output()
                )),
                None => {
                    if let Ok(Some(full)) = self.client.get_status(&p.id, true).await {
                        for e in full.history.unwrap_or_default() {
                            self.world.detail(|| format!("{} history: {e:?}", p.id));
                        }
                    }
                    let now = self.client.get_status(&p.id, false).await;
                    self.problem(format!(
                        "{} ({:?}) never completed: {:?}",
                        p.id,
                        p.kind,
                        now.map(|s| s.map(|s| (s.status, s.failure)))
                    ))
                }
            }
        }
        // Every instance (children too): exactly one result per step, and status counts that
        // equal the instances.
        let Some(all) = self.query_all(&QueryFilter::default(), 100).await else {
            return;
        };
        let mut by_status: BTreeMap<RuntimeStatus, u64> = BTreeMap::new();
        for s in &all {
            *by_status.entry(s.status).or_default() += 1;
            if let Ok(Some(full)) = self.client.get_status(&s.instance_id, true).await {
                let history = full.history.unwrap_or_default();
                let (_, found) = crate::checks::history_problems(&s.instance_id, &history);
                for f in found {
                    self.problem(f);
                }
            }
        }
        let mut counted: BTreeMap<RuntimeStatus, u64> = BTreeMap::new();
        for stats in engine.stats() {
            for (slot, status) in stats.status_counts.iter().zip(RuntimeStatus::ALL) {
                let n = slot.load(std::sync::atomic::Ordering::Relaxed);
                if n > 0 {
                    *counted.entry(status).or_default() += n;
                }
            }
        }
        if counted != by_status {
            self.problem(format!(
                "status counts {counted:?} differ from the instances {by_status:?}"
            ));
        }
        self.check_indexes().await;
        self.check_entity(plan).await;
    }

    /// Every query served from the indexes (newest first, by status, name and creation time)
    /// returns exactly what a scan of the instance table finds, in order, paged two at a time.
    async fn check_indexes(&self) {
        let scan = QueryFilter {
            instance_id_prefix: Some(String::new()),
            ..QueryFilter::default()
        };
        let Some(all) = self.query_all(&scan, 1000).await else {
            return;
        };
        let mut times: Vec<u64> = all.iter().map(|s| s.created_at).collect();
        times.sort();
        let middle = times.get(times.len() / 2).copied().unwrap_or(0);
        let names: BTreeSet<String> = all.iter().map(|s| s.name.clone()).collect();
        let mut filters = vec![
            QueryFilter::default(),
            QueryFilter {
                statuses: vec![RuntimeStatus::Completed, RuntimeStatus::Failed],
                ..QueryFilter::default()
            },
            QueryFilter {
                created_from: Some(middle),
                ..QueryFilter::default()
            },
            QueryFilter {
                created_to: Some(middle),
                statuses: vec![RuntimeStatus::Completed],
                ..QueryFilter::default()
            },
        ];
        for status in RuntimeStatus::ALL {
            filters.push(QueryFilter {
                statuses: vec![status],
                ..QueryFilter::default()
            });
        }
        for name in names {
            filters.push(QueryFilter {
                name: Some(name.clone()),
                ..QueryFilter::default()
            });
            filters.push(QueryFilter {
                name: Some(name),
                statuses: vec![RuntimeStatus::Completed],
                ..QueryFilter::default()
            });
        }
        for filter in filters {
            let mut want: Vec<&InstanceStatus> = all
                .iter()
                .filter(|s| {
                    (filter.statuses.is_empty() || filter.statuses.contains(&s.status))
                        && filter.name.as_ref().is_none_or(|n| &s.name == n)
                        && filter.created_from.is_none_or(|f| s.created_at >= f)
                        && filter.created_to.is_none_or(|t| s.created_at <= t)
                })
                .collect();
            want.sort_by(|a, b| {
                (b.created_at, &b.instance_id).cmp(&(a.created_at, &a.instance_id))
            });
            let want: Vec<&str> = want.iter().map(|s| s.instance_id.as_str()).collect();
            let Some(got) = self.query_all(&filter, 2).await else {
                return;
            };
            let got: Vec<&str> = got.iter().map(|s| s.instance_id.as_str()).collect();
            if got != want {
                self.problem(format!(
                    "the query {filter:?} returned {got:?}; a scan of the instances finds {want:?}"
                ));
            }
        }
    }

    /// Every page of a query.
    async fn query_all(
        &self,
        filter: &QueryFilter,
        page_size: usize,
    ) -> Option<Vec<InstanceStatus>> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = match until_not_busy!(
                self.client
                    .query(&InstanceQuery {
                        filter: filter.clone(),
                        page_size,
                        continuation_token: token.clone(),
                        fetch_inputs_and_outputs: false,
                    })
                    .await
            ) {
                Ok(p) => p,
                Err(e) => {
                    self.problem(format!("the query {filter:?} failed: {e}"));
                    return None;
                }
            };
            out.extend(page.instances);
            token = page.continuation_token;
            if token.is_none() {
                return Some(out);
            }
        }
    }

    /// Every acknowledged entity operation applied exactly once, unacknowledged ones at most
    /// once, nothing else.
    async fn check_entity(&self, plan: &Plan) {
        let mut expected: BTreeSet<String> = BTreeSet::new();
        for p in plan.instances.iter().filter(|p| p.kind == Kind::Locker) {
            for suffix in ["1", "2", "s"] {
                expected.insert(format!("{}/{suffix}", p.id));
            }
        }
        let (acked, sent) = {
            let s = self.seen.lock();
            (s.signals_acked.clone(), s.signals_sent.clone())
        };
        expected.extend(acked.iter().cloned());
        if expected.is_empty() && sent.is_empty() {
            return;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let tally = loop {
            match until_not_busy!(self.client.get_entity("tally", "t").await) {
                Ok(Some(e)) if e.queued == 0 && e.locked_by.is_none() => match e.state::<Tally>() {
                    Ok(t) => break t,
                    Err(err) => return self.problem(format!("tally state unreadable: {err}")),
                },
                // Only unacknowledged signals were sent, and all were lost with a crash.
                Ok(None) if expected.is_empty() => break Tally::default(),
                Ok(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return self.problem(format!("the tally entity never settled: {other:?}")),
            }
        };
        for op in &expected {
            match tally.seen.get(op) {
                Some(1) => {}
                Some(n) => self.problem(format!("entity operation {op} applied {n} times")),
                None => self.problem(format!("entity operation {op} was lost")),
            }
        }
        for (op, n) in &tally.seen {
            if expected.contains(op) {
                continue;
            }
            if !sent.contains(op) {
                self.problem(format!("entity operation {op} was never sent"));
            } else if *n > 1 {
                self.problem(format!("entity operation {op} applied {n} times"));
            }
        }
    }
}

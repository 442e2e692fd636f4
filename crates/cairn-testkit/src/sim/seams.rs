//! The engine's seams as the simulator implements them: in-memory logs synced when the
//! simulated disk gets to it, checkpoint stores, and a router that delays and duplicates, each
//! asking the [`World`] before every step whether the process is still alive.

use super::world::{StepKind, Verdict, World};
use cairn_runtime::router::{Envelope, LocalPartitions, Router, Routers};
use cairn_storage::log::LogError;
use cairn_storage::seam::{
    CheckpointStore, CheckpointStores, MemoryCheckpointStore, MemoryPartitionLog, OnDurable,
    OpenedLog, PartitionLog, PartitionLogs, StoreReads,
};
use cairn_storage::store::{CheckpointBatch, StoreError};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

const CRASHED: &str = "the process crashed";

// ------------------------------------------------------------------ logs

/// Opens each partition's log on its simulated disk.
#[derive(Clone)]
pub struct SimLogs(pub Arc<World>);

impl std::fmt::Debug for SimLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimLogs")
    }
}

impl PartitionLogs for SimLogs {
    fn open(
        &self,
        partition: u32,
        min_next: u64,
        on_durable: OnDurable,
    ) -> Result<OpenedLog, LogError> {
        let disk = self.0.disk(partition);
        let log = Arc::new(MemoryPartitionLog::open(&disk, min_next, on_durable, false));
        Ok(OpenedLog {
            log: Box::new(SimLog {
                partition,
                world: self.0.clone(),
                log,
                sync_pending: Arc::new(AtomicBool::new(false)),
            }),
            torn_tail_bytes: 0,
        })
    }
}

/// A partition's log: appends are volatile until a sync, which happens a random (simulated)
/// while later, batching everything appended meanwhile, as group commit does.
struct SimLog {
    partition: u32,
    world: Arc<World>,
    log: Arc<MemoryPartitionLog>,
    sync_pending: Arc<AtomicBool>,
}

/// One sync of `log`, as a step: it may be where the process dies (with a torn batch: a prefix
/// of what was appended reaches the disk) or the sync the injector fails.
fn sync_step(world: &World, log: &MemoryPartitionLog, partition: u32) -> Result<u64, LogError> {
    let pending = log.volatile_len();
    match world.step(StepKind::Sync, &format!("p{partition} {pending} records")) {
        Verdict::Dead => Err(LogError::Failed(CRASHED.into())),
        Verdict::Crash => {
            let keep = world.draw(0..pending as u64 + 1) as usize;
            world.note(&format!("p{partition}: torn sync kept {keep} of {pending}"));
            log.crash_partway(keep);
            Err(LogError::Failed(CRASHED.into()))
        }
        Verdict::Go => {
            if world.sync_fails() {
                world.note(&format!("p{partition}: injected fsync failure"));
                let disk = world.disk(partition);
                disk.fail_sync_after(1);
            }
            log.sync()
        }
    }
}

impl SimLog {
    fn schedule_sync(&self) {
        if self.sync_pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let delay = self.world.draw(0..self.world.faults.max_sync_delay_us + 1);
        let (world, log, pending, partition) = (
            self.world.clone(),
            self.log.clone(),
            self.sync_pending.clone(),
            self.partition,
        );
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_micros(delay)).await;
            pending.store(false, Ordering::SeqCst);
            if sync_step(&world, &log, partition).is_err() && world.crashed().is_none() {
                // An fsync failed: the partition has stopped taking writes. An operator
                // restarts the process a little later.
                tokio::time::sleep(Duration::from_millis(20)).await;
                world.kill(format!("restart after the fsync failure of p{partition}"));
            }
        });
    }
}

impl PartitionLog for SimLog {
    fn next_position(&self) -> u64 {
        self.log.next_position()
    }
    fn durable_position(&self) -> u64 {
        self.log.durable_position()
    }
    fn append(&self, expected: u64, records: Vec<Vec<u8>>) -> Result<u64, LogError> {
        let detail = format!("p{} @{expected} x{}", self.partition, records.len());
        match self.world.step(StepKind::Append, &detail) {
            Verdict::Go => {}
            _ => return Err(LogError::Failed(CRASHED.into())),
        }
        for (i, r) in records.iter().enumerate() {
            self.world.trace_bytes(r);
            self.world
                .detail(|| match cairn_core::LogRecord::decode(r) {
                    Ok(rec) => format!(
                        "p{} @{}: {:?}",
                        self.partition,
                        expected + i as u64,
                        rec.event
                    ),
                    Err(e) => format!("undecodable record: {e}"),
                });
        }
        let last = self.log.append(expected, records)?;
        self.schedule_sync();
        Ok(last)
    }
    fn flush(&self) -> Result<u64, LogError> {
        sync_step(&self.world, &self.log, self.partition)
    }
    fn read_from(&self, position: u64) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        self.log.read_from(position)
    }
    fn truncate_below(&self, position: u64) -> Result<(), LogError> {
        let detail = format!("p{} below {position}", self.partition);
        match self.world.step(StepKind::Trim, &detail) {
            Verdict::Go => self.log.truncate_below(position),
            // Dying at a trim: it got done or it did not.
            Verdict::Crash if self.world.chance(500) => self.log.truncate_below(position),
            _ => Ok(()),
        }
    }
    fn failure(&self) -> Option<String> {
        self.log.failure()
    }
    fn close(self: Box<Self>) -> Result<(), LogError> {
        sync_step(&self.world, &self.log, self.partition).map(drop)
    }
}

// ------------------------------------------------------------------ checkpoint stores

/// Opens each partition's checkpoint store (in memory, surviving crashes).
#[derive(Clone)]
pub struct SimStores(pub Arc<World>);

impl std::fmt::Debug for SimStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimStores")
    }
}

impl CheckpointStores for SimStores {
    fn open(&self, partition: u32) -> Result<Arc<dyn CheckpointStore>, StoreError> {
        Ok(Arc::new(SimStore {
            partition,
            world: self.0.clone(),
            inner: self.0.store(partition),
        }))
    }
}

/// A checkpoint store whose writes are steps: a crash during one leaves all of it or none.
struct SimStore {
    partition: u32,
    world: Arc<World>,
    inner: MemoryCheckpointStore,
}

cairn_storage::forward_store_reads!(SimStore, |s| &s.inner);

impl CheckpointStore for SimStore {
    fn snapshot(&self) -> Result<Box<dyn StoreReads>, StoreError> {
        self.inner.snapshot()
    }
    fn write_checkpoint(&self, batch: &CheckpointBatch) -> Result<(), StoreError> {
        let detail = format!(
            "p{} @{} puts {} deletes {} rows {}",
            self.partition,
            batch.position,
            batch.instance_puts.len(),
            batch.instance_deletes.len(),
            batch.history_appends.len()
        );
        match self.world.step(StepKind::CheckpointWrite, &detail) {
            Verdict::Go => self.inner.write_checkpoint(batch),
            Verdict::Crash => {
                if self.world.chance(500) {
                    self.inner.write_checkpoint(batch)?;
                }
                Err(StoreError::Io(CRASHED.into()))
            }
            Verdict::Dead => Err(StoreError::Io(CRASHED.into())),
        }
    }
}

// ------------------------------------------------------------------ router

/// Delivers between partitions after a random delay, keeping each sender→receiver lane in
/// order, and sometimes delivers a copy again later.
#[derive(Clone)]
pub struct SimRouters(pub Arc<World>);

impl std::fmt::Debug for SimRouters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimRouters")
    }
}

impl Routers for SimRouters {
    fn open(&self, local: LocalPartitions) -> Arc<dyn Router> {
        Arc::new(SimRouter {
            world: self.0.clone(),
            local,
            lanes: Mutex::new(BTreeMap::new()),
        })
    }
}

/// One sender→receiver lane: deliveries in send order, each after its delay.
struct Lane {
    tx: mpsc::UnboundedSender<(Instant, Envelope)>,
    /// When the last delivery queued on the lane is due (later ones are not due before).
    last_due: Instant,
    /// Copies held back to be delivered again after a later envelope (stale duplicates).
    stale: Vec<Envelope>,
}

struct SimRouter {
    world: Arc<World>,
    local: LocalPartitions,
    lanes: Mutex<BTreeMap<(u32, u32), Lane>>,
}

impl SimRouter {
    fn new_lane(&self, to: u32) -> Lane {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Envelope)>();
        let local = self.local.clone();
        tokio::spawn(async move {
            while let Some((at, envelope)) = rx.recv().await {
                tokio::time::sleep_until(at).await;
                local.deliver(to, envelope);
            }
        });
        Lane {
            tx,
            last_due: Instant::now(),
            stale: Vec::new(),
        }
    }
}

fn describe(to: u32, envelope: &Envelope) -> (u32, String) {
    match envelope {
        Envelope::Messages { from, batch } => (
            *from,
            format!(
                "p{from}->p{to} {} messages {:?}..{:?}",
                batch.len(),
                batch.first().map(|(id, _)| id),
                batch.last().map(|(id, _)| id)
            ),
        ),
        Envelope::Ack { from, up_to } => (*from, format!("p{from}->p{to} ack {up_to:?}")),
    }
}

impl Router for SimRouter {
    /// Keeps the router's promise and no more: each lane delivers first copies in order, after
    /// random delays; a copy may come again right after its original or, held back, after a
    /// later envelope (a stale duplicate the receiver must drop).
    fn send(&self, to: u32, envelope: Envelope) {
        let (from, detail) = describe(to, &envelope);
        if self.world.step(StepKind::Deliver, &detail) != Verdict::Go {
            return; // lost with the process
        }
        if let Envelope::Messages { batch, .. } = &envelope {
            for (id, m) in batch {
                self.world.detail(|| format!("{id:?}: {m:?}"));
            }
        }
        let max = self.world.faults.max_delivery_delay_us;
        let mut lanes = self.lanes.lock();
        let lane = lanes.entry((from, to)).or_insert_with(|| self.new_lane(to));
        let queue = |lane: &mut Lane, envelope: Envelope| {
            let delay = Duration::from_micros(self.world.draw(0..max + 1));
            lane.last_due = lane.last_due.max(Instant::now() + delay);
            let _ = lane.tx.send((lane.last_due, envelope));
        };
        let copy = self
            .world
            .chance(self.world.faults.duplicate_per_mille)
            .then(|| envelope.clone());
        queue(lane, envelope);
        for stale in std::mem::take(&mut lane.stale) {
            self.world
                .note(&format!("stale duplicate on p{from}->p{to}"));
            queue(lane, stale);
        }
        if let Some(copy) = copy {
            if self.world.chance(500) {
                self.world.note(&format!("duplicate of {detail}"));
                queue(lane, copy);
            } else {
                self.world.note(&format!("held back a copy of {detail}"));
                lane.stale.push(copy);
            }
        }
    }
}

//! [`GroupCommitLog`]: a writer thread that makes many appends durable with one sync.
//!
//! This module owns the hand-off between callers and the one thread that writes the log: LSN
//! assignment (at enqueue time, under the queue lock, so LSNs are contiguous in call order),
//! batching, the durable-LSN publication, and the sticky failure state. It must never publish an
//! LSN as durable before the sync covering it returned, never call the notify closure for
//! records lost to a failure, and never block an appender on disk I/O.
//!
//! Why a dedicated OS thread rather than an async task: `fdatasync` blocks for milliseconds, and
//! everything queued while one sync runs is written and synced together by the next one. That
//! is what lets thousands of appends share one sync, and it needs no async runtime.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::{LogError, LogStats, SegmentedLog, MAX_RECORD_BYTES};

/// Callback run on the writer thread after each durable batch, with the new durable LSN.
type Notify = Box<dyn Fn(u64) + Send + 'static>;

/// Records with their positions, as a read returns them.
type Records = Vec<(u64, Vec<u8>)>;

/// Work the writer thread does between batches, on the log it owns.
enum Request {
    Truncate {
        lsn: u64,
        reply: mpsc::SyncSender<Result<usize, LogError>>,
    },
    /// Everything written from `from` on (the writer flushes its batch first).
    Read {
        from: u64,
        reply: mpsc::SyncSender<Result<Records, LogError>>,
    },
}

impl Request {
    fn fail(self, e: LogError) {
        match self {
            Request::Truncate { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Request::Read { reply, .. } => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn run(self, log: &mut SegmentedLog) {
        // The caller may have given up waiting; nothing to do then.
        match self {
            Request::Truncate { lsn, reply } => {
                let _ = reply.send(log.truncate_before(lsn));
            }
            Request::Read { from, reply } => {
                let read = log
                    .read_from(from)
                    .and_then(|reader| reader.collect::<Result<Vec<_>, LogError>>());
                let _ = reply.send(read);
            }
        }
    }
}

/// What appenders hand to the writer. Guarded by `Shared::queue`.
struct Queue {
    pending: Vec<Vec<u8>>,
    /// LSN the next append gets; assigned here, not by the writer, so `append` can return it.
    next_lsn: u64,
    requests: Vec<Request>,
    shutdown: bool,
    /// The writer is waiting on `Shared::wake`; appenders only signal then, to save syscalls.
    writer_sleeping: bool,
    failed: Option<String>,
    /// The writer thread has exited.
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    watch: Arc<WatchShared>,
    batches: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
}

struct WatchState {
    durable: u64,
    failed: Option<String>,
    closed: bool,
}

struct WatchShared {
    state: Mutex<WatchState>,
    changed: Condvar,
    /// Copy of `state.durable` for lock-free reads.
    durable: AtomicU64,
}

/// Group commit: a dedicated OS thread owns a [`SegmentedLog`]. Appends are queued and numbered
/// at once; the thread writes everything queued in one go and makes it durable with ONE sync per
/// batch, then publishes the durable LSN. This is what lets thousands of appends share one fsync.
///
/// After an I/O error the writer becomes *failed*: the error is sticky, appends return
/// [`LogError::Failed`], waiters are woken with the error, and the notify closure is not called
/// for the lost records. Reopening the log (restarting the partition) is the way back.
///
/// The queue is unbounded: callers apply back-pressure by watching
/// `next_lsn() - durable_lsn()`.
pub struct GroupCommitLog {
    shared: Arc<Shared>,
    handle: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GroupCommitLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommitLog")
            .field("next_lsn", &self.next_lsn())
            .field("durable_lsn", &self.durable_lsn())
            .field("failure", &self.failure())
            .finish()
    }
}

impl GroupCommitLog {
    /// Starts the writer thread over `log`.
    pub fn start(log: SegmentedLog) -> GroupCommitLog {
        Self::spawn(log, None)
    }

    /// Like [`GroupCommitLog::start`], and calls `notify` on the writer thread after every
    /// durable batch with the new durable LSN (for example to send into an async channel). It
    /// must be quick and must not call back into this log's blocking methods (`flush_blocking`,
    /// `truncate_before`, `shutdown`): the writer would wait for itself.
    pub fn start_with_notify(log: SegmentedLog, notify: Box<dyn Fn(u64) + Send>) -> GroupCommitLog {
        Self::spawn(log, Some(notify))
    }

    fn spawn(mut log: SegmentedLog, notify: Option<Notify>) -> GroupCommitLog {
        // Everything already in the log is reported durable from the start, so records the
        // caller appended without syncing must be synced first.
        let failed = log.sync().err().map(|e| match e {
            LogError::Failed(msg) => msg,
            other => other.to_string(),
        });
        let next_lsn = log.next_lsn();
        let durable = next_lsn - 1;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                next_lsn,
                requests: Vec::new(),
                shutdown: false,
                writer_sleeping: false,
                failed: None,
                closed: false,
            }),
            wake: Condvar::new(),
            watch: Arc::new(WatchShared {
                state: Mutex::new(WatchState {
                    durable,
                    failed: None,
                    closed: false,
                }),
                changed: Condvar::new(),
                durable: AtomicU64::new(durable),
            }),
            batches: AtomicU64::new(0),
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        });
        if let Some(msg) = failed {
            shared.fail(msg);
        }
        let thread_shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("cairn-log-writer".into())
            .spawn(move || writer_main(log, thread_shared, notify));
        let handle = match spawned {
            Ok(h) => Some(h),
            Err(e) => {
                // No writer, no durability: fail every call rather than panic in a constructor.
                shared.fail(format!("could not start the log writer thread: {e}"));
                shared.mark_closed();
                None
            }
        };
        GroupCommitLog { shared, handle }
    }

    /// Queues one record and returns its LSN at once (LSNs are contiguous, in call order).
    /// Durable once [`GroupCommitLog::durable_lsn`] reaches it.
    pub fn append(&self, payload: Vec<u8>) -> Result<u64, LogError> {
        check_len(&payload)?;
        let mut q = self.shared.queue.lock();
        q.usable()?;
        let lsn = q.next_lsn;
        q.next_lsn += 1;
        q.pending.push(payload);
        self.wake_writer(q);
        Ok(lsn)
    }

    /// Queues records with contiguous LSNs (no other append interleaves) and returns the last
    /// one. An empty batch returns `next_lsn() - 1` and queues nothing.
    pub fn append_batch(&self, payloads: Vec<Vec<u8>>) -> Result<u64, LogError> {
        self.queue_batch(None, payloads)
    }

    /// Queues a batch, if `expected` is given only when it is the next LSN.
    fn queue_batch(&self, expected: Option<u64>, payloads: Vec<Vec<u8>>) -> Result<u64, LogError> {
        for p in &payloads {
            check_len(p)?;
        }
        let mut q = self.shared.queue.lock();
        q.usable()?;
        if let Some(expected) = expected.filter(|e| *e != q.next_lsn) {
            return Err(LogError::Fenced {
                expected,
                actual: q.next_lsn,
            });
        }
        q.next_lsn += payloads.len() as u64;
        let last = q.next_lsn - 1;
        if q.pending.is_empty() {
            // Take the caller's vector as is instead of copying the pointers over.
            let spare = std::mem::replace(&mut q.pending, payloads);
            drop(spare);
        } else {
            q.pending.extend(payloads);
        }
        self.wake_writer(q);
        Ok(last)
    }

    fn wake_writer(&self, mut q: parking_lot::MutexGuard<'_, Queue>) {
        if q.writer_sleeping && !q.pending.is_empty() {
            q.writer_sleeping = false;
            drop(q);
            self.shared.wake.notify_one();
        }
    }

    /// Highest LSN known durable (`next_lsn - 1` of the log at start).
    pub fn durable_lsn(&self) -> u64 {
        self.shared.watch.durable.load(Ordering::Acquire)
    }

    /// A cheap clonable handle to learn the durable LSN and wait for it.
    pub fn subscribe(&self) -> DurableWatch {
        DurableWatch {
            inner: Arc::clone(&self.shared.watch),
        }
    }

    /// Waits until everything appended so far is durable; returns that LSN.
    pub fn flush_blocking(&self) -> Result<u64, LogError> {
        let target = {
            let q = self.shared.queue.lock();
            q.usable()?;
            q.next_lsn - 1
        };
        self.shared.watch.wait_for(target, None)?;
        Ok(target)
    }

    /// Deletes whole segments whose records are all below `lsn` (never the active one); runs on
    /// the writer thread between batches. Returns how many were deleted.
    pub fn truncate_before(&self, lsn: u64) -> Result<usize, LogError> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.request(Request::Truncate { lsn, reply })?;
        // A dropped sender means the writer exited without answering.
        rx.recv().map_err(|_| LogError::Closed)?
    }

    /// Every record from `from` on that has been written (queued ones are written first), read
    /// on the writer thread between batches.
    pub fn read_from_blocking(&self, from: u64) -> Result<Records, LogError> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.request(Request::Read { from, reply })?;
        rx.recv().map_err(|_| LogError::Closed)?
    }

    fn request(&self, r: Request) -> Result<(), LogError> {
        let mut q = self.shared.queue.lock();
        q.usable()?;
        q.requests.push(r);
        if q.writer_sleeping {
            q.writer_sleeping = false;
            drop(q);
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Like [`GroupCommitLog::append_batch`], but only if the next LSN is `expected`: a writer
    /// whose idea of the tail is stale (another writer appended) is refused with
    /// [`LogError::Fenced`] and nothing is queued.
    pub fn append_batch_at(&self, expected: u64, payloads: Vec<Vec<u8>>) -> Result<u64, LogError> {
        self.queue_batch(Some(expected), payloads)
    }

    /// The LSN the next append gets.
    pub fn next_lsn(&self) -> u64 {
        self.shared.queue.lock().next_lsn
    }

    /// The sticky failure, if the writer has failed.
    pub fn failure(&self) -> Option<String> {
        self.shared.queue.lock().failed.clone()
    }

    /// Work counters: `batches` is the number of syncs, far below `records` under load.
    pub fn stats(&self) -> LogStats {
        LogStats {
            batches: self.shared.batches.load(Ordering::Relaxed),
            records: self.shared.records.load(Ordering::Relaxed),
            bytes: self.shared.bytes.load(Ordering::Relaxed),
        }
    }

    /// Makes everything queued durable, stops the writer thread and waits for it. Returns the
    /// sticky failure if the writer had failed.
    pub fn shutdown(self) -> Result<(), LogError> {
        let mut this = self;
        this.stop_and_join();
        match this.failure() {
            Some(msg) => Err(LogError::Failed(msg)),
            None => Ok(()),
        }
    }

    fn stop_and_join(&mut self) {
        let Some(handle) = self.handle.take() else {
            return;
        };
        self.shared.queue.lock().shutdown = true;
        self.shared.wake.notify_one();
        if handle.thread().id() == std::thread::current().id() {
            // Dropped from inside the notify closure: the writer exits after this batch; it
            // cannot wait for itself.
            return;
        }
        if handle.join().is_err() {
            // The guard in the thread already recorded the panic as a failure.
            tracing::error!("the log writer thread panicked");
        }
    }
}

impl Drop for GroupCommitLog {
    /// Dropping without `shutdown` still drains the queue and joins the writer, so no record
    /// that was handed over is left unwritten.
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn check_len(payload: &[u8]) -> Result<(), LogError> {
    if payload.len() > MAX_RECORD_BYTES {
        return Err(LogError::RecordTooLarge {
            len: payload.len(),
            max: MAX_RECORD_BYTES,
        });
    }
    Ok(())
}

impl Queue {
    fn usable(&self) -> Result<(), LogError> {
        if let Some(msg) = &self.failed {
            return Err(LogError::Failed(msg.clone()));
        }
        if self.closed {
            return Err(LogError::Closed);
        }
        Ok(())
    }
}

impl Shared {
    /// Makes the failure sticky, drops what can no longer be written and wakes everyone.
    fn fail(&self, msg: String) {
        let (requests, lost) = {
            let mut q = self.queue.lock();
            if q.failed.is_none() {
                q.failed = Some(msg.clone());
            }
            (
                std::mem::take(&mut q.requests),
                std::mem::take(&mut q.pending),
            )
        };
        if !lost.is_empty() {
            tracing::error!(
                lost_records = lost.len(),
                error = %msg,
                "log writer failed; queued records were not written and will never be durable"
            );
        }
        for r in requests {
            r.fail(LogError::Failed(msg.clone()));
        }
        {
            let mut w = self.watch.state.lock();
            if w.failed.is_none() {
                w.failed = Some(msg);
            }
        }
        self.watch.changed.notify_all();
    }

    fn mark_closed(&self) {
        let requests = {
            let mut q = self.queue.lock();
            q.closed = true;
            std::mem::take(&mut q.requests)
        };
        // Dropping the senders makes the waiting callers see `Closed`.
        drop(requests);
        self.watch.state.lock().closed = true;
        self.watch.changed.notify_all();
    }

    fn publish(&self, durable: u64, stats: LogStats) {
        self.batches.store(stats.batches, Ordering::Relaxed);
        self.records.store(stats.records, Ordering::Relaxed);
        self.bytes.store(stats.bytes, Ordering::Relaxed);
        self.watch.durable.store(durable, Ordering::Release);
        self.watch.state.lock().durable = durable;
        self.watch.changed.notify_all();
    }
}

/// Marks the writer closed however its thread ends (including a panic in the notify closure),
/// so that nobody waits forever on a thread that is gone.
struct ExitGuard(Arc<Shared>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail("the log writer thread panicked".into());
        }
        self.0.mark_closed();
    }
}

fn writer_main(mut log: SegmentedLog, shared: Arc<Shared>, notify: Option<Notify>) {
    let _guard = ExitGuard(Arc::clone(&shared));
    // Counters are reported for this writer only, not for what was done before `start`.
    let base = log.stats();
    let mut batch: Vec<Vec<u8>> = Vec::new();
    // Handles are bound once: recording is then a few atomic adds per batch (and nothing at
    // all when no metrics recorder is installed).
    let sync_seconds = metrics::histogram!("cairn_log_sync_seconds");
    let batch_records = metrics::histogram!("cairn_log_batch_records");
    loop {
        let (requests, shutdown) = {
            let mut q = shared.queue.lock();
            if q.failed.is_some() {
                return;
            }
            while q.pending.is_empty() && q.requests.is_empty() && !q.shutdown {
                q.writer_sleeping = true;
                shared.wake.wait(&mut q);
            }
            q.writer_sleeping = false;
            // Swap rather than take: the drained vector's capacity goes back to the queue.
            std::mem::swap(&mut batch, &mut q.pending);
            (std::mem::take(&mut q.requests), q.shutdown)
        };

        if !batch.is_empty() {
            batch_records.record(batch.len() as f64);
            let started = std::time::Instant::now();
            let result = write_batch(&mut log, &batch);
            sync_seconds.record(started.elapsed().as_secs_f64());
            batch.clear();
            match result {
                Ok(durable) => {
                    let now = log.stats();
                    let stats = LogStats {
                        batches: now.batches - base.batches,
                        records: now.records - base.records,
                        bytes: now.bytes - base.bytes,
                    };
                    shared.publish(durable, stats);
                    if let Some(notify) = &notify {
                        notify(durable);
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    tracing::error!(error = %msg, "log write failed; the log stops accepting writes");
                    for r in requests {
                        r.fail(LogError::Failed(msg.clone()));
                    }
                    shared.fail(msg);
                    return;
                }
            }
        }

        for r in requests {
            r.run(&mut log);
        }
        if shutdown {
            return;
        }
    }
}

/// Writes a batch and syncs it once; returns the new durable LSN.
fn write_batch(log: &mut SegmentedLog, batch: &[Vec<u8>]) -> Result<u64, LogError> {
    for payload in batch {
        log.append(payload)?;
    }
    log.sync()?;
    if let Some(delay) = log.config().sync_delay {
        std::thread::sleep(delay);
    }
    Ok(log.next_lsn() - 1)
}

/// A cheap clonable handle to learn the durable LSN of a [`GroupCommitLog`] and wait for it.
#[derive(Clone)]
pub struct DurableWatch {
    inner: Arc<WatchShared>,
}

impl std::fmt::Debug for DurableWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableWatch")
            .field("durable", &self.inner.durable.load(Ordering::Acquire))
            .finish()
    }
}

impl DurableWatch {
    /// The highest durable LSN, or the sticky failure if the writer failed.
    pub fn current(&self) -> Result<u64, LogError> {
        let w = self.inner.state.lock();
        match &w.failed {
            Some(msg) => Err(LogError::Failed(msg.clone())),
            None => Ok(w.durable),
        }
    }

    /// Blocks until `lsn` is durable. Fails if the writer failed or stopped before that.
    /// Waiting for an LSN that was never appended blocks until someone appends it.
    pub fn wait_for(&self, lsn: u64) -> Result<(), LogError> {
        self.inner.wait_for(lsn, None).map(|_| ())
    }

    /// Like [`DurableWatch::wait_for`] with a time limit; `Ok(false)` if it ran out.
    pub fn wait_for_timeout(&self, lsn: u64, timeout: Duration) -> Result<bool, LogError> {
        self.inner.wait_for(lsn, Some(Instant::now() + timeout))
    }
}

impl WatchShared {
    fn wait_for(&self, lsn: u64, deadline: Option<Instant>) -> Result<bool, LogError> {
        if self.durable.load(Ordering::Acquire) >= lsn {
            return Ok(true);
        }
        let mut w = self.state.lock();
        loop {
            if w.durable >= lsn {
                return Ok(true);
            }
            if let Some(msg) = &w.failed {
                return Err(LogError::Failed(msg.clone()));
            }
            if w.closed {
                return Err(LogError::Closed);
            }
            match deadline {
                None => self.changed.wait(&mut w),
                Some(d) => {
                    if Instant::now() >= d {
                        return Ok(false);
                    }
                    // Timing out just loops back to the checks above, then returns `false`.
                    let _ = self.changed.wait_until(&mut w, d);
                }
            }
        }
    }
}

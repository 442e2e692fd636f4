//! # A partition's log as a JetStream stream
//!
//! [`JetStreamLog`] implements the [`PartitionLog`] seam on one JetStream stream per partition
//! (`CAIRN_<hub>_LOG_<partition>`, subject `cairn.<hub>.log.<partition>`), and passes the same
//! conformance suite as the local segmented log.
//!
//! * **Group commit.** Appends return at once and queue for a writer task. The writer packs
//!   everything queued into as few messages as the server's payload limit allows
//!   ([`crate::frames`]), publishes them pipelined, and reports the durable position as their
//!   acknowledgements come back. While one batch is in flight the next one gathers.
//! * **Fencing.** Every publish carries `Nats-Expected-Last-Sequence`: the stream sequence this
//!   writer last saw. Only the writer that wrote the stream's last message can append, so a
//!   stale owner's publish is refused by the server. A new owner opens the log by writing an
//!   *epoch marker* at the tail (the previous epoch + 1), which fences the previous owner at
//!   once even if the new one has nothing to write yet. A refused publish stops the log with
//!   [`LogError::Superseded`]: the stale owner must step down and apply nothing more.
//! * **Durability** is what the stream's acknowledgement means: with R1, the server has written
//!   the message (it survives `kill -9` of the server, not a power loss unless the server runs
//!   with `sync_interval: always`); with R3, a majority of the servers hold it.
//! * **Truncation** purges the stream below the first message still needed.
//!
//! It must never interpret a record's bytes.

use crate::connection::Nats;
use crate::frames::{self, Assembler};
use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use cairn_storage::log::LogError;
use cairn_storage::seam::{OnDurable, OpenedLog, PartitionLog, PartitionLogs};
use futures::StreamExt;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Room left in each message for the headers the client adds (expected sequence and so on).
const HEADER_ROOM: usize = 512;
/// Messages of one batch a writer has unacknowledged at once.
pub(crate) const PIPELINE: usize = 256;
/// The largest message the writer builds, even where the server would take more: larger ones
/// only delay the acknowledgement of the records at their front.
const MAX_MESSAGE: usize = 1 << 20;

/// The stream holding partition `partition`'s log in hub `hub`.
pub fn stream_name(hub: &str, partition: u32) -> String {
    format!("CAIRN_{hub}_LOG_{partition:03}")
}

/// The subject partition `partition`'s log is published on.
pub fn subject(hub: &str, partition: u32) -> String {
    format!("cairn.{hub}.log.{partition}")
}

/// Opens each partition's log in JetStream.
#[derive(Debug, Clone)]
pub struct JetStreamLogs {
    nats: Arc<Nats>,
}

impl JetStreamLogs {
    pub fn new(nats: Arc<Nats>) -> JetStreamLogs {
        JetStreamLogs { nats }
    }
}

impl PartitionLogs for JetStreamLogs {
    fn open(
        &self,
        partition: u32,
        min_next: u64,
        on_durable: OnDurable,
    ) -> Result<OpenedLog, LogError> {
        JetStreamLog::open(self.nats.clone(), partition, min_next, on_durable)
    }
}

enum Command {
    Append { first: u64, records: Vec<Vec<u8>> },
    Flush(SyncSender<Result<u64, LogError>>),
    Truncate(u64),
    Close(SyncSender<Result<u64, LogError>>),
}

/// Why a publish did not go through.
enum Retry {
    /// Another owner appended: never retried.
    Superseded(String),
    /// The service did not answer (or said so): worth another try.
    Transient(String),
}

/// Why the log stopped, kept so every later call can say it.
#[derive(Clone)]
enum Stopped {
    Superseded(String),
    Failed(String),
}

impl Stopped {
    fn error(&self) -> LogError {
        match self {
            Stopped::Superseded(why) => LogError::Superseded(why.clone()),
            Stopped::Failed(why) => LogError::Failed(why.clone()),
        }
    }
    fn text(&self) -> String {
        self.error().to_string()
    }
}

struct Shared {
    /// The position the next appended record gets.
    next: Mutex<u64>,
    durable: AtomicU64,
    stopped: Mutex<Option<Stopped>>,
    /// The stream sequence of the earliest message holding the start of a record at each
    /// position, for the messages this writer has seen: where reads start and purges stop.
    starts: Mutex<BTreeMap<u64, u64>>,
    /// The stream sequence of the last message this writer published.
    last_sequence: AtomicU64,
}

impl Shared {
    fn stop(&self, why: Stopped) {
        let mut stopped = self.stopped.lock();
        if stopped.is_none() {
            tracing::error!(error = %why.text(), "partition log stopped");
            *stopped = Some(why);
        }
    }
    fn check(&self) -> Result<(), LogError> {
        match &*self.stopped.lock() {
            Some(why) => Err(why.error()),
            None => Ok(()),
        }
    }
}

/// One partition's log in a JetStream stream (see the module doc).
pub struct JetStreamLog {
    nats: Arc<Nats>,
    stream: stream::Stream,
    subject: String,
    shared: Arc<Shared>,
    commands: UnboundedSender<Command>,
    epoch: u64,
}

fn remote(what: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Remote(format!("{what}: {e}"))
}

use crate::connection::SETTLE_FOR;
/// How long one attempt at a small request may take: until a leader is elected, requests go
/// unanswered for the client's whole request time-out, so shorter attempts notice the new
/// leader sooner.
const SHORT: Duration = Duration::from_secs(2);
/// The same for a read of the log, which may move a lot of data.
const LONG: Duration = Duration::from_secs(60);

/// Retries `op` while JetStream is still settling ([`crate::connection::patiently`]); the
/// error names `what`.
async fn settle<T, E: std::fmt::Display, F, Fut>(
    what: &str,
    attempt: Duration,
    op: F,
) -> Result<T, LogError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    crate::connection::patiently(attempt, op)
        .await
        .map_err(|last| remote(what, last))
}

impl JetStreamLog {
    /// Opens (creating if missing) partition `partition`'s stream, takes the log over by
    /// writing an epoch marker at its tail, and starts the writer. Blocks the calling thread.
    pub fn open(
        nats: Arc<Nats>,
        partition: u32,
        min_next: u64,
        on_durable: OnDurable,
    ) -> Result<OpenedLog, LogError> {
        let hub = nats.config().hub.clone();
        JetStreamLog::open_stream(
            nats,
            stream_name(&hub, partition),
            subject(&hub, partition),
            min_next,
            on_durable,
        )
    }

    /// [`JetStreamLog::open`] on any stream of its own, named `name` with the one subject
    /// `subject` (a partition's checkpoint deltas are such a log too).
    pub fn open_stream(
        nats: Arc<Nats>,
        name: String,
        subject: String,
        min_next: u64,
        on_durable: OnDurable,
    ) -> Result<OpenedLog, LogError> {
        let config = nats.config().clone();
        let js = nats.jetstream().clone();
        let max_len = (nats.client().server_info().max_payload)
            .saturating_sub(HEADER_ROOM)
            .clamp(4096, MAX_MESSAGE);
        let opened = {
            let (name, subject) = (name.clone(), subject.clone());
            nats.run(async move { take_over(js, name, subject, config, min_next).await })
                .ok_or(LogError::Closed)??
        };
        let TakeOver {
            stream,
            next,
            torn_tail_bytes,
            epoch,
            marker_sequence,
        } = opened;
        let shared = Arc::new(Shared {
            next: Mutex::new(next),
            durable: AtomicU64::new(next - 1),
            stopped: Mutex::new(None),
            starts: Mutex::new(BTreeMap::from([(next, marker_sequence)])),
            last_sequence: AtomicU64::new(marker_sequence),
        });
        let (commands, rx) = unbounded_channel();
        let writer = Writer {
            js: nats.jetstream().clone(),
            stream: stream.clone(),
            subject: subject.clone(),
            shared: shared.clone(),
            on_durable: Mutex::new(on_durable),
            max_len,
            epoch,
        };
        nats.handle().spawn(writer.run(rx));
        tracing::debug!(epoch, next, stream = %name, "took over the log");
        Ok(OpenedLog {
            log: Box::new(JetStreamLog {
                nats,
                stream,
                subject,
                shared,
                commands,
                epoch,
            }),
            torn_tail_bytes,
        })
    }

    /// The owner epoch this writer holds.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn request(
        &self,
        make: impl FnOnce(SyncSender<Result<u64, LogError>>) -> Command,
    ) -> Result<u64, LogError> {
        let (tx, rx) = sync_channel(1);
        self.commands.send(make(tx)).map_err(|_| LogError::Closed)?;
        rx.recv().map_err(|_| LogError::Closed)?
    }
}

struct TakeOver {
    stream: stream::Stream,
    next: u64,
    torn_tail_bytes: u64,
    epoch: u64,
    marker_sequence: u64,
}

async fn take_over(
    js: jetstream::Context,
    name: String,
    subject: String,
    config: crate::connection::ClusterConfig,
    min_next: u64,
) -> Result<TakeOver, LogError> {
    let stream_config = stream::Config {
        name: name.clone(),
        subjects: vec![subject.clone()],
        storage: stream::StorageType::File,
        num_replicas: config.replicas.max(1),
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        allow_direct: true,
        ..Default::default()
    };
    let stream = settle(&format!("creating stream {name}"), SHORT, || {
        js.get_or_create_stream(stream_config.clone())
    })
    .await?;
    let last_sequence = settle(&format!("reading stream {name}"), SHORT, || {
        let mut stream = stream.clone();
        async move { stream.info().await.map(|info| info.state.last_sequence) }
    })
    .await?;
    let (mut next, mut torn_tail_bytes, mut epoch) = (1, 0, 0);
    if last_sequence > 0 {
        let last = settle(&format!("reading the tail of {name}"), SHORT, || {
            stream.get_raw_message(last_sequence)
        })
        .await?;
        let decoded = frames::decode(&last.payload).map_err(|e| {
            LogError::Remote(format!(
                "the last message of stream {name} (sequence {last_sequence}) is not a Cairn log \
                 message: {e}. Another program may be publishing on {subject}"
            ))
        })?;
        (next, torn_tail_bytes) = decoded.next_after();
        epoch = decoded.epoch();
    }
    next = next.max(min_next).max(1);
    let epoch = epoch + 1;
    let marker = frames::encode_epoch(next, epoch, &config.node_id);
    let marker = bytes::Bytes::from(marker);
    let publish = jetstream::message::PublishMessage::build()
        .payload(marker.clone())
        .expected_last_sequence(last_sequence);
    let marker_sequence = settle(
        &format!("publishing an epoch marker to {name}"),
        SHORT,
        || async {
            match js.send_publish(subject.clone(), publish.clone()).await {
                Ok(ack) => match ack.await {
                    Ok(ack) => Ok(Ok(ack.sequence)),
                    // Refused: either an earlier attempt of this very marker was stored after all
                    // (its acknowledgement was lost), or another node got there first.
                    Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                        match stored_at(&stream, last_sequence + 1, &marker).await {
                            Ok(true) => Ok(Ok(last_sequence + 1)),
                            Ok(false) => Ok(Err(e.to_string())),
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await?
    .map_err(|e| {
        LogError::Superseded(format!(
            "another node appended to {name} while this one was taking it over: {e}"
        ))
    })?;
    Ok(TakeOver {
        stream,
        next,
        torn_tail_bytes,
        epoch,
        marker_sequence,
    })
}

struct Writer {
    js: jetstream::Context,
    stream: stream::Stream,
    subject: String,
    shared: Arc<Shared>,
    /// Behind a lock only so the writer's future is `Send`: one task calls it.
    on_durable: Mutex<OnDurable>,
    max_len: usize,
    epoch: u64,
}

impl Writer {
    async fn run(self, mut rx: UnboundedReceiver<Command>) {
        // The local log's metrics, with the same meaning: records per durable batch, and how
        // long the batch took to become durable (here, until JetStream acknowledged it).
        let sync_seconds = metrics::histogram!("cairn_log_sync_seconds");
        let batch_records = metrics::histogram!("cairn_log_batch_records");
        while let Some(first) = rx.recv().await {
            let mut commands = vec![first];
            while let Ok(more) = rx.try_recv() {
                commands.push(more);
            }
            let mut start = None;
            let mut records = Vec::new();
            for command in &mut commands {
                if let Command::Append { first, records: r } = command {
                    start.get_or_insert(*first);
                    records.append(r);
                }
            }
            if let Some(first) = start {
                if self.shared.check().is_ok() {
                    let started = std::time::Instant::now();
                    match self.publish(first, &records).await {
                        Ok(()) => {
                            batch_records.record(records.len() as f64);
                            sync_seconds.record(started.elapsed().as_secs_f64());
                        }
                        Err(why) => self.shared.stop(why),
                    }
                }
            }
            for command in commands {
                match command {
                    Command::Append { .. } => {}
                    Command::Flush(reply) => {
                        let _ = reply.send(
                            self.shared
                                .check()
                                .map(|()| self.shared.durable.load(Ordering::SeqCst)),
                        );
                    }
                    Command::Truncate(position) => self.truncate(position).await,
                    Command::Close(reply) => {
                        let _ = reply.send(
                            self.shared
                                .check()
                                .map(|()| self.shared.durable.load(Ordering::SeqCst)),
                        );
                        return;
                    }
                }
            }
        }
    }

    /// Publishes `records` (from position `first`) pipelined, each message fenced on the
    /// sequence the one before it will get. A message JetStream did not answer (a server died,
    /// its stream is electing a leader) is sent again on the same expected sequence. If an
    /// earlier attempt was stored after all, the server refuses the retry (it checks the
    /// sequence before any duplicate detection), and [`stored_at`] recognises the stored
    /// message as this writer's own. The log gives up only after [`SETTLE_FOR`].
    async fn publish(&self, first: u64, records: &[Vec<u8>]) -> Result<(), Stopped> {
        let messages: Vec<(bytes::Bytes, Option<u64>, u64)> =
            frames::encode_records(first, records, self.epoch, self.max_len)
                .into_iter()
                .map(|(body, completes)| {
                    let starts_at = u64::from_le_bytes(body[2..10].try_into().unwrap_or([0; 8]));
                    (body.into(), completes, starts_at)
                })
                .collect();
        let deadline = tokio::time::Instant::now() + SETTLE_FOR;
        let mut pause = Duration::from_millis(25);
        let mut done = 0;
        while done < messages.len() {
            // At most a window of messages unacknowledged: the client's limit on them is
            // shared by every partition, and a writer waiting for permits its own unawaited
            // acknowledgements hold would wait forever.
            let end = (done + PIPELINE).min(messages.len());
            match self.publish_from(&messages[..end], done).await {
                Ok(()) => done = end,
                Err((_, Retry::Superseded(why))) => return Err(Stopped::Superseded(why)),
                Err((acked, Retry::Transient(why))) => {
                    done = acked;
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Stopped::Failed(format!(
                            "an append to {} was not acknowledged within {SETTLE_FOR:?}: {why}",
                            self.subject
                        )));
                    }
                    tracing::warn!(subject = %self.subject, error = %why, "retrying an append");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
        Ok(())
    }

    /// Sends `messages[from..]` pipelined and takes their acknowledgements in order. On error,
    /// says how many messages are acknowledged in all.
    async fn publish_from(
        &self,
        messages: &[(bytes::Bytes, Option<u64>, u64)],
        from: usize,
    ) -> Result<(), (usize, Retry)> {
        let last = self.shared.last_sequence.load(Ordering::SeqCst);
        let mut pending = Vec::with_capacity(messages.len() - from);
        for (expected, (body, _, _)) in (last..).zip(messages.iter().skip(from)) {
            let publish = jetstream::message::PublishMessage::build()
                .payload(body.clone())
                .expected_last_sequence(expected);
            match self.js.send_publish(self.subject.clone(), publish).await {
                Ok(ack) => pending.push((ack, expected)),
                Err(e) => {
                    pending.clear();
                    return Err((from, Retry::Transient(e.to_string())));
                }
            }
        }
        for (n, (ack, expected)) in pending.into_iter().enumerate() {
            let i = from + n;
            let (body, completes, starts_at) = &messages[i];
            let sequence = match tokio::time::timeout(SHORT, ack).await {
                Ok(Ok(ack)) => ack.sequence,
                // After a retry, the refused message may be this very one, stored by an earlier
                // attempt whose acknowledgement was lost.
                Ok(Err(e))
                    if e.kind() == PublishErrorKind::WrongLastSequence
                        && stored_at(&self.stream, expected + 1, body)
                            .await
                            .map_err(|e| (i, Retry::Transient(e)))? =>
                {
                    expected + 1
                }
                Ok(Err(e)) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    return Err((
                        i,
                        Retry::Superseded(format!(
                            "JetStream refused an append to {} fenced on sequence {expected}: \
                             another owner wrote the stream since this one took it over (epoch \
                             {})",
                            self.subject, self.epoch
                        )),
                    ))
                }
                Ok(Err(e)) => return Err((i, Retry::Transient(e.to_string()))),
                Err(_) => return Err((i, Retry::Transient(format!("no answer within {SHORT:?}")))),
            };
            self.shared.last_sequence.store(sequence, Ordering::SeqCst);
            self.shared
                .starts
                .lock()
                .entry(*starts_at)
                .or_insert(sequence);
            if let Some(position) = completes {
                self.shared.durable.store(*position, Ordering::SeqCst);
                (self.on_durable.lock())(*position);
            }
        }
        Ok(())
    }

    async fn truncate(&self, position: u64) {
        let keep_from = {
            let mut starts = self.shared.starts.lock();
            let Some((&at, &sequence)) = starts.range(..=position).next_back() else {
                return;
            };
            starts.retain(|p, _| *p >= at);
            sequence
        };
        if let Err(e) = self.stream.purge().sequence(keep_from).await {
            // Only space is at stake: the records stay readable, and the next truncation
            // purges them.
            tracing::warn!(subject = %self.subject, error = %e, "purging a partition log failed");
        }
    }
}

impl PartitionLog for JetStreamLog {
    fn next_position(&self) -> u64 {
        *self.shared.next.lock()
    }

    fn durable_position(&self) -> u64 {
        self.shared.durable.load(Ordering::SeqCst)
    }

    fn append(&self, expected: u64, records: Vec<Vec<u8>>) -> Result<u64, LogError> {
        self.shared.check()?;
        let mut next = self.shared.next.lock();
        if expected != *next {
            return Err(LogError::Fenced {
                expected,
                actual: *next,
            });
        }
        if records.is_empty() {
            return Ok(expected - 1);
        }
        let last = expected + records.len() as u64 - 1;
        // Sent under the lock, so the writer sees appends in position order.
        self.commands
            .send(Command::Append {
                first: expected,
                records,
            })
            .map_err(|_| LogError::Closed)?;
        *next = last + 1;
        Ok(last)
    }

    fn flush(&self) -> Result<u64, LogError> {
        self.request(Command::Flush)
    }

    fn read_from(&self, position: u64) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        // What was appended is read back once the stream holds it; a stopped log still reads
        // what it had made durable.
        let _ = self.flush();
        let next = self.next_position();
        let until = self.shared.last_sequence.load(Ordering::SeqCst);
        let known = self
            .shared
            .starts
            .lock()
            .range(..=position)
            .next_back()
            .map(|(_, s)| *s);
        let (mut stream, subject) = (self.stream.clone(), self.subject.clone());
        let records = self
            .nats
            .run(async move {
                let from = match known {
                    Some(sequence) => sequence,
                    None => {
                        stream
                            .info()
                            .await
                            .map_err(|e| remote("reading the stream's state", e))?
                            .state
                            .first_sequence
                    }
                };
                // A stream whose servers are electing a leader answers reads with time-outs
                // for a moment; a read is idempotent, so it is simply tried again.
                settle("reading the partition log", LONG, || {
                    read_stream(&stream, &subject, from, until, position)
                })
                .await?
            })
            .ok_or(LogError::Closed)??;
        match records.first() {
            Some((first, _)) if *first > position => Err(LogError::Truncated {
                requested: position,
                first_lsn: *first,
            }),
            None if position < next => Err(LogError::Truncated {
                requested: position,
                first_lsn: next,
            }),
            _ => Ok(records),
        }
    }

    fn truncate_below(&self, position: u64) -> Result<(), LogError> {
        self.commands
            .send(Command::Truncate(position))
            .map_err(|_| LogError::Closed)
    }

    fn failure(&self) -> Option<String> {
        self.shared.stopped.lock().as_ref().map(Stopped::text)
    }

    fn close(self: Box<Self>) -> Result<(), LogError> {
        self.request(Command::Close).map(drop)
    }
}

/// Every record still in partition `partition`'s log, read without taking the log over (no
/// epoch marker is written): for audits and status. Fails if two owners' messages interleave
/// (an epoch going back along the stream), which fencing must make impossible.
pub fn read_without_owning(nats: &Nats, partition: u32) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
    let hub = nats.config().hub.clone();
    let js = nats.jetstream().clone();
    let (name, subject) = (stream_name(&hub, partition), subject(&hub, partition));
    nats.run(async move {
        let mut stream = js
            .get_stream(&name)
            .await
            .map_err(|e| remote(&format!("opening stream {name}"), e))?;
        let state = stream
            .info()
            .await
            .map_err(|e| remote(&format!("reading stream {name}"), e))?
            .state
            .clone();
        settle("reading the partition log", LONG, || {
            read_stream(
                &stream,
                &subject,
                state.first_sequence,
                state.last_sequence,
                0,
            )
        })
        .await?
    })
    .ok_or(LogError::Closed)?
}

/// Whether the stream's message at `sequence` is `body`: how a writer whose publish was refused
/// tells its own earlier attempt (stored, acknowledgement lost) from another owner's message.
/// Every message carries its writer's epoch, so another owner's can never be equal.
pub async fn stored_at(
    stream: &stream::Stream,
    sequence: u64,
    body: &[u8],
) -> Result<bool, String> {
    match stream.get_raw_message(sequence).await {
        Ok(message) => Ok(message.payload.as_ref() == body),
        Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

/// Reads stream sequences `from..=until` and assembles the records at or after `position`.
/// The outer error is one worth retrying (the service), the inner one is not (the log's
/// contents).
async fn read_stream(
    stream: &stream::Stream,
    subject: &str,
    from: u64,
    until: u64,
    position: u64,
) -> Result<Result<Vec<(u64, Vec<u8>)>, LogError>, String> {
    let mut out = Vec::new();
    if from == 0 || from > until {
        return Ok(Ok(out));
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: subject.to_string(),
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let mut assembler = Assembler::default();
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| e.to_string())?;
        let sequence = message.info().map_err(|e| e.to_string())?.stream_sequence;
        let decoded = match frames::decode(&message.payload) {
            Ok(decoded) => decoded,
            Err(e) => {
                return Ok(Err(LogError::Remote(format!(
                    "message {sequence} of the log on {subject} is not a Cairn log message: {e}. \
                     Another program may be publishing on {subject}"
                ))))
            }
        };
        if let Err(e) = assembler.push(&decoded, position, &mut out) {
            return Ok(Err(LogError::Remote(format!("the log on {subject}: {e}"))));
        }
        if sequence >= until {
            break;
        }
    }
    Ok(Ok(out))
}

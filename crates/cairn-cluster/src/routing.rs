//! # Messages between partitions, through JetStream
//!
//! [`JetStreamRouters`] implements the engine's `Routers` seam for nodes that share a hub.
//! Partitions move between nodes, so a message between two partitions cannot travel over a
//! channel or a plain NATS subject: it could be lost while its receiver moves, and a later one
//! could arrive before it, which the receiver's dedup (it keeps only the highest id per
//! sender) would turn into a permanent loss. So every batch goes through the hub's input
//! stream `CAIRN_<hub>_IN`, even between two partitions of one node:
//!
//! * **Sending.** Batches from partition `f` to partition `t` are published to subject
//!   `cairn.<hub>.in.<t>.<f>`, one at a time per pair and in the order sent (a batch is
//!   published only once the one before it is stored), with a `Nats-Msg-Id` naming its
//!   message ids, so a publish retried after a lost acknowledgement is stored once.
//! * **Receiving.** The node that runs partition `t` reads `cairn.<hub>.in.<t>.*` from the
//!   start of what the stream holds, with an ordered consumer, and hands each batch to the
//!   partition. Batches it already applied are dropped by the partition's own dedup, so a
//!   partition that moves simply reads its inputs again on its new node.
//! * **Trimming.** The receiver acknowledges what it holds durably (`Ack` envelopes travel as
//!   plain NATS messages on `cairn.<hub>.ack.<f>`: a lost one is replaced by the next, or by
//!   the sender's resend after it recovers). The sender's node then purges the acknowledged
//!   batches from the stream.
//!
//! What this module never does: look inside a batch, or decide where a partition runs.

use crate::connection::Nats;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use cairn_core::{Message, MessageId};
use cairn_runtime::router::{Envelope, LocalPartitions, Router, Routers};
use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

/// Names a fragment of a batch too large for one message: `i/n`, the i-th of n (from 1).
const FRAGMENT_HEADER: &str = "Cairn-Fragment";
/// Room left for the headers in a message of the largest size the servers take.
const FRAGMENT_HEADROOM: usize = 4 * 1024;
/// The smallest fragment, whatever the servers say.
const MIN_FRAGMENT: usize = 32 * 1024;

/// Batches queued for one receiver are merged into one published message up to this size, well
/// under NATS's default `max_payload` of 1 MiB. (A larger batch
/// goes as fragments.)
const MERGE_BYTES: usize = 256 * 1024;

fn encoded_len(batch: &[(MessageId, Message)]) -> usize {
    postcard::experimental::serialized_size(batch).unwrap_or(MERGE_BYTES)
}

/// The input stream of hub `hub`.
pub fn stream_name(hub: &str) -> String {
    format!("CAIRN_{hub}_IN")
}

fn input_subject(hub: &str, to: u32, from: u32) -> String {
    format!("cairn.{hub}.in.{to}.{from}")
}

fn ack_subject(hub: &str, to: u32) -> String {
    format!("cairn.{hub}.ack.{to}")
}

#[derive(Serialize, Deserialize)]
struct WireBatch {
    from: u32,
    batch: Vec<(MessageId, Message)>,
}

#[derive(Serialize, Deserialize)]
struct WireAck {
    from: u32,
    up_to: MessageId,
}

/// Opens the router of a cluster node (see the module's documentation).
#[derive(Debug, Clone)]
pub struct JetStreamRouters {
    nats: Arc<Nats>,
    opened: Arc<Mutex<Option<Arc<JetStreamRouter>>>>,
}

impl JetStreamRouters {
    pub fn new(nats: Arc<Nats>) -> JetStreamRouters {
        JetStreamRouters {
            nats,
            opened: Arc::default(),
        }
    }

    /// The router the engine opened (once it has).
    pub fn router(&self) -> Option<Arc<JetStreamRouter>> {
        self.opened.lock().clone()
    }
}

impl Routers for JetStreamRouters {
    fn open(&self, local: LocalPartitions) -> Arc<dyn Router> {
        let router = Arc::new(JetStreamRouter::new(self.nats.clone(), local));
        *self.opened.lock() = Some(router.clone());
        router
    }
}

/// What the sender's node remembers of a published batch, to purge it once acknowledged.
struct Published {
    last: MessageId,
    sequence: u64,
}

/// Messages from one partition to another, in id order.
type Batch = Vec<(MessageId, Message)>;

/// Per (receiver, sender): the batches this node stored and the receiver has not acknowledged.
type Unacknowledged = Arc<Mutex<HashMap<(u32, u32), VecDeque<Published>>>>;

/// A cluster node's router.
pub struct JetStreamRouter {
    nats: Arc<Nats>,
    local: LocalPartitions,
    /// One ordered publisher per (receiving, sending) partition.
    senders: Mutex<HashMap<(u32, u32), UnboundedSender<Batch>>>,
    /// Per (receiver, sender): batches stored and not yet acknowledged.
    published: Unacknowledged,
    /// The input readers of the partitions running here.
    readers: Mutex<HashMap<u32, tokio::task::JoinHandle<()>>>,
    acks: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for JetStreamRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamRouter").finish_non_exhaustive()
    }
}

impl Drop for JetStreamRouter {
    fn drop(&mut self) {
        self.acks.abort();
        for (_, reader) in self.readers.lock().drain() {
            reader.abort();
        }
    }
}

impl JetStreamRouter {
    fn new(nats: Arc<Nats>, local: LocalPartitions) -> JetStreamRouter {
        let published: Unacknowledged = Arc::default();
        let acks =
            nats.handle()
                .spawn(receive_acks(nats.clone(), local.clone(), published.clone()));
        JetStreamRouter {
            nats,
            local,
            senders: Mutex::default(),
            published,
            readers: Mutex::default(),
            acks,
        }
    }

    /// Creates the hub's input stream if it does not exist (before any partition runs).
    pub fn prepare(&self) -> Result<(), crate::ClusterError> {
        let js = self.nats.jetstream().clone();
        let config = self.nats.config().clone();
        self.nats
            .run(async move {
                crate::connection::patiently(Duration::from_secs(10), || {
                    input_stream(&js, &config.hub, config.replicas)
                })
                .await
            })
            .ok_or(crate::ClusterError::Stopped)?
            .map(|_| ())
            .map_err(crate::ClusterError::Remote)
    }

    /// Starts handing partition `p`'s inputs to it (it has just opened here).
    pub fn attach(&self, p: u32) {
        let reader =
            self.nats
                .handle()
                .spawn(read_inputs(self.nats.clone(), self.local.clone(), p));
        if let Some(old) = self.readers.lock().insert(p, reader) {
            old.abort();
        }
    }

    /// Stops reading partition `p`'s inputs (it is about to close here).
    pub fn detach(&self, p: u32) {
        if let Some(reader) = self.readers.lock().remove(&p) {
            reader.abort();
        }
    }

    /// The publisher of batches from partition `from` to partition `to`: one task per pair,
    /// publishing one message at a time so that the subject holds them in the order sent.
    /// Batches queued while a publish is in flight go out together in the next one (the
    /// receiver's dedup looks at each message, so one batch or several is the same to it).
    fn sender(&self, to: u32, from: u32) -> UnboundedSender<Batch> {
        let mut senders = self.senders.lock();
        if let Some(tx) = senders.get(&(to, from)).filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, mut rx) = unbounded_channel::<Batch>();
        let nats = self.nats.clone();
        let published = self.published.clone();
        self.nats.handle().spawn(async move {
            let subject = input_subject(&nats.config().hub, to, from);
            let mut next: Option<Batch> = None;
            loop {
                let mut batch = match next.take() {
                    Some(b) => b,
                    None => match rx.recv().await {
                        Some(b) => b,
                        None => break,
                    },
                };
                let mut bytes = encoded_len(&batch);
                while bytes < MERGE_BYTES {
                    match rx.try_recv() {
                        Ok(more) => {
                            let more_bytes = encoded_len(&more);
                            if bytes + more_bytes > MERGE_BYTES {
                                next = Some(more);
                                break;
                            }
                            bytes += more_bytes;
                            batch.extend(more);
                        }
                        Err(_) => break,
                    }
                }
                let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
                    continue;
                };
                let id = format!(
                    "{from}-{}.{}-{}.{}-{}",
                    first.0.position,
                    first.0.index,
                    last.0.position,
                    last.0.index,
                    batch.len()
                );
                let last = last.0;
                let Ok(body) = postcard::to_allocvec(&WireBatch { from, batch }) else {
                    continue;
                };
                // A batch larger than the servers take in one message goes as consecutive
                // fragments of the subject, which the reader joins again.
                let limit = nats
                    .client()
                    .server_info()
                    .max_payload
                    .saturating_sub(FRAGMENT_HEADROOM)
                    .max(MIN_FRAGMENT);
                let body = Bytes::from(body);
                let count = body.len().div_ceil(limit).max(1);
                let mut sequence = 0;
                for i in 0..count {
                    let chunk = body.slice(i * limit..((i + 1) * limit).min(body.len()));
                    let fragment = (count > 1).then(|| format!("{}/{count}", i + 1));
                    let id = match &fragment {
                        Some(_) => format!("{id}-f{}", i + 1),
                        None => id.clone(),
                    };
                    sequence =
                        publish_until_stored(&nats, &subject, &id, fragment.as_deref(), chunk)
                            .await;
                }
                published
                    .lock()
                    .entry((to, from))
                    .or_default()
                    .push_back(Published { last, sequence });
            }
        });
        senders.insert((to, from), tx.clone());
        tx
    }
}

impl Router for JetStreamRouter {
    fn send(&self, to: u32, envelope: Envelope) {
        match envelope {
            Envelope::Messages { from, batch } => {
                let _ = self.sender(to, from).send(batch);
            }
            Envelope::Ack { from, up_to } => {
                let Ok(body) = postcard::to_allocvec(&WireAck { from, up_to }) else {
                    return;
                };
                let client = self.nats.client().clone();
                let subject = ack_subject(&self.nats.config().hub, to);
                self.nats.handle().spawn(async move {
                    // Lost acknowledgements are replaced by later ones (see the module doc).
                    let _ = client.publish(subject, body.into()).await;
                });
            }
        }
    }
}

async fn input_stream(
    js: &jetstream::Context,
    hub: &str,
    replicas: usize,
) -> Result<stream::Stream, String> {
    let name = stream_name(hub);
    js.get_or_create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("cairn.{hub}.in.>")],
        storage: stream::StorageType::File,
        num_replicas: replicas.max(1),
        retention: stream::RetentionPolicy::Limits,
        // Never drop an unacknowledged batch to make room: refuse new ones instead.
        discard: stream::DiscardPolicy::New,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| format!("creating the input stream {name}: {e}"))
}

/// Publishes until JetStream has stored the batch (or says it already had it); its sequence.
async fn publish_until_stored(
    nats: &Nats,
    subject: &str,
    id: &str,
    fragment: Option<&str>,
    body: Bytes,
) -> u64 {
    let mut pause = Duration::from_millis(20);
    let mut failures = 0u64;
    loop {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        if let Some(fragment) = fragment {
            headers.insert(FRAGMENT_HEADER, fragment);
        }
        let attempt = async {
            nats.jetstream()
                .publish_with_headers(subject.to_string(), headers, body.clone())
                .await?
                .await
                .map_err(async_nats::Error::from)
        };
        failures += 1;
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(ack)) => return ack.sequence,
            // Said once in a while, loudly: a batch that never goes stalls its receiver.
            Ok(Err(e)) if failures.is_multiple_of(20) => tracing::warn!(
                "a batch of messages between partitions ({} bytes) cannot be published to \
                 {subject} (retrying): {e}",
                body.len()
            ),
            Ok(Err(e)) => tracing::debug!("publishing to {subject} failed (retried): {e}"),
            Err(_) => tracing::debug!("publishing to {subject} timed out (retried)"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// Reads partition `p`'s inputs from the start of the stream and hands them to it, until
/// aborted (restarting the consumer after an error).
async fn read_inputs(nats: Arc<Nats>, local: LocalPartitions, p: u32) {
    let hub = nats.config().hub.clone();
    loop {
        let subscribed = async {
            let stream = input_stream(nats.jetstream(), &hub, nats.config().replicas).await?;
            let consumer = stream
                .create_consumer(consumer::push::OrderedConfig {
                    deliver_subject: nats.client().new_inbox(),
                    filter_subject: format!("cairn.{hub}.in.{p}.*"),
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            consumer.messages().await.map_err(|e| e.to_string())
        };
        let mut messages = match subscribed.await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(
                    partition = p,
                    "cannot read the partition's inputs (retried): {e}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        // Per subject (sender): the fragments of a large batch read so far, and the next one
        // expected. A run of fragments cut short (its publisher died) is dropped; the sender's
        // recovered owner sends the batch again.
        let mut partial: HashMap<String, (usize, usize, Vec<u8>)> = HashMap::new();
        while let Some(message) = messages.next().await {
            let Ok(message) = message else {
                break;
            };
            let fragment = message
                .headers
                .as_ref()
                .and_then(|h| h.get(FRAGMENT_HEADER))
                .and_then(|v| {
                    let (i, n) = v.as_str().split_once('/')?;
                    Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?))
                });
            let subject = message.subject.to_string();
            let whole: Bytes = match fragment {
                None => {
                    partial.remove(&subject);
                    message.payload.clone()
                }
                Some((i, n)) => {
                    if i == 1 {
                        partial.insert(subject.clone(), (2, n, message.payload.to_vec()));
                    } else {
                        match partial.get_mut(&subject) {
                            Some((next, count, bytes)) if *next == i && *count == n => {
                                bytes.extend_from_slice(&message.payload);
                                *next += 1;
                            }
                            _ => {
                                partial.remove(&subject);
                                continue;
                            }
                        }
                    }
                    if i < n {
                        continue;
                    }
                    match partial.remove(&subject) {
                        Some((_, _, bytes)) => Bytes::from(bytes),
                        None => continue,
                    }
                }
            };
            let batch: WireBatch = match postcard::from_bytes(&whole) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(
                        partition = p,
                        "an input batch cannot be read ({e}): written by another Cairn version?"
                    );
                    continue;
                }
            };
            let envelope = Envelope::Messages {
                from: batch.from,
                batch: batch.batch,
            };
            if !local.deliver(p, envelope) {
                // The partition closed here: its next owner reads from the start again.
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Hands acknowledgements to the partitions running here, and purges what they cover from
/// the input stream.
async fn receive_acks(nats: Arc<Nats>, local: LocalPartitions, published: Unacknowledged) {
    let hub = nats.config().hub.clone();
    let mut input: Option<stream::Stream> = None;
    loop {
        let mut acks = match nats.client().subscribe(format!("cairn.{hub}.ack.*")).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot receive acknowledgements between partitions (retried): {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        while let Some(message) = acks.next().await {
            let Some(to) = message
                .subject
                .rsplit('.')
                .next()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(ack) = postcard::from_bytes::<WireAck>(&message.payload) else {
                continue;
            };
            // `to` sent the batches; `ack.from` received them and holds them durably.
            let purge_below = {
                let mut published = published.lock();
                let sent = published.entry((ack.from, to)).or_default();
                let mut below = None;
                while sent.front().is_some_and(|b| b.last <= ack.up_to) {
                    below = sent.pop_front().map(|b| b.sequence + 1);
                }
                below
            };
            if let Some(sequence) = purge_below {
                // The stream is looked up once, not per purge.
                if input.is_none() {
                    input = nats.jetstream().get_stream(stream_name(&hub)).await.ok();
                }
                if let Some(stream) = input.clone() {
                    let subject = input_subject(&hub, ack.from, to);
                    tokio::spawn(async move {
                        let _ = stream.purge().filter(subject).sequence(sequence).await;
                    });
                }
            }
            local.deliver(
                to,
                Envelope::Ack {
                    from: ack.from,
                    up_to: ack.up_to,
                },
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

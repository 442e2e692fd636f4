//! # Every node is a front door
//!
//! A client request for a partition that runs on another node travels as a NATS request to
//! `cairn.<hub>.req.<partition>`, which only the partition's current owner answers
//! ([`Responders`]); [`NatsForwarder`] sends it and retries while the partition moves (no
//! responder yet, or the owner says it no longer runs it). What a request and its answer
//! contain is the engine's business (`cairn_runtime::forward`): this module moves bytes.

use crate::connection::Nats;
use cairn_runtime::forward::{should_retry, Forwarded, ForwardedKind, Forwarder};
use cairn_runtime::{EngineError, Partitions};
use futures::future::BoxFuture;
use futures::StreamExt;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn request_subject(hub: &str, partition: u32) -> String {
    format!("cairn.{hub}.req.{partition}")
}

/// How long a request may wait for a partition to have an owner again (a failover takes the
/// lease's duration plus the recovery).
const MOVE_PATIENCE: Duration = Duration::from_secs(20);
/// How long one answer may take, for requests that do not wait for an instance.
const ANSWER_TIME: Duration = Duration::from_secs(30);
/// How long one forwarded wait is held before it is sent again (a wait is answered when the
/// instance gets there; sent again, it survives its partition moving meanwhile).
const WAIT_ROUND: Duration = Duration::from_secs(20);

/// Sends requests for partitions owned elsewhere to their owners.
#[derive(Debug, Clone)]
pub struct NatsForwarder {
    nats: Arc<Nats>,
}

impl NatsForwarder {
    pub fn new(nats: Arc<Nats>) -> NatsForwarder {
        NatsForwarder { nats }
    }
}

impl Forwarder for NatsForwarder {
    fn forward(
        &self,
        partition: u32,
        request: Forwarded,
    ) -> BoxFuture<'static, Result<Vec<u8>, EngineError>> {
        let client = self.nats.client().clone();
        let subject = request_subject(&self.nats.config().hub, partition);
        Box::pin(async move {
            let unowned = |since: Instant| EngineError::Storage {
                partition,
                message: format!(
                    "no node has run partition {partition} for {:?}: are the cluster's nodes \
                     up and connected to NATS?",
                    since.elapsed()
                ),
            };
            let body = bytes::Bytes::from(request.bytes.clone());
            let mut since = Instant::now();
            let mut pause = Duration::from_millis(10);
            loop {
                let limit = match request.kind {
                    ForwardedKind::Wait => WAIT_ROUND,
                    _ => ANSWER_TIME,
                };
                let asked = client.request(subject.clone(), body.clone());
                match tokio::time::timeout(limit, asked).await {
                    Ok(Ok(answer)) => {
                        if !should_retry(&request, &answer.payload) {
                            return Ok(answer.payload.to_vec());
                        }
                    }
                    Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {}
                    Ok(Err(e)) if request.kind == ForwardedKind::Write => {
                        return Err(EngineError::Storage {
                            partition,
                            message: format!(
                                "the node that runs partition {partition} did not answer ({e}): \
                                 the request may or may not have been applied"
                            ),
                        });
                    }
                    Ok(Err(_)) => {}
                    Err(_) if request.kind == ForwardedKind::Wait => {
                        // A wait that is still waiting: ask again, to whoever runs it now.
                        since = Instant::now();
                        continue;
                    }
                    Err(_) if request.kind == ForwardedKind::Write => {
                        return Err(EngineError::Storage {
                            partition,
                            message: format!(
                                "the node that runs partition {partition} did not answer within \
                                 {limit:?}: the request may or may not have been applied"
                            ),
                        });
                    }
                    Err(_) => {}
                }
                if since.elapsed() > MOVE_PATIENCE {
                    return Err(unowned(since));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(250));
            }
        })
    }
}

/// Answers forwarded requests for the partitions running on this node.
pub struct Responders {
    nats: Arc<Nats>,
    partitions: Partitions,
    running: Mutex<HashMap<u32, tokio::task::JoinHandle<()>>>,
}

impl Responders {
    pub fn new(nats: Arc<Nats>, partitions: Partitions) -> Responders {
        Responders {
            nats,
            partitions,
            running: Mutex::default(),
        }
    }

    /// Starts answering for partition `p`; resolves once NATS has the subscription, so a
    /// request sent after this returns reaches it.
    pub async fn attach(&self, p: u32) -> Result<(), String> {
        let subject = request_subject(&self.nats.config().hub, p);
        let client = self.nats.client().clone();
        let mut requests = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| format!("subscribing to {subject}: {e}"))?;
        client
            .flush()
            .await
            .map_err(|e| format!("subscribing to {subject}: {e}"))?;
        let partitions = self.partitions.clone();
        let task = self.nats.handle().spawn(async move {
            while let Some(request) = requests.next().await {
                let Some(reply) = request.reply.clone() else {
                    continue;
                };
                let partitions = partitions.clone();
                let client = client.clone();
                tokio::spawn(async move {
                    let answer = partitions.answer(p, &request.payload).await;
                    let _ = client.publish(reply, answer.into()).await;
                });
            }
        });
        if let Some(old) = self.running.lock().insert(p, task) {
            old.abort();
        }
        Ok(())
    }

    /// Stops answering for partition `p`: requests for it wait for its next owner.
    pub fn detach(&self, p: u32) {
        if let Some(task) = self.running.lock().remove(&p) {
            task.abort();
        }
    }
}

impl Drop for Responders {
    fn drop(&mut self) {
        for (_, task) in self.running.lock().drain() {
            task.abort();
        }
    }
}

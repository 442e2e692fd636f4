//! # Client requests for partitions that run on another node
//!
//! In cluster mode a node runs some of a hub's partitions; a client request (a start, an event,
//! a status read, a wait, a query's part) for any other partition is forwarded to the node that
//! runs it and answered from there, through the same reply the local path uses. The client
//! never knows: every node is a front door for every instance.
//!
//! This module owns the request's wire form (postcard, with a version byte) on both ends:
//! [`forward`] encodes a request and decodes the answer, [`answer`] decodes a request on the
//! owner, queues it to the local partition and encodes the answer. A [`Forwarder`] only moves
//! bytes to the partition's owner; it never looks inside them.
//!
//! Retrying is the forwarder's call, guided by [`ForwardedKind`]: reads and waits are safe to
//! send again; a write is sent again only when the owner says it never queued it
//! ([`NOT_HERE`]), so a start or an event is never applied twice because of a retry here.

use crate::error::EngineError;
use crate::inbox::{Input, Reply};
use crate::shared::Shared;
use crate::status::{InstanceStatus, ReadRequest, ReadResponse, WaitFor};
use cairn_core::{ClientRequestKind, ClientResponse, RuntimeStatus};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::oneshot;

/// The first byte of every request and answer: a node refuses a form it does not know rather
/// than misread it (nodes of two Cairn versions during a rolling upgrade).
pub(crate) const WIRE_VERSION: u8 = 1;

/// What the owner answers when the partition does not run there (any more, or yet): the
/// request was not queued, so sending it again is safe whatever it is.
pub const NOT_HERE: &str = "the partition does not run on this node";

/// Whether a forwarded request may be sent again when its answer is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedKind {
    /// Changes the hub (start, event, terminate, purge…): sent again only if it was not queued.
    Write,
    /// Reads: safe to send again.
    Read,
    /// Waits for an instance to start or end: safe to send again, and may take long.
    Wait,
}

/// A request on its way to a partition's owner.
#[derive(Debug, Clone)]
pub struct Forwarded {
    pub bytes: Vec<u8>,
    pub kind: ForwardedKind,
}

/// Carries forwarded requests to the node that runs a partition, and its answers back.
pub trait Forwarder: Send + Sync + std::fmt::Debug {
    /// Sends `request` to the node running `partition`; resolves with the bytes that node's
    /// [`answer`] produced, or with why there is no answer.
    fn forward(
        &self,
        partition: u32,
        request: Forwarded,
    ) -> BoxFuture<'static, Result<Vec<u8>, EngineError>>;
}

#[derive(Serialize, Deserialize)]
enum WireRequest {
    Client(ClientRequestKind),
    Read(ReadRequest),
    Wait { instance_id: String, until: WaitFor },
}

#[derive(Serialize, Deserialize)]
enum WireAnswer {
    Client(ClientResponse),
    Read(ReadResponse),
    Wait(Box<InstanceStatus>),
}

/// [`EngineError`] as it crosses the wire (its sources become text).
#[derive(Serialize, Deserialize)]
enum WireError {
    InvalidArgument(String),
    NotFound(String),
    AlreadyExists {
        instance_id: String,
        status: RuntimeStatus,
    },
    WrongStatus {
        instance_id: String,
        status: RuntimeStatus,
    },
    Refused {
        instance_id: String,
        reason: String,
    },
    PayloadTooLarge {
        size: usize,
        limit: usize,
    },
    Timeout(std::time::Duration),
    Storage {
        partition: u32,
        message: String,
    },
    Busy {
        partition: u32,
        queued: usize,
    },
    /// The partition does not run on the answering node: the request was not queued.
    NotHere,
    /// The partition stopped on the answering node after the request was queued: it may or
    /// may not have been applied.
    Interrupted,
}

impl From<EngineError> for WireError {
    fn from(e: EngineError) -> WireError {
        match e {
            EngineError::InvalidInstanceId(e) => WireError::InvalidArgument(e.to_string()),
            EngineError::InvalidArgument(m) => WireError::InvalidArgument(m),
            EngineError::NotFound(id) => WireError::NotFound(id),
            EngineError::AlreadyExists {
                instance_id,
                status,
            } => WireError::AlreadyExists {
                instance_id,
                status,
            },
            EngineError::WrongStatus {
                instance_id,
                status,
            } => WireError::WrongStatus {
                instance_id,
                status,
            },
            EngineError::Refused {
                instance_id,
                reason,
            } => WireError::Refused {
                instance_id,
                reason,
            },
            EngineError::PayloadTooLarge { size, limit } => {
                WireError::PayloadTooLarge { size, limit }
            }
            EngineError::Timeout(d) => WireError::Timeout(d),
            EngineError::Storage { partition, message } => {
                WireError::Storage { partition, message }
            }
            EngineError::DataDir { dir, reason } => WireError::Storage {
                partition: u32::MAX,
                message: format!("the data directory {dir} cannot be used: {reason}"),
            },
            EngineError::ShuttingDown => WireError::Interrupted,
            EngineError::Busy { partition, queued } => WireError::Busy { partition, queued },
            EngineError::Serialization(e) => WireError::InvalidArgument(e.to_string()),
        }
    }
}

impl WireError {
    fn into_engine(self, partition: u32) -> EngineError {
        match self {
            WireError::InvalidArgument(m) => EngineError::InvalidArgument(m),
            WireError::NotFound(id) => EngineError::NotFound(id),
            WireError::AlreadyExists {
                instance_id,
                status,
            } => EngineError::AlreadyExists {
                instance_id,
                status,
            },
            WireError::WrongStatus {
                instance_id,
                status,
            } => EngineError::WrongStatus {
                instance_id,
                status,
            },
            WireError::Refused {
                instance_id,
                reason,
            } => EngineError::Refused {
                instance_id,
                reason,
            },
            WireError::PayloadTooLarge { size, limit } => {
                EngineError::PayloadTooLarge { size, limit }
            }
            WireError::Timeout(d) => EngineError::Timeout(d),
            WireError::Storage { partition, message } => {
                EngineError::Storage { partition, message }
            }
            WireError::Busy { partition, queued } => EngineError::Busy { partition, queued },
            WireError::NotHere => EngineError::Storage {
                partition,
                message: NOT_HERE.into(),
            },
            WireError::Interrupted => EngineError::Storage {
                partition,
                message: "the partition moved to another node while the request was in flight: \
                          it may or may not have been applied; read the instance's status before \
                          sending it again"
                    .into(),
            },
        }
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = vec![WIRE_VERSION];
    // Every type here serializes (no maps with non-string keys, no skipped fields).
    bytes.extend(postcard::to_allocvec(value).unwrap_or_default());
    bytes
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&WIRE_VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!(
            "a forwarded message of wire version {v} (this node speaks {WIRE_VERSION}): \
             run one Cairn version across the cluster"
        )),
        None => Err("an empty forwarded message".into()),
    }
}

/// Whether `e` is the owner's "not here" (the request was not queued: safe to send again).
pub fn is_not_here(e: &EngineError) -> bool {
    matches!(e, EngineError::Storage { message, .. } if message == NOT_HERE)
}

/// Forwards a client request for `partition` (which does not run here) and answers its reply
/// when the owner does. Returns at once.
pub(crate) fn forward(
    forwarder: Arc<dyn Forwarder>,
    partition: u32,
    input: Input,
) -> Result<(), EngineError> {
    let asked = |request: WireRequest, kind| (forwarder, partition, encode(&request), kind);
    match input {
        Input::Client { kind, reply } => spawn_forward(
            asked(WireRequest::Client(kind), ForwardedKind::Write),
            reply,
            |a| match a {
                WireAnswer::Client(r) => Some(r),
                _ => None,
            },
        ),
        Input::Read { request, reply } => spawn_forward(
            asked(WireRequest::Read(request), ForwardedKind::Read),
            reply,
            |a| match a {
                WireAnswer::Read(r) => Some(r),
                _ => None,
            },
        ),
        Input::Wait {
            instance_id,
            until,
            reply,
        } => spawn_forward(
            asked(
                WireRequest::Wait { instance_id, until },
                ForwardedKind::Wait,
            ),
            reply,
            |a| match a {
                WireAnswer::Wait(r) => Some(*r),
                _ => None,
            },
        ),
        _ => return Err(EngineError::ShuttingDown),
    }
    Ok(())
}

/// Sends the request and answers `reply` with what `pick` finds in the owner's answer. Gives
/// up as soon as nobody waits for the reply any more (a client's wait that timed out must not
/// keep asking the owner).
fn spawn_forward<T: Send + 'static>(
    (forwarder, partition, bytes, kind): (Arc<dyn Forwarder>, u32, Vec<u8>, ForwardedKind),
    mut reply: Reply<T>,
    pick: fn(WireAnswer) -> Option<T>,
) {
    tokio::spawn(async move {
        let asked = forwarder.forward(partition, Forwarded { bytes, kind });
        let answer = tokio::select! {
            answer = asked => answer,
            _ = reply.closed() => return,
        };
        let answer = answer
            .and_then(|bytes| {
                decode::<Result<WireAnswer, WireError>>(&bytes).map_err(|why| {
                    EngineError::Storage {
                        partition,
                        message: format!("the owner's answer cannot be read: {why}"),
                    }
                })
            })
            .and_then(|a| a.map_err(|e| e.into_engine(partition)))
            .and_then(|a| {
                pick(a).ok_or_else(|| EngineError::Storage {
                    partition,
                    message: "the owner answered another kind of request".into(),
                })
            });
        let _ = reply.send(answer);
    });
}

/// Answers a request forwarded to `partition` on this node: queues it to the partition, if it
/// runs here, and encodes its answer (or why there is none) for the node that asked.
pub(crate) async fn answer(shared: &Arc<Shared>, partition: u32, bytes: &[u8]) -> Vec<u8> {
    let result = answer_inner(shared, partition, bytes).await;
    encode(&result)
}

async fn answer_inner(
    shared: &Arc<Shared>,
    partition: u32,
    bytes: &[u8],
) -> Result<WireAnswer, WireError> {
    let request: WireRequest = decode(bytes).map_err(WireError::InvalidArgument)?;
    let Some(queues) = shared.slots.get(partition) else {
        return Err(WireError::NotHere);
    };
    let queue = |input: Input| {
        queues.inbox.try_send(input).map_err(|e| match e {
            tokio::sync::mpsc::error::TrySendError::Full(_) => WireError::Busy {
                partition,
                queued: queues.inbox.max_capacity(),
            },
            tokio::sync::mpsc::error::TrySendError::Closed(_) => WireError::NotHere,
        })
    };
    let interrupted = |_| WireError::Interrupted;
    match request {
        WireRequest::Client(kind) => {
            let (reply, rx) = oneshot::channel();
            queue(Input::Client { kind, reply })?;
            Ok(WireAnswer::Client(rx.await.map_err(interrupted)??))
        }
        WireRequest::Read(request) => {
            let (reply, rx) = oneshot::channel();
            queue(Input::Read { request, reply })?;
            Ok(WireAnswer::Read(rx.await.map_err(interrupted)??))
        }
        WireRequest::Wait { instance_id, until } => {
            let (reply, rx) = oneshot::channel();
            queue(Input::Wait {
                instance_id,
                until,
                reply,
            })?;
            Ok(WireAnswer::Wait(Box::new(rx.await.map_err(interrupted)??)))
        }
    }
}

/// Whether the owner's `answer` to `request` says to send it again, to whichever node runs
/// the partition by then: the partition was not there (whatever the request), or it stopped
/// while a read or a wait was in flight.
pub fn should_retry(request: &Forwarded, answer: &[u8]) -> bool {
    match decode::<Result<WireAnswer, WireError>>(answer) {
        Ok(Err(WireError::NotHere)) => true,
        Ok(Err(WireError::Interrupted)) => request.kind != ForwardedKind::Write,
        _ => false,
    }
}

//! The inputs of a partition leader: client requests and reads, results of the work it started,
//! messages from other partitions, durability notices. What the client, the engine and the
//! leader say to each other, with no dependency among them.

use crate::error::EngineError;
use crate::replay::Cursor;
use crate::status::{InstanceStatus, ReadRequest, ReadResponse, WaitFor};
use cairn_core::*;
use tokio::sync::oneshot;

/// Where an answer goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, EngineError>>;

/// Everything a leader reacts to.
pub(crate) enum Input {
    Client {
        kind: ClientRequestKind,
        reply: Reply<ClientResponse>,
    },
    Read {
        request: ReadRequest,
        reply: Reply<ReadResponse>,
    },
    Wait {
        instance_id: String,
        until: WaitFor,
        reply: Reply<InstanceStatus>,
    },
    /// Messages or an acknowledgement from another partition, through the router.
    Routed(crate::router::Envelope),
    EpisodeDone {
        instance_id: String,
        result: Option<EpisodeResult>,
        cursor: Option<Cursor>,
    },
    ActivityDone {
        activity_id: u64,
        result: TaskResult,
    },
    EntityDone {
        entity_id: String,
        result: EntityBatchResult,
    },
    /// A read that ran off the partition's task, to be held until `position` is durable.
    ReadDone {
        position: u64,
        reply: Reply<ReadResponse>,
        result: Result<ReadResponse, EngineError>,
    },
    /// A client request whose stored instances were read ahead, off the partition's task, while
    /// the stored state read `evictions` evictions (see `leader::read_ahead`).
    ReadAhead {
        evictions: u64,
        instances: Vec<(String, Option<InstanceState>)>,
        kind: ClientRequestKind,
        reply: Reply<ClientResponse>,
    },
    Durable(u64),
    /// A checkpoint written in the background has reached the store (or failed).
    CheckpointWritten {
        position: u64,
    },
    /// A checkpoint written in place, now (the partition waits for it).
    Checkpoint(Reply<()>),
    /// A checkpoint written in the background like the periodic ones, started now; answered
    /// when it is in the store.
    CheckpointInBackground(Reply<()>),
    Shutdown(oneshot::Sender<()>),
}

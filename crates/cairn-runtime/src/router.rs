//! # The `Router` seam: how messages and acknowledgements travel between partitions
//!
//! A partition's outbox (sub-orchestration starts and results, events, entity operations and
//! their answers) leaves the partition once durable, as a batch of [`MessageId`]-stamped
//! messages; the receiver logs it, applies each message once (its per-sender dedup position is
//! part of its state) and acknowledges the highest id it holds durably. A router carries those
//! batches and acknowledgements. In-process channels are the default ([`InProcessRouters`]);
//! the simulator puts a fault-injecting router here, and the cluster mode JetStream subjects.
//!
//! What an implementation promises:
//! * the first delivery of each envelope from one partition to another arrives in the order it
//!   was sent (a later batch never overtakes an earlier one: the receiver's dedup keeps only
//!   the highest id it has seen);
//! * an envelope may be delivered more than once, at any later time (dedup drops the copies);
//! * an envelope is lost only together with its sender's unacknowledged state (a crash), after
//!   which the recovered sender sends its whole unacknowledged outbox again.
//!
//! It never looks inside a message and never decides where an instance lives.

use crate::inbox::Input;
use cairn_core::{Message, MessageId};
use std::sync::Arc;

/// What travels between partitions.
#[derive(Debug, Clone)]
pub enum Envelope {
    /// Outbox messages from partition `from`, in id order.
    Messages {
        from: u32,
        batch: Vec<(MessageId, Message)>,
    },
    /// Partition `from` holds every message up to `up_to` durably.
    Ack { from: u32, up_to: MessageId },
}

/// Sends envelopes to partitions, wherever they run.
pub trait Router: Send + Sync {
    fn send(&self, to: u32, envelope: Envelope);
}

/// Opens the router of an engine, given how to hand an envelope to a partition that runs in
/// this process.
pub trait Routers: Send + Sync + std::fmt::Debug {
    fn open(&self, local: LocalPartitions) -> Arc<dyn Router>;
}

/// The inputs of the partitions running in this process (which can change while the engine
/// runs, in cluster mode).
#[derive(Clone)]
pub struct LocalPartitions {
    slots: Arc<crate::shared::Slots>,
}

impl LocalPartitions {
    pub(crate) fn new(slots: Arc<crate::shared::Slots>) -> LocalPartitions {
        LocalPartitions { slots }
    }

    /// Hands `envelope` to partition `to`; false if it does not run here (or has stopped).
    pub fn deliver(&self, to: u32, envelope: Envelope) -> bool {
        self.slots
            .get(to)
            .is_some_and(|q| q.input.send(Input::Routed(envelope)).is_ok())
    }
}

/// Every partition in this process: envelopes go straight into the receiver's input queue
/// (the default).
#[derive(Debug, Default, Clone, Copy)]
pub struct InProcessRouters;

struct InProcessRouter(LocalPartitions);

impl Routers for InProcessRouters {
    fn open(&self, local: LocalPartitions) -> Arc<dyn Router> {
        Arc::new(InProcessRouter(local))
    }
}

impl Router for InProcessRouter {
    fn send(&self, to: u32, envelope: Envelope) {
        // A partition that stopped is shutting down with the whole engine; what it did not
        // acknowledge is sent again after recovery.
        let _ = self.0.deliver(to, envelope);
    }
}

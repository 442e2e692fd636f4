//! # cairn-core: the model and the partition state machine
//!
//! This crate owns everything that must be *deterministic* in Cairn:
//!
//! * [`ids`]: instance ids, their validation, and the stable partition hash;
//! * [`history`]: the history events an orchestration is replayed from, failures, statuses;
//! * [`event`]: the records of a partition's log (client requests, messages between partitions,
//!   episode/activity/timer results) and the effects the state machine asks its shell to perform;
//! * [`partition`]: the partition state machine itself, `apply(state, record) -> effects`;
//! * [`index`]: the keys under which the store indexes instances (status, name, time).
//!
//! It must never do I/O, read a clock, or draw random numbers: time and ids enter through log
//! records. That is what makes recovery (checkpoint + log replay) exact, and what lets the tests
//! compare "apply everything" with "apply a prefix, checkpoint, recover, apply the rest".

pub mod event;
pub mod history;
pub mod ids;
pub mod index;
pub mod mutation;
pub mod partition;
pub mod work;

pub use event::*;
pub use history::*;
pub use ids::*;
pub use partition::{
    entity_name, is_runnable, Changed, CheckpointData, CheckpointTake, DirtySet, EmptySource,
    EncodedInstance, EntityRecord, Evicted, Globals, Instance, InstanceSource, InstanceState,
    PartitionState, SourceError, Upgrade,
};

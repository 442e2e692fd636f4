//! # cairn-sdk: the Rust programming model
//!
//! What a Cairn user writes, and how it is replayed:
//!
//! * [`orchestration`]: the orchestration context (activities, sub-orchestrations, timers,
//!   events, entities, critical sections, `continue_as_new`) and durable futures;
//! * [`replay`]: runs orchestrator code over history, keeping live cursors between episodes;
//! * [`registry`]: the names orchestrations, activities and entities are registered under;
//! * [`entity`]: the `Entity` trait and how a batch of operations runs;
//! * [`error`]: [`TaskError`], the failure user code returns and receives.
//!
//! Orchestration code runs deterministically over history: its time and ids come from the
//! history it replays (`current_time`, `new_guid`). Entity operations are not replayed: what they
//! decide, including the ids of orchestrations they start, is recorded in their batch result.
//! The engine (`cairn-runtime`) runs all of it; most users depend on `cairn-runtime`, which
//! re-exports this crate.

pub mod entity;
pub mod error;
pub mod orchestration;
pub mod registry;
pub mod replay;

pub use entity::{Entity, EntityContext};
pub use error::TaskError;
pub use orchestration::{CriticalSection, DurableFuture, OrchestrationContext, RetryPolicy};
pub use registry::{ActivityContext, Registry};

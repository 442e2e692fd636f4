//! # cairn-storage: the durable state of one partition
//!
//! A Cairn partition is a deterministic state machine over a durable log. This crate owns the two
//! things that make that state survive a crash:
//!
//! * [`log`]: the per-partition segmented write-ahead log, with a group-commit writer thread
//!   ([`log::GroupCommitLog`]) that lets thousands of appends share one `fdatasync`;
//! * [`store`]: the embedded checkpoint store (one redb database per partition) holding the
//!   partition state as of a log position;
//! * [`seam`]: the [`seam::PartitionLog`] trait the partition leader writes through, with the
//!   local implementation and an in-memory one with fault injection (for the simulator), and
//!   [`conformance`], the checks every implementation must pass.
//!
//! Recovery is "load the checkpoint at position P, then replay the log from P + 1".
//!
//! This crate deals in opaque bytes only. It must never interpret records or checkpoint blobs
//! (serialization belongs to the runtime), and it must never depend on an async runtime: the
//! log's writer is a plain OS thread that notifies async code through a caller-supplied closure.

pub mod conformance;
pub mod log;
pub mod seam;
pub mod settings;
pub mod store;

pub use log::{
    DurableWatch, GroupCommitLog, LogConfig, LogError, LogReader, LogStats, SegmentedLog,
};
pub use store::{CheckpointBatch, PartitionStore, StoreError};

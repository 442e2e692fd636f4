//! Errors of the engine and of user code.

use cairn_core::{IdError, RuntimeStatus};
use thiserror::Error;

pub use cairn_sdk::TaskError;

/// Errors of the engine and its client.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error("invalid instance id: {0}")]
    InvalidInstanceId(#[from] IdError),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("instance '{0}' not found")]
    NotFound(String),
    #[error("instance '{instance_id}' already exists with status {status}")]
    AlreadyExists {
        instance_id: String,
        status: RuntimeStatus,
    },
    #[error("instance '{instance_id}' is {status}; the request does not apply to an instance in this state")]
    WrongStatus {
        instance_id: String,
        status: RuntimeStatus,
    },
    /// The request applies to the instance's status but not to this instance.
    #[error("instance '{instance_id}' {reason}")]
    Refused { instance_id: String, reason: String },
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes (set max_payload_bytes to raise it)")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("the data directory {dir} cannot be used: {reason}")]
    DataDir { dir: String, reason: String },
    #[error("storage failure in partition {partition}: {message}")]
    Storage { partition: u32, message: String },
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The partition's queue of client requests is full: the engine is taking work more
    /// slowly than it is offered. Nothing was done; retry after a moment (or use
    /// [`crate::Client::waiting_for_room`], which waits for room instead).
    #[error(
        "partition {partition} is busy: {queued} client requests are queued for it already; \
         nothing was done, retry after a moment"
    )]
    Busy { partition: u32, queued: usize },
    #[error("failed to serialize or deserialize a payload: {0}")]
    Serialization(#[from] serde_json::Error),
}

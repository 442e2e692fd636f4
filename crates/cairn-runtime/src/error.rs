//! Errors of the engine and of user code.

use cairn_core::{FailureDetails, IdError, RuntimeStatus};
use thiserror::Error;

/// A failure of an activity, sub-orchestration or orchestration, as user code sees it.
///
/// It carries the [`FailureDetails`] that travel in history: error type, message, optional
/// details and an optional inner failure, so a failure deep in a call chain stays readable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{failure}")]
pub struct TaskError {
    pub failure: FailureDetails,
}

impl TaskError {
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        TaskError {
            failure: FailureDetails::new(error_type, message),
        }
    }

    /// A failure that retry policies must not retry.
    pub fn non_retriable(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        TaskError {
            failure: FailureDetails::new(error_type, message).non_retriable(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.failure.details = Some(details.into());
        self
    }

    pub fn error_type(&self) -> &str {
        &self.failure.error_type
    }

    pub fn message(&self) -> &str {
        &self.failure.message
    }
}

impl From<FailureDetails> for TaskError {
    fn from(failure: FailureDetails) -> Self {
        TaskError { failure }
    }
}

impl From<String> for TaskError {
    fn from(message: String) -> Self {
        TaskError::new("Error", message)
    }
}

impl From<&str> for TaskError {
    fn from(message: &str) -> Self {
        TaskError::new("Error", message)
    }
}

impl From<serde_json::Error> for TaskError {
    fn from(e: serde_json::Error) -> Self {
        TaskError::new("SerializationError", e.to_string())
    }
}

impl From<std::io::Error> for TaskError {
    fn from(e: std::io::Error) -> Self {
        TaskError::new("IoError", e.to_string())
    }
}

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

//! The error user code returns and receives.

use cairn_core::FailureDetails;
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

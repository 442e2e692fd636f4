//! The error user code returns and receives.

use cairn_core::FailureDetails;
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

/// Decodes the JSON input of `what` (e.g. "orchestration 'x'"); no input reads as `null`.
pub(crate) fn decode_input<I: DeserializeOwned>(
    input: Option<&str>,
    what: &str,
) -> Result<I, FailureDetails> {
    let text = input.filter(|s| !s.is_empty()).unwrap_or("null");
    serde_json::from_str(text).map_err(|e| {
        FailureDetails::new(
            "InputDeserializationError",
            format!("input of {what} could not be deserialized: {e}"),
        )
        .non_retriable()
    })
}

/// Encodes user code's output as the JSON that travels in history.
pub(crate) fn encode_output<O: Serialize>(output: &O) -> Result<Option<String>, FailureDetails> {
    serde_json::to_string(output).map(Some).map_err(|e| {
        FailureDetails::new(
            "SerializationError",
            format!("output could not be serialized: {e}"),
        )
        .non_retriable()
    })
}

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

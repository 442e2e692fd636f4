//! Errors as the HTTP API reports them: a status code and `{"error": kind, "message": text}`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use cairn_runtime::{EngineError, RuntimeStatus};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NoSuchRoute(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    /// The instance has ended: the request can no longer apply (Durable Functions' 410).
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    /// The engine is taking work more slowly than it is offered (429 with `Retry-After`).
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "NotFound"),
            ApiError::NoSuchRoute(_) => (StatusCode::NOT_FOUND, "NoSuchRoute"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "Conflict"),
            ApiError::Gone(_) => (StatusCode::GONE, "Gone"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable"),
            ApiError::Busy(_) => (StatusCode::TOO_MANY_REQUESTS, "Busy"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "Internal"),
        }
    }

    /// Maps an engine error; `what` names the request for the message.
    pub fn from_engine(e: EngineError) -> ApiError {
        let message = e.to_string();
        match e {
            EngineError::NotFound(_) => ApiError::NotFound(message),
            EngineError::WrongStatus { status, .. } if status.is_terminal() => {
                ApiError::Gone(message)
            }
            EngineError::WrongStatus { .. }
            | EngineError::AlreadyExists { .. }
            | EngineError::Refused { .. } => ApiError::Conflict(message),
            EngineError::InvalidInstanceId(_)
            | EngineError::InvalidArgument(_)
            | EngineError::Serialization(_) => ApiError::BadRequest(message),
            EngineError::PayloadTooLarge { .. } => ApiError::PayloadTooLarge(message),
            EngineError::ShuttingDown | EngineError::Timeout(_) => ApiError::Unavailable(message),
            EngineError::Busy { .. } => ApiError::Busy(message),
            EngineError::Storage { .. } | EngineError::DataDir { .. } => {
                ApiError::Internal(message)
            }
        }
    }

    /// A request that only applies to some statuses, refused for `status`.
    pub fn wrong_status(instance_id: &str, status: RuntimeStatus, wanted: &str) -> ApiError {
        let message = format!("instance '{instance_id}' is {status}; {wanted}");
        if status.is_terminal() {
            ApiError::Gone(message)
        } else {
            ApiError::Conflict(message)
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        ApiError::from_engine(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.parts();
        let body = serde_json::json!({ "error": kind, "message": self.to_string() });
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full partition queue reads as "slow down, retry", not as a failure.
    #[test]
    fn busy_is_429_with_retry_after() {
        let response = ApiError::from_engine(EngineError::Busy {
            partition: 3,
            queued: 10_000,
        })
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "1");
    }
}

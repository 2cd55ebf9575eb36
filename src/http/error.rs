//! The one place errors become HTTP answers: a status and a JSON body
//! `{"error": code, "message": text}` that never carries internals.

use actix_web::{
    HttpResponse, ResponseError,
    http::{
        Method, StatusCode,
        header::{ALLOW, RETRY_AFTER},
    },
};
use serde_json::json;

use crate::{operations::OpsError, sources::Rejection, store::StoreError};

/// What a 503 suggests as the wait before retrying (seconds).
const STORE_RETRY_AFTER_SECS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("no such route")]
    NotFound,
    /// A route served for another method (named in `Allow`).
    #[error("this route answers {0} only")]
    MethodNotAllowed(Method),
    #[error("{0}")]
    Invalid(String),
    #[error("body exceeds the limit of {0} bytes")]
    TooLarge(usize),
    #[error("the body did not arrive within {0} s")]
    SlowBody(u64),
    #[error("the body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    /// Never a 4xx: platforms retry only 5xx and network failures.
    #[error("the store cannot take the write now; retry later")]
    Unavailable(#[source] StoreError),
    /// More deliveries are in flight than memory is set aside for.
    #[error("too many deliveries in flight; retry later")]
    Busy,
    /// An admin request names a record or delivery the store does not hold.
    #[error("{0}")]
    UnknownRecord(String),
    /// The store failed an admin read or retry.
    #[error("the store cannot answer now; retry later")]
    StoreFailed(#[source] StoreError),
}

impl ApiError {
    /// The `outcome` label of `relay_webhooks_received_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) | ApiError::NotFound => "unauthorized",
            ApiError::Invalid(_)
            | ApiError::MethodNotAllowed(_)
            | ApiError::UnknownRecord(_)
            | ApiError::SlowBody(_)
            | ApiError::UnsupportedMediaType => "invalid",
            ApiError::TooLarge(_) => "too_large",
            ApiError::Unavailable(_) | ApiError::Busy | ApiError::StoreFailed(_) => "unavailable",
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Invalid(_) => "invalid_request",
            ApiError::TooLarge(_) => "payload_too_large",
            ApiError::SlowBody(_) => "request_timeout",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Unavailable(_) | ApiError::StoreFailed(_) => "store_unavailable",
            ApiError::Busy => "busy",
            ApiError::UnknownRecord(_) => "no_such_record",
        }
    }
}

impl From<OpsError> for ApiError {
    fn from(err: OpsError) -> Self {
        match err {
            OpsError::Invalid(why) => ApiError::Invalid(why),
            OpsError::UnknownRecord(_) => ApiError::UnknownRecord(err.to_string()),
            OpsError::Store(cause) => ApiError::StoreFailed(cause),
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        match rejection {
            Rejection::Unauthorized(why) => ApiError::Unauthorized(why),
            Rejection::UnknownRoute => ApiError::NotFound,
            Rejection::Invalid(why) | Rejection::Unfetchable(why) => ApiError::Invalid(why),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound | ApiError::UnknownRecord(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::SlowBody(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) | ApiError::Busy | ApiError::StoreFailed(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let ApiError::Unavailable(cause) | ApiError::StoreFailed(cause) = self {
            tracing::error!(error = %cause, "store unavailable");
        }
        if let ApiError::MethodNotAllowed(allowed) = self {
            response.insert_header((ALLOW, allowed.as_str()));
        }
        if self.status_code() == StatusCode::SERVICE_UNAVAILABLE {
            // Platforms retry 5xx on their own schedule; others may use the hint.
            response.insert_header((RETRY_AFTER, STORE_RETRY_AFTER_SECS));
        }
        response.json(json!({ "error": self.code(), "message": self.to_string() }))
    }
}

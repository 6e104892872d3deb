//! The JSON error every API answers with: an HTTP status, a stable code and a message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// An API error: `{"code": "...", "message": "..."}` with an HTTP status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// The HTTP status (not serialised).
    #[serde(skip, default = "default_status")]
    pub status: u16,
    /// A stable, machine-readable code (`bad_request`, `not_found`, `conflict`, ...).
    pub code: String,
    /// What failed, with the value that made it fail.
    pub message: String,
}

fn default_status() -> u16 {
    500
}

impl ApiError {
    /// An error with any status and code.
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// 400: the request is malformed or names something unsupported.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "bad_request", message)
    }

    /// 404: the named object does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found", message)
    }

    /// 405: the operation does not fit the current state (Cloud Hypervisor's convention).
    pub fn wrong_state(message: impl Into<String>) -> Self {
        Self::new(405, "wrong_state", message)
    }

    /// 409: the state of the object forbids the operation.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, "conflict", message)
    }

    /// 500: the server failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal", message)
    }

    /// 501: the operation exists in the API but thinvm does not support it (yet).
    pub fn not_supported(message: impl Into<String>) -> Self {
        Self::new(501, "not_supported", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self)).into_response()
    }
}

/// Turns axum's JSON extraction failures (malformed JSON, unknown fields, wrong types) into our
/// 400 with serde's message, which names the field.
impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        ApiError::bad_request(r.body_text())
    }
}

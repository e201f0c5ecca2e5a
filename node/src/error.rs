//! The errors a request can end in, from any layer: each carries the HTTP status and the
//! `{"error": {"code", "message", ...}}` body it answers with.

use axum::Json;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use concordance_client::ErrorBody;
use concordance_client::ErrorDetail;

use crate::store::records::Response as CommandResponse;

/// Any failure of starting, serving or an offline tool, reported to the command line.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: ErrorDetail,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            detail: ErrorDetail {
                code: code.into(),
                message: message.into(),
                leader: None,
                leader_address: None,
                oldest_revision: None,
            },
        }
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn unavailable(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn internal_from(e: impl std::fmt::Display) -> Self {
        Self::internal(e.to_string())
    }

    /// Storage failures: reported (and logged), never papered over with a guess.
    pub fn storage(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "storage error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage_error",
            e.to_string(),
        )
    }

    pub fn with_leader(mut self, name: Option<String>, address: Option<String>) -> Self {
        self.detail.leader = name;
        self.detail.leader_address = address;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { error: self.detail })).into_response()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.detail.code, self.detail.message)
    }
}

/// A command's answer as the client sees it: a rejected command is a 4xx.
pub fn answer(response: CommandResponse) -> Result<CommandResponse, ApiError> {
    match response {
        CommandResponse::Rejected { code, message } => {
            let status = match code.as_str() {
                "lease_not_found" => StatusCode::NOT_FOUND,
                "lease_exists" => StatusCode::CONFLICT,
                _ => StatusCode::BAD_REQUEST,
            };
            Err(ApiError::new(status, &code, message))
        }
        other => Ok(other),
    }
}

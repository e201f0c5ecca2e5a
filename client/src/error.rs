//! Errors of the client: the server's answer (with its stable code) or why there was none.

use reqwest::StatusCode;

use crate::types::ErrorBody;
use crate::types::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error body.
    #[error("{status}: {code}: {message}", code = .body.error.code, message = .body.error.message)]
    Api {
        status: StatusCode,
        body: ErrorBody,
        /// The answer's `Retry-After` (sent with `overloaded`): retries wait at least this.
        retry_after: Option<std::time::Duration>,
    },
    /// A watch asked for history the cluster no longer keeps: read the current state and
    /// watch again from its revision + 1.
    #[error(
        "compacted: revision {requested} is no longer kept; the oldest available is {oldest_revision}"
    )]
    Compacted {
        requested: u64,
        oldest_revision: u64,
    },
    #[error("request failed: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("TLS: {0}")]
    Tls(reqwest::Error),
    #[error("TLS: {0}")]
    TlsFiles(String),
    #[error("invalid endpoint {0:?}: {1}")]
    Endpoint(String, String),
    #[error("unexpected answer {status}: {body}")]
    Unexpected { status: StatusCode, body: String },
    /// A local development node could not be started or stopped.
    #[error("local node: {0}")]
    LocalNode(String),
}

impl Error {
    /// The API error code, when the server answered one ([`ErrorCode::Compacted`] for
    /// [`Error::Compacted`]).
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            Error::Api { body, .. } => Some(body.error.code),
            Error::Compacted { .. } => Some(ErrorCode::Compacted),
            _ => None,
        }
    }

    /// [`Error::error_code`] as its wire string, for messages and logs.
    pub fn code(&self) -> Option<&'static str> {
        self.error_code().map(ErrorCode::as_str)
    }

    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Api { status, .. } | Error::Unexpected { status, .. } => Some(*status),
            Error::Compacted { .. } => Some(StatusCode::GONE),
            _ => None,
        }
    }

    /// Whether trying again (possibly on another endpoint) may succeed: no connection, a
    /// timeout, a 503, or a code [`ErrorCode::is_unavailable`] names (whatever the status a
    /// proxy in between gave it). Writes are only retried with an
    /// idempotency key, so a retry never applies a write twice.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport(e) => !e.is_builder(),
            Error::Api { status, body, .. } => {
                *status == StatusCode::SERVICE_UNAVAILABLE || body.error.code.is_unavailable()
            }
            Error::Unexpected { status, .. } => {
                *status == StatusCode::SERVICE_UNAVAILABLE
                    || *status == StatusCode::BAD_GATEWAY
                    || *status == StatusCode::GATEWAY_TIMEOUT
            }
            _ => false,
        }
    }

    /// How long the server asked the client to wait before it tries again (`Retry-After`).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The leader's address named by a `not_leader` answer.
    pub fn leader_address(&self) -> Option<&str> {
        match self {
            Error::Api { body, .. } => body.error.leader_address.as_deref(),
            _ => None,
        }
    }
}

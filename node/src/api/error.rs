//! The HTTP edge of every error: a status and the `{"error": {"code", "message", ...}}` body.
//! The layers below answer typed errors ([`NodeError`]); they become HTTP here only.

use axum::Json;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use concordance_client::ErrorBody;
use concordance_client::ErrorCode;
use concordance_client::ErrorDetail;

use crate::error::NodeError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: ErrorDetail,
    /// `Retry-After` seconds, besides `overloaded`'s own.
    pub retry_after_secs: Option<u64>,
}

/// The status an error code answers with. Exhaustive, so a new code cannot be added without
/// deciding its status.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidBody
        | ErrorCode::InvalidQuery
        | ErrorCode::InvalidKey
        | ErrorCode::ValueTooLarge
        | ErrorCode::InvalidIdempotencyKey
        | ErrorCode::InvalidLimit
        | ErrorCode::InvalidRevision
        | ErrorCode::InvalidCompare
        | ErrorCode::TxnTooLarge
        | ErrorCode::DuplicateKey
        | ErrorCode::InvalidLease
        | ErrorCode::InvalidTtl
        | ErrorCode::InvalidName
        | ErrorCode::InvalidTimeout
        | ErrorCode::InvalidNodeId
        | ErrorCode::LastVoter
        | ErrorCode::NotAVoter
        | ErrorCode::NoOtherVoter
        | ErrorCode::ProtocolUnsupported
        | ErrorCode::InvalidEntry
        | ErrorCode::BatchTooLarge
        | ErrorCode::SnapshotInterrupted
        | ErrorCode::InvalidSnapshot
        | ErrorCode::InvalidConfig => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound
        | ErrorCode::KeyNotFound
        | ErrorCode::LeaseNotFound
        | ErrorCode::MemberNotFound => StatusCode::NOT_FOUND,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::LeaseExists
        | ErrorCode::LockHeld
        | ErrorCode::LockTimeout
        | ErrorCode::ElectionTimeout
        | ErrorCode::LockLost
        | ErrorCode::MembershipChanged
        | ErrorCode::MembershipError
        | ErrorCode::NameInUse
        | ErrorCode::ClusterMismatch
        | ErrorCode::WouldLoseQuorum
        | ErrorCode::AlarmStillRaised
        | ErrorCode::CommandSetUnsupported => StatusCode::CONFLICT,
        ErrorCode::Compacted => StatusCode::GONE,
        ErrorCode::TooManyWatches | ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
        // Not retried by clients: it lasts until an admin makes room and disarms the alarm.
        ErrorCode::NoSpace | ErrorCode::QuotaExceeded => StatusCode::INSUFFICIENT_STORAGE,
        ErrorCode::StorageError | ErrorCode::Internal | ErrorCode::Unknown => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        // Exactly the codes `ErrorCode::is_unavailable` names (a test below holds them equal;
        // this match stays exhaustive so a new code must be given a status).
        ErrorCode::NotLeader
        | ErrorCode::NoQuorum
        | ErrorCode::LeaderChanged
        | ErrorCode::ShuttingDown
        | ErrorCode::Overloaded
        | ErrorCode::FeatureUnavailable
        | ErrorCode::MemberFenced
        | ErrorCode::RaftError
        | ErrorCode::RaftStopped
        | ErrorCode::TransferTimeout => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl ApiError {
    /// An error with the status its code answers with ([`status_of`]).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::with_status(status_of(code), code, message)
    }

    /// An error whose status is not its code's usual one (a rejection of axum's, a probe).
    pub fn with_status(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            detail: ErrorDetail {
                code,
                message: message.into(),
                leader: None,
                leader_address: None,
                oldest_revision: None,
            },
            retry_after_secs: None,
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::Internal, e.to_string())
    }

    /// Storage failures: reported (and logged), never papered over with a guess.
    pub fn storage(e: impl std::fmt::Display) -> Self {
        NodeError::storage(e).into()
    }
}

impl From<crate::auth::RateLimited> for ApiError {
    fn from(e: crate::auth::RateLimited) -> Self {
        let mut answer = Self::new(ErrorCode::RateLimited, e.to_string());
        answer.retry_after_secs = Some(e.retry_in.as_secs_f64().ceil().max(1.0) as u64);
        answer
    }
}

impl From<crate::auth::AccessDenied> for ApiError {
    fn from(e: crate::auth::AccessDenied) -> Self {
        Self::new(ErrorCode::Forbidden, e.to_string())
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let message = e.message();
        match e {
            NodeError::NotLeader { name, address } => {
                let mut answer = Self::new(ErrorCode::NotLeader, message);
                answer.detail.leader = Some(name);
                answer.detail.leader_address = Some(address);
                answer
            }
            NodeError::Remote { status, detail } => Self {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                detail,
                retry_after_secs: None,
            },
            // Whatever kept it from catching up, the read can be served once it has.
            NodeError::NotCaughtUp(why) => {
                Self::with_status(StatusCode::SERVICE_UNAVAILABLE, why.code(), message)
            }
            NodeError::NoQuorum(_)
            | NodeError::LeaderChanged
            | NodeError::ShuttingDown(_)
            | NodeError::Overloaded(_)
            | NodeError::Storage(_)
            | NodeError::Rejected(..)
            | NodeError::Internal(_) => Self::new(e.code(), message),
        }
    }
}

/// How long a client told `overloaded` waits before it asks again (`Retry-After`, seconds):
/// long enough for a queue at its bound to drain many times over.
pub const OVERLOADED_RETRY_AFTER_SECS: u64 = 1;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Set from the code, so an `overloaded` passed on from the leader carries it too.
        let secs = self
            .retry_after_secs
            .or((self.detail.code == ErrorCode::Overloaded).then_some(OVERLOADED_RETRY_AFTER_SECS));
        let retry_after = secs.map(|s| (axum::http::header::RETRY_AFTER, s.to_string()));
        (
            self.status,
            axum::response::AppendHeaders(retry_after),
            Json(ErrorBody { error: self.detail }),
        )
            .into_response()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.detail.code, self.detail.message)
    }
}

#[cfg(test)]
mod tests {
    use concordance_client::ErrorCode;

    use super::*;

    #[test]
    fn what_the_node_calls_unavailable_is_what_the_api_answers_503_for() {
        let mut errors = vec![
            NodeError::NotLeader {
                name: "n2".into(),
                address: "n2:4100".into(),
            },
            NodeError::NoQuorum("why".into()),
            NodeError::LeaderChanged,
            NodeError::ShuttingDown("why".into()),
            NodeError::Overloaded("why".into()),
            NodeError::Storage("why".into()),
            NodeError::NotCaughtUp(Box::new(NodeError::NoQuorum("why".into()))),
            NodeError::Internal("why".into()),
        ];
        for &code in ErrorCode::ALL {
            errors.push(NodeError::Rejected(code, "why".into()));
        }
        for status in [400, 404, 503] {
            errors.push(NodeError::Remote {
                status,
                detail: ApiError::new(ErrorCode::NoQuorum, "why").detail,
            });
        }
        for e in errors {
            let answer = ApiError::from(e.clone());
            assert_eq!(
                e.is_unavailable(),
                answer.status == StatusCode::SERVICE_UNAVAILABLE,
                "{e:?} answers {}",
                answer.status
            );
            assert_eq!(answer.detail.code, e.code(), "{e:?}");
            assert_eq!(answer.detail.message, e.message(), "{e:?}");
        }
    }

    #[test]
    fn not_leader_names_the_leader() {
        let answer = ApiError::from(NodeError::NotLeader {
            name: "n2".into(),
            address: "10.0.0.2:4100".into(),
        });
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.detail.code, ErrorCode::NotLeader);
        assert_eq!(answer.detail.leader.as_deref(), Some("n2"));
        assert_eq!(
            answer.detail.leader_address.as_deref(),
            Some("10.0.0.2:4100")
        );
        assert_eq!(
            answer.detail.message,
            "this node is not the leader; the leader is n2"
        );
    }

    #[test]
    fn overloaded_answers_carry_retry_after_even_when_passed_on_from_the_leader() {
        let retry_after = |e: NodeError| {
            ApiError::from(e)
                .into_response()
                .headers()
                .get(axum::http::header::RETRY_AFTER)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let secs = Some(OVERLOADED_RETRY_AFTER_SECS.to_string());
        assert_eq!(retry_after(NodeError::Overloaded("why".into())), secs);
        let from_leader = NodeError::Remote {
            status: 503,
            detail: ApiError::new(ErrorCode::Overloaded, "why").detail,
        };
        assert_eq!(retry_after(from_leader), secs);
        assert_eq!(retry_after(NodeError::NoQuorum("why".into())), None);
    }
}

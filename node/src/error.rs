//! Why a node could not do what it was asked, as a typed value without HTTP: the API layer
//! (`api/error.rs`) alone turns a [`NodeError`] into a status and an error body.

use concordance_client::ErrorCode;
use concordance_client::ErrorDetail;

use crate::store::records::RejectCode;
use crate::store::records::Response;

/// Any failure of starting, serving or an offline tool, reported to the command line.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone)]
pub enum NodeError {
    /// This node does not lead; `name` at `address` does. Nothing was proposed.
    NotLeader { name: String, address: String },
    /// No leader, or a leader without a quorum: a write may or may not apply later (the
    /// message says which).
    NoQuorum(String),
    /// The leader changed while a request was with it: a write may or may not have applied.
    LeaderChanged,
    /// The node is stopping.
    ShuttingDown(String),
    /// Too many writes waiting: refused before anything was proposed, so a retry (after the
    /// answer's `Retry-After`) is always safe.
    Overloaded(String),
    /// Storage failed or a stored record is unreadable: reported, never papered over.
    Storage(String),
    /// Refused by a rule: a command the state machine rejected, a membership rule, a feature
    /// not enabled yet, a Raft refusal. The code says which.
    Rejected(ErrorCode, String),
    /// What another node (the leader) answered, passed on as it was.
    Remote { status: u16, detail: ErrorDetail },
    /// A serializable read on a node that has not caught up with a leader since it started,
    /// for the reason inside.
    NotCaughtUp(Box<NodeError>),
    /// Something that should not happen.
    Internal(String),
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code(), self.message())
    }
}

impl std::error::Error for NodeError {}

impl NodeError {
    /// A storage failure, logged where it is met.
    pub fn storage(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "storage error");
        Self::Storage(e.to_string())
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            NodeError::NotLeader { .. } => ErrorCode::NotLeader,
            NodeError::NoQuorum(_) => ErrorCode::NoQuorum,
            NodeError::LeaderChanged => ErrorCode::LeaderChanged,
            NodeError::ShuttingDown(_) => ErrorCode::ShuttingDown,
            NodeError::Overloaded(_) => ErrorCode::Overloaded,
            NodeError::Storage(_) => ErrorCode::StorageError,
            NodeError::Rejected(code, _) => *code,
            NodeError::Remote { detail, .. } => detail.code,
            NodeError::NotCaughtUp(inner) => inner.code(),
            NodeError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The human part of the error (what follows the code).
    pub fn message(&self) -> String {
        match self {
            NodeError::NotLeader { name, .. } => {
                format!("this node is not the leader; the leader is {name}")
            }
            NodeError::NoQuorum(m)
            | NodeError::ShuttingDown(m)
            | NodeError::Overloaded(m)
            | NodeError::Storage(m)
            | NodeError::Rejected(_, m)
            | NodeError::Internal(m) => m.clone(),
            NodeError::Remote { detail, .. } => detail.message.clone(),
            NodeError::LeaderChanged => "the leader changed while the request was in flight; a \
                write may or may not have applied: retry it (with an Idempotency-Key to make the \
                retry safe)"
                .to_string(),
            NodeError::NotCaughtUp(why) => format!(
                "this node has not caught up with a leader since it started, so its state may be \
                 older than what it served before; serializable reads resume once it has: {}",
                why.message()
            ),
        }
    }

    /// No leader or quorum right now, or the node is stopping (what the API answers 503 for):
    /// the same request may succeed later or elsewhere.
    pub fn is_unavailable(&self) -> bool {
        match self {
            NodeError::NotLeader { .. }
            | NodeError::NoQuorum(_)
            | NodeError::LeaderChanged
            | NodeError::ShuttingDown(_)
            | NodeError::Overloaded(_)
            | NodeError::NotCaughtUp(_) => true,
            NodeError::Remote { status, .. } => *status == 503,
            NodeError::Rejected(code, _) => code.is_unavailable(),
            NodeError::Storage(_) | NodeError::Internal(_) => false,
        }
    }

    /// Refused because this node (or the node that answered) does not lead: nothing was
    /// proposed, so the request may wait for the next leader.
    pub fn is_not_leader(&self) -> bool {
        match self {
            NodeError::NotLeader { .. } => true,
            NodeError::Remote { detail, .. } => detail.code == ErrorCode::NotLeader,
            _ => false,
        }
    }
}

/// The API's code for a state machine rejection.
pub fn rejection_code(code: RejectCode) -> ErrorCode {
    match code {
        RejectCode::LeaseNotFound => ErrorCode::LeaseNotFound,
        RejectCode::LeaseExists => ErrorCode::LeaseExists,
        RejectCode::AnswerTooLarge => ErrorCode::TxnTooLarge,
    }
}

/// A command's answer as the caller sees it: a rejected command is an error.
pub fn answer(response: Response) -> Result<Response, NodeError> {
    match response {
        Response::Rejected { code, message } => {
            Err(NodeError::Rejected(rejection_code(code), message))
        }
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use concordance_client::ErrorCode;

    /// Production sources (a file's `#[cfg(test)]` part is left out) of every crate that
    /// handles the API's errors.
    fn sources() -> Vec<(String, String)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut out = Vec::new();
        let mut dirs: Vec<_> = [
            "node/src",
            "client/src",
            "cli/src",
            "operator/src",
            "bench/src",
        ]
        .iter()
        .map(|d| root.join(d))
        .collect();
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let production = text.split("#[cfg(test)]").next().unwrap().to_string();
                    out.push((path.display().to_string(), production));
                }
            }
        }
        assert!(out.len() > 50, "found only {} source files", out.len());
        out
    }

    /// Whether `line` decides on `code`'s string: compares with it, matches it (an arm or an
    /// alternative) or searches text for it.
    fn compares(line: &str, code: &str) -> bool {
        let literal = format!("\"{code}\"");
        line.match_indices(&literal).any(|(at, _)| {
            let before = line[..at].trim_end();
            let after = line[at + literal.len()..].trim_start();
            let compared_after = ["==", "!=", "=>"].iter().any(|op| after.starts_with(op))
                || (after.starts_with('|') && !after.starts_with("||"));
            let compared_before = [
                "==",
                "!=",
                "|",
                "Some(",
                "contains(",
                "starts_with(",
                "ends_with(",
                "find(",
            ]
            .iter()
            .any(|op| before.ends_with(op));
            compared_before || compared_after
        })
    }

    /// Decides on a code as a string: `code == "…"`, `code.as_str()` and the like.
    fn string_code(line: &str) -> bool {
        [
            "code.as_str()",
            "code().as_str()",
            "code == \"",
            "code() == Some(\"",
        ]
        .iter()
        .any(|p| line.contains(p))
    }

    #[test]
    fn no_control_flow_compares_error_code_strings() {
        let mut found = Vec::new();
        for (file, text) in sources() {
            for (n, line) in text.lines().enumerate() {
                let code_part = line.split("//").next().unwrap();
                let literal = ErrorCode::ALL
                    .iter()
                    .any(|c| compares(code_part, c.as_str()));
                if string_code(code_part) || literal {
                    found.push(format!("{file}:{}: {}", n + 1, line.trim()));
                }
            }
        }
        assert!(
            found.is_empty(),
            "decide on ErrorCode values, not on their strings:\n{}",
            found.join("\n")
        );
    }

    #[test]
    fn the_check_finds_the_comparisons_it_is_meant_to() {
        for line in [
            r#"Err(e) if e.detail.code == "not_leader" => e,"#,
            r#"if last_words.contains("name_in_use") {"#,
            r#"matches!(code.as_str(), "name_in_use" | "cluster_mismatch")"#,
            r#"Err(e) if e.code() == Some("key_not_found") => Ok(None),"#,
            r#""lease_not_found" => StatusCode::NOT_FOUND,"#,
        ] {
            let hit =
                string_code(line) || ErrorCode::ALL.iter().any(|c| compares(line, c.as_str()));
            assert!(hit, "missed: {line}");
        }
        for line in [
            r#"InvalidBody = "invalid_body","#,
            r#"ErrorCode::Unknown => "unknown","#,
            r#"tracing::warn!(code = %e.code(), "not_leader answered");"#,
            r#"let e = ApiError::new(ErrorCode::NotLeader, "no_quorum is not this");"#,
        ] {
            assert!(
                !ErrorCode::ALL.iter().any(|c| compares(line, c.as_str())),
                "flagged: {line}"
            );
        }
    }
}

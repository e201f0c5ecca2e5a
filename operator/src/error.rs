//! What a reconcile can fail with; the controller's error policy retries each.

/// A reconcile's failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("resource has no namespace")]
    NoNamespace,
    #[error("status serialization: {0}")]
    Json(#[from] serde_json::Error),
    #[error("node API: {0}")]
    Node(#[from] concordance_client::Error),
    #[error("no member answers; cannot {0}")]
    NoEndpoint(&'static str),
    #[error("secret {0} holds no key {1}")]
    MissingKey(String, String),
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("finalizer: {0}")]
    Finalizer(Box<kube::runtime::finalizer::Error<Error>>),
}

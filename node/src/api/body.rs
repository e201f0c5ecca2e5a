//! Request bodies are JSON whatever their Content-Type says (`curl -d` labels JSON as a form).

use axum::body::Bytes;
use axum::extract::FromRequest;
use axum::extract::Request;
use concordance_client::ErrorCode;
use serde::de::DeserializeOwned;

use super::ApiError;

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 2 << 20;

pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            ApiError::with_status(
                e.status(),
                ErrorCode::BodyTooLarge,
                format!("request body is over the {MAX_BODY_BYTES}-byte limit or unreadable: {e}"),
            )
        })?;
        if bytes.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidBody,
                "request body is empty; send a JSON object",
            ));
        }
        // Structs would also accept a JSON array of their fields; bodies are objects only.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::new(
                ErrorCode::InvalidBody,
                "request body must be a JSON object",
            ));
        }
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidBody,
                format!("request body is not valid: {e}"),
            )
        })
    }
}

/// Query parameters, with a rejection in the API's error format.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|e| ApiError::new(ErrorCode::InvalidQuery, e.body_text()))
    }
}

/// The key from a `/kv/{*key}` route, percent-decoded, with a rejection in the API's format.
pub struct KeyPath(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for KeyPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| KeyPath(p.0))
            .map_err(|e| ApiError::new(ErrorCode::InvalidKey, e.body_text()))
    }
}

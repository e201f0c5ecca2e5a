//! What the API document says about one route: who may call it, its query, body and answer.
//! The route table (`routes.rs`) fills these in; the document (`openapi.rs`) reads them.

use schemars::JsonSchema;
use schemars::Schema;
use schemars::SchemaGenerator;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No key: probes and status, which reveal no secret.
    Public,
    /// The agent or the admin key: the data API.
    Agent,
    /// The admin key only: operations, membership and the peer protocol.
    Admin,
}

pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

pub fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// A route's body or answer, for the document.
#[derive(Clone, Copy)]
pub enum Body {
    None,
    Json(SchemaFn),
    /// Server-Sent Events whose `data` is one of these.
    EventStream(&'static [(&'static str, SchemaFn)]),
    Text(&'static str),
    Binary,
}

/// One method on one path, with what the document says about it.
#[derive(Clone, Copy)]
pub struct RouteDoc {
    pub method: &'static str,
    /// The axum path (`{*key}` for a key with slashes).
    pub path: &'static str,
    pub access: Access,
    pub summary: &'static str,
    pub query: Option<SchemaFn>,
    pub body: Body,
    pub response: Body,
    /// Accepts `Idempotency-Key`.
    pub idempotent: bool,
    /// Node-to-node only.
    pub internal: bool,
}

/// A route with its method, path, access and summary; the builders below add the rest.
pub const fn doc(
    method: &'static str,
    path: &'static str,
    access: Access,
    summary: &'static str,
) -> RouteDoc {
    RouteDoc {
        method,
        path,
        access,
        summary,
        query: None,
        body: Body::None,
        response: Body::None,
        idempotent: false,
        internal: false,
    }
}

impl RouteDoc {
    pub fn query(mut self, q: SchemaFn) -> Self {
        self.query = Some(q);
        self
    }
    pub fn body(mut self, b: Body) -> Self {
        self.body = b;
        self
    }
    pub fn json<T: JsonSchema>(mut self) -> Self {
        self.response = Body::Json(schema::<T>);
        self
    }
    pub fn answers(mut self, b: Body) -> Self {
        self.response = b;
        self
    }
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }
    pub fn internal(mut self) -> Self {
        self.internal = true;
        self
    }
}

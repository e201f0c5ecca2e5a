//! The OpenAPI 3.1 document of the whole HTTP API, generated from the routes' documents (the
//! route table in `routes.rs` serves it at `GET /api/v1/openapi.json`) and the request/response
//! types' JSON Schemas (schemars). Checked in at `docs/openapi.json` (a test keeps the two
//! equal; `CONCORDANCE_UPDATE_OPENAPI=1 cargo test -p concordance --lib openapi` rewrites it).

use std::collections::BTreeMap;

use schemars::SchemaGenerator;
use schemars::generate::SchemaSettings;
use serde_json::Map;
use serde_json::Value;
use serde_json::json;

use super::route_doc::Access;
use super::route_doc::Body;
use super::route_doc::RouteDoc;
use super::route_doc::SchemaFn;

/// The OpenAPI path of an axum path: `{*key}` becomes `{key}`.
pub fn openapi_path(axum_path: &str) -> String {
    axum_path.replace("{*", "{")
}

fn path_params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|raw| {
            let (name, desc) = match raw.strip_prefix('*') {
                Some(n) => (
                    n,
                    "A key: UTF-8 path segments, each percent-encoded, slashes kept",
                ),
                None => (raw, "A lease id"),
            };
            json!({"name": name, "in": "path", "required": true, "description": desc,
                   "schema": {"type": "string"}})
        })
        .collect()
}

fn query_params(g: &mut SchemaGenerator, f: SchemaFn) -> Vec<Value> {
    // The query struct's own schema (its fields' types refer to shared components).
    let s = f(g);
    // Described as parameters, so the struct itself is no component.
    let def = s
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
        .and_then(|name| g.definitions_mut().remove(name))
        .unwrap_or_else(|| s.as_value().clone());
    let required: Vec<&str> = def
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    def.get("properties")
        .and_then(Value::as_object)
        .map(|props| {
            props
                .iter()
                .map(|(name, schema)| {
                    let mut schema = schema.clone();
                    let description = schema.as_object_mut().and_then(|o| o.remove("description"));
                    let mut p = json!({"name": name, "in": "query",
                                       "required": required.contains(&name.as_str()),
                                       "schema": schema});
                    if let Some(d) = description {
                        p["description"] = d;
                    }
                    p
                })
                .collect()
        })
        .unwrap_or_default()
}

fn content(g: &mut SchemaGenerator, body: Body) -> Option<Value> {
    Some(match body {
        Body::None => return None,
        Body::Json(f) => json!({"application/json": {"schema": f(g).to_value()}}),
        Body::EventStream(events) => {
            let one_of: Vec<Value> = events
                .iter()
                .map(|(name, f)| {
                    json!({"title": format!("event: {name}"), "allOf": [f(g).to_value()]})
                })
                .collect();
            json!({"text/event-stream": {"schema": {
                "description": "Server-Sent Events; each `data:` line is one of these JSON objects, named by `event:`",
                "oneOf": one_of}}})
        }
        Body::Text(media) => json!({media: {"schema": {"type": "string"}}}),
        Body::Binary => {
            json!({"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}})
        }
    })
}

fn operation(g: &mut SchemaGenerator, r: &RouteDoc) -> Value {
    let mut params = path_params(r.path);
    if let Some(q) = r.query {
        params.extend(query_params(g, q));
    }
    if r.idempotent {
        params.push(json!({"name": "Idempotency-Key", "in": "header", "required": false,
            "description": "1-128 ASCII characters: a retry with the same key answers the first result instead of applying again",
            "schema": {"type": "string"}}));
    }
    let mut op = Map::new();
    op.insert("summary".into(), r.summary.into());
    op.insert(
        "operationId".into(),
        format!("{} {}", r.method, openapi_path(r.path)).into(),
    );
    op.insert(
        "security".into(),
        match r.access {
            Access::Public => json!([]),
            _ => json!([{"bearer": []}]),
        },
    );
    op.insert(
        "x-concordance-role".into(),
        match r.access {
            Access::Public => "none",
            Access::Agent => "agent",
            Access::Admin => "admin",
        }
        .into(),
    );
    if r.internal {
        op.insert("x-internal".into(), true.into());
    }
    if !params.is_empty() {
        op.insert("parameters".into(), params.into());
    }
    if let Some(c) = content(g, r.body) {
        let required = !r.path.ends_with("/transfer-leader") || r.internal;
        op.insert(
            "requestBody".into(),
            json!({"required": required, "content": c}),
        );
    }
    let mut ok = json!({"description": "Success"});
    if let Some(c) = content(g, r.response) {
        ok["content"] = c;
    }
    let error = json!({"description": "An error: `{\"error\": {\"code\", \"message\", ...}}`",
        "content": {"application/json": {"schema": g.subschema_for::<concordance_client::ErrorBody>().to_value()}}});
    op.insert("responses".into(), json!({"200": ok, "default": error}));
    Value::Object(op)
}

/// Builds the document of these routes.
pub fn document(routes: &[RouteDoc]) -> Value {
    let mut g = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for r in routes {
        let op = operation(&mut g, r);
        paths
            .entry(openapi_path(r.path))
            .or_default()
            .insert(r.method.to_string(), op);
    }
    let schemas: BTreeMap<String, Value> = g.take_definitions(true).into_iter().collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Concordance HTTP API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A Raft-replicated coordination store. Data routes take the agent or admin key, operations and peer routes the admin key only (`Authorization: Bearer <key>`); probes, status, version and this document need none. Errors answer `{\"error\": {\"code\", \"message\"}}`."
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        }
    })
}

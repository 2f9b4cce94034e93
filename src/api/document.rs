//! The OpenAPI document as clients get it (`/openapi.json`, `/docs`, `tenantmq openapi`): poem-openapi's
//! document, completed with what its derives cannot say. Every operation shares one error type
//! ([`ApiError`](super::problem::ApiError)), so the derive lists every error status on every operation; here
//! each operation keeps only the statuses it can answer. Request bodies are parsed with serde and refuse
//! unknown fields, which the derive does not write down. The whole document requires the bearer scheme the
//! derive declares.

use std::{collections::HashMap, num::NonZeroU16, sync::OnceLock};

use serde_json::{Map, Value, json};

use super::principal::SECURITY_SCHEME;
use crate::config::Config;

/// The error statuses each operation can answer, by operation id. 500 is possible everywhere (it is logged
/// with the request id), 503 wherever a dependency is asked; 408 and 415 wherever a body is read.
const OPERATION_ERRORS: &[(&str, &[u16])] = &[
    // 404: a delete that came between the create and its answer.
    ("createTenant", &[400, 401, 403, 404, 408, 409, 413, 415, 500, 503]),
    ("listTenants", &[400, 401, 403, 500, 503]),
    ("getTenant", &[400, 401, 403, 404, 500, 503]),
    ("deleteTenant", &[400, 401, 403, 404, 409, 500, 503]),
    ("setConcurrency", &[400, 401, 403, 404, 408, 409, 413, 415, 500, 503]),
    ("setTenantLimits", &[400, 401, 403, 404, 408, 409, 413, 415, 500, 503]),
    ("listTenantEvents", &[400, 401, 403, 404, 500, 503]),
    ("publishMessage", &[400, 401, 403, 404, 408, 413, 415, 429, 500, 503]),
    ("publishMessages", &[400, 401, 403, 404, 408, 413, 415, 429, 500, 503]),
    ("listMessages", &[400, 401, 403, 404, 500, 503]),
    ("listDeadLetters", &[400, 401, 403, 404, 500, 503]),
    ("purgeDeadLetters", &[400, 401, 403, 404, 500, 503]),
    ("replayDeadLetters", &[400, 401, 403, 404, 408, 413, 415, 500, 503]),
    ("verifyChain", &[400, 401, 403, 404, 500, 503]),
    ("listStreamHeads", &[400, 401, 403, 404, 500, 503]),
    ("getTenantStateAsOf", &[400, 401, 403, 404, 500, 503]),
    ("exportTenantEvents", &[400, 401, 403, 404, 500, 503]),
];

/// Operations anyone may call, without a token.
const PUBLIC_OPERATIONS: &[&str] = &["healthz", "readyz"];

/// How long a client should wait before retrying a 503, in seconds (`Retry-After`).
pub const RETRY_AFTER_SECONDS: u16 = 1;

/// The document as JSON text, with the default configuration: what `tenantmq openapi` prints and
/// `docs/openapi.json` holds.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| served(Config::default().max_workers))
}

/// The document an instance serves: the workers' maximum is its own `max_workers`, which generated clients
/// check before they send.
pub fn served(max_workers: NonZeroU16) -> String {
    let mut document: Value = serde_json::from_str(&super::service().spec()).unwrap_or_default();
    complete(&mut document, max_workers);
    serde_json::to_string_pretty(&document).unwrap_or_default()
}

/// The methods a documented path answers (`Allow` of a 405), e.g. `GET, DELETE`, by the path as the
/// document writes it (`/tenants/{id}`).
pub fn allowed_methods(path: &str) -> Option<&'static str> {
    static ALLOWED: OnceLock<HashMap<String, String>> = OnceLock::new();
    let allowed = ALLOWED.get_or_init(|| {
        let document: Value = serde_json::from_str(document()).unwrap_or_default();
        let paths = document["paths"].as_object().cloned().unwrap_or_default();
        paths
            .into_iter()
            .map(|(path, operations)| {
                let mut methods: Vec<String> =
                    operations.as_object().into_iter().flatten().map(|(method, _)| method.to_uppercase()).collect();
                methods.sort_unstable();
                (path, methods.join(", "))
            })
            .collect()
    });
    allowed.get(path).map(String::as_str)
}

fn complete(document: &mut Value, max_workers: NonZeroU16) {
    let statuses: HashMap<&str, &[u16]> = OPERATION_ERRORS.iter().copied().collect();
    let mut refuses_unknown_fields = Vec::new();
    for operation in document["paths"].as_object_mut().into_iter().flat_map(Map::values_mut) {
        for operation in operation.as_object_mut().into_iter().flat_map(Map::values_mut) {
            let id = operation["operationId"].as_str().unwrap_or_default().to_owned();
            if let Some(schema) = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].as_str() {
                refuses_unknown_fields.push(schema.trim_start_matches("#/components/schemas/").to_owned());
            }
            if PUBLIC_OPERATIONS.contains(&id.as_str()) {
                operation["security"] = json!([]);
            }
            if let Some(errors) = statuses.get(id.as_str()) {
                keep_errors(operation, errors);
            }
            declare_common_headers(operation);
        }
    }
    let schemas = &mut document["components"]["schemas"];
    // A batch's items are publish requests: they refuse unknown fields too.
    let requests: Vec<&str> = refuses_unknown_fields.iter().map(String::as_str).chain(["PublishRequest"]).collect();
    for name in &requests {
        if let Some(schema) = schemas.get_mut(name) {
            schema["additionalProperties"] = Value::Bool(false);
        }
    }
    for request in ["CreateTenantRequest", "SetConcurrencyRequest"] {
        if let Some(workers) = schema_property(schemas, request, "workers") {
            workers.insert("maximum".into(), max_workers.get().into());
        }
    }
    // A payload is any JSON value, `null` too (stored as jsonb `null`, and read back as such).
    for schema in ["PublishRequest", "Message"] {
        if let Some(payload) = schema_property(schemas, schema, "payload") {
            payload.insert("nullable".into(), true.into());
        }
    }
    for (name, schema) in schemas.as_object_mut().into_iter().flat_map(Map::iter_mut) {
        let answered = !requests.contains(&name.as_str());
        complete_properties(schema, answered);
    }
    // The derive declares the bearer scheme (its doc comment is what Swagger UI's Authorize dialog shows) and
    // names it in every operation that needs a token; the document as a whole requires it too.
    document["security"] = json!([{ SECURITY_SCHEME: [] }]);
}

/// The property `name` of the schema `schema`, if both are there.
fn schema_property<'a>(schemas: &'a mut Value, schema: &str, name: &str) -> Option<&'a mut Map<String, Value>> {
    schemas.get_mut(schema)?.get_mut("properties")?.get_mut(name)?.as_object_mut()
}

/// Two things the derive writes in a way clients read amiss:
/// - A property that refers to another schema, with a description of its own or null allowed, comes as
///   `allOf` of the reference and an inline schema that holds the description: generators make a type of
///   that inline part (a `…_type_1` beside the one referred to), and OAS 3.0 gives the inline `nullable` no
///   effect. It becomes `allOf` of the reference alone, beside the description and `nullable`.
/// - In an answer, a property that may be null is always sent (as `null` when empty): it is required, so
///   that clients need not handle its absence too.
fn complete_properties(schema: &mut Value, answered: bool) {
    let mut always_sent = Vec::new();
    let properties = schema.get_mut("properties").and_then(Value::as_object_mut);
    for (name, property) in properties.into_iter().flat_map(Map::iter_mut) {
        if let Some([reference, inline]) = property["allOf"].as_array().map(Vec::as_slice)
            && reference.get("$ref").is_some()
            && inline
                .as_object()
                .is_some_and(|inline| inline.keys().all(|key| key == "description" || key == "nullable"))
        {
            let nullable = inline["nullable"] == true || property["nullable"] == true;
            let description = property.get("description").or(inline.get("description")).cloned();
            let mut flat = json!({ "allOf": [reference] });
            if let Some(description) = description {
                flat["description"] = description;
            }
            if nullable {
                flat["nullable"] = true.into();
            }
            *property = flat;
        }
        if answered && property["nullable"] == true {
            always_sent.push(Value::String(name.clone()));
        }
    }
    if always_sent.is_empty() {
        return;
    }
    let required = schema
        .as_object_mut()
        .and_then(|schema| schema.entry("required").or_insert_with(|| Value::Array(Vec::new())).as_array_mut());
    if let Some(required) = required {
        for name in always_sent {
            if !required.contains(&name) {
                required.push(name);
            }
        }
    }
}

/// Drops the error responses the operation cannot answer and adds those the derive does not know (415), each
/// with an example problem; a 429 and a 503 say when to retry.
fn keep_errors(operation: &mut Value, errors: &[u16]) {
    let Some(responses) = operation["responses"].as_object_mut() else { return };
    let problem = responses.values().find(|response| response["content"]["application/problem+json"].is_object());
    let problem_content = problem.map(|response| response["content"].clone()).unwrap_or_default();
    responses.retain(|status, _| !status.starts_with(['4', '5']) || errors.iter().any(|e| e.to_string() == *status));
    for &status in errors {
        let response = responses.entry(status.to_string()).or_insert_with(|| {
            json!({ "description": "The request has no `Content-Type: application/json`.", "content": problem_content })
        });
        response["content"]["application/problem+json"]["example"] = example(status);
        // Every 429 says when to retry; a 503 too, except a `recorded` one, which must not be sent again.
        let retry_after = match status {
            429 => Some(("Seconds to wait before retrying", true)),
            503 => Some((
                "Seconds to wait before retrying; absent on a `recorded` problem, whose command must not be sent again",
                false,
            )),
            _ => None,
        };
        if let Some((description, required)) = retry_after {
            response["headers"] = json!({
                "Retry-After": {
                    "description": description,
                    "required": required,
                    "schema": { "type": "integer", "format": "int32" }
                }
            });
        }
    }
}

/// Headers the request-context and authentication middleware add to answers, which no derive sees: every
/// answer's `X-Request-Id`, and a 401's `WWW-Authenticate`; and `Location` as HTTP writes it.
fn declare_common_headers(operation: &mut Value) {
    let Some(responses) = operation["responses"].as_object_mut() else { return };
    for (status, response) in responses {
        // The derive writes the headers it declares in capitals; generators name their accessors after them.
        if let Some(location) = response["headers"].as_object_mut().and_then(|headers| headers.remove("LOCATION")) {
            response["headers"]["Location"] = location;
        }
        response["headers"]["X-Request-Id"] = json!({
            "description": "The request's id: the client's `X-Request-Id` when it sent a printable one of at most 128 \
                characters, else a new UUIDv7. The service's log and traces, and the events a command records, \
                carry it, with `X-Correlation-Id` (the client's, else this id); quote it when reporting a 500.",
            "required": true,
            "schema": { "type": "string" }
        });
        if status == "401" {
            response["headers"]["WWW-Authenticate"] = json!({
                "description": "`Bearer`: the scheme the service takes",
                "required": true,
                "schema": { "type": "string" }
            });
        }
    }
}

fn example(status: u16) -> Value {
    let (kind, title, detail) = match status {
        400 => ("invalid-request", "Bad Request", "workers must be between 1 and max_workers, got 0"),
        401 => ("unauthorized", "Unauthorized", "missing bearer token"),
        403 => ("forbidden", "Forbidden", "this token may only use its own tenant"),
        404 => ("not-found", "Not Found", "no tenant 01938f7e-2a8c-7b3e-9f1d-4c5b6a7d8e9f"),
        408 => ("request-timeout", "Request Timeout", "the request body did not arrive within 30s"),
        409 => ("conflict", "Conflict", "the tenant already exists"),
        413 => ("payload-too-large", "Payload Too Large", "`payload` exceeds the limit of 1048576 bytes"),
        415 => ("unsupported-media-type", "Unsupported Media Type", "expected `Content-Type: application/json`"),
        429 => (
            "rate-limited",
            "Too Many Requests",
            "the tenant's publish rate is exhausted; retry after 1s (or `queue-full`: its queue holds its max_queue_depth)",
        ),
        503 => ("unavailable", "Service Unavailable", "the message broker is unavailable; retry"),
        _ => (
            "internal",
            "Internal Server Error",
            "an unexpected error occurred; it has been logged with the request id",
        ),
    };
    json!({ "type": format!("urn:tenantmq:problem:{kind}"), "title": title, "status": status, "detail": detail })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed() -> Value {
        serde_json::from_str(document()).expect("the document is JSON")
    }

    /// OpenAPI: every scheme a requirement names must be declared, or clients and Swagger UI send no token.
    #[test]
    fn every_security_requirement_names_a_declared_scheme() {
        let document = parsed();
        let declared = document["components"]["securitySchemes"].as_object().expect("security schemes");
        let operations =
            document["paths"].as_object().expect("paths").values().flat_map(|path| {
                path.as_object().expect("operations").values().map(|operation| &operation["security"])
            });
        let mut named = 0;
        for requirements in operations.chain([&document["security"]]) {
            for requirement in requirements.as_array().into_iter().flatten() {
                for scheme in requirement.as_object().expect("a requirement").keys() {
                    assert!(declared.contains_key(scheme), "{scheme} is not declared");
                    named += 1;
                }
            }
        }
        assert!(named > 1, "the operations name their scheme");
    }

    #[test]
    fn every_operation_states_its_own_errors() {
        let document = parsed();
        let mut seen = Vec::new();
        for (path, operations) in document["paths"].as_object().expect("paths") {
            for (method, operation) in operations.as_object().expect("operations") {
                let id = operation["operationId"].as_str().expect("an operation id");
                seen.push(id.to_owned());
                if PUBLIC_OPERATIONS.contains(&id) {
                    continue;
                }
                let (_, errors) = OPERATION_ERRORS
                    .iter()
                    .find(|(listed, _)| *listed == id)
                    .unwrap_or_else(|| panic!("{method} {path} ({id}) is missing from OPERATION_ERRORS"));
                let documented: Vec<u16> = operation["responses"]
                    .as_object()
                    .expect("responses")
                    .keys()
                    .filter_map(|status| status.parse().ok())
                    .filter(|status| *status >= 400)
                    .collect();
                let mut expected = errors.to_vec();
                expected.sort_unstable();
                assert_eq!(documented, expected, "{id}");
                let has_body = operation["requestBody"].is_object();
                assert_eq!(errors.contains(&415), has_body, "{id}: 415 exactly where a body is read");
                assert_eq!(errors.contains(&408), has_body, "{id}: 408 exactly where a body is read");
            }
        }
        for (id, _) in OPERATION_ERRORS {
            assert!(seen.iter().any(|s| s == id), "{id} is listed but is not an operation");
        }
    }

    /// Every answer carries `X-Request-Id` (the middleware sets it) and every 401 `WWW-Authenticate`.
    #[test]
    fn every_answer_declares_the_headers_the_middleware_sets() {
        let document = parsed();
        let mut unauthorized = 0;
        for operations in document["paths"].as_object().expect("paths").values() {
            for operation in operations.as_object().expect("operations").values() {
                for (status, response) in operation["responses"].as_object().expect("responses") {
                    let id = &operation["operationId"];
                    assert!(response["headers"]["X-Request-Id"].is_object(), "{id} {status}");
                    if status == "401" {
                        assert!(response["headers"]["WWW-Authenticate"].is_object(), "{id} {status}");
                        unauthorized += 1;
                    }
                }
            }
        }
        assert!(unauthorized > 0, "operations answer 401");
    }

    #[test]
    fn request_bodies_refuse_unknown_fields_in_the_document_too() {
        let document = parsed();
        let bodies = [
            "CreateTenantRequest",
            "SetConcurrencyRequest",
            "SetLimitsRequest",
            "PublishRequest",
            "PublishBatchRequest",
        ];
        for name in bodies {
            assert_eq!(document["components"]["schemas"][name]["additionalProperties"], false, "{name}");
        }
        assert_eq!(document["components"]["schemas"]["ReplayRequest"]["additionalProperties"], false);
    }

    /// Generators made a type of each inline part (`tenant_state_limits_type_1` beside `TenantLimits`), and
    /// clients had to handle the absence of fields that are always sent, as `null` when empty.
    #[test]
    fn references_stand_alone_and_answers_require_their_nullable_fields() {
        let document = parsed();
        let schemas = document["components"]["schemas"].as_object().expect("schemas");
        let mut flattened = 0;
        for (name, schema) in schemas {
            let required = schema["required"].as_array().cloned().unwrap_or_default();
            for (field, property) in schema["properties"].as_object().into_iter().flatten() {
                if let Some(all_of) = property["allOf"].as_array() {
                    assert_eq!(all_of.len(), 1, "{name}.{field}: {property}");
                    flattened += 1;
                }
                let answered = !name.ends_with("Request");
                if answered && property["nullable"] == true {
                    assert!(required.contains(&Value::String(field.clone())), "{name}.{field} is always sent");
                }
            }
        }
        assert!(flattened >= 4, "the described references are there");
        assert_eq!(
            schemas["TenantState"]["properties"]["limits"]["allOf"][0]["$ref"],
            "#/components/schemas/TenantLimits"
        );
        assert_eq!(schemas["TenantState"]["properties"]["limits"]["nullable"], true);
    }

    #[test]
    fn the_allow_header_lists_each_paths_methods() {
        assert_eq!(allowed_methods("/tenants/{id}"), Some("DELETE, GET"));
        assert_eq!(allowed_methods("/tenants"), Some("GET, POST"));
        assert_eq!(allowed_methods("/nowhere"), None);
    }
}

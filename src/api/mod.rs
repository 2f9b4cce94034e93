//! The HTTP API: one `#[OpenApi]` struct per resource, sharing one error type ([`problem::ApiError`]).
//! Handlers get their dependencies from [`AppState`] (request data), so the OpenAPI document can be produced
//! without any connection.

mod audit;
mod dlq;
pub mod document;
mod events;
mod health;
pub(crate) mod instrumentation;
pub(crate) mod json_body;
mod json_text;
mod messages;
pub mod pagination;
mod principal;
pub(crate) mod problem;
mod query;
pub(crate) mod request_context;
pub mod server;
mod tenants;

use std::{num::NonZeroU16, sync::Arc};

use bytes::Bytes;

use crate::{
    app::App,
    auth::{AuthError, Authenticator},
    config::ServerRole,
    metrics::Metrics,
};
use poem::{Endpoint, EndpointExt, IntoResponse, Route, handler, middleware::CatchPanic, web::Data};
use poem_openapi::{OpenApiService, Tags};

pub use audit::AuditApi;
pub use dlq::DeadLettersApi;
pub use events::EventsApi;
pub use health::HealthApi;
pub use messages::MessagesApi;
pub use tenants::TenantsApi;

#[derive(Tags)]
pub enum ApiTags {
    /// Tenant commands and the tenants read model
    Tenants,
    /// Tenants' event histories
    Events,
    /// Publishing and reading messages
    Messages,
    /// Messages that failed for good: inspect, replay, purge
    DeadLetters,
    /// The auditor's view: the hash chain, streams' heads, past states, exports
    Audit,
    /// Liveness and readiness
    Health,
}

/// What the handlers use: the use cases, and what only HTTP needs.
#[derive(Clone)]
pub struct AppState {
    pub app: App,
    pub limits: json_body::BodyLimits,
    pub authenticator: Arc<Authenticator>,
    pub metrics: Metrics,
    /// `metrics.bearer_token` and `metrics.previous_bearer_token`: a scrape of `/metrics` must present one of
    /// them; none set, nothing.
    pub metrics_tokens: Vec<Arc<str>>,
}

pub type Apis = (TenantsApi, EventsApi, AuditApi, MessagesApi, DeadLettersApi, HealthApi);

/// The OpenAPI service; [`document::document`] completes its `spec()` into the committed `docs/openapi.json`.
pub fn service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (TenantsApi, EventsApi, AuditApi, MessagesApi, DeadLettersApi, HealthApi),
        "tenantmq",
        env!("CARGO_PKG_VERSION"),
    )
    .description("Event-sourced multi-tenant messaging on RabbitMQ and PostgreSQL.")
}

/// The HTTP surface of `role`: the API, Swagger UI at `/docs` and the document at `/openapi.json`, or on a
/// worker only the probes; `/metrics` on every role. The document states this instance's `max_workers`.
pub fn routes(state: AppState, role: ServerRole, max_workers: NonZeroU16) -> impl Endpoint {
    let limits = state.limits.clone();
    let routes = Route::new().at("/metrics", poem::get(metrics));
    let routes = if role.serves_api() {
        let document = ServedDocument::new(max_workers);
        routes
            .at("/docs", poem::get(swagger_ui.data(document.clone())))
            .at("/openapi.json", poem::get(openapi_json.data(document)))
            .nest("/", service())
    } else {
        routes.nest("/", OpenApiService::new(HealthApi, "tenantmq", env!("CARGO_PKG_VERSION")))
    };
    routes
        .with(CatchPanic::new().with_handler(panicked))
        .around(query::refuse_repeated_parameters)
        .around(instrumentation::middleware)
        .catch_all_error(problem::into_problem)
        .around(request_context::middleware)
        .data(state)
        .data(limits)
}

/// A handler that panics (a bug, or a row it cannot read, such as a time of `infinity` written by hand)
/// answers 500 `internal` like any unexpected error, counted and with its request id, rather than dropping
/// the connection unanswered.
fn panicked(panic: Box<dyn std::any::Any + Send>) -> poem::Response {
    tracing::error!(panic = %crate::telemetry::panic_message(panic.as_ref()), "a request's handler panicked");
    problem::ApiError::internal().into_response()
}

/// The completed document as this instance serves it, and the Swagger UI page that shows it.
#[derive(Clone)]
struct ServedDocument {
    json: Bytes,
    swagger_page: Bytes,
}

impl ServedDocument {
    fn new(max_workers: NonZeroU16) -> Self {
        let json = document::served(max_workers);
        let api = service();
        let swagger_page = api.swagger_ui_html().replace(&api.spec(), &json);
        Self { json: json.into(), swagger_page: swagger_page.into() }
    }
}

/// Swagger UI, showing the completed document.
#[handler]
fn swagger_ui(document: Data<&ServedDocument>) -> poem::Response {
    poem::Response::builder().content_type("text/html; charset=utf-8").body(document.swagger_page.clone())
}

#[handler]
fn openapi_json(document: Data<&ServedDocument>) -> poem::Response {
    poem::Response::builder().content_type("application/json; charset=utf-8").body(document.json.clone())
}

/// Prometheus text exposition: public like the probes, unless `metrics.bearer_token` is set.
#[handler]
fn metrics(state: Data<&AppState>, request: &poem::Request) -> poem::Result<poem::Response> {
    if !state.metrics_tokens.is_empty() {
        let presented =
            request.header(poem::http::header::AUTHORIZATION).and_then(crate::auth::bearer_token).unwrap_or_default();
        // Each compared whole, so that the time taken says nothing about which one came closer.
        let matches = state
            .metrics_tokens
            .iter()
            .fold(false, |matched, token| constant_time_eq(presented.as_bytes(), token.as_bytes()) | matched);
        if !matches {
            let error =
                AuthError::Invalid("/metrics needs the bearer token configured as `metrics.bearer_token`".into());
            return Err(error.into());
        }
    }
    Ok(poem::Response::builder().content_type("text/plain; version=0.0.4").body(state.metrics.render()))
}

/// Compares without returning early, so the time taken says nothing about how much of a secret matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use crate::domain::tenant::TenantName;

    use super::{dlq, messages::MAX_BATCH, pagination};

    /// Request bodies are parsed with serde (see `json_body`), so the bounds in the document are not what
    /// enforces them: they must say the same as the constants that do.
    #[test]
    fn the_documented_bounds_are_the_enforced_ones() {
        let document: Value = serde_json::from_str(super::document::document()).expect("the document is JSON");
        let schema = |name: &str| &document["components"]["schemas"][name]["properties"];
        let name = &schema("CreateTenantRequest")["name"];
        assert_eq!(name["minLength"], 1);
        assert_eq!(name["maxLength"], TenantName::MAX_CHARS);
        let batch = &schema("PublishBatchRequest")["messages"];
        assert_eq!((batch["minItems"].clone(), batch["maxItems"].clone()), (1.into(), MAX_BATCH.into()));
        let max_workers = f64::from(crate::config::Config::default().max_workers.get());
        for workers in [&schema("CreateTenantRequest")["workers"], &schema("SetConcurrencyRequest")["workers"]] {
            assert_eq!((workers["minimum"].as_f64(), workers["maximum"].as_f64()), (Some(1.0), Some(max_workers)));
        }
        let ids = &schema("ReplayRequest")["ids"];
        assert_eq!((ids["minItems"].clone(), ids["maxItems"].clone()), (1.into(), dlq::MAX_REPLAY_IDS.into()));
        let limit_text = format!("1 to {} (default {})", pagination::MAX_LIMIT, pagination::DEFAULT_LIMIT);
        let limits: Vec<&Value> = document["paths"]
            .as_object()
            .expect("paths")
            .values()
            .flat_map(|path| path.as_object().expect("operations").values())
            .flat_map(|operation| operation["parameters"].as_array().into_iter().flatten())
            .filter(|parameter| parameter["name"] == "limit")
            .collect();
        assert!(!limits.is_empty(), "the list operations take a `limit`");
        for limit in limits {
            let description = limit["description"].as_str().unwrap_or_default();
            assert!(description.contains(&limit_text), "`limit` says {description:?}, not {limit_text:?}");
            let bounds = (limit["schema"]["minimum"].as_f64(), limit["schema"]["maximum"].as_f64());
            assert_eq!(bounds, (Some(1.0), Some(pagination::MAX_LIMIT as f64)), "`limit`'s schema bounds");
        }
    }
}

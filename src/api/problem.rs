//! Every error the API answers with is an RFC 9457 problem document (`application/problem+json`). Errors are
//! mapped here, once; internal details are logged, never sent.

use poem::{IntoResponse, Response, http::StatusCode};
use poem_openapi::{
    ApiResponse, Object,
    error::{ParseParamError, ParsePathError},
    payload::Json,
};
use uuid::Uuid;

use super::document::RETRY_AFTER_SECONDS;
use crate::{
    app::AppError,
    auth::AuthError,
    broker::BrokerError,
    domain::tenant::TenantError,
    runtime::failure::{self, WriteFailure},
    store::{StoreError, messages},
};

/// The name of every path parameter in this API.
const PATH_PARAMETER: &str = "id";

/// A problem document (RFC 9457).
#[derive(Debug, Clone, PartialEq, Eq, Object)]
pub struct Problem {
    /// Identifies the kind of problem; stable, for clients to match on.
    #[oai(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// The request field (body property or parameter) the problem is about.
    #[oai(skip_serializing_if_is_none)]
    pub field: Option<String>,
    /// With type `recorded`: the tenant the recorded command is about (for a create without `id`, the id the
    /// new tenant was given).
    #[oai(skip_serializing_if_is_none)]
    pub tenant_id: Option<Uuid>,
}

/// The error responses of every operation.
#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// The request is malformed: see `field` and `detail`.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// The bearer token is missing, malformed, badly signed or expired.
    #[oai(status = 401, content_type = "application/problem+json")]
    Unauthorized(Json<Problem>),
    /// The token is valid but not allowed to do this (another tenant's, or not an admin's).
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
    /// The tenant does not exist, or has been deleted (the history and audit operations still serve a deleted
    /// tenant: to them only a tenant that never existed is unknown).
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// The command conflicts with the tenant's current state or with a concurrent command.
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<Problem>),
    /// The request body did not arrive within `server.body_read_timeout`.
    #[oai(status = 408, content_type = "application/problem+json")]
    RequestTimeout(Json<Problem>),
    /// A payload is larger than `max_payload_bytes` (`field` names it), or the body larger than the service
    /// reads (`max_batch_bytes` for a batch).
    #[oai(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(Json<Problem>),
    /// The tenant is over its publish rate (`rate-limited`) or its queue holds its `max_queue_depth`
    /// (`queue-full`); retry after `Retry-After` seconds.
    #[oai(status = 429, content_type = "application/problem+json")]
    TooManyRequests(Json<Problem>, #[oai(header = "Retry-After")] u32),
    /// A dependency (PostgreSQL, RabbitMQ) is unavailable, a page waited too long for the database, or the
    /// service holds as many request bodies as it may at once (`unavailable`): retry after `Retry-After` seconds
    /// (a publish may have reached the queue before the failure: give messages an `id` so that a retry stores
    /// each once).
    /// Or, for a tenant command, its outcome is in the event log but the read models (or a delete's
    /// retirement) have not caught up within the wait (`recorded`): it takes effect as they do, without being
    /// sent again; read the tenant in `tenant_id` to see it. Sent again, a command is answered from the log (a
    /// create with the same `id` is a 409, one with the same `Idempotency-Key` a 201, a delete a 404), except
    /// a create with neither, which would record a second tenant: so a `recorded` answer has no `Retry-After`.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>, #[oai(header = "Retry-After")] Option<u16>),
    /// An unexpected error (`internal`; details are in the service's log under the request id), or an event
    /// log this release cannot read (`log-damaged`): changed outside the service (the audit check shows where),
    /// or holding an event a newer release wrote.
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(Json<Problem>),
}

fn problem(status: StatusCode, kind: &str, detail: impl Into<String>, field: Option<&str>) -> Json<Problem> {
    Json(Problem {
        kind: format!("urn:tenantmq:problem:{kind}"),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail: detail.into(),
        field: field.map(str::to_owned),
        tenant_id: None,
    })
}

impl ApiError {
    pub fn bad_request(field: Option<&str>, detail: impl Into<String>) -> Self {
        Self::BadRequest(problem(StatusCode::BAD_REQUEST, "invalid-request", detail, field))
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::NotFound(problem(StatusCode::NOT_FOUND, "not-found", detail, None))
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::Conflict(problem(StatusCode::CONFLICT, "conflict", detail, None))
    }

    pub fn payload_too_large_field(field: String, limit: usize) -> Self {
        Self::PayloadTooLarge(problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!("`{field}` exceeds the limit of {limit} bytes"),
            Some(&field),
        ))
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::Unavailable(
            problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail, None),
            Some(RETRY_AFTER_SECONDS),
        )
    }

    fn log_damaged(detail: &str) -> Self {
        Self::Internal(problem(StatusCode::INTERNAL_SERVER_ERROR, "log-damaged", detail, None))
    }

    pub fn internal() -> Self {
        Self::Internal(problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an unexpected error occurred; it has been logged with the request id",
            None,
        ))
    }
}

impl poem::error::ResponseError for AuthError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Ambiguous => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Forbidden(_) => {
                Self::Forbidden(problem(StatusCode::FORBIDDEN, "forbidden", error.to_string(), None))
            }
            AuthError::Ambiguous => Self::bad_request(Some("authorization"), error.to_string()),
            _ => Self::Unauthorized(problem(StatusCode::UNAUTHORIZED, "unauthorized", error.to_string(), None)),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        if database_unavailable(&error) {
            tracing::warn!(%error, "database unavailable");
            Self::unavailable("the database is unavailable; retry later")
        } else if matches!(
            error,
            StoreError::MalformedHash { .. } | StoreError::UnparsableEvent { .. } | StoreError::Unreadable(_)
        ) {
            // Still the service's fault, but one an operator must know apart from a bug: the log was edited.
            tracing::error!(%error, "the event log was changed outside the service");
            Self::log_damaged(
                "the event log has been changed outside the service and cannot be read; the audit check \
                 (GET /audit/verify) shows where",
            )
        } else if matches!(error, StoreError::UndecodableEvent { .. }) {
            // An event of a type or shape this release does not know: edited, or written by a newer release.
            tracing::error!(%error, "the event log holds an event this release cannot read");
            Self::log_damaged(
                "the event log holds an event this release cannot read: changed outside the service (the audit \
                 check, GET /audit/verify, shows where) or written by a newer release",
            )
        } else {
            tracing::error!(%error, "store error");
            Self::internal()
        }
    }
}

/// Whether the database failed the request for reasons of its own that a retry may not meet: it cannot be
/// reached, is shutting down or out of resources (see [`failure::classify`]), cancelled the statement
/// (`database.statement_timeout`, 57014), could not take a lock in time (55P03), or rolled back a
/// transaction that lost a race (class 40). Anything else is a fault of the service: 500.
fn database_unavailable(error: &StoreError) -> bool {
    use sea_orm::DbErr;
    if matches!(error, StoreError::Database(DbErr::Conn(_) | DbErr::ConnectionAcquire(_))) {
        return true;
    }
    error.sqlx().is_some_and(|error| {
        let retryable =
            messages::sqlstate(error).is_some_and(|code| matches!(code, "57014" | "55P03") || code.starts_with("40"));
        retryable || failure::classify(error) == WriteFailure::Unavailable
    })
}

impl From<TenantError> for ApiError {
    fn from(error: TenantError) -> Self {
        match error {
            TenantError::InvalidName { .. }
            | TenantError::WorkersOutOfRange { .. }
            | TenantError::LimitOutOfRange { .. }
            | TenantError::BurstWithoutRate => Self::bad_request(error.field(), error.to_string()),
            TenantError::AlreadyExists | TenantError::IdReserved => Self::conflict(error.to_string()),
            TenantError::NotFound | TenantError::Deleted => Self::not_found(error.to_string()),
        }
    }
}

impl From<AppError> for ApiError {
    fn from(error: AppError) -> Self {
        match error {
            e @ (AppError::NoSuchTenant(_) | AppError::TenantDeleted) => Self::not_found(e.to_string()),
            AppError::Rejected(e) => e.into(),
            e @ AppError::Conflict { .. } => Self::conflict(e.to_string()),
            e @ AppError::IdempotencyKeyReused => Self::Conflict(problem(
                StatusCode::CONFLICT,
                "conflict",
                e.to_string(),
                Some(super::tenants::IDEMPOTENCY_KEY),
            )),
            e @ AppError::ProjectionLagging { tenant, .. } => {
                let Json(problem) = problem(StatusCode::SERVICE_UNAVAILABLE, "recorded", e.to_string(), None);
                // No `Retry-After`: the command must not be sent again (see the variant).
                Self::Unavailable(Json(Problem { tenant_id: Some(tenant.as_uuid()), ..problem }), None)
            }
            AppError::PublishTimeout(limit) => {
                Self::unavailable(format!("the message broker did not confirm within {limit:?}; retry"))
            }
            AppError::Unroutable | AppError::Broker(BrokerError::Refused) => {
                Self::unavailable("the message broker refused the message; retry")
            }
            // Logged once by the connection's supervisor, not at each refused publish.
            AppError::Broker(BrokerError::Blocked) => Self::unavailable(
                "the message broker is blocking publishers (a memory or disk alarm); nothing was published; retry",
            ),
            e @ AppError::RateLimited { retry_after } => {
                let problem = problem(StatusCode::TOO_MANY_REQUESTS, "rate-limited", e.to_string(), None);
                Self::TooManyRequests(problem, u32::try_from(retry_after.as_secs().max(1)).unwrap_or(u32::MAX))
            }
            e @ AppError::QueueFull { .. } => {
                let problem = problem(StatusCode::TOO_MANY_REQUESTS, "queue-full", e.to_string(), None);
                Self::TooManyRequests(problem, RETRY_AFTER_SECONDS.into())
            }
            e @ AppError::BatchOverBurst { .. } => Self::bad_request(Some("messages"), e.to_string()),
            e @ (AppError::PageReadsWaiting | AppError::DeadLettersBusy) => Self::unavailable(e.to_string()),
            AppError::Broker(e) => e.into(),
            AppError::Store(e) => e.into(),
        }
    }
}

/// The broker's own words (queue names, reply texts) are logged, never sent: they can name other tenants.
impl From<BrokerError> for ApiError {
    fn from(error: BrokerError) -> Self {
        tracing::warn!(%error, "broker operation failed");
        Self::unavailable("the message broker is unavailable; retry")
    }
}

/// A request body that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct BodyError {
    pub status: StatusCode,
    pub field: Option<String>,
    pub detail: String,
}

impl poem::error::ResponseError for BodyError {
    fn status(&self) -> StatusCode {
        self.status
    }
}

/// Turns any error that reaches the top of the router into a problem document: parameter and body parse errors
/// name their field, poem's own errors (404 route, 405, 415) keep their status, and 5xx never leak details.
pub async fn into_problem(error: poem::Error) -> Response {
    // The API's own errors (503s carry their `Retry-After`, or none for `recorded`).
    if error.is_from_response() {
        return error.into_response();
    }
    let response = if let Some(e) = error.downcast_ref::<AuthError>() {
        ApiError::from(e.clone())
    } else if let Some(e) = error.downcast_ref::<ParseParamError>() {
        ApiError::bad_request(Some(e.name), format!("invalid `{}`: {}", e.name, e.reason))
    } else if let Some(e) = error.downcast_ref::<ParsePathError>() {
        // poem-openapi reports path parameters by position (`param0`); the API's only path parameter is the
        // tenant `id`.
        ApiError::bad_request(
            Some(PATH_PARAMETER),
            format!("invalid `{PATH_PARAMETER}`: must be a UUID ({})", e.reason),
        )
    } else if error.is::<poem::error::ParsePathError>() {
        // The router's own: a path whose percent-escapes do not decode to UTF-8 (`/tenants/%FF`).
        ApiError::bad_request(None, "the path's percent-escapes do not decode to UTF-8")
    } else if let Some(e) = error.downcast_ref::<BodyError>() {
        match e.status {
            StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge(problem(e.status, "payload-too-large", e.detail.clone(), None))
            }
            StatusCode::REQUEST_TIMEOUT => {
                ApiError::RequestTimeout(problem(e.status, "request-timeout", e.detail.clone(), None))
            }
            StatusCode::SERVICE_UNAVAILABLE => ApiError::unavailable(e.detail.clone()),
            _ => ApiError::bad_request(e.field.as_deref(), e.detail.clone()),
        }
    } else {
        let status = error.status();
        if status.is_server_error() {
            tracing::error!(%error, "unhandled error");
            ApiError::internal()
        } else {
            let kind = status.canonical_reason().unwrap_or("error").to_lowercase().replace(' ', "-");
            return problem_response(problem(status, &kind, error.to_string(), None), status);
        }
    };
    let mut response = response.into_response();
    if response.status() == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(poem::http::header::WWW_AUTHENTICATE, poem::http::HeaderValue::from_static("Bearer"));
    }
    response
}

fn problem_response(body: Json<Problem>, status: StatusCode) -> Response {
    let mut response = body.into_response();
    response.set_status(status);
    response
        .headers_mut()
        .insert(poem::http::header::CONTENT_TYPE, poem::http::HeaderValue::from_static("application/problem+json"));
    response
}

//! `/tenants`: the tenant commands (create, set concurrency, set limits, delete) and the tenants read model.

use std::num::NonZeroU32;

use chrono::{DateTime, Utc};
use poem::{Request, web::Data};
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Header, Path, Query},
    payload::Json,
    types::Example,
};
use uuid::Uuid;

use crate::{
    app::tenants::{TenantRow, TenantStatus},
    auth::Principal,
    domain::tenant::{Limits, TenantId},
};

use super::{ApiTags, AppState, json_body::JsonBody, pagination, problem::ApiError, request_context::RequestContext};

/// Create a tenant.
#[derive(Debug, serde::Deserialize, Object)]
#[serde(deny_unknown_fields)]
#[oai(deny_unknown_fields, example)]
pub struct CreateTenantRequest {
    /// 1 to 200 characters, not blank, without control characters, line separators, zero-width characters or
    /// direction marks.
    #[oai(validator(
        min_length = 1,
        max_length = 200,
        // Whitespace listed rather than `\s`, which some regex engines read as ASCII only.
        pattern = r"^[^\x00-\x1F\x7F-\x9F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]*[^\x00-\x1F\x7F-\x9F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF\x20\xA0\u1680\u2000-\u200A\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]*$"
    ))]
    pub name: String,
    /// Worker pool size, 1 to `max_workers` (64 unless configured otherwise); the configured `workers` when
    /// absent.
    // The maximum is the instance's `max_workers`, which the served document states (`document::served`).
    #[oai(nullable, validator(minimum(value = "1")))]
    pub workers: Option<i64>,
    /// The tenant's id; generated (UUIDv7) when absent, or derived from the `Idempotency-Key` header (then
    /// leave it out). Creating an existing id is a conflict, also the id of a deleted tenant (ids are never
    /// reused).
    #[oai(nullable, skip_serializing_if_is_none)]
    pub id: Option<Uuid>,
}

/// Swagger UI's "Try it out" body: no fixed id, so trying it twice makes two tenants.
impl Example for CreateTenantRequest {
    fn example() -> Self {
        Self { name: "acme".into(), workers: Some(3), id: None }
    }
}

/// Change a tenant's worker pool size.
#[derive(Debug, serde::Deserialize, Object)]
#[serde(deny_unknown_fields)]
#[oai(deny_unknown_fields)]
pub struct SetConcurrencyRequest {
    /// 1 to `max_workers` (64 unless configured otherwise).
    // The maximum is the instance's `max_workers`, which the served document states (`document::served`).
    #[oai(validator(minimum(value = "1")))]
    pub workers: i64,
}

/// Set a tenant's limits. All three together: one absent or null is unlimited.
#[derive(Debug, serde::Deserialize, Object)]
#[serde(deny_unknown_fields)]
#[oai(deny_unknown_fields, example)]
pub struct SetLimitsRequest {
    /// Messages per second the publish API accepts for the tenant, across all instances; over it a publish
    /// gets 429 `rate-limited` with `Retry-After`. A batch counts as its size.
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "1000000")))]
    pub publish_rate: Option<i64>,
    /// Messages accepted at once after a quiet spell (the bucket size), also the largest batch; needs
    /// `publish_rate`; one second of it when null.
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "10000000")))]
    pub publish_burst: Option<i64>,
    /// While the tenant's queue holds this many ready messages or more, a publish gets 429 `queue-full`.
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "1000000000")))]
    pub max_queue_depth: Option<i64>,
}

impl Example for SetLimitsRequest {
    fn example() -> Self {
        Self { publish_rate: Some(1000), publish_burst: Some(5000), max_queue_depth: Some(100_000) }
    }
}

/// Where a tenant's limits come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum LimitsSource {
    /// Set on the tenant (`PUT /tenants/{id}/config/limits`).
    Tenant,
    /// The service's configured defaults (`limits.*`): the tenant has none of its own.
    Default,
}

/// The limits that apply to a tenant; null is unlimited.
#[derive(Debug, Clone, Object)]
pub struct TenantLimits {
    /// Messages per second through the publish API.
    #[oai(nullable)]
    pub publish_rate: Option<i32>,
    /// The bucket size (largest batch); null with a rate: one second of it.
    #[oai(nullable)]
    pub publish_burst: Option<i32>,
    /// Publishes are refused while the queue holds this many ready messages.
    #[oai(nullable)]
    pub max_queue_depth: Option<i32>,
    pub source: LimitsSource,
}

impl TenantLimits {
    /// Limits set on the tenant.
    pub fn set(limits: Limits) -> Self {
        let value = |limit: Option<NonZeroU32>| limit.and_then(|n| i32::try_from(n.get()).ok());
        Self {
            publish_rate: value(limits.publish_rate),
            publish_burst: value(limits.publish_burst),
            max_queue_depth: value(limits.max_queue_depth),
            source: LimitsSource::Tenant,
        }
    }
}

/// A tenant.
#[derive(Debug, Clone, Object)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    /// Desired worker pool size.
    pub workers: i32,
    /// `active` (deleted tenants are not shown).
    pub status: String,
    /// Version of the tenant's event stream (number of events).
    pub version: i32,
    /// The queue its messages arrive on.
    pub queue: String,
    pub limits: TenantLimits,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<TenantRow> for Tenant {
    fn from(row: TenantRow) -> Self {
        Self {
            queue: TenantId::from_uuid(row.id).queue_name(),
            id: row.id,
            name: row.name,
            workers: row.workers,
            status: row.status.as_str().to_owned(),
            version: row.version,
            limits: TenantLimits {
                publish_rate: row.publish_rate,
                publish_burst: row.publish_burst,
                max_queue_depth: row.max_queue_depth,
                source: if row.limits_set { LimitsSource::Tenant } else { LimitsSource::Default },
            },
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// What is running for a tenant on this instance.
#[derive(Debug, Clone, Object)]
pub struct TenantRuntimeView {
    /// `starting`, `running`, `stopping`, `restarting` (this instance's consumer failed and starts again after
    /// a pause: see `consumer_failure`), or `stopped` (no consumer on this instance right now).
    pub consumer_state: String,
    /// While `consumer_state` is `restarting`: why the consumer failed, and when it starts again.
    #[oai(nullable)]
    pub consumer_failure: Option<ConsumerFailureView>,
    /// Workers in the pool now (follows `workers` after a change).
    pub running_workers: u16,
    /// Workers holding a batch right now: writing it, waiting for a write turn, or pausing between tries
    /// while the database cannot take it.
    pub busy_workers: u16,
    /// This instance's consumer tag (instance, tenant, generation).
    #[oai(nullable)]
    pub consumer_tag: Option<String>,
    /// Messages ready in the tenant's queue. Null, as are the three counts below, when the broker cannot be
    /// asked or the queue does not exist (deleted from outside, and not declared again yet).
    #[oai(nullable)]
    pub queue_depth: Option<u32>,
    /// Consumers on the tenant's queue, across all instances.
    #[oai(nullable)]
    pub queue_consumers: Option<u32>,
    /// Messages waiting in the tenant's retry queue for their next attempt.
    #[oai(nullable)]
    pub retry_depth: Option<u32>,
    /// Messages in the tenant's dead-letter queue.
    #[oai(nullable)]
    pub dlq_depth: Option<u32>,
}

/// Why a tenant's consumer is not running on this instance, while it waits to start again.
#[derive(Debug, Clone, Object)]
pub struct ConsumerFailureView {
    /// `access_refused` (the broker refused the subscription: another client consumes the queue exclusively,
    /// or the broker user may not read it), `queue_arguments_differ` (the queue exists with other arguments
    /// than the service declares: someone else declared it; delete it, or declare it as the service does),
    /// `subscription_cancelled` (the broker ended the subscription: the queue was deleted, or its leader
    /// moved), `connection_lost`, `handover_timed_out` (a resize could not hand deliveries over in time),
    /// `panicked` or `broker_error` (the service's log has the details). More may be added.
    pub reason: String,
    pub failed_at: DateTime<Utc>,
    /// The earliest the consumer starts again; it waits longer while this instance has no broker
    /// connection.
    pub restart_at: DateTime<Utc>,
    /// Failures in a row; each waits twice as long as the one before, up to 10 s. A run of a minute starts
    /// the count again.
    pub failures_in_a_row: u32,
}

impl From<TenantStatus> for TenantRuntimeView {
    fn from(status: TenantStatus) -> Self {
        let consumer = status.consumer.as_ref();
        let failure = status.failure.as_ref();
        let state = match (consumer, failure) {
            (Some(consumer), _) => consumer.state.as_str(),
            (None, Some(_)) => "restarting",
            (None, None) => "stopped",
        };
        Self {
            consumer_state: state.to_owned(),
            consumer_failure: failure.map(|failure| ConsumerFailureView {
                reason: failure.reason.as_str().to_owned(),
                failed_at: failure.failed_at,
                restart_at: failure.restart_at,
                failures_in_a_row: failure.in_a_row,
            }),
            running_workers: consumer.map_or(0, |c| c.running_workers),
            busy_workers: consumer.map_or(0, |c| c.busy_workers),
            consumer_tag: consumer.map(|c| c.consumer_tag.clone()).filter(|tag| !tag.is_empty()),
            queue_depth: status.queues.ready,
            queue_consumers: status.queues.consumers,
            retry_depth: status.queues.retrying,
            dlq_depth: status.queues.dead_letters,
        }
    }
}

/// A tenant with its runtime.
#[derive(Debug, Clone, Object)]
pub struct TenantDetails {
    #[oai(flatten)]
    pub tenant: Tenant,
    pub runtime: TenantRuntimeView,
}

/// A page of tenants in creation order.
#[derive(Debug, Object)]
pub struct TenantPage {
    pub data: Vec<Tenant>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, ApiResponse)]
pub enum CreateTenantResponse {
    /// Created.
    #[oai(status = 201)]
    Created(Json<Tenant>, #[oai(header = "Location")] String),
}

#[derive(Debug, ApiResponse)]
pub enum DeleteTenantResponse {
    /// Deleted: its consumers stopped after finishing what they held, then its partition was dropped (or
    /// detached) and its queues deleted, its dead-letter queue too (read or replay dead letters first); its
    /// events stay in the log. A publish from now on gets 404.
    #[oai(status = 204)]
    Deleted,
}

/// The header that makes a create safe to send again.
pub(super) const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

pub struct TenantsApi;

#[OpenApi(tag = "ApiTags::Tenants")]
impl TenantsApi {
    /// Create a tenant (CreateTenant; admin)
    ///
    /// A create that may be sent again (its answer lost, a 503) either gives the tenant's `id`, and a second
    /// one answers 409, or sends an `Idempotency-Key`, and a second one with the same key and the same request
    /// answers 201 with the tenant as it is now.
    #[oai(path = "/tenants", method = "post", operation_id = "createTenant")]
    async fn create(
        &self,
        http: &Request,
        state: Data<&AppState>,
        context: Data<&RequestContext>,
        principal: Principal,
        /// 1 to 255 printable ASCII characters, not starting or ending with a space, sent once; unique per
        /// create of this caller (a UUID, say). The tenant's id is derived from it and from the token's subject
        /// (`sub`): the same create sent again with the same key and a token of the same subject makes no
        /// second tenant, and is answered 201 again (or 503 `recorded` while the tenant is not readable yet);
        /// the same key with another `name` or `workers`, or after the tenant was deleted, is a 409. Not with
        /// `id` in the body.
        // The validator is enforced (parameters are parsed by poem-openapi): a bad key is a 400 naming it.
        #[oai(
            name = "Idempotency-Key",
            validator(min_length = 1, max_length = 255, pattern = r"^[\x21-\x7E](?:[\x20-\x7E]*[\x21-\x7E])?$")
        )]
        idempotency_key: Header<Option<String>>,
        body: JsonBody<CreateTenantRequest>,
    ) -> Result<CreateTenantResponse, ApiError> {
        principal.require_admin()?;
        // The parameter passes over a value that is not text and takes the first of two: either would make a
        // create without the key, one that a retry repeats.
        let mut keys = http.headers().get_all(IDEMPOTENCY_KEY).iter();
        if keys.next().is_some_and(|key| key.to_str().is_err()) || keys.next().is_some() {
            return Err(ApiError::bad_request(
                Some(IDEMPOTENCY_KEY),
                format!("send one `{IDEMPOTENCY_KEY}` of printable ASCII characters"),
            ));
        }
        let request = body.0;
        let metadata = context.event_metadata(&principal);
        let (id, tenant) = match (idempotency_key.0, request.id) {
            (None, id) => {
                let id = id.map_or_else(TenantId::generate, TenantId::from_uuid);
                (id, state.app.tenants.create(id, request.name, request.workers, &metadata).await?)
            }
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    Some(IDEMPOTENCY_KEY),
                    "send the tenant's `id` or an `Idempotency-Key`, not both",
                ));
            }
            (Some(key), None) => {
                let id = TenantId::for_idempotency_key(&principal.subject, &key);
                (id, state.app.tenants.create_once(id, request.name, request.workers, &metadata).await?)
            }
        };
        Ok(CreateTenantResponse::Created(Json(tenant.into()), format!("/tenants/{id}")))
    }

    /// List live tenants, oldest first (admin, auditor)
    #[oai(path = "/tenants", method = "get", operation_id = "listTenants")]
    async fn list(
        &self,
        state: Data<&AppState>,
        principal: Principal,
        /// From a previous page's `next_cursor`.
        cursor: Query<Option<String>>,
        /// Page size, 1 to 1000 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
    ) -> Result<Json<TenantPage>, ApiError> {
        principal.require_record_reader()?;
        let limit = pagination::limit(limit.0)?;
        let scope = pagination::Listing::Tenants.to_string();
        let after = pagination::decode(cursor.0.as_deref(), &scope)?;
        let rows = state.app.tenants.list(after, limit + 1).await?;
        let (data, next_cursor) = pagination::page(rows, limit, &scope, |r| r.created_position, Tenant::from);
        Ok(Json(TenantPage { data, next_cursor }))
    }

    /// Get a tenant with its desired and running workers, consumer state and queue depths
    #[oai(path = "/tenants/:id", method = "get", operation_id = "getTenant")]
    async fn get(
        &self,
        state: Data<&AppState>,
        principal: Principal,
        id: Path<Uuid>,
    ) -> Result<Json<TenantDetails>, ApiError> {
        let id = TenantId::from_uuid(id.0);
        principal.require_record_of(id)?;
        let (tenant, status) = state.app.tenants.status(id).await?;
        Ok(Json(TenantDetails { tenant: tenant.into(), runtime: status.into() }))
    }

    /// Delete a tenant (DeleteTenant; admin)
    #[oai(path = "/tenants/:id", method = "delete", operation_id = "deleteTenant")]
    async fn delete(
        &self,
        state: Data<&AppState>,
        context: Data<&RequestContext>,
        principal: Principal,
        id: Path<Uuid>,
    ) -> Result<DeleteTenantResponse, ApiError> {
        principal.require_admin()?;
        let id = TenantId::from_uuid(id.0);
        state.app.tenants.delete(id, &context.event_metadata(&principal)).await?;
        Ok(DeleteTenantResponse::Deleted)
    }

    /// Set a tenant's worker pool size (SetConcurrency; admin)
    #[oai(path = "/tenants/:id/config/concurrency", method = "put", operation_id = "setConcurrency")]
    async fn set_concurrency(
        &self,
        state: Data<&AppState>,
        context: Data<&RequestContext>,
        principal: Principal,
        id: Path<Uuid>,
        body: JsonBody<SetConcurrencyRequest>,
    ) -> Result<Json<Tenant>, ApiError> {
        principal.require_admin()?;
        let id = TenantId::from_uuid(id.0);
        let metadata = context.event_metadata(&principal);
        Ok(Json(state.app.tenants.set_concurrency(id, body.0.workers, &metadata).await?.into()))
    }

    /// Set a tenant's publish rate, burst and queue depth cap, all three at once (SetTenantLimits; admin)
    #[oai(path = "/tenants/:id/config/limits", method = "put", operation_id = "setTenantLimits")]
    async fn set_limits(
        &self,
        state: Data<&AppState>,
        context: Data<&RequestContext>,
        principal: Principal,
        id: Path<Uuid>,
        body: JsonBody<SetLimitsRequest>,
    ) -> Result<Json<Tenant>, ApiError> {
        principal.require_admin()?;
        let id = TenantId::from_uuid(id.0);
        let metadata = context.event_metadata(&principal);
        let SetLimitsRequest { publish_rate, publish_burst, max_queue_depth } = body.0;
        let limits = (publish_rate, publish_burst, max_queue_depth);
        Ok(Json(state.app.tenants.set_limits(id, limits, &metadata).await?.into()))
    }
}

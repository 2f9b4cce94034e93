//! `/tenants/{id}/events`: a tenant's history from the log, for auditors. Readable after deletion.

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{Object, OpenApi, param::Path, param::Query, payload::Json};
use uuid::Uuid;

use crate::{app::history::RecordedEvent, auth::Principal, domain::tenant::TenantId};

use super::{ApiTags, AppState, pagination, problem::ApiError};

/// One event of a tenant's stream.
#[derive(Debug, Object)]
pub struct Event {
    /// Global position in the log.
    pub position: i64,
    /// Position within the tenant's stream, from 1.
    pub version: i32,
    /// Stable, versioned type name, e.g. `TenantCreated.v1`.
    #[oai(rename = "type")]
    pub event_type: String,
    pub data: serde_json::Value,
    /// Actor, request id and correlation id of the command that caused it.
    pub metadata: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
    /// SHA-256 of the event's canonical encoding, 64 lowercase hex digits (see docs/audit.md).
    pub hash: String,
    /// The `hash` of the stream's previous event; 64 zeros for version 1.
    pub prev_hash: String,
}

impl From<RecordedEvent> for Event {
    fn from(e: RecordedEvent) -> Self {
        Self {
            position: e.position,
            version: e.version,
            event_type: e.event_type,
            data: e.data,
            metadata: e.metadata,
            recorded_at: e.recorded_at,
            hash: e.hash,
            prev_hash: e.prev_hash,
        }
    }
}

/// A page of events, oldest first.
#[derive(Debug, Object)]
pub struct EventPage {
    pub data: Vec<Event>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

pub struct EventsApi;

#[OpenApi(tag = "ApiTags::Events")]
impl EventsApi {
    /// A tenant's event history, oldest first
    ///
    /// Stays readable after the tenant is deleted: the log keeps every event, for auditors.
    #[oai(path = "/tenants/:id/events", method = "get", operation_id = "listTenantEvents")]
    async fn list(
        &self,
        state: Data<&AppState>,
        principal: Principal,
        id: Path<Uuid>,
        /// From a previous page's `next_cursor`.
        cursor: Query<Option<String>>,
        /// Page size, 1 to 1000 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
    ) -> Result<Json<EventPage>, ApiError> {
        let tenant = TenantId::from_uuid(id.0);
        principal.require_record_of(tenant)?;
        let scope = pagination::Listing::Events(tenant).to_string();
        let limit = pagination::limit(limit.0)?;
        let after = pagination::decode(cursor.0.as_deref(), &scope)?;
        let rows = state.app.history.events(tenant, after.try_into().unwrap_or(i32::MAX), limit + 1).await?;
        let (data, next_cursor) = pagination::page(rows, limit, &scope, |e| i64::from(e.version), Event::from);
        Ok(Json(EventPage { data, next_cursor }))
    }
}

//! The auditor's view of the log (docs/audit.md): checking the hash chain, the streams' heads to record
//! elsewhere, a tenant as it was at a position or time, and a tenant's history as an export file.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use poem::{Body, web::Data};
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::{Binary, Json},
    registry::MetaSchemaRef,
    types::{ParseError, ParseFromParameter, ParseResult, Type},
};
use uuid::Uuid;

use crate::{
    app::audit::{AsOf, StreamsChecked, TenantAsOf, Verdict},
    auth::Principal,
    domain::{
        audit::{Break, BreakReason, Head, Intact},
        tenant::TenantId,
    },
};

use super::{ApiTags, AppState, pagination, problem::ApiError, tenants::TenantLimits};

/// A time in a query string, RFC 3339 (`date-time` in the document, so that generated clients take their
/// language's time type); the problem names the format expected when it is not one.
pub struct Rfc3339(DateTime<Utc>);

impl Type for Rfc3339 {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        <DateTime<Utc> as Type>::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        <DateTime<Utc> as Type>::schema_ref()
    }

    fn as_raw_value(&self) -> Option<&Self> {
        Some(self)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
        Box::new(std::iter::once(self))
    }
}

impl ParseFromParameter for Rfc3339 {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        DateTime::parse_from_rfc3339(&offset_plus_restored(value))
            .map(|time| Self(time.with_timezone(&Utc)))
            .map_err(|e| ParseError::custom(format!("not an RFC 3339 time such as 2026-12-01T09:30:00Z ({e})")))
    }
}

/// The `+` of a time's offset, where a query string has a space: the decoding of a `+` a client did not write
/// as `%2B`, as when it pastes a time the API answered with (`…+00:00`). Nothing else ends in ` HH:MM`.
fn offset_plus_restored(value: &str) -> Cow<'_, str> {
    match value.rsplit_once(' ') {
        Some((time, offset))
            if offset.len() == 5
                && offset.bytes().enumerate().all(|(i, b)| if i == 2 { b == b':' } else { b.is_ascii_digit() }) =>
        {
            Cow::Owned(format!("{time}+{offset}"))
        }
        _ => Cow::Borrowed(value),
    }
}

/// The newest event of a stream: record it elsewhere, and a later check shows whether the stream still ends
/// there.
#[derive(Debug, Object)]
pub struct StreamHead {
    /// The stream, which is the tenant's id.
    pub stream_id: Uuid,
    pub version: i32,
    /// Global position in the log.
    pub position: i64,
    /// SHA-256 of the event's canonical encoding, 64 lowercase hex digits.
    pub hash: String,
}

impl From<Head> for StreamHead {
    fn from(head: Head) -> Self {
        Self { stream_id: head.stream_id, version: head.version, position: head.position, hash: head.hash.to_hex() }
    }
}

/// Where the chain breaks first, and why.
#[derive(Debug, Object)]
pub struct ChainBreak {
    /// Global position of the first event that does not check.
    pub position: i64,
    pub stream_id: Uuid,
    pub version: i32,
    /// `hash_mismatch` (the event was changed), `broken_link` (its `prev_hash` is not the previous event's
    /// hash), `version_gap` (an event before it is missing) or `unreadable` (the event was changed so that it
    /// cannot be encoded to be hashed: a hash that is not 32 bytes, JSON nested too deep).
    pub reason: String,
    /// The reason with the hashes or versions involved.
    pub detail: String,
}

impl From<Break> for ChainBreak {
    fn from(broken: Break) -> Self {
        let reason = match broken.reason {
            BreakReason::HashMismatch { .. } => "hash_mismatch",
            BreakReason::BrokenLink { .. } => "broken_link",
            BreakReason::VersionGap { .. } => "version_gap",
            BreakReason::Unreadable(_) => "unreadable",
            // Only the check of an export file finds this; the service checks each stream on its own.
            BreakReason::OtherStream { .. } => "other_stream",
        };
        Self {
            position: broken.position,
            stream_id: broken.stream_id,
            version: broken.version,
            reason: reason.to_owned(),
            detail: broken.reason.to_string(),
        }
    }
}

/// The outcome of a check of the hash chain.
#[derive(Debug, Object)]
pub struct Verification {
    /// `true` when every event checked is intact.
    pub ok: bool,
    /// Events checked (when `ok`).
    #[oai(skip_serializing_if_is_none)]
    pub events: Option<u64>,
    /// Streams checked (when `ok`).
    #[oai(skip_serializing_if_is_none)]
    pub streams: Option<u64>,
    /// The newest event checked (when `ok`): of one stream, its head; of several, it pins only its own stream.
    #[oai(skip_serializing_if_is_none)]
    pub head: Option<StreamHead>,
    /// The first event that does not check (when not `ok`).
    #[oai(skip_serializing_if_is_none)]
    pub first_break: Option<ChainBreak>,
    /// Without `tenant_id`: pass as `cursor` to check the next streams (after a broken one too); `null` once
    /// every stream is checked.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

impl Verification {
    fn of(verdict: Verdict, next_cursor: Option<String>) -> Self {
        match verdict {
            Verdict::Intact(Intact { streams, events, head }) => Self {
                ok: true,
                events: Some(events),
                streams: Some(streams),
                head: head.map(StreamHead::from),
                first_break: None,
                next_cursor,
            },
            Verdict::Broken(broken) => Self {
                ok: false,
                events: None,
                streams: None,
                head: None,
                first_break: Some(broken.into()),
                next_cursor,
            },
        }
    }
}

/// Heads of streams, by stream id.
#[derive(Debug, Object)]
pub struct StreamHeadPage {
    pub data: Vec<StreamHead>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

/// A tenant as it was after one event of its stream.
#[derive(Debug, Object)]
pub struct TenantState {
    pub id: Uuid,
    pub name: String,
    /// Desired worker pool size.
    pub workers: i32,
    /// `active` or `deleted`.
    pub status: String,
    /// The limits set on the tenant by then; null while none were set (the configured defaults applied).
    #[oai(nullable)]
    pub limits: Option<TenantLimits>,
    /// Version of the last event folded in (the number of events).
    pub version: i32,
    /// Global position of that event.
    pub position: i64,
    /// That event's hash: compare it with an export or a recorded head.
    pub hash: String,
    /// When that event was recorded.
    pub recorded_at: DateTime<Utc>,
}

impl TenantState {
    fn of(id: TenantId, as_of: TenantAsOf) -> Self {
        Self {
            id: id.as_uuid(),
            name: as_of.facts.name.into(),
            workers: i32::from(as_of.facts.workers.get()),
            status: if as_of.deleted { "deleted" } else { "active" }.to_owned(),
            limits: as_of.facts.limits.map(TenantLimits::set),
            version: as_of.version,
            position: as_of.position,
            hash: as_of.hash,
            recorded_at: as_of.recorded_at,
        }
    }
}

#[derive(Debug, ApiResponse)]
pub enum ExportResponse {
    /// The tenant's events, oldest first, one JSON object a line, with their hashes: the lines
    /// `tenantmq export` writes, to check offline with `tenantmq verify --file`.
    #[oai(status = 200, content_type = "application/x-ndjson")]
    Lines(Binary<Body>),
}

pub struct AuditApi;

#[OpenApi(tag = "ApiTags::Audit")]
impl AuditApi {
    /// Check the hash chain of one tenant's stream, or of every stream a page at a time (admin, auditor)
    ///
    /// With `tenant_id`, one stream. Without, up to `limit` streams (by stream id) after `cursor`, each in a
    /// snapshot of its own; follow `next_cursor` until it is `null` to check the whole log. A page ends at its
    /// first broken stream, and its `next_cursor` goes on after that stream.
    #[oai(path = "/audit/verify", method = "get", operation_id = "verifyChain")]
    async fn verify(
        &self,
        state: Data<&AppState>,
        principal: Principal,
        /// The tenant whose stream to check; every stream when absent.
        tenant_id: Query<Option<Uuid>>,
        /// From a previous check's `next_cursor` (without `tenant_id`).
        cursor: Query<Option<String>>,
        /// Streams to check, 1 to 1000 (default 50), without `tenant_id`.
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
    ) -> Result<Json<Verification>, ApiError> {
        principal.require_record_reader()?;
        match Streams::of(tenant_id.0, cursor.0, limit.0, pagination::Listing::AuditVerify)? {
            Streams::One(tenant) => {
                let verdict = state.app.audit.verify_tenant(tenant).await?;
                Ok(Json(Verification::of(verdict, None)))
            }
            Streams::Page { after, limit, scope } => {
                let StreamsChecked { verdict, continue_after } = state.app.audit.verify_streams(after, limit).await?;
                Ok(Json(Verification::of(verdict, scope.cursor_after(continue_after))))
            }
        }
    }

    /// The newest event of every stream, by stream id, or of one tenant's (admin, auditor)
    #[oai(path = "/audit/head", method = "get", operation_id = "listStreamHeads")]
    async fn head(
        &self,
        state: Data<&AppState>,
        principal: Principal,
        /// The tenant whose head to show; every stream's when absent.
        tenant_id: Query<Option<Uuid>>,
        /// From a previous page's `next_cursor` (without `tenant_id`).
        cursor: Query<Option<String>>,
        /// Page size, 1 to 1000 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
    ) -> Result<Json<StreamHeadPage>, ApiError> {
        principal.require_record_reader()?;
        match Streams::of(tenant_id.0, cursor.0, limit.0, pagination::Listing::AuditHeads)? {
            Streams::One(tenant) => {
                let head = state.app.audit.tenant_head(tenant).await?;
                Ok(Json(StreamHeadPage { data: vec![head.into()], next_cursor: None }))
            }
            Streams::Page { after, limit, scope } => {
                let (heads, continue_after) = state.app.audit.head_page(after, limit).await?;
                let data = heads.into_iter().map(StreamHead::from).collect();
                Ok(Json(StreamHeadPage { data, next_cursor: scope.cursor_after(continue_after) }))
            }
        }
    }

    /// A tenant as it was at a position of the log or a time, deleted tenants included (admin, auditor, own
    /// tenant)
    ///
    /// The tenant's stream folded up to its last event at or before `at_position` (a global position) or
    /// `at` (RFC 3339); give exactly one. 404 before the tenant was created.
    #[oai(path = "/tenants/:id/state", method = "get", operation_id = "getTenantStateAsOf")]
    async fn state_as_of(
        &self,
        state: Data<&AppState>,
        principal: Principal,
        id: Path<Uuid>,
        /// A global position of the log, from 1.
        #[oai(validator(minimum(value = "1")))]
        at_position: Query<Option<i64>>,
        /// A time, RFC 3339, e.g. `2026-12-01T09:30:00Z`. The `+` of an offset is best written `%2B`; one
        /// left as it is, which a query string reads as a space, is taken for the `+` it was.
        at: Query<Option<Rfc3339>>,
    ) -> Result<Json<TenantState>, ApiError> {
        let tenant = TenantId::from_uuid(id.0);
        principal.require_record_of(tenant)?;
        let as_of = match (at_position.0, at.0) {
            (Some(position), None) if position >= 1 => AsOf::Position(position),
            (Some(position), None) => {
                return Err(ApiError::bad_request(
                    Some("at_position"),
                    format!("`at_position` must be 1 or more, got {position}"),
                ));
            }
            (None, Some(Rfc3339(time))) => AsOf::Time(time),
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(Some("at"), "give `at_position` or `at`, not both"));
            }
            (None, None) => return Err(ApiError::bad_request(Some("at_position"), "give `at_position` or `at`")),
        };
        let as_of = state.app.audit.tenant_as_of(tenant, as_of).await?;
        Ok(Json(TenantState::of(tenant, as_of)))
    }

    /// A tenant's whole history as JSON Lines, for offline checking (admin, auditor, own tenant)
    #[oai(path = "/tenants/:id/events/export", method = "get", operation_id = "exportTenantEvents")]
    async fn export(
        &self,
        state: Data<&AppState>,
        principal: Principal,
        id: Path<Uuid>,
    ) -> Result<ExportResponse, ApiError> {
        let tenant = TenantId::from_uuid(id.0);
        principal.require_record_of(tenant)?;
        let lines = state.app.audit.export(tenant).await?;
        Ok(ExportResponse::Lines(Binary(Body::from_bytes_stream(lines))))
    }
}

/// What `/audit/*` is asked about: one tenant's stream, or a page of every stream by stream id.
enum Streams {
    One(TenantId),
    Page { after: Option<Uuid>, limit: u64, scope: CursorScope },
}

impl Streams {
    fn of(
        tenant_id: Option<Uuid>,
        cursor: Option<String>,
        limit: Option<i64>,
        listing: pagination::Listing,
    ) -> Result<Self, ApiError> {
        let limit = pagination::limit(limit)?;
        match (tenant_id, cursor) {
            (Some(_), Some(_)) => {
                Err(ApiError::bad_request(Some("cursor"), "`cursor` pages through streams: leave out `tenant_id`"))
            }
            (Some(tenant), None) => Ok(Self::One(TenantId::from_uuid(tenant))),
            (None, cursor) => {
                let scope = CursorScope(listing.to_string());
                let after = pagination::decode_key(cursor.as_deref(), &scope.0, |key| key.parse::<Uuid>().ok())?;
                Ok(Self::Page { after, limit, scope })
            }
        }
    }
}

/// The listing a page of streams belongs to, which its cursor names.
struct CursorScope(String);

impl CursorScope {
    fn cursor_after(&self, stream: Option<Uuid>) -> Option<String> {
        stream.map(|stream| pagination::encode(&self.0, stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_whose_offset_plus_a_query_string_read_as_a_space_is_understood() {
        let parsed = |value: &str| Rfc3339::parse_from_parameter(value).map(|Rfc3339(time)| time.to_rfc3339()).ok();
        let answered = "2026-12-01T09:30:00.123456+00:00";
        assert_eq!(parsed(answered).as_deref(), Some(answered));
        assert_eq!(parsed("2026-12-01T09:30:00.123456 00:00").as_deref(), Some(answered), "pasted into a URL");
        assert_eq!(parsed("2026-12-01T10:30:00 01:00").as_deref(), Some("2026-12-01T09:30:00+00:00"));
        assert_eq!(parsed("2026-12-01T09:30:00Z").as_deref(), Some("2026-12-01T09:30:00+00:00"));
        for refused in ["2026-12-01T09:30:00 0:00", "2026-12-01T09:30:00 ab:cd", "2026-12-01 09:30", "yesterday", ""] {
            assert_eq!(parsed(refused), None, "{refused:?}");
        }
    }
}

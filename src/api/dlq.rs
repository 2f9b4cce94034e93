//! `/tenants/{id}/dlq`: a tenant's dead letters — what failed for good, and why — to inspect, replay or
//! purge. See [`crate::broker::dead_letters`] for how a queue is peeked without losing messages.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use uuid::Uuid;

use crate::{app::dead_letters::DeadLetter, auth::Principal};

use serde_json::value::RawValue;

use super::{
    ApiTags, AppState,
    json_body::JsonBody,
    json_text::JsonText,
    messages::{JsonPayload, authorized, rfc3339_or_null},
    pagination,
    problem::ApiError,
};

/// How deep a peek may reach: each page reads every message before it, so deeper pages get slower. Replay
/// or purge to get further.
pub const MAX_PEEK_DEPTH: u64 = 10_000;

/// Most ids one replay may select.
pub const MAX_REPLAY_IDS: usize = 1000;

/// A message that failed for good.
#[derive(Debug, Object, serde::Serialize)]
pub struct DeadLetterMessage {
    /// The AMQP `message_id` (a UUID for everything this service dead-lettered); select it for a replay.
    #[oai(nullable)]
    pub id: Option<String>,
    /// Why it failed last, e.g. `body is not JSON`.
    #[oai(nullable)]
    pub reason: Option<String>,
    /// How many times it failed.
    #[oai(nullable)]
    pub attempts: Option<u32>,
    #[oai(nullable)]
    #[serde(serialize_with = "rfc3339_or_null")]
    pub first_failed_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    #[serde(serialize_with = "rfc3339_or_null")]
    pub dead_lettered_at: Option<DateTime<Utc>>,
    /// The body, when it is JSON, as it was published (large numbers keep every digit).
    #[oai(nullable)]
    pub payload: Option<JsonPayload>,
    /// The body as text (invalid UTF-8 replaced), when it is not JSON or is `truncated`.
    #[oai(nullable)]
    pub body: Option<String>,
    /// The body's size in bytes.
    pub size: u64,
    /// Whether `body` shows only the first `max_payload_bytes` of a larger body (a replay moves the whole
    /// message).
    pub truncated: bool,
}

impl From<DeadLetter> for DeadLetterMessage {
    fn from(letter: DeadLetter) -> Self {
        // JSON that any client's parser takes (no lone surrogate, no number past a double's range, at most 128
        // levels): shown as the text it is, so large integers keep every digit; anything else as `body`.
        let truncated = letter.truncated();
        let payload = std::str::from_utf8(&letter.body)
            .ok()
            .filter(|_| !truncated)
            .filter(|text| serde_json::from_str::<serde_json::Value>(text).is_ok())
            .and_then(|text| RawValue::from_string(text.to_owned()).ok())
            .map(JsonPayload);
        let body = payload.is_none().then(|| String::from_utf8_lossy(&letter.body).into_owned());
        Self {
            id: letter.message_id,
            reason: letter.reason,
            attempts: letter.attempts,
            first_failed_at: letter.first_failed_at,
            dead_lettered_at: letter.dead_lettered_at,
            payload,
            body,
            size: u64::try_from(letter.size).unwrap_or(u64::MAX),
            truncated,
        }
    }
}

/// A page of dead letters, oldest first.
#[derive(Debug, Object, serde::Serialize)]
pub struct DeadLetterPage {
    pub data: Vec<DeadLetterMessage>,
    /// Pass as `cursor` for the next page; `null` on the last page, which is also the one that reaches 10,000
    /// messages deep: a peek goes no deeper (the tenant's `runtime.dlq_depth` tells how many there are;
    /// replay or purge to see further). The DLQ is a queue, not a table: a replay or purge between two pages
    /// shifts what the cursor points at.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

/// What to replay.
#[derive(Debug, serde::Deserialize, Object)]
#[serde(deny_unknown_fields)]
#[oai(deny_unknown_fields)]
pub struct ReplayRequest {
    /// The ids to move back to the tenant's queue (at most 1000); leave out to replay every dead letter.
    #[oai(nullable, validator(min_items = 1, max_items = 1000))]
    pub ids: Option<Vec<Uuid>>,
}

#[derive(Debug, Object)]
pub struct ReplayResult {
    /// How many messages went back to the tenant's queue (with their failure history cleared).
    pub replayed: u32,
    /// Selected ids that were not in the DLQ; listed only when `complete`.
    pub not_found: Vec<Uuid>,
    /// `false` when the replay stopped before it went through the whole DLQ: at one of its bounds (10,000
    /// messages moved, `read.replay_time_budget` (10 s by default), or, for a selective replay, 100,000
    /// unselected messages walked past), or when the broker stopped taking its publishes after some were
    /// replayed. Replay again to continue.
    pub complete: bool,
}

#[derive(Debug, ApiResponse)]
pub enum ReplayResponse {
    /// Back in the tenant's queue (confirmed by the broker); workers will persist them.
    #[oai(status = 202)]
    Accepted(Json<ReplayResult>),
}

#[derive(Debug, ApiResponse)]
pub enum PurgeResponse {
    /// The DLQ is empty.
    #[oai(status = 204)]
    Purged,
}

pub struct DeadLettersApi;

#[OpenApi(tag = "ApiTags::DeadLetters")]
impl DeadLettersApi {
    /// Peek at a tenant's dead letters, oldest first, without removing them
    #[oai(path = "/tenants/:id/dlq", method = "get", operation_id = "listDeadLetters")]
    async fn list(
        &self,
        state: Data<&AppState>,
        principal: Principal,
        id: Path<Uuid>,
        /// From a previous page's `next_cursor`.
        cursor: Query<Option<String>>,
        /// Page size, 1 to 1000 (default 50). A page also ends early, with a `next_cursor`, once its bodies
        /// reach the configured byte cap (`read.max_page_bytes`): a short page is not the last one.
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
    ) -> Result<JsonText<DeadLetterPage>, ApiError> {
        let tenant = authorized(&principal, id.0)?;
        let limit = pagination::limit(limit.0)?;
        let scope = pagination::Listing::DeadLetters(tenant).to_string();
        let skip = pagination::decode_key(cursor.0.as_deref(), &scope, |key| key.parse::<u64>().ok())?.unwrap_or(0);
        // No cursor handed out points this deep: only a crafted one does.
        if skip >= MAX_PEEK_DEPTH {
            return Err(ApiError::bad_request(
                Some("cursor"),
                format!("a peek reaches at most {MAX_PEEK_DEPTH} messages deep; replay or purge to see further"),
            ));
        }
        // A page ends at the bound, and is the last.
        let limit = limit.min(MAX_PEEK_DEPTH - skip);
        let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let page = state.app.dead_letters.peek(tenant, to_usize(skip), to_usize(limit)).await?;
        let reached = skip + u64::try_from(page.messages.len()).unwrap_or(u64::MAX);
        let next_cursor = (page.more && reached < MAX_PEEK_DEPTH).then(|| pagination::encode(&scope, reached));
        Ok(JsonText(DeadLetterPage { data: page.messages.into_iter().map(Into::into).collect(), next_cursor }))
    }

    /// Move dead letters back to the tenant's queue: the selected ids, or all of them
    #[oai(path = "/tenants/:id/dlq/replay", method = "post", operation_id = "replayDeadLetters")]
    async fn replay(
        &self,
        state: Data<&AppState>,
        principal: Principal,
        id: Path<Uuid>,
        body: JsonBody<ReplayRequest>,
    ) -> Result<ReplayResponse, ApiError> {
        let tenant = authorized(&principal, id.0)?;
        let selection = match body.0.ids {
            Some(ids) if ids.len() > MAX_REPLAY_IDS => {
                return Err(ApiError::bad_request(
                    Some("ids"),
                    format!("select at most {MAX_REPLAY_IDS} ids per replay, got {}", ids.len()),
                ));
            }
            Some(ids) if ids.is_empty() => {
                return Err(ApiError::bad_request(Some("ids"), "select at least one id, or leave `ids` out for all"));
            }
            Some(ids) => Some(ids.into_iter().collect::<HashSet<_>>()),
            None => None,
        };
        let replayed = state.app.dead_letters.replay(tenant, selection).await?;
        Ok(ReplayResponse::Accepted(Json(ReplayResult {
            replayed: replayed.replayed,
            not_found: replayed.not_found,
            complete: replayed.complete,
        })))
    }

    /// Drop every dead letter of the tenant
    #[oai(path = "/tenants/:id/dlq", method = "delete", operation_id = "purgeDeadLetters")]
    async fn purge(
        &self,
        state: Data<&AppState>,
        principal: Principal,
        id: Path<Uuid>,
    ) -> Result<PurgeResponse, ApiError> {
        let tenant = authorized(&principal, id.0)?;
        let purged = state.app.dead_letters.purge(tenant).await?;
        tracing::info!(%tenant, purged, actor = %principal.subject, "purged the dead-letter queue");
        Ok(PurgeResponse::Purged)
    }
}

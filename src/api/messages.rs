//! Publishing to a tenant's queue with publisher confirms.

use poem::web::Data;
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
    registry::{MetaSchemaRef, Registry},
    types::{Example, ParseError, ParseFromJSON, ParseResult, ToJSON, Type},
};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::{
    app::messages::{MessageKey, MessageRow, OutgoingMessage},
    auth::{AuthError, Principal, Role},
    domain::{payload, tenant::TenantId},
};

use super::{
    ApiTags, AppState,
    json_body::{BodyLimits, JsonBody, from_object},
    json_text::JsonText,
    pagination,
    problem::ApiError,
};

/// Most messages in one batch.
pub const MAX_BATCH: usize = 1000;

/// Any JSON value as JSON text: what the client sent, or what PostgreSQL stored. It goes out as that text
/// (through [`JsonText`]), so large numbers keep their precision and deep nesting stays.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(transparent)]
pub struct JsonPayload(pub Box<RawValue>);

impl Type for JsonPayload {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> std::borrow::Cow<'static, str> {
        <serde_json::Value as Type>::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        <serde_json::Value as Type>::schema_ref()
    }

    fn register(registry: &mut Registry) {
        <serde_json::Value as Type>::register(registry);
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(std::iter::once(self))
    }
}

impl ParseFromJSON for JsonPayload {
    fn parse_from_json(value: Option<serde_json::Value>) -> ParseResult<Self> {
        let value = value.unwrap_or_default();
        RawValue::from_string(value.to_string()).map(Self).map_err(|e| ParseError::custom(e.to_string()))
    }
}

impl ToJSON for JsonPayload {
    fn to_json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(self.0.get()).ok()
    }
}

/// One message to publish.
#[derive(Debug, Object)]
#[oai(deny_unknown_fields, example)]
pub struct PublishRequest {
    /// The message: any JSON value PostgreSQL `jsonb` can store (nested at most `max_payload_depth` deep, no
    /// `\u0000`, no lone surrogate, numbers within `numeric`'s range), stored as `jsonb`.
    pub payload: JsonPayload,
    /// Idempotency key, per tenant: publishing the same id again never makes a second row, whatever its
    /// payload (the first stored stays, later ones are accepted and dropped). Set it to retry a publish safely
    /// after an error or a timeout. A new UUIDv7 when absent.
    #[oai(nullable, skip_serializing_if_is_none)]
    pub id: Option<Uuid>,
}

/// What a [`PublishRequest`] holds, as serde reads it; taken from a JSON object only ([`from_object`]), also
/// as an item of a batch.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequestFields {
    payload: JsonPayload,
    id: Option<Uuid>,
}

impl<'de> serde::Deserialize<'de> for PublishRequest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let PublishRequestFields { payload, id } = from_object(deserializer)?;
        Ok(Self { payload, id })
    }
}

/// Up to 1000 messages to publish together.
#[derive(Debug, serde::Deserialize, Object)]
#[serde(deny_unknown_fields)]
#[oai(deny_unknown_fields, example)]
pub struct PublishBatchRequest {
    #[oai(validator(min_items = 1, max_items = 1000))]
    pub messages: Vec<PublishRequest>,
}

fn example_message(payload: &str) -> PublishRequest {
    let payload = RawValue::from_string(payload.to_owned()).map(JsonPayload).expect("a JSON literal");
    PublishRequest { payload, id: None }
}

/// Swagger UI's "Try it out" bodies: no fixed id, so each try publishes a new message.
impl Example for PublishRequest {
    fn example() -> Self {
        example_message(r#"{"hello": "world"}"#)
    }
}

impl Example for PublishBatchRequest {
    fn example() -> Self {
        Self { messages: vec![example_message(r#"{"order": 1}"#), example_message(r#"{"order": 2}"#)] }
    }
}

#[derive(Debug, Object)]
pub struct Published {
    /// The message id (the AMQP `message_id`, and the row's id).
    pub id: Uuid,
}

#[derive(Debug, Object)]
pub struct PublishedBatch {
    /// The message ids, in request order.
    pub ids: Vec<Uuid>,
}

#[derive(Debug, ApiResponse)]
pub enum PublishResponse {
    /// The broker has confirmed the message; a worker will persist it.
    #[oai(status = 202)]
    Accepted(Json<Published>),
}

#[derive(Debug, ApiResponse)]
pub enum PublishBatchResponse {
    /// The broker has confirmed every message.
    #[oai(status = 202)]
    Accepted(Json<PublishedBatch>),
}

/// A stored message.
#[derive(Debug, Object, serde::Serialize)]
pub struct Message {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// The payload as stored (PostgreSQL `jsonb`: key order and spacing normalized, numbers exact).
    pub payload: JsonPayload,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// As poem-openapi writes a time, so the body is the same whichever writes it.
pub(super) fn rfc3339<S: serde::Serializer>(
    at: &chrono::DateTime<chrono::Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339())
}

/// [`rfc3339`] for a time that may be absent (`null`).
pub(super) fn rfc3339_or_null<S: serde::Serializer>(
    at: &Option<chrono::DateTime<chrono::Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => rfc3339(at, serializer),
        None => serializer.serialize_none(),
    }
}

/// A page of messages, oldest first.
#[derive(Debug, Object, serde::Serialize)]
pub struct MessagePage {
    pub data: Vec<Message>,
    /// Pass as `cursor` for the next page; `null` on the last page (nothing more right now).
    #[oai(nullable)]
    pub next_cursor: Option<String>,
    /// Where this page ended (the request's own cursor when the page is empty): poll with it to receive
    /// messages that land later (tailing), without repeating any row of this page.
    pub tail_cursor: String,
}

impl TryFrom<MessageRow> for Message {
    type Error = ApiError;

    fn try_from(row: MessageRow) -> Result<Self, Self::Error> {
        let payload = RawValue::from_string(row.payload).map_err(|error| {
            tracing::error!(%error, id = %row.id, "a stored payload is not JSON");
            ApiError::internal()
        })?;
        Ok(Self { id: row.id, tenant_id: row.tenant_id, payload: JsonPayload(payload), created_at: row.created_at })
    }
}

pub struct MessagesApi;

#[OpenApi(tag = "ApiTags::Messages")]
impl MessagesApi {
    /// Publish a message to the tenant's queue
    #[oai(path = "/tenants/:id/messages", method = "post", operation_id = "publishMessage")]
    async fn publish(
        &self,
        state: Data<&AppState>,
        principal: Principal,
        id: Path<Uuid>,
        body: JsonBody<PublishRequest>,
    ) -> Result<PublishResponse, ApiError> {
        // Who may publish comes first: a caller who may not learns nothing about what it sent.
        let tenant = authorized(&principal, id.0)?;
        storable(&body.0.payload, "payload", &state.limits)?;
        let message = outgoing(body.0);
        let id = message.id;
        state.app.messages.publish(tenant, &[message]).await?;
        Ok(PublishResponse::Accepted(Json(Published { id })))
    }

    /// Read a tenant's messages, oldest first, with a gap-free cursor
    ///
    /// A tenant token reads its own tenant (`tenant_id` may be left out); an admin names the tenant. Page to
    /// the end, then keep polling with the last page's `tail_cursor` (its `next_cursor` is null) to get new
    /// messages as they land: no message is skipped or repeated, even while workers commit out of order. A tenant's pages are read a few
    /// at a time (`read.max_concurrent_per_tenant`); one kept waiting by the database longer than
    /// `read.page_timeout` (10 s; a lock on the tenant's messages) answers 503.
    #[oai(path = "/messages", method = "get", operation_id = "listMessages")]
    async fn list(
        &self,
        state: Data<&AppState>,
        principal: Principal,
        /// The tenant (required for admin tokens).
        tenant_id: Query<Option<Uuid>>,
        /// From a previous page's `next_cursor`, or to wait for new messages, its `tail_cursor`.
        cursor: Query<Option<String>>,
        /// Page size, 1 to 1000 (default 50). A page also ends early, with a `next_cursor`, once its payloads
        /// reach the configured byte cap (`read.max_page_bytes`).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
    ) -> Result<JsonText<MessagePage>, ApiError> {
        let tenant = match (&principal.role, tenant_id.0) {
            (_, Some(id)) => id,
            (Role::Tenant(own), None) => own.as_uuid(),
            // An auditor may not read messages at all: forbidden, not a missing parameter.
            (Role::Auditor, None) => return Err(AuthError::AUDITOR_READS_THE_RECORD_ONLY.into()),
            (Role::Admin, None) => return Err(ApiError::bad_request(Some("tenant_id"), "`tenant_id` is required")),
        };
        let tenant = authorized(&principal, tenant)?;
        let limit = pagination::limit(limit.0)?;
        let scope = pagination::Listing::Messages(tenant).to_string();
        let after =
            pagination::decode_key(cursor.0.as_deref(), &scope, MessageKey::parse)?.unwrap_or(MessageKey::START);
        let page = state.app.messages.page(tenant, after, limit).await?;
        let last = page.rows.last().map_or(after, MessageKey::of);
        let next_cursor = page.more.then(|| pagination::encode(&scope, last));
        let tail_cursor = pagination::encode(&scope, last);
        let data = page.rows.into_iter().map(Message::try_from).collect::<Result<_, _>>()?;
        Ok(JsonText(MessagePage { data, next_cursor, tail_cursor }))
    }

    /// Publish up to 1000 messages to the tenant's queue
    #[oai(path = "/tenants/:id/messages/batch", method = "post", operation_id = "publishMessages")]
    async fn publish_batch(
        &self,
        state: Data<&AppState>,
        principal: Principal,
        id: Path<Uuid>,
        body: JsonBody<PublishBatchRequest, true>,
    ) -> Result<PublishBatchResponse, ApiError> {
        let requests = body.0.messages;
        let tenant = authorized(&principal, id.0)?;
        if requests.is_empty() || requests.len() > MAX_BATCH {
            return Err(ApiError::bad_request(
                Some("messages"),
                format!("a batch holds 1 to {MAX_BATCH} messages, got {}", requests.len()),
            ));
        }
        for (index, request) in requests.iter().enumerate() {
            storable(&request.payload, &format!("messages[{index}].payload"), &state.limits)?;
        }
        let messages: Vec<OutgoingMessage> = requests.into_iter().map(outgoing).collect();
        state.app.messages.publish(tenant, &messages).await?;
        Ok(PublishBatchResponse::Accepted(Json(PublishedBatch { ids: messages.iter().map(|m| m.id).collect() })))
    }
}

/// Refuses, naming `field`, a payload that `jsonb` cannot store: accepting it would only make a dead letter.
/// A payload within `max_payload_bytes` (its JSON text, the same for a single message and a batch's item) that
/// `jsonb` can store.
fn storable(payload: &JsonPayload, field: &str, limits: &BodyLimits) -> Result<(), ApiError> {
    let text = payload.0.get();
    if text.len() > limits.single {
        return Err(ApiError::payload_too_large_field(field.to_owned(), limits.single));
    }
    payload::check(text, limits.payload_depth).map_err(|error| ApiError::bad_request(Some(field), error.to_string()))
}

fn outgoing(request: PublishRequest) -> OutgoingMessage {
    let body = request.payload.0.get().as_bytes().to_vec();
    OutgoingMessage { id: request.id.unwrap_or_else(Uuid::now_v7), body }
}

/// The tenant, if the caller may use it. Asked before the use case looks the tenant up, so another tenant's
/// token learns nothing about existence.
pub(super) fn authorized(principal: &Principal, id: Uuid) -> Result<TenantId, ApiError> {
    let tenant = TenantId::from_uuid(id);
    principal.require_tenant(tenant)?;
    Ok(tenant)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::json_body::parse;

    #[test]
    fn a_message_is_an_object_also_inside_a_batch() {
        assert!(parse::<PublishRequest>(br#"{"payload": {"a": 1}}"#).is_ok());
        assert!(parse::<PublishRequest>(br#"[{"a": 1}, null]"#).is_err(), "the fields in order, as an array");
        let batch = parse::<PublishBatchRequest>(br#"{"messages": [[null, null]]}"#).expect_err("an array item");
        assert_eq!(batch.field.as_deref(), Some("messages[0]"));
        let unknown =
            parse::<PublishBatchRequest>(br#"{"messages": [{"payload": 1, "ids": []}]}"#).expect_err("unknown");
        assert_eq!(unknown.field.as_deref(), Some("messages[0].ids"));
    }
}

//! `JsonBody<T>`: a JSON request body parsed with serde so that every error names its field, read under the
//! configured size limit. The OpenAPI schema still comes from `T`'s `Object` derive.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use poem::{Request, RequestBody, http::StatusCode};
use poem_openapi::{
    impl_apirequest_for_payload,
    payload::{ParsePayload, Payload},
    registry::{MetaSchemaRef, Registry},
    types::Type,
};
use serde::{
    Deserialize, Deserializer,
    de::{DeserializeOwned, MapAccess, Visitor, value::MapAccessDeserializer},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::problem::BodyError;

/// The largest bodies accepted (`max_payload_bytes`, and `max_batch_bytes` for batches), put into request data
/// by the router, and the deepest payload (`max_payload_depth`).
#[derive(Debug, Clone)]
pub struct BodyLimits {
    pub single: usize,
    /// The largest body of a single message: `single` and room for what surrounds the payload.
    pub single_body: usize,
    pub batch: usize,
    pub payload_depth: usize,
    /// `server.body_read_timeout`: the longest a body may take to arrive.
    pub read_time: Duration,
    /// `server.max_buffered_body_bytes`, shared by every request.
    pub buffered: BodyBudget,
}

/// The bytes of request bodies all requests may hold at once. A body takes its share as it arrives and gives it
/// back when its request is done with it (the parsed body, which holds its payloads, is dropped).
#[derive(Debug, Clone)]
pub struct BodyBudget(Arc<Semaphore>);

impl BodyBudget {
    pub fn new(bytes: usize) -> Self {
        Self(Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))))
    }

    /// How long a body waits for its share while other bodies are read, before it is refused.
    const WAIT: Duration = Duration::from_secs(1);

    /// An empty share of the budget, for a body that declares `declared` bytes (its `Content-Length`).
    fn share(&self, declared: Option<usize>) -> BudgetShare<'_> {
        BudgetShare { budget: self, declared, held: None, covered: 0 }
    }
}

/// What one body holds of the [`BodyBudget`].
struct BudgetShare<'a> {
    budget: &'a BodyBudget,
    /// Taken at once when it fits the limit, so that bodies arriving together do not each hold part of the
    /// budget waiting for the rest (and all fail).
    declared: Option<usize>,
    held: Option<OwnedSemaphorePermit>,
    covered: usize,
}

impl BudgetShare<'_> {
    /// Makes the share cover `bytes` in all, waiting up to [`BodyBudget::WAIT`] for what it lacks; false, taking
    /// nothing more, if the budget has not that much left by then.
    async fn cover(&mut self, bytes: usize) -> bool {
        let Some(lacking) = bytes.checked_sub(self.covered).filter(|lacking| *lacking > 0) else { return true };
        let Ok(lacking_permits) = u32::try_from(lacking) else { return false };
        let acquire = self.budget.0.clone().acquire_many_owned(lacking_permits);
        let Ok(Ok(taken)) = tokio::time::timeout(BodyBudget::WAIT, acquire).await else { return false };
        match &mut self.held {
            Some(held) => held.merge(taken),
            None => self.held = Some(taken),
        }
        self.covered = bytes;
        true
    }
}

/// A JSON body; `BATCH` bodies get the batch size limit. It holds its bytes' share of the
/// [`BodyBudget`] until it is dropped.
pub struct JsonBody<T, const BATCH: bool = false>(
    pub T,
    #[expect(dead_code, reason = "held for its drop, which gives the share back")] Option<OwnedSemaphorePermit>,
);

impl<T: Type, const BATCH: bool> Payload for JsonBody<T, BATCH> {
    const CONTENT_TYPE: &'static str = "application/json";

    /// `application/json` only, as the document declares: another JSON type means other semantics (a
    /// `merge-patch+json` body keeps what it does not name, where these bodies replace it).
    fn check_content_type(content_type: &str) -> bool {
        content_type.parse::<mime::Mime>().is_ok_and(|mime| mime.essence_str() == "application/json")
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: DeserializeOwned + Send, const BATCH: bool> ParsePayload for JsonBody<T, BATCH> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let limits = request.data::<BodyLimits>();
        let limit = limits.map_or(usize::MAX, |l| if BATCH { l.batch } else { l.single_body });
        let declared = request.header(poem::http::header::CONTENT_LENGTH).and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > drain_bound(limit)) {
            return Err(too_large(limit).into());
        }
        let read_time = limits.map_or(Duration::MAX, |l| l.read_time);
        let share = limits.map(|l| l.buffered.share(declared));
        let (bytes, held) = read_limited(body.take()?, limit, read_time, share).await?;
        Ok(Self(parse(&bytes)?, held))
    }
}

/// An over-limit body up to four times the limit, and at least up to 16 MiB, is read to its end and discarded
/// before the 413 goes out. Most HTTP clients write the whole body before they read the answer: cut off
/// mid-body, they report a broken pipe instead of the 413. A larger body is refused at once, and its
/// connection closed.
fn drain_bound(limit: usize) -> usize {
    limit.saturating_mul(4).max(16 * 1024 * 1024)
}

/// The longest an over-limit body is read for, so a slow client cannot hold a request open with one.
const DRAIN_TIME: Duration = Duration::from_secs(10);

fn too_large(limit: usize) -> BodyError {
    BodyError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        field: None,
        detail: format!("the request body exceeds the limit of {limit} bytes"),
    }
}

fn over_budget() -> BodyError {
    BodyError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        field: None,
        detail: "the service holds as many request bodies as it may at once; retry shortly".into(),
    }
}

/// The whole body, with its `share` of the budget, if it fits in `limit` bytes and arrives within `read_time`
/// (else 408: a client cannot hold a request open by trickling its body). Past the limit (413), or past what
/// the budget has left within [`BodyBudget::WAIT`] (503), what follows is read and dropped (up to
/// [`drain_bound`], for at most [`DRAIN_TIME`]) before the answer.
async fn read_limited(
    body: poem::Body,
    limit: usize,
    read_time: Duration,
    mut share: Option<BudgetShare<'_>>,
) -> Result<(Vec<u8>, Option<OwnedSemaphorePermit>), BodyError> {
    let mut chunks = std::pin::pin!(body.into_bytes_stream());
    let mut kept = Vec::new();
    let mut read = 0_usize;
    // The answer once the body is not kept, and until when the rest is drained.
    let mut refused: Option<(BodyError, tokio::time::Instant)> = None;
    if let Some(share) = &mut share
        && let Some(declared) = share.declared.filter(|declared| *declared <= limit)
        && !share.cover(declared).await
    {
        refused = Some((over_budget(), tokio::time::Instant::now() + DRAIN_TIME));
    }
    let arrives_by = tokio::time::Instant::now().checked_add(read_time);
    loop {
        let next = match [refused.as_ref().map(|(_, until)| *until), arrives_by].into_iter().flatten().min() {
            None => chunks.next().await,
            Some(deadline) => match tokio::time::timeout_at(deadline, chunks.next()).await {
                Ok(next) => next,
                // Refused already: that is the answer, however slow the rest. Else the body came too slowly.
                Err(_) => {
                    return Err(refused.map_or_else(
                        || BodyError {
                            status: StatusCode::REQUEST_TIMEOUT,
                            field: None,
                            detail: format!("the request body did not arrive within {read_time:?}"),
                        },
                        |(error, _)| error,
                    ));
                }
            },
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|error| BodyError {
            status: StatusCode::BAD_REQUEST,
            field: None,
            detail: format!("cannot read the request body: {error}"),
        })?;
        read = read.saturating_add(chunk.len());
        if read > drain_bound(limit) {
            return Err(refused.map_or_else(|| too_large(limit), |(e, _)| e));
        }
        if refused.is_some() {
            continue;
        }
        let refusal = if read > limit {
            Some(too_large(limit))
        } else if let Some(share) = &mut share
            && !share.cover(read).await
        {
            Some(over_budget())
        } else {
            None
        };
        match refusal {
            None => kept.extend_from_slice(&chunk),
            Some(error) => {
                (kept, share) = (Vec::new(), None);
                refused = Some((error, tokio::time::Instant::now() + DRAIN_TIME));
            }
        }
    }
    match refused {
        Some((error, _)) => Err(error),
        None => Ok((kept, share.and_then(|share| share.held))),
    }
}

/// Parses `bytes`, naming the field at fault: the path for a bad value, the name for a missing or unknown field.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BodyError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(BodyError {
            status: StatusCode::BAD_REQUEST,
            field: None,
            detail: "a JSON body is required".into(),
        });
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let mut track = serde_path_to_error::Track::new();
    let parsed = from_object(serde_path_to_error::Deserializer::new(&mut deserializer, &mut track));
    let value = parsed.map_err(|error| {
        let message = error.to_string();
        let path = track.path().to_string();
        let field = field_at(&path, &message);
        // serde_json counts a number too large for any type as a syntax error; the JSON is well formed.
        let malformed = (error.is_syntax() || error.is_eof()) && !message.starts_with("number out of range");
        let detail = if malformed { format!("malformed JSON: {message}") } else { message };
        BodyError { status: StatusCode::BAD_REQUEST, field, detail }
    })?;
    deserializer.end().map_err(|e| BodyError {
        status: StatusCode::BAD_REQUEST,
        field: None,
        detail: format!("malformed JSON: {e}"),
    })?;
    Ok(value)
}

/// Deserializes `T`, a struct, from a JSON object only. serde's derive also takes an array of the field
/// values in order (`[payload, id]`), which no client means and the OpenAPI document does not allow.
pub fn from_object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<T, D::Error> {
    struct ObjectOnly<T>(std::marker::PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectOnly<T> {
        type Value = T;

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(MapAccessDeserializer::new(map))
        }
    }

    deserializer.deserialize_map(ObjectOnly(std::marker::PhantomData))
}

/// The field an error is about: the path to the bad value, or, for a field missing, given twice or not
/// known, the object's path (where the error is raised) joined with the field's name.
fn field_at(path: &str, message: &str) -> Option<String> {
    let named = ["missing field `", "duplicate field `", "unknown field `"]
        .into_iter()
        .find_map(|prefix| named_field(message, prefix));
    match (path, named) {
        (".", named) => named,
        // An unknown field's name is already the last step of its path.
        (path, Some(name)) if path.rsplit('.').next() != Some(name.as_str()) => Some(format!("{path}.{name}")),
        (path, _) => Some(path.to_owned()),
    }
}

fn named_field(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    rest.split('`').next().map(str::to_owned)
}

impl_apirequest_for_payload!(JsonBody<T, BATCH>, T: Type + DeserializeOwned + Send, const BATCH: bool);

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        workers: Option<i64>,
        nested: Option<Vec<u8>>,
        items: Option<Vec<Item>>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        payload: i64,
    }

    fn field_of(json: &str) -> Option<String> {
        parse::<Body>(json.as_bytes()).expect_err(json).field
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field_of(r#"{"workers": 1}"#).as_deref(), Some("name"));
        assert_eq!(field_of(r#"{"name": "a", "workers": "five"}"#).as_deref(), Some("workers"));
        assert_eq!(field_of(r#"{"name": "a", "wrokers": 2}"#).as_deref(), Some("wrokers"));
        assert_eq!(field_of(r#"{"name": "a", "nested": [1, "x"]}"#).as_deref(), Some("nested[1]"));
        assert_eq!(field_of(r#"{"name": 7}"#).as_deref(), Some("name"));
    }

    #[test]
    fn a_field_given_twice_or_missing_in_a_nested_object_is_named_with_its_path() {
        assert_eq!(field_of(r#"{"name": "a", "name": "b"}"#).as_deref(), Some("name"));
        assert_eq!(
            field_of(r#"{"name": "a", "items": [{"payload": 1, "payload": 2}]}"#).as_deref(),
            Some("items[0].payload")
        );
        assert_eq!(field_of(r#"{"name": "a", "items": [{"payload": 1}, {}]}"#).as_deref(), Some("items[1].payload"));
        assert_eq!(field_of(r#"{"name": "a", "items": [{"payload": 1, "x": 2}]}"#).as_deref(), Some("items[0].x"));
    }

    #[test]
    fn a_number_out_of_range_is_not_called_malformed() {
        let error = parse::<Body>(br#"{"name": "a", "workers": 1e400}"#).expect_err("out of range");
        assert_eq!(error.field.as_deref(), Some("workers"));
        assert!(error.detail.starts_with("number out of range"), "{}", error.detail);
    }

    #[test]
    fn malformed_and_empty_bodies_are_rejected() {
        for bad in ["", "  ", "{", "{\"name\": \"a\"} trailing", "[]", "null", "\u{0}"] {
            let error = parse::<Body>(bad.as_bytes()).expect_err(bad);
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }

    #[test]
    fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
        let deep = format!("{}1{}", r#"{"a":"#.repeat(100_000), "}".repeat(100_000));
        assert!(parse::<serde_json::Value>(deep.as_bytes()).is_err());
    }

    #[test]
    fn a_struct_is_read_from_an_object_only_never_from_an_array_of_its_fields() {
        assert!(parse::<Body>(br#"{"name": "a", "workers": 2}"#).is_ok());
        for array in [r#"["a", 2, null]"#, r#"[null, null]"#] {
            let error = parse::<Body>(array.as_bytes()).expect_err(array);
            assert_eq!(error.status, StatusCode::BAD_REQUEST);
            assert!(error.detail.contains("expected a JSON object"), "{}", error.detail);
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct CreateLike {
        name: String,
        workers: Option<i64>,
        id: Option<uuid::Uuid>,
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Err(error) = parse::<CreateLike>(&bytes) {
                prop_assert_eq!(error.status, StatusCode::BAD_REQUEST);
            }
        }

        #[test]
        fn parsing_json_shaped_text_never_panics(text in r#"\{("(name|workers|id|x)": ?(-?[0-9]{1,25}|"[^"]{0,20}"|null|true|\[\]|\{\}),? ?){0,4}\}?"#) {
            let _ = parse::<CreateLike>(text.as_bytes());
        }
    }
}

//! The failure history a message carries in its AMQP headers (attempts, first failure, reason, when it was
//! dead-lettered), and the properties of the copies that carry it to the retry queue, the DLQ, or back. The
//! format is read by the consumers, the DLQ API and anyone inspecting a queue, so it is written in one place.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use lapin::{
    BasicProperties,
    message::Delivery,
    types::{AMQPValue, FieldTable, ShortString},
};
use uuid::Uuid;

/// How many times the message has failed so far.
pub const ATTEMPTS_HEADER: &str = "x-tenantmq-attempts";
/// When it failed first (RFC 3339).
pub const FIRST_FAILED_AT_HEADER: &str = "x-tenantmq-first-failed-at";
/// Why it failed last.
pub const REASON_HEADER: &str = "x-tenantmq-reason";
/// When it was dead-lettered (RFC 3339); only on messages in a DLQ.
pub const DEAD_LETTERED_AT_HEADER: &str = "x-tenantmq-dead-lettered-at";

/// On a copy that left its original's headers behind: how many bytes they took encoded.
pub const HEADERS_LEFT_OUT_HEADER: &str = "x-tenantmq-headers-left-out";

/// Reasons are for people; a body is not copied into them, but keep a bound anyway.
const MAX_REASON_CHARS: usize = 500;

/// A message's failure history, as its headers carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureRecord {
    pub attempts: u32,
    pub first_failed_at: DateTime<Utc>,
    pub reason: String,
}

impl FailureRecord {
    /// The history in `headers`, if the message has failed before.
    pub fn read(headers: Option<&FieldTable>) -> Option<Self> {
        let headers = headers?.inner();
        let attempts = headers.get(ATTEMPTS_HEADER).and_then(integer)?;
        let first_failed_at = headers
            .get(FIRST_FAILED_AT_HEADER)
            .and_then(text)
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map_or_else(Utc::now, |t| t.with_timezone(&Utc));
        let reason = headers.get(REASON_HEADER).and_then(text).unwrap_or_default();
        // A count past what a u32 holds (set by another client) is as many as there can be, not none: read as
        // none, it gave the message a fresh set of retries.
        let attempts = u32::try_from(attempts.max(0)).unwrap_or(u32::MAX);
        Some(Self { attempts, first_failed_at, reason })
    }

    /// The history after one more failure, for `reason`, at `now`.
    pub fn after(previous: Option<Self>, reason: &str, now: DateTime<Utc>) -> Self {
        let reason: String = reason.chars().take(MAX_REASON_CHARS).collect();
        match previous {
            Some(previous) => Self { attempts: previous.attempts.saturating_add(1), reason, ..previous },
            None => Self { attempts: 1, first_failed_at: now, reason },
        }
    }

    fn write(&self, headers: &mut FieldTable) {
        headers.insert(ATTEMPTS_HEADER.into(), AMQPValue::LongLongInt(self.attempts.into()));
        headers.insert(FIRST_FAILED_AT_HEADER.into(), AMQPValue::LongString(rfc3339(self.first_failed_at).into()));
        headers.insert(REASON_HEADER.into(), AMQPValue::LongString(self.reason.as_str().into()));
    }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A header value as an integer (producers pick any of AMQP's integer types).
pub(super) fn integer(value: &AMQPValue) -> Option<i64> {
    match *value {
        AMQPValue::ShortShortInt(v) => Some(v.into()),
        AMQPValue::ShortShortUInt(v) => Some(v.into()),
        AMQPValue::ShortInt(v) => Some(v.into()),
        AMQPValue::ShortUInt(v) => Some(v.into()),
        AMQPValue::LongInt(v) => Some(v.into()),
        AMQPValue::LongUInt(v) => Some(v.into()),
        AMQPValue::LongLongInt(v) => Some(v),
        _ => None,
    }
}

/// A header value as text (AMQP has two string types).
pub(super) fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(v) => Some(v.to_string()),
        AMQPValue::ShortString(v) => Some(v.to_string()),
        _ => None,
    }
}

/// How many bytes of its original's headers a copy carries at most: half the frame size of the connection
/// it is published on. RabbitMQ never splits a message's headers over frames, and it closes the connection
/// of a client that sends a frame larger than the size they agreed, so a copy carrying headers near the frame
/// size would close the publishing connection (every tenant's publishes), again at each try. The other half
/// leaves room for the failure history, the other properties and what the broker adds when it
/// dead-letters the copy (`x-death`), which its readers must still be able to take in.
pub fn header_bytes_carried(frame_max: u32) -> usize {
    usize::try_from(frame_max / 2).unwrap_or(usize::MAX)
}

/// A copy of `delivery` for the retry queue, carrying `record`, that expires (back into the main queue)
/// after `after`. The copy gets `id` as its message id when the original had no UUID one, so a retried
/// message keeps a stable id (and exactly-once rows).
pub fn retry_copy(
    delivery: &Delivery,
    id: Uuid,
    record: &FailureRecord,
    after: Duration,
    max_header_bytes: usize,
) -> BasicProperties {
    let millis = after.as_millis().max(1).to_string();
    with_record(delivery, id, record, max_header_bytes).with_expiration(millis.into())
}

/// A copy of `delivery` for the DLQ, carrying `record` and the time, selectable by its (UUID) id for a replay.
pub fn dead_letter_copy(
    delivery: &Delivery,
    id: Uuid,
    record: &FailureRecord,
    at: DateTime<Utc>,
    max_header_bytes: usize,
) -> BasicProperties {
    let properties = with_record(delivery, id, record, max_header_bytes);
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(DEAD_LETTERED_AT_HEADER.into(), AMQPValue::LongString(rfc3339(at).into()));
    properties.with_headers(headers)
}

/// A copy of a dead letter for its way back to the main queue: its failure history cleared, so it gets a
/// fresh set of retries.
pub fn replay_copy(delivery: &Delivery, id: Uuid, max_header_bytes: usize) -> BasicProperties {
    let carried = carried_headers(delivery.properties.headers().as_ref(), max_header_bytes);
    let cleared = without(&carried, &[ATTEMPTS_HEADER, FIRST_FAILED_AT_HEADER, REASON_HEADER, DEAD_LETTERED_AT_HEADER]);
    copy_properties(&delivery.properties, id).with_headers(cleared)
}

fn with_record(delivery: &Delivery, id: Uuid, record: &FailureRecord, max_header_bytes: usize) -> BasicProperties {
    let mut headers = carried_headers(delivery.properties.headers().as_ref(), max_header_bytes);
    record.write(&mut headers);
    copy_properties(&delivery.properties, id).with_headers(headers)
}

/// The headers with which the broker records where it dead-lettered a message, and why.
const BROKER_DEAD_LETTERING_HEADERS: [&str; 7] = [
    "x-death",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-first-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-last-death-exchange",
];

/// The original's headers, or, if they take more than `max_bytes` encoded ([`header_bytes_carried`]), only
/// how many bytes they took; without the broker's dead-lettering headers either way. A copy is a new message:
/// carrying an `x-death` that names the tenant's queue (a message the broker dead-lettered from it once), it
/// would be dropped by RabbitMQ 3 as a dead-lettering cycle when the retry queue hands it back there.
fn carried_headers(original: Option<&FieldTable>, max_bytes: usize) -> FieldTable {
    let Some(original) = original else { return FieldTable::default() };
    let headers = without(original, &BROKER_DEAD_LETTERING_HEADERS);
    let size = encoded_size(&headers);
    if size <= max_bytes {
        return headers;
    }
    let mut left_out = FieldTable::default();
    left_out.insert(HEADERS_LEFT_OUT_HEADER.into(), AMQPValue::LongLongInt(i64::try_from(size).unwrap_or(i64::MAX)));
    left_out
}

/// `headers` but those named.
fn without(headers: &FieldTable, names: &[&str]) -> FieldTable {
    let mut kept = FieldTable::default();
    for (name, value) in headers.inner() {
        if !names.contains(&name.as_str()) {
            kept.insert(name.clone(), value.clone());
        }
    }
    kept
}

/// A header table's size as it goes on the wire.
fn encoded_size(headers: &FieldTable) -> usize {
    cookie_factory::gen_simple(lapin::types::generation::gen_field_table(headers), Vec::new())
        .map_or(usize::MAX, |bytes| bytes.len())
}

/// The original's properties without its expiration and user id (a copy is a new publish by this service),
/// persistent, and with a UUID message id.
fn copy_properties(original: &BasicProperties, id: Uuid) -> BasicProperties {
    let mut copy = BasicProperties::default().with_delivery_mode(2);
    let has_uuid_id = original.message_id().as_ref().is_some_and(|m| Uuid::try_parse(m.as_str()).is_ok());
    copy = match original.message_id() {
        Some(message_id) if has_uuid_id => copy.with_message_id(message_id.clone()),
        _ => copy.with_message_id(ShortString::from(id.to_string())),
    };
    if let Some(v) = original.content_type() {
        copy = copy.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        copy = copy.with_content_encoding(v.clone());
    }
    if let Some(v) = original.priority() {
        copy = copy.with_priority(*v);
    }
    if let Some(v) = original.correlation_id() {
        copy = copy.with_correlation_id(v.clone());
    }
    if let Some(v) = original.reply_to() {
        copy = copy.with_reply_to(v.clone());
    }
    if let Some(v) = original.timestamp() {
        copy = copy.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        copy = copy.with_type(v.clone());
    }
    if let Some(v) = original.app_id() {
        copy = copy.with_app_id(v.clone());
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_records_round_trip_through_headers_and_keep_the_first_failure() {
        let first = DateTime::parse_from_rfc3339("2026-11-27T10:00:00.123Z").expect("time").with_timezone(&Utc);
        let record = FailureRecord::after(None, "first", first);
        let mut headers = FieldTable::default();
        headers.insert("x-custom".into(), AMQPValue::LongString("kept".into()));
        record.write(&mut headers);
        let read = FailureRecord::read(Some(&headers)).expect("a record");
        assert_eq!(read, record);
        let later = FailureRecord::after(Some(read), &"x".repeat(2 * MAX_REASON_CHARS), Utc::now());
        assert_eq!((later.attempts, later.first_failed_at, later.reason.len()), (2, first, MAX_REASON_CHARS));
        assert!(FailureRecord::read(Some(&FieldTable::default())).is_none());
        assert!(FailureRecord::read(None).is_none());
        for (written, read) in [(-5, 0), (i64::from(u32::MAX) + 1, u32::MAX), (i64::MAX, u32::MAX)] {
            let mut headers = FieldTable::default();
            headers.insert(ATTEMPTS_HEADER.into(), AMQPValue::LongLongInt(written));
            assert_eq!(FailureRecord::read(Some(&headers)).map(|record| record.attempts), Some(read), "{written}");
        }
    }

    /// Headers over the bound would make a copy's header frame too large for the publishing connection.
    #[test]
    fn a_copy_carries_its_originals_headers_up_to_half_a_frame_and_otherwise_their_size() {
        let bound = header_bytes_carried(131_072);
        assert_eq!(bound, 65_536);
        let with_value = |bytes: usize| {
            let mut headers = FieldTable::default();
            headers.insert("big".into(), AMQPValue::LongString("x".repeat(bytes).into()));
            headers
        };
        // The table's length (4), the name (1 + 3), the type tag (1), the string's length (4), the string.
        let overhead = 4 + 4 + 1 + 4;
        let at_bound = with_value(bound - overhead);
        assert_eq!(encoded_size(&at_bound), bound);
        assert_eq!(carried_headers(Some(&at_bound), bound), at_bound);

        let over = with_value(bound - overhead + 1);
        let carried = carried_headers(Some(&over), bound);
        assert_eq!(carried.inner().len(), 1, "{carried:?}");
        assert_eq!(carried.inner().get(HEADERS_LEFT_OUT_HEADER), Some(&AMQPValue::LongLongInt(65_537)));
        assert_eq!(carried_headers(None, bound), FieldTable::default());
    }

    #[test]
    fn copies_get_a_uuid_message_id_and_lose_the_expiration() {
        let id = Uuid::now_v7();
        let original = BasicProperties::default()
            .with_message_id("order-17".into())
            .with_expiration("1000".into())
            .with_content_type("application/json".into());
        let copy = copy_properties(&original, id);
        assert_eq!(copy.message_id().as_ref().map(|m| m.to_string()), Some(id.to_string()));
        assert_eq!(copy.expiration(), &None);
        assert_eq!(copy.delivery_mode(), &Some(2));
        assert_eq!(copy.content_type().as_ref().map(|c| c.to_string()).as_deref(), Some("application/json"));
        let keeps = BasicProperties::default().with_message_id(id.to_string().into());
        let other = Uuid::now_v7();
        assert_eq!(copy_properties(&keeps, other).message_id().as_ref().map(|m| m.to_string()), Some(id.to_string()));
    }
}

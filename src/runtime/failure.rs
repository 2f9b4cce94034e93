//! What happens to a message that could not be persisted. It is either retried later, through the tenant's
//! retry queue (a copy with a per-message TTL that dead-letters back into the main queue), or dead-lettered
//! to the tenant's DLQ. Either way a copy carrying the failure history in headers is published with a
//! confirm, and only then is the original acked: the history travels with the message, and a crash in
//! between leaves the original unacked (redelivered), never lost.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use lapin::{
    BasicProperties, Channel,
    message::Delivery,
    types::{AMQPValue, FieldTable, ShortString},
};
use sea_orm::sqlx;
use uuid::Uuid;

use crate::store::messages;

use super::broker::{self, BrokerError};

/// How many times the message has failed so far.
pub const ATTEMPTS_HEADER: &str = "x-tenantmq-attempts";
/// When it failed first (RFC 3339).
pub const FIRST_FAILED_AT_HEADER: &str = "x-tenantmq-first-failed-at";
/// Why it failed last.
pub const REASON_HEADER: &str = "x-tenantmq-reason";
/// When it was dead-lettered (RFC 3339); only on messages in a DLQ.
pub const DEAD_LETTERED_AT_HEADER: &str = "x-tenantmq-dead-lettered-at";

/// Reasons are for people; a body is not copied into them, but keep a bound anyway.
const MAX_REASON_CHARS: usize = 500;

/// What a failed write of messages says about them, which decides what happens to them next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFailure {
    /// The database cannot be reached or is shutting down: nothing is wrong with the messages; hold them
    /// back until it is back, without counting an attempt.
    Unavailable,
    /// This write failed, another may not (a lock or statement timeout, a missing grant, a deadlock).
    Transient,
    /// The database refuses a row's data ([`messages::refuses_row`]). Permanent for that row only:
    /// [`MessageWriter::insert_isolating`](crate::store::messages::MessageWriter::insert_isolating) keeps it
    /// from failing the rest of its batch.
    Refused,
    /// Retrying cannot help any row: the partition is gone (42P01, the tenant was deleted).
    Permanent,
}

pub fn classify(error: &sqlx::Error) -> WriteFailure {
    if messages::refuses_row(error) {
        return WriteFailure::Refused;
    }
    match (error, messages::sqlstate(error)) {
        (_, Some("42P01")) => WriteFailure::Permanent,
        // Connection exceptions, shutdowns and resource exhaustion are about the server, not the data.
        (_, Some(code)) if code.starts_with("08") || code.starts_with("53") || code.starts_with("57P") => {
            WriteFailure::Unavailable
        }
        (
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed,
            _,
        ) => WriteFailure::Unavailable,
        _ => WriteFailure::Transient,
    }
}

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
        Some(Self { attempts: u32::try_from(attempts).unwrap_or(0), first_failed_at, reason })
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
pub fn integer(value: &AMQPValue) -> Option<i64> {
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
pub fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(v) => Some(v.to_string()),
        AMQPValue::ShortString(v) => Some(v.to_string()),
        _ => None,
    }
}

/// Why a message could not be persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Retrying may help (a lock or statement timeout, a missing grant).
    Transient(String),
    /// Retrying cannot help (not JSON, refused by the database).
    Permanent(String),
}

impl Failure {
    pub fn reason(&self) -> &str {
        match self {
            Self::Transient(reason) | Self::Permanent(reason) => reason,
        }
    }
}

/// Where a failed message goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Retry { after: Duration },
    DeadLetter,
}

/// Retries with exponential delays up to `max_retries`, then dead-letters.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// `record` already counts this failure.
    pub fn decide(&self, failure: &Failure, record: &FailureRecord) -> Disposition {
        match failure {
            Failure::Transient(_) if record.attempts <= self.max_retries => {
                let doublings = record.attempts.saturating_sub(1).min(31);
                let after = self.delay.saturating_mul(1 << doublings).min(self.max_delay);
                Disposition::Retry { after }
            }
            _ => Disposition::DeadLetter,
        }
    }
}

/// A copy of `delivery` for `queue`, carrying `record` (and, when dead-lettered, the time). The copy gets
/// `id` as its message id when the original had no UUID one, so a retried message keeps a stable id (and
/// exactly-once rows), and every dead letter can be selected by id for a replay.
pub async fn republish(
    channel: &Channel,
    queue: &str,
    delivery: &Delivery,
    id: Uuid,
    record: &FailureRecord,
    disposition: Disposition,
) -> Result<(), BrokerError> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    record.write(&mut headers);
    let mut properties = copy_properties(&delivery.properties, id).with_headers(headers);
    match disposition {
        Disposition::Retry { after } => {
            let millis = after.as_millis().max(1).to_string();
            properties = properties.with_expiration(millis.into());
        }
        Disposition::DeadLetter => {
            let mut headers = properties.headers().clone().unwrap_or_default();
            headers.insert(DEAD_LETTERED_AT_HEADER.into(), AMQPValue::LongString(rfc3339(Utc::now()).into()));
            properties = properties.with_headers(headers);
        }
    }
    broker::publish_confirmed(channel, queue, &delivery.data, properties).await
}

/// The original's properties without its expiration and user id (a copy is a new publish by this service),
/// persistent, and with a UUID message id.
pub fn copy_properties(original: &BasicProperties, id: Uuid) -> BasicProperties {
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
    if let Some(v) = original.headers() {
        copy = copy.with_headers(v.clone());
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

    fn policy() -> RetryPolicy {
        RetryPolicy { max_retries: 3, delay: Duration::from_secs(1), max_delay: Duration::from_secs(3) }
    }

    #[test]
    fn transient_failures_retry_with_growing_capped_delays_then_dead_letter() {
        let now = Utc::now();
        let transient = Failure::Transient("lock timeout".into());
        let mut record = None;
        let mut dispositions = Vec::new();
        for _ in 0..5 {
            let next = FailureRecord::after(record.take(), transient.reason(), now);
            dispositions.push(policy().decide(&transient, &next));
            record = Some(next);
        }
        let retry = |secs| Disposition::Retry { after: Duration::from_secs(secs) };
        assert_eq!(dispositions, [retry(1), retry(2), retry(3), Disposition::DeadLetter, Disposition::DeadLetter]);
        let record = record.expect("recorded");
        assert_eq!((record.attempts, record.first_failed_at), (5, now));
    }

    #[test]
    fn permanent_failures_dead_letter_at_once() {
        let failure = Failure::Permanent("body is not JSON".into());
        let record = FailureRecord::after(None, failure.reason(), Utc::now());
        assert_eq!(policy().decide(&failure, &record), Disposition::DeadLetter);
        let no_retries = RetryPolicy { max_retries: 0, ..policy() };
        let transient = Failure::Transient("timeout".into());
        assert_eq!(no_retries.decide(&transient, &record), Disposition::DeadLetter);
    }

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

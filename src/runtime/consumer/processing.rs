//! Processing a batch: decoding deliveries into rows, the insert, and settling each delivery (ack after
//! the commit, retry, dead letter or hold back while the database is unavailable); the row id rule.

use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
};
use opentelemetry::trace::TraceContextExt;
use tokio::time::Instant;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::{
    domain::{message_id, payload, tenant::TenantId},
    metrics::FailureReason,
    store::messages::NewMessage,
    telemetry,
};

use crate::{
    broker::{
        BrokerError,
        failure_headers::{self, FailureRecord},
        publish, queues,
    },
    runtime::failure::{self, Disposition, Failure, WriteFailure},
};

use super::pool::{Arrival, WorkerContext};

/// Persists a batch and settles what it can: ack after commit; a message that failed goes to the retry
/// queue or the DLQ (see [`failure`](crate::runtime::failure)). Returns what it could not settle, for the caller
/// to deal with after a pause, so that a database or broker that fails is not hammered.
///
/// The `handle` span links to the trace context each message carries (its `publish` span): a batch holds
/// messages of many traces, and a span has one parent, so links, not parenthood, join the traces.
#[tracing::instrument(name = "handle", skip_all, fields(tenant = %context.runtime.tenant, messages = batch.len()))]
pub(super) async fn process(batch: Vec<Arrival>, context: &WorkerContext) -> Unsettled {
    let span = tracing::Span::current();
    for Arrival { delivery, .. } in &batch {
        let published = telemetry::extract(delivery.properties.headers().as_ref());
        // add_link ignores an invalid (absent) context.
        span.add_link(published.span().span_context().clone());
    }
    let tenant = context.runtime.tenant;
    let Decoded { rows, accepted, mut failed } = Decoded::of(batch, tenant, context.max_payload_depth);
    let mut unsettled = Unsettled::default();
    // A row the database refuses fails alone; the rest of the batch commits. The tenant writes in its turn
    // (see `write_share`), so a tenant that floods cannot take every connection.
    let refused = if rows.is_empty() {
        Vec::new()
    } else {
        let _turn = context.write_share.acquire(tenant, context.runtime.desired().get()).await;
        context.writer.insert_isolating(&rows).await
    };
    let mut refusal_of = vec![None; rows.len()];
    for (index, (part, _)) in refused.iter().enumerate() {
        refusal_of[part.clone()].fill(Some(index));
    }
    let mut committed = Vec::with_capacity(rows.len());
    let metrics = context.writer.metrics();
    for ((row, (delivery, arrived)), refusal) in rows.into_iter().zip(accepted).zip(refusal_of) {
        let Some(error) = refusal.map(|index| &refused[index].1) else {
            metrics.message_persisted_after(arrived.elapsed());
            committed.push(delivery);
            continue;
        };
        match failure::classify(error) {
            WriteFailure::Unavailable => unsettled.unwritten.push(Arrival { delivery, at: arrived }),
            kind => failed.push((row.id, delivery, write_failure(kind, error))),
        }
    }
    if !committed.is_empty() {
        acknowledge_committed(&committed, context).await;
    }
    if !unsettled.unwritten.is_empty() {
        tracing::warn!(%tenant, "cannot write: the database is unavailable or the partition not created yet");
    }
    let stats = context.runtime.stats();
    for _ in &unsettled.unwritten {
        stats.failed(FailureReason::Transient);
    }
    for (id, delivery, failure) in failed {
        stats.failed(match failure {
            Failure::Transient(_) => FailureReason::Transient,
            Failure::Permanent(_) => FailureReason::Permanent,
        });
        if let Err(delivery) = retry_or_dead_letter(delivery, id, &failure, context).await {
            unsettled.unmoved.push(*delivery);
        }
    }
    unsettled
}

/// What a batch left unsettled.
#[derive(Default)]
pub(super) struct Unsettled {
    /// Not written: the database is unavailable, or the tenant's partition not created yet. Tried again, so
    /// they keep when they arrived.
    pub(super) unwritten: Vec<Arrival>,
    /// Failed, and their copy for the retry queue or the DLQ could not be published: they go back to the queue.
    pub(super) unmoved: Vec<Delivery>,
}

/// A batch split into the rows to insert, with their deliveries and when those arrived, and the deliveries
/// that cannot be rows.
struct Decoded {
    rows: Vec<NewMessage>,
    accepted: Vec<(Delivery, Instant)>,
    failed: Vec<(Uuid, Delivery, Failure)>,
}

impl Decoded {
    fn of(batch: Vec<Arrival>, tenant: TenantId, max_depth: usize) -> Self {
        let mut decoded = Self {
            rows: Vec::with_capacity(batch.len()),
            accepted: Vec::with_capacity(batch.len()),
            failed: Vec::new(),
        };
        for Arrival { delivery, at } in batch {
            match decode(tenant, &delivery, max_depth) {
                Ok(row) => {
                    decoded.rows.push(row);
                    decoded.accepted.push((delivery, at));
                }
                Err(reason) => decoded.failed.push((row_id(tenant, &delivery), delivery, Failure::Permanent(reason))),
            }
        }
        decoded
    }
}

pub(super) fn write_failure(kind: WriteFailure, error: &sea_orm::sqlx::Error) -> Failure {
    let reason = format!("the database refused the message: {error}");
    match kind {
        WriteFailure::Refused => Failure::Permanent(reason),
        WriteFailure::Unavailable | WriteFailure::Transient => Failure::Transient(reason),
    }
}

/// Moves a failed message to the retry queue or the DLQ, by the retry policy and the attempts it carries.
/// Gives the delivery back when the copy could not be published (it must then be requeued).
pub(super) async fn retry_or_dead_letter(
    delivery: Delivery,
    id: Uuid,
    failure: &Failure,
    context: &WorkerContext,
) -> Result<(), Box<Delivery>> {
    let tenant = context.runtime.tenant;
    let previous = FailureRecord::read(delivery.properties.headers().as_ref());
    let record = FailureRecord::after(previous, failure.reason(), chrono::Utc::now());
    let disposition = context.retry.decide(failure, &record);
    let (queue, properties) = match disposition {
        Disposition::Retry { after } => {
            (&context.queues.retry, failure_headers::retry_copy(&delivery, id, &record, after))
        }
        Disposition::DeadLetter => {
            let now = chrono::Utc::now();
            (&context.queues.dead_letters, failure_headers::dead_letter_copy(&delivery, id, &record, now))
        }
    };
    if let Err(error) = publish::publish_confirmed(&context.channel, queue, &delivery.data, properties).await {
        tracing::warn!(%tenant, %error, "cannot move a failed message; it goes back to the queue");
        if matches!(error, BrokerError::Refused) {
            // The retry or dead-letter queue was deleted from outside (the consumer notices only its own
            // queue going): declare them again, or the message could only ever be held back.
            if let Err(error) = queues::declare(&context.channel, tenant, context.queue_type).await {
                tracing::warn!(%tenant, %error, "cannot declare the tenant's queues again");
            }
        }
        return Err(Box::new(delivery));
    }
    match disposition {
        Disposition::Retry { after } => {
            context.runtime.stats().retried();
            tracing::info!(%tenant, %id, attempts = record.attempts, ?after, reason = record.reason, "retrying later");
        }
        Disposition::DeadLetter => {
            tracing::warn!(%tenant, %id, attempts = record.attempts, reason = record.reason, "dead-lettered");
            context.runtime.stats().dead_lettered();
        }
    }
    settle(&delivery, Outcome::Moved, context).await;
    Ok(())
}

/// A delivery's row id ([`message_id::row_id`] of its `message_id`), the same for every delivery of the same
/// message, so a redelivery or a retried copy finds its row.
pub fn row_id(tenant: TenantId, delivery: &Delivery) -> Uuid {
    message_id::row_id(tenant, delivery.properties.message_id().as_ref().map(|id| id.as_str()))
}

/// The id is [`row_id`]; the body must be JSON that `jsonb` can store.
pub(crate) fn decode(tenant: TenantId, delivery: &Delivery, max_depth: usize) -> Result<NewMessage, String> {
    let id = row_id(tenant, delivery);
    let text = std::str::from_utf8(&delivery.data).map_err(|_| "body is not UTF-8".to_owned())?;
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|_| "body is not JSON".to_owned())?;
    payload::check(text, max_depth).map_err(|error| error.to_string())?;
    Ok(NewMessage { id, payload: text.to_owned() })
}

/// Their rows are committed: counted, and acked through the coordinator (in `multiple` acks where safe).
pub(super) async fn acknowledge_committed(deliveries: &[Delivery], context: &WorkerContext) {
    context.runtime.stats().persisted(deliveries.len() as u64);
    for _ in deliveries {
        context.runtime.delivery_settled();
    }
    if let Err(error) = context.acks.committed(deliveries.iter().map(|d| d.delivery_tag)).await {
        // The channel is gone: the broker redelivers, and the insert is idempotent.
        tracing::debug!(%error, "could not ack committed deliveries");
    }
}

/// How a delivery is settled on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// A copy is in the retry queue or the DLQ: ack.
    Moved,
    /// Back to the queue, to be delivered again: nack with requeue.
    Requeue,
}

/// Acks or requeues one delivery, then lets the coordinator ack what it held back.
pub(super) async fn settle(delivery: &Delivery, outcome: Outcome, context: &WorkerContext) {
    let settled = match outcome {
        Outcome::Moved => delivery.acker.ack(BasicAckOptions::default()).await,
        Outcome::Requeue => delivery.acker.nack(BasicNackOptions { requeue: true, multiple: false }).await,
    };
    context.runtime.delivery_settled();
    let released = context.acks.settled_alone(delivery.delivery_tag).await;
    if let Err(error) = settled.map(|_| ()).and(released) {
        // The channel is gone: the broker redelivers, and the insert is idempotent.
        tracing::debug!(%error, ?outcome, "could not settle a delivery");
    }
}

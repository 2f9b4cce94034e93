//! Processing a batch: decoding deliveries into rows, the insert, and settling each delivery (ack after
//! the commit, retry, dead letter or hold back while the database is unavailable); the row id rule.

use std::{
    collections::VecDeque,
    ops::Range,
    sync::{Arc, PoisonError},
};

use lapin::{
    BasicProperties,
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
};
use opentelemetry::trace::TraceContextExt;
use tokio::{task::JoinHandle, time::Instant};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::{
    backoff::Backoff,
    detach::DetachOnDrop,
    domain::{
        message_id,
        payload::{self, PayloadLimits},
        tenant::TenantId,
    },
    metrics::FailureReason,
    runtime::write_share::WritePermit,
    store::messages::{MessageWriter, NewMessage},
    telemetry,
};

use crate::{
    broker::{
        BrokerError,
        failure_headers::{self, FailureRecord},
        queues,
    },
    runtime::failure::{self, Disposition, Failure, WriteFailure},
};

use super::pool::{Arrival, WorkerContext};

/// Persists a batch and settles what it can: ack after commit; a message that failed goes to the retry
/// queue or the DLQ (see [`failure`](crate::runtime::failure)). Returns what the database could not take, for
/// the caller to try again after a pause, so that a database that fails is not hammered (and to count as
/// failed once, not at each try).
///
/// The `handle` span links to the trace context each message carries (its `publish` span): a batch holds
/// messages of many traces, and a span has one parent, so links, not parenthood, join the traces.
#[tracing::instrument(name = "handle", skip_all, fields(tenant = %context.runtime.tenant, messages = batch.len()))]
pub(super) async fn process(batch: Vec<Arrival>, context: &Arc<WorkerContext>) -> Vec<Arrival> {
    let span = tracing::Span::current();
    for Arrival { delivery, .. } in &batch {
        let published = telemetry::extract(delivery.properties.headers().as_ref());
        // add_link ignores an invalid (absent) context.
        span.add_link(published.span().span_context().clone());
    }
    let tenant = context.runtime.tenant;
    let Decoded { rows, accepted, mut failed } = Decoded::of(batch, tenant, context.payload_limits);
    // Not written: the database is unavailable, or the tenant's partition not created yet. Tried again, so
    // they keep when they arrived.
    let mut unwritten = Vec::new();
    // A row the database refuses fails alone; the rest of the batch commits. The tenant writes in its turn
    // (see `write_share`), so a tenant that floods cannot take every connection.
    let (rows, refused) = if rows.is_empty() {
        (rows, Vec::new())
    } else {
        let turn = {
            let _waiting = context.runtime.waiting_for_write_guard();
            context.write_share.acquire(tenant, context.runtime.desired().get()).await
        };
        write_in_turn(turn, context.writer.clone(), rows).await
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
            WriteFailure::Unavailable => unwritten.push(Arrival { delivery, at: arrived }),
            kind => failed.push((row.id, delivery, write_failure(kind, error))),
        }
    }
    if !committed.is_empty() {
        acknowledge_committed(&committed, context).await;
    }
    if !unwritten.is_empty() {
        tracing::warn!(%tenant, "cannot write: the database is unavailable or the partition not created yet");
    }
    let stats = context.runtime.stats();
    for (id, delivery, failure) in failed {
        stats.failed(match failure {
            Failure::Transient(_) => FailureReason::Transient,
            Failure::Permanent(_) => FailureReason::Permanent,
        });
        move_aside(delivery, id, &failure, context).await;
    }
    unwritten
}

/// Writes `rows` in `turn`, and hands them back with what was refused. A worker may be stopped mid-write (its
/// consumer lost its channel, or the database), and a statement dropped half way keeps its connection busy
/// until the statement ends, which a lock can make last as long as it is held. Given back at that moment, the
/// turn would let the tenant take connections beyond its share at each such stop; so the write then goes on
/// to its end detached, holding it.
async fn write_in_turn(
    turn: WritePermit,
    writer: MessageWriter,
    rows: Vec<NewMessage>,
) -> (Vec<NewMessage>, Vec<(Range<usize>, sea_orm::sqlx::Error)>) {
    DetachOnDrop::new(
        async move {
            let refused = writer.insert_isolating(&rows).await;
            drop(turn);
            (rows, refused)
        }
        .in_current_span(),
    )
    .await
}

/// A batch split into the rows to insert, with their deliveries and when those arrived, and the deliveries
/// that cannot be rows.
struct Decoded {
    rows: Vec<NewMessage>,
    accepted: Vec<(Delivery, Instant)>,
    failed: Vec<(Uuid, Delivery, Failure)>,
}

impl Decoded {
    fn of(batch: Vec<Arrival>, tenant: TenantId, limits: PayloadLimits) -> Self {
        let mut decoded = Self {
            rows: Vec::with_capacity(batch.len()),
            accepted: Vec::with_capacity(batch.len()),
            failed: Vec::new(),
        };
        for Arrival { delivery, at } in batch {
            match decode(tenant, &delivery, limits) {
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
/// The copy is published apart from the worker, which goes on with its batches, and the delivery is set aside
/// meanwhile: later deliveries are acked without waiting for it. It is acked once the broker confirms the
/// copy. While RabbitMQ blocks publishers (a memory or disk alarm) the copy waits for the end of the block;
/// one that cannot be published (the publishing connection down, the queue deleted from outside) is tried
/// again, without handing the delivery back, which the broker would count as a delivery. Until the consumer
/// stops: then what could not be moved goes back to the queue with the channel's close.
pub(super) async fn move_aside(delivery: Delivery, id: Uuid, failure: &Failure, context: &Arc<WorkerContext>) {
    let previous = FailureRecord::read(delivery.properties.headers().as_ref());
    let record = FailureRecord::after(previous, failure.reason(), chrono::Utc::now());
    let disposition = context.retry.decide(failure, &record);
    let carried = context.publisher.header_bytes_carried();
    let (queue, properties) = match disposition {
        Disposition::Retry { after } => {
            (context.queues.retry.clone(), failure_headers::retry_copy(&delivery, id, &record, after, carried))
        }
        Disposition::DeadLetter => {
            let now = chrono::Utc::now();
            (
                context.queues.dead_letters.clone(),
                failure_headers::dead_letter_copy(&delivery, id, &record, now, carried),
            )
        }
    };
    if let Err(error) = context.acks.set_aside(delivery.delivery_tag).await {
        // The channel is gone: the broker redelivers, and the insert is idempotent.
        tracing::debug!(%error, "could not ack committed deliveries");
    }
    let copy = FailedCopy { delivery, id, queue, properties, disposition, record };
    let mut moving = context.moving.lock().unwrap_or_else(PoisonError::into_inner);
    moving.queue.push_back(copy);
    // A mover that ended without clearing its handle panicked: another takes over, or copies would wait
    // forever, unacked, until the tenant's prefetch is full of them.
    if moving.mover.as_ref().is_none_or(JoinHandle::is_finished) {
        let mover = context.clone();
        moving.mover = Some(tokio::spawn(async move { move_copies(&mover).await }));
    }
}

/// A failed message on its way to the retry queue or the DLQ.
pub(super) struct FailedCopy {
    delivery: Delivery,
    id: Uuid,
    queue: String,
    properties: BasicProperties,
    disposition: Disposition,
    record: FailureRecord,
}

/// The copies waiting to be published, one after the other (in the order the messages failed, which is the
/// order a DLQ shows them in), and the task publishing them. No task runs while none waits: an idle tenant
/// costs nothing.
#[derive(Default)]
pub(super) struct Moving {
    queue: VecDeque<FailedCopy>,
    mover: Option<JoinHandle<()>>,
}

impl Moving {
    /// The task publishing copies, if one runs; none starts after this (for the consumer's stop, once its
    /// workers have ended).
    pub(super) fn take_mover(&mut self) -> Option<JoinHandle<()>> {
        self.mover.take()
    }
}

/// Publishes the waiting copies in turn, each acked once confirmed, until none waits.
async fn move_copies(context: &WorkerContext) {
    let tenant = context.runtime.tenant;
    loop {
        let next = {
            let mut moving = context.moving.lock().unwrap_or_else(PoisonError::into_inner);
            let next = moving.queue.pop_front();
            if next.is_none() {
                moving.mover = None;
            }
            next
        };
        let Some(FailedCopy { delivery, id, queue, properties, disposition, record }) = next else { return };
        publish_copy(&delivery, &queue, properties, context).await;
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
    }
}

/// Publishes a failed message's copy to `queue`, trying again with backoff until the broker confirms it.
async fn publish_copy(delivery: &Delivery, queue: &str, properties: BasicProperties, context: &WorkerContext) {
    let tenant = context.runtime.tenant;
    let mut backoff = Backoff::new();
    while let Err(error) = context.publisher.publish(queue, &delivery.data, properties.clone()).await {
        tracing::warn!(%tenant, %error, "cannot move a failed message yet; trying again");
        if matches!(error, BrokerError::Refused) {
            // The retry or dead-letter queue was deleted from outside (the consumer notices only its own
            // queue going): declare them again.
            if let Err(error) = queues::declare(&context.channel, tenant, context.queue_type).await {
                tracing::warn!(%tenant, %error, "cannot declare the tenant's queues again");
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// A delivery's row id ([`message_id::row_id`] of its `message_id`), the same for every delivery of the same
/// message, so a redelivery or a retried copy finds its row.
pub fn row_id(tenant: TenantId, delivery: &Delivery) -> Uuid {
    message_id::row_id(tenant, delivery.properties.message_id().as_ref().map(|id| id.as_str()))
}

/// The id is [`row_id`]; the body must be JSON that `jsonb` can store, within `limits`. A producer publishing
/// straight to the queue may send a body as large as the broker takes: one over `max_payload_bytes` fails, as
/// it would through the API, instead of becoming a row that large.
pub(crate) fn decode(tenant: TenantId, delivery: &Delivery, limits: PayloadLimits) -> Result<NewMessage, String> {
    let id = row_id(tenant, delivery);
    if delivery.data.len() > limits.max_bytes {
        return Err(format!(
            "the body is {} bytes, more than max_payload_bytes ({})",
            delivery.data.len(),
            limits.max_bytes
        ));
    }
    let text = std::str::from_utf8(&delivery.data).map_err(|_| "body is not UTF-8".to_owned())?;
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|_| "body is not JSON".to_owned())?;
    payload::check(text, limits.max_depth).map_err(|error| error.to_string())?;
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

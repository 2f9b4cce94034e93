//! Reading, replaying and purging a tenant's dead-letter queue.
//!
//! AMQP 0-9-1 has no peek, so a peek takes messages with `basic.get` without acking them and then closes its
//! channel: the broker puts them back where they were. A replay publishes a copy of each selected message to
//! the main queue (confirmed) before acking it in the DLQ; unselected messages go back when the channel closes.
//! Operations on one tenant's DLQ must run one at a time, so that two concurrent peeks do not hide messages
//! from each other: their caller serializes them (`app::dead_letters`). A replay moves at most
//! [`REPLAY_MAX_MESSAGES`] messages and takes messages for at most `read.replay_time_budget`, then says it is not
//! complete.
//! A peek or a replay reads on a connection of its own ([`Broker::channel_apart`]): a dead letter the client
//! cannot read fails the connection it is delivered on, and must not fail the one every tenant's deletes and
//! queue inspections use.

use std::{collections::HashSet, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use lapin::{
    Channel,
    message::Delivery,
    options::{BasicAckOptions, QueuePurgeOptions},
};
use uuid::Uuid;

use crate::domain::{message_id, tenant::TenantId};

use super::{
    Broker, BrokerError,
    failure_headers::{self, ATTEMPTS_HEADER, DEAD_LETTERED_AT_HEADER, FIRST_FAILED_AT_HEADER, REASON_HEADER},
    is_not_found,
    publish::Publisher,
    queues::{TenantQueues, inspect},
};

/// One message in a DLQ.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message_id: Option<String>,
    pub reason: Option<String>,
    pub attempts: Option<u32>,
    pub first_failed_at: Option<DateTime<Utc>>,
    pub dead_lettered_at: Option<DateTime<Utc>>,
    /// The body, or its first [`DeadLetterBounds::max_body_bytes`] when it is longer.
    pub body: Vec<u8>,
    /// The whole body's length in bytes.
    pub size: usize,
}

impl DeadLetter {
    /// Whether `body` is only the start of the message's body.
    pub fn truncated(&self) -> bool {
        self.body.len() < self.size
    }

    fn of(delivery: &Delivery, max_body_bytes: usize) -> Self {
        let headers = delivery.properties.headers().as_ref().map(|h| h.inner());
        let header = |name: &str| headers.and_then(|h| h.get(name));
        let time = |name: &str| {
            header(name)
                .and_then(failure_headers::text)
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        let attempts = header(ATTEMPTS_HEADER).and_then(failure_headers::integer).and_then(|n| u32::try_from(n).ok());
        Self {
            message_id: delivery.properties.message_id().as_ref().map(|id| id.to_string()),
            reason: header(REASON_HEADER).and_then(failure_headers::text),
            attempts,
            first_failed_at: time(FIRST_FAILED_AT_HEADER),
            dead_lettered_at: time(DEAD_LETTERED_AT_HEADER),
            body: delivery.data[..delivery.data.len().min(max_body_bytes)].to_vec(),
            size: delivery.data.len(),
        }
    }
}

/// Most messages one replay moves. Only those count: the messages a selective replay passes over go back to
/// the head of the queue when it ends, so a bound on them would have every call look at the same ones again
/// and never reach a selected message behind them. [`REPLAY_MAX_PASSED_OVER`] and [`DeadLetterBounds::replay_time_budget`]
/// bound that walk.
pub const REPLAY_MAX_MESSAGES: u32 = 10_000;

/// Most messages one selective replay passes over, held unacked on its channel until it ends.
pub const REPLAY_MAX_PASSED_OVER: u32 = 100_000;

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Messages moved back to the main queue.
    pub replayed: u32,
    /// Selected ids that were not in the DLQ (known only when the replay is complete).
    pub not_found: Vec<Uuid>,
    /// Whether the replay went through the whole DLQ (or found every selected id); `false` when it stopped at
    /// its bound, and a further replay continues.
    pub complete: bool,
}

/// A page of a DLQ.
#[derive(Debug, Clone)]
pub struct DeadLetterPage {
    pub messages: Vec<DeadLetter>,
    /// Whether more messages follow this page.
    pub more: bool,
}

/// How much of a DLQ one peek may show, and how long one replay may run. A dead letter's body can be
/// anything an AMQP producer published (the broker takes up to 128 MiB by default): without the byte bounds,
/// a page of such bodies would be built whole in memory, several times over once escaped as JSON.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetterBounds {
    /// Most body bytes in one page (`read.max_page_bytes`); a page that reaches it ends early, and a page
    /// always shows at least one message.
    pub max_page_bytes: usize,
    /// Most bytes shown of one body (`max_payload_bytes`, the largest body the API publishes).
    pub max_body_bytes: usize,
    /// How long one replay goes on taking messages (`read.replay_time_budget`); it stops between two, and not
    /// before the first. A selective replay reaches the messages it can walk past in that time: the ones it
    /// passes over go back to the head.
    pub replay_time_budget: Duration,
}

#[derive(Clone)]
pub struct DeadLetters {
    broker: Broker,
    /// Replays publish here, never on `broker`: see [`Runtime::publishing`](crate::runtime::Runtime::publishing).
    publisher: Arc<Publisher>,
    bounds: DeadLetterBounds,
}

impl DeadLetters {
    pub fn new((broker, publisher): (Broker, Arc<Publisher>), bounds: DeadLetterBounds) -> Self {
        Self { broker, publisher, bounds }
    }

    /// Up to `limit` messages after the first `skip`, oldest first, leaving them all in the queue; fewer when
    /// their bodies reach [`DeadLetterBounds::max_page_bytes`].
    pub async fn peek(&self, tenant: TenantId, skip: usize, limit: usize) -> Result<DeadLetterPage, BrokerError> {
        let (_apart, channel) = self.broker.channel_apart().await?;
        let queue = TenantQueues::of(tenant).dead_letters;
        let mut messages = Vec::with_capacity(limit);
        let mut more = false;
        let (mut taken, mut page_bytes) = (0, 0_usize);
        while let Some(message) = get(&channel, &queue).await? {
            taken += 1;
            if taken <= skip {
                continue;
            }
            if messages.len() == limit || page_bytes >= self.bounds.max_page_bytes {
                more = true;
                break;
            }
            let letter = DeadLetter::of(&message, self.bounds.max_body_bytes);
            page_bytes = page_bytes.saturating_add(letter.body.len());
            messages.push(letter);
        }
        // Closing the channel returns every unacked message to its place in the queue.
        close(&channel).await;
        Ok(DeadLetterPage { messages, more })
    }

    /// Moves the selected messages (all when `selection` is `None`) back to the tenant's main queue, with
    /// their failure history cleared so they get a fresh set of retries. Only the messages in the DLQ when
    /// the replay starts are considered, so one that fails again during the replay is not replayed twice.
    pub async fn replay(&self, tenant: TenantId, selection: Option<HashSet<Uuid>>) -> Result<Replayed, BrokerError> {
        let (_apart, channel) = self.broker.channel_apart().await?;
        let queues = TenantQueues::of(tenant);
        let Some((depth, _)) = inspect(&channel, &queues.dead_letters).await? else {
            close(&channel).await;
            return Ok(Replayed { replayed: 0, not_found: selection.into_iter().flatten().collect(), complete: true });
        };
        let deadline = tokio::time::Instant::now() + self.bounds.replay_time_budget;
        let mut remaining = selection;
        let mut replayed = 0;
        let mut taken = 0;
        let complete = loop {
            if taken == depth || remaining.as_ref().is_some_and(HashSet::is_empty) {
                break true;
            }
            let passed_over = taken - replayed;
            if replayed == REPLAY_MAX_MESSAGES
                || passed_over == REPLAY_MAX_PASSED_OVER
                || (taken > 0 && tokio::time::Instant::now() >= deadline)
            {
                break false;
            }
            let Some(delivery) = get(&channel, &queues.dead_letters).await? else { break true };
            taken += 1;
            let sent_id = delivery.properties.message_id().as_ref().map(|id| id.as_str());
            let id = sent_id.and_then(|id| Uuid::try_parse(id).ok());
            let selected = match (&mut remaining, id) {
                (None, _) => true,
                (Some(remaining), Some(id)) => remaining.remove(&id),
                (Some(_), None) => false,
            };
            if !selected {
                continue;
            }
            // The id its row has or will have, so a replay of a message already stored (its commit's ack lost
            // before the broker dead-lettered it) or replayed twice finds that row.
            let id = message_id::row_id(tenant, sent_id);
            let properties = failure_headers::replay_copy(&delivery, id, self.publisher.header_bytes_carried());
            // Not cut short at the time budget: such a publish was often sent already, and its message then
            // reached the main queue while it stayed in the DLQ, to be replayed again. Its confirm is waited
            // for up to `rabbitmq.publish_timeout`.
            let error = match self.publisher.publish_unless_blocked(tenant, &delivery.data, properties).await {
                Ok(()) => {
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                    replayed += 1;
                    continue;
                }
                Err(error) => error,
            };
            // Stop: the message stays in the DLQ (unacked, returned on close). What was replayed is told.
            tracing::warn!(%tenant, %error, "replay stopped: cannot publish to the main queue");
            if replayed > 0 {
                break false;
            }
            close(&channel).await;
            return Err(match error {
                BrokerError::Blocked => BrokerError::Blocked,
                _ => BrokerError::Unavailable,
            });
        };
        close(&channel).await;
        let not_found = if complete { remaining.into_iter().flatten().collect() } else { Vec::new() };
        Ok(Replayed { replayed, not_found, complete })
    }

    /// Drops every message in the DLQ; returns how many there were.
    pub async fn purge(&self, tenant: TenantId) -> Result<u32, BrokerError> {
        // Only the channel's open is bounded: a large queue's purge may take long, and the broker finishes it
        // anyway.
        let channel = super::answered(self.broker.channel()).await??;
        let queue = TenantQueues::of(tenant).dead_letters;
        let purged = match channel.queue_purge(queue.as_str().into(), QueuePurgeOptions::default()).await {
            Ok(count) => count,
            Err(error) if is_not_found(&error) => 0,
            Err(error) => return Err(error.into()),
        };
        close(&channel).await;
        Ok(purged)
    }
}

/// The next message, unacked; `None` when the queue is empty or does not exist.
async fn get(channel: &Channel, queue: &str) -> Result<Option<Delivery>, BrokerError> {
    match super::get_unacked(channel, queue).await {
        Err(BrokerError::Amqp(error)) if is_not_found(&error) => Ok(None),
        got => got,
    }
}

/// Closes a dead-letter channel, which returns what it holds unacked to the queue. Waits for the broker's
/// confirmation, for the tenant's next operation to find those messages back in place, but not past
/// [`REQUEUE_TIMEOUT`]: a silent broker must not hold the request (and the tenant's next ones) for good.
async fn close(channel: &Channel) {
    let _ = tokio::time::timeout(REQUEUE_TIMEOUT, super::close_channel(channel, "done")).await;
}

/// Ample for the broker to requeue the most messages a replay can hold unacked ([`REPLAY_MAX_PASSED_OVER`]).
const REQUEUE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

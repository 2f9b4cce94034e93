//! A tenant's three queues: their names, declaration with matching arguments, deletion, and reading their
//! counts without disturbing anything else.

use lapin::{
    Channel,
    options::{QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable, ShortString},
};

use crate::{config::QueueType, domain::tenant::TenantId};

use super::{Broker, BrokerError, close_channel, is_not_found};

/// The queues of one tenant. Every declaration goes through [`declare`], so arguments never mismatch.
pub struct TenantQueues {
    /// Where producers publish and the tenant's consumers consume.
    pub queue: String,
    /// Holds messages waiting for a retry: each expires after its own delay (per-message TTL) and
    /// dead-letters back into `queue`.
    pub retry: String,
    /// Messages that failed for good, with the reason in their headers; read by the DLQ API.
    pub dead_letters: String,
}

impl TenantQueues {
    pub fn of(tenant: TenantId) -> Self {
        Self {
            queue: tenant.queue_name(),
            retry: tenant.retry_queue_name(),
            dead_letters: tenant.dead_letter_queue_name(),
        }
    }
}

/// Declares the tenant's queues (durable). Messages the broker dead-letters from the main queue (a reject
/// by another client, a delivery limit) go to the DLQ; expired retries go back to the main queue. The retry
/// queue has no queue-wide TTL, so changing the retry delays never changes a declaration.
pub async fn declare(channel: &Channel, tenant: TenantId, queue_type: QueueType) -> Result<(), BrokerError> {
    let queues = TenantQueues::of(tenant);
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    for (queue, dead_letter_to) in [
        (&queues.dead_letters, None),
        (&queues.retry, Some(&queues.queue)),
        (&queues.queue, Some(&queues.dead_letters)),
    ] {
        let arguments = queue_arguments(queue_type, dead_letter_to.map(String::as_str));
        channel.queue_declare(queue.as_str().into(), durable, arguments).await?;
    }
    Ok(())
}

/// [`declare`] on a channel opened for it and closed after: lapin remembers each queue a channel declared
/// (some 600 bytes) for as long as the channel lives, which a consumer's long-lived channel need not carry.
pub async fn declare_apart(broker: &Broker, tenant: TenantId, queue_type: QueueType) -> Result<(), BrokerError> {
    let channel = broker.channel().await?;
    let declared = declare(&channel, tenant, queue_type).await;
    close_channel(&channel, "declared").await;
    declared
}

fn queue_arguments(queue_type: QueueType, dead_letter_to: Option<&str>) -> FieldTable {
    let mut arguments = FieldTable::default();
    let kind = match queue_type {
        QueueType::Classic => "classic",
        QueueType::Quorum => "quorum",
    };
    arguments.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
    if let Some(target) = dead_letter_to {
        arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
        arguments.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(target.into()));
        if queue_type == QueueType::Quorum {
            // Quorum queues dead-letter at most once by default; expired retries must not vanish on a node
            // failure. At-least-once dead-lettering requires `reject-publish` overflow.
            arguments.insert("x-dead-letter-strategy".into(), AMQPValue::LongString("at-least-once".into()));
            arguments.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
        }
    }
    arguments
}

/// Deletes the tenant's queues (deleting a missing queue is not an error in RabbitMQ).
pub async fn delete(channel: &Channel, tenant: TenantId) -> Result<(), BrokerError> {
    let queues = TenantQueues::of(tenant);
    for queue in [queues.queue, queues.retry, queues.dead_letters] {
        channel.queue_delete(ShortString::from(queue), QueueDeleteOptions::default()).await?;
    }
    Ok(())
}

/// Deletes the queues of each of `tenants` on a channel of its own, closed after; each tenant's deletes, and
/// the channel's open, are bounded by the answer timeout. Stops at the first tenant whose queues it cannot
/// delete, and logs which.
pub async fn delete_of_each(broker: &Broker, tenants: impl IntoIterator<Item = TenantId>) -> Result<(), BrokerError> {
    let channel = super::answered(broker.channel()).await??;
    let mut deleted = Ok(());
    for tenant in tenants {
        deleted = super::answered(delete(&channel, tenant)).await.and_then(|deleted| deleted);
        if let Err(error) = &deleted {
            tracing::warn!(%tenant, %error, "cannot delete the queues of a deleted tenant");
            break;
        }
    }
    close_channel(&channel, "deleted").await;
    deleted
}

/// Message and consumer counts of a queue, without creating it (`None` when it does not exist).
pub async fn inspect(channel: &Channel, queue: &str) -> Result<Option<(u32, u32)>, BrokerError> {
    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    match super::answered(channel.queue_declare(queue.into(), passive, FieldTable::default())).await? {
        Ok(declared) => Ok(Some((declared.message_count(), declared.consumer_count()))),
        Err(error) if is_not_found(&error) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// Reads queue counts on channels of its own, never on a channel that publishes: a passive declare of a
/// missing queue makes the broker close its channel, which would fail whatever else shares it. After such a
/// close (or any error) the next question gets a new channel, and so does every
/// [`QUESTIONS_PER_CHANNEL`]th: lapin remembers every queue a channel declared, passively too, for as long
/// as the channel lives, and one inspector asks about every tenant's queues.
pub struct Inspector {
    broker: Broker,
    channel: Option<Channel>,
    /// Questions asked on `channel`.
    asked: u32,
}

/// Passive declares on one inspector channel before it is replaced (bounds what lapin remembers of them).
const QUESTIONS_PER_CHANNEL: u32 = 256;

impl Inspector {
    pub fn new(broker: &Broker) -> Self {
        Self { broker: broker.clone(), channel: None, asked: 0 }
    }

    /// `(messages ready, consumers)` of `queue`; `None` when it does not exist; a broker error is an error.
    pub async fn try_counts(&mut self, queue: &str) -> Result<Option<(u32, u32)>, BrokerError> {
        let reusable = self.channel.take().filter(|c| c.status().connected());
        let channel = match reusable {
            Some(channel) if self.asked < QUESTIONS_PER_CHANNEL => channel,
            worn => {
                if let Some(channel) = worn {
                    close(&channel).await;
                }
                self.asked = 0;
                super::answered(self.broker.channel()).await??
            }
        };
        self.asked += 1;
        let counts = inspect(&channel, queue).await;
        // The broker has closed the channel after a missing queue or an error: the next question opens another.
        if matches!(counts, Ok(Some(_))) {
            self.channel = Some(channel);
        }
        counts
    }

    /// `(messages ready, consumers)` of `queue`; `None` when it does not exist or cannot be read now.
    pub async fn counts(&mut self, queue: &str) -> Option<(u32, u32)> {
        self.try_counts(queue).await.unwrap_or_else(|error| {
            tracing::debug!(%error, queue, "cannot read a queue's counts");
            None
        })
    }

    /// The depths of the tenant's three queues and the consumers of its main queue.
    pub async fn tenant(&mut self, tenant: TenantId) -> QueueCounts {
        let queues = TenantQueues::of(tenant);
        let mut counts = QueueCounts::default();
        // A broker that cannot answer about one queue will not about the next: the rest stay unknown, at once.
        let asked: Result<(), BrokerError> = async {
            let main = self.try_counts(&queues.queue).await?;
            counts.ready = main.map(|(messages, _)| messages);
            counts.consumers = main.map(|(_, consumers)| consumers);
            counts.retrying = self.try_counts(&queues.retry).await?.map(|(messages, _)| messages);
            counts.dead_letters = self.try_counts(&queues.dead_letters).await?.map(|(messages, _)| messages);
            Ok(())
        }
        .await;
        if let Err(error) = asked {
            tracing::debug!(%error, %tenant, "cannot read the tenant's queue counts");
        }
        counts
    }

    pub async fn close(self) {
        if let Some(channel) = self.channel {
            close(&channel).await;
        }
    }
}

/// Closes an inspector's channel, waiting at most [`ANSWER_TIMEOUT`](super::ANSWER_TIMEOUT) for the broker
/// to confirm: it holds no message.
async fn close(channel: &Channel) {
    let _ = tokio::time::timeout(super::ANSWER_TIMEOUT, close_channel(channel, "inspected")).await;
}

/// A tenant's queue depths as the broker reports them (`None`: the queue is missing or unreadable).
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueCounts {
    pub ready: Option<u32>,
    pub consumers: Option<u32>,
    pub retrying: Option<u32>,
    pub dead_letters: Option<u32>,
}

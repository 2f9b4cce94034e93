//! The RabbitMQ connection: one per instance, supervised. It reconnects with backoff when it drops and
//! announces each new connection, so the reconciler can re-establish the consumers on it.

use std::sync::Arc;

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Event,
    options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{backoff::Backoff, config::QueueType, domain::tenant::TenantId};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("the broker is not connected")]
    Unavailable,
    #[error("broker error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker refused the message or could not route it to its queue")]
    Refused,
}

/// A live connection and its sequence number (each reconnect gets a new one).
#[derive(Clone)]
pub struct Connected {
    pub generation: u64,
    pub connection: Arc<Connection>,
}

#[derive(Clone)]
pub struct Broker {
    url: String,
    current: watch::Sender<Option<Connected>>,
}

impl Broker {
    pub fn new(url: String) -> Self {
        Self { url, current: watch::Sender::new(None) }
    }

    /// Announces every connect and disconnect.
    pub fn subscribe(&self) -> watch::Receiver<Option<Connected>> {
        self.current.subscribe()
    }

    /// The connection if it is up.
    pub fn current(&self) -> Option<Connected> {
        self.current.borrow().clone().filter(|c| c.connection.status().connected())
    }

    pub fn is_connected(&self) -> bool {
        self.current().is_some()
    }

    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        let connected = self.current().ok_or(BrokerError::Unavailable)?;
        Ok(connected.connection.create_channel().await?)
    }

    /// Keeps a connection up until `cancel`: connects with backoff, then waits for it to fail.
    pub async fn supervise(self, cancel: CancellationToken) {
        let mut backoff = Backoff::new();
        let mut generation = 0;
        while !cancel.is_cancelled() {
            let connection = tokio::select! {
                _ = cancel.cancelled() => return,
                connected = Connection::connect(&self.url, ConnectionProperties::default()) => connected,
            };
            let connection = match connection {
                Ok(connection) => Arc::new(connection),
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, ?delay, "cannot connect to RabbitMQ; retrying");
                    tokio::select! { _ = cancel.cancelled() => return, _ = tokio::time::sleep(delay) => continue }
                }
            };
            backoff.reset();
            generation += 1;
            tracing::info!(generation, "connected to RabbitMQ");
            let mut events = connection.events_listener();
            self.current.send_replace(Some(Connected { generation, connection: connection.clone() }));
            let mut check = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    event = events.next() => match event {
                        // A soft error closes one channel only (e.g. a passive declare of a missing queue).
                        Some(Event::Error(error)) if is_channel_error(&error) => {
                            tracing::debug!(%error, "a channel was closed by the broker");
                        }
                        Some(Event::Error(error)) => {
                            tracing::warn!(%error, "RabbitMQ connection failed; reconnecting");
                            break;
                        }
                        Some(_) => {}
                        None => break,
                    },
                    _ = check.tick() => if !connection.status().connected() {
                        tracing::warn!("RabbitMQ connection is no longer connected; reconnecting");
                        break;
                    },
                }
            }
            self.current.send_replace(None);
        }
    }

    /// Closes the connection (after the consumers have stopped).
    pub async fn close(&self) {
        if let Some(connected) = self.current.send_replace(None)
            && let Err(error) = connected.connection.close(200, "shutting down".into()).await
        {
            tracing::debug!(%error, "closing the RabbitMQ connection");
        }
    }
}

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

/// Publishes to `queue` through the default exchange with `mandatory`, on a confirm channel, and waits for
/// the confirm: `Ok` means the queue has the message.
pub async fn publish_confirmed(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), BrokerError> {
    let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
    let confirm = channel.basic_publish("".into(), queue.into(), options, body, properties).await?;
    match confirm.await? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) | Confirmation::Nack(_) | Confirmation::NotRequested => Err(BrokerError::Refused),
    }
}

/// Message and consumer counts of a queue, without creating it (`None` when it does not exist).
pub async fn inspect(channel: &Channel, queue: &str) -> Result<Option<(u32, u32)>, BrokerError> {
    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    match channel.queue_declare(queue.into(), passive, FieldTable::default()).await {
        Ok(declared) => Ok(Some((declared.message_count(), declared.consumer_count()))),
        Err(error) if is_not_found(&error) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// Reads queue counts on channels of its own, never on a channel that publishes: a passive declare of a
/// missing queue makes the broker close its channel, which would fail whatever else shares it. After such a
/// close (or any error) the next question gets a new channel.
pub struct Inspector<'a> {
    broker: &'a Broker,
    channel: Option<Channel>,
}

impl<'a> Inspector<'a> {
    pub fn new(broker: &'a Broker) -> Self {
        Self { broker, channel: None }
    }

    /// `(messages ready, consumers)` of `queue`; `None` when it does not exist; a broker error is an error.
    pub async fn try_counts(&mut self, queue: &str) -> Result<Option<(u32, u32)>, BrokerError> {
        let channel = match self.channel.take().filter(|c| c.status().connected()) {
            Some(channel) => channel,
            None => self.broker.channel().await?,
        };
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
        let main = self.counts(&queues.queue).await;
        QueueCounts {
            ready: main.map(|(messages, _)| messages),
            consumers: main.map(|(_, consumers)| consumers),
            retrying: self.counts(&queues.retry).await.map(|(messages, _)| messages),
            dead_letters: self.counts(&queues.dead_letters).await.map(|(messages, _)| messages),
        }
    }

    pub async fn close(self) {
        if let Some(channel) = self.channel.filter(|c| c.status().connected()) {
            let _ = channel.close(200, "inspected".into()).await;
        }
    }
}

/// A tenant's queue depths as the broker reports them (`None`: the queue is missing or unreadable).
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueCounts {
    pub ready: Option<u32>,
    pub consumers: Option<u32>,
    pub retrying: Option<u32>,
    pub dead_letters: Option<u32>,
}

/// A soft AMQP error: the broker closed a channel, the connection stays up.
fn is_channel_error(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e) if matches!(e.kind(), lapin::protocol::AMQPErrorKind::Soft(_)))
}

pub(super) fn is_not_found(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if matches!(e.kind(), lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND))
    )
}

//! The RabbitMQ connection: one per instance, supervised. It reconnects with backoff when it drops and
//! announces each new connection, so the reconciler can re-establish the consumers on it.

use std::sync::Arc;

use futures_util::StreamExt;
use lapin::{
    Channel, Connection, ConnectionProperties, Event,
    options::{QueueDeclareOptions, QueueDeleteOptions},
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
    pub queue: String,
    pub dead_letters: String,
}

impl TenantQueues {
    pub fn of(tenant: TenantId) -> Self {
        Self { queue: tenant.queue_name(), dead_letters: format!("tenant_{tenant}_dlq") }
    }
}

/// Declares the tenant's queue and its dead-letter queue (durable). Rejected messages dead-letter into the DLQ
/// through the default exchange.
pub async fn declare(channel: &Channel, tenant: TenantId, queue_type: QueueType) -> Result<(), BrokerError> {
    let queues = TenantQueues::of(tenant);
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    channel.queue_declare(queues.dead_letters.as_str().into(), durable, queue_arguments(queue_type, None)).await?;
    channel
        .queue_declare(queues.queue.as_str().into(), durable, queue_arguments(queue_type, Some(&queues.dead_letters)))
        .await?;
    Ok(())
}

fn queue_arguments(queue_type: QueueType, dead_letter_to: Option<&str>) -> FieldTable {
    let mut arguments = FieldTable::default();
    let kind = match queue_type {
        QueueType::Classic => "classic",
        QueueType::Quorum => "quorum",
    };
    arguments.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
    if let Some(dlq) = dead_letter_to {
        arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
        arguments.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(dlq.into()));
    }
    arguments
}

/// Deletes the tenant's queues (deleting a missing queue is not an error in RabbitMQ).
pub async fn delete(channel: &Channel, tenant: TenantId) -> Result<(), BrokerError> {
    let queues = TenantQueues::of(tenant);
    for queue in [queues.queue, queues.dead_letters] {
        channel.queue_delete(ShortString::from(queue), QueueDeleteOptions::default()).await?;
    }
    Ok(())
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

/// A soft AMQP error: the broker closed a channel, the connection stays up.
fn is_channel_error(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e) if matches!(e.kind(), lapin::protocol::AMQPErrorKind::Soft(_)))
}

fn is_not_found(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if matches!(e.kind(), lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND))
    )
}

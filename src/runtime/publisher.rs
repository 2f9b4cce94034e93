//! Publishing with publisher confirms over a small pool of confirm channels.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::FieldTable,
};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::{
    config::QueueType,
    domain::tenant::TenantId,
    store::{StoreError, tenants::TenantReadModel},
    telemetry,
};

use super::broker::{self, Broker, BrokerError, TenantQueues};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("the broker did not confirm within {0:?}")]
    Timeout(Duration),
    #[error("the broker refused the message")]
    Nacked,
    #[error("the message could not be routed to the tenant's queue")]
    Unroutable,
    /// The tenant's queue is gone because the tenant was deleted: it must not come back.
    #[error("the tenant has been deleted")]
    TenantDeleted,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<lapin::Error> for PublishError {
    fn from(error: lapin::Error) -> Self {
        Self::Broker(error.into())
    }
}

/// A message on its way to a tenant queue: its id (the AMQP `message_id`) and its JSON body.
pub struct OutgoingMessage {
    pub id: Uuid,
    pub body: Vec<u8>,
}

pub struct Publisher {
    broker: Broker,
    tenants: TenantReadModel,
    /// Each slot holds a confirm channel and the connection generation it was opened on.
    slots: Vec<Mutex<Option<(u64, Channel)>>>,
    next: AtomicUsize,
    timeout: Duration,
    queue_type: QueueType,
}

impl Publisher {
    pub fn new(
        broker: Broker,
        tenants: TenantReadModel,
        channels: u16,
        timeout: Duration,
        queue_type: QueueType,
    ) -> Self {
        let slots = (0..channels.max(1)).map(|_| Mutex::new(None)).collect();
        Self { broker, tenants, slots, next: AtomicUsize::new(0), timeout, queue_type }
    }

    /// A confirm channel from the pool, reopened when its connection or the channel itself has gone.
    async fn channel(&self) -> Result<Channel, BrokerError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[index].lock().await;
        let connected = self.broker.current().ok_or(BrokerError::Unavailable)?;
        if let Some((generation, channel)) = slot.as_ref()
            && *generation == connected.generation
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let channel = connected.connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        *slot = Some((connected.generation, channel.clone()));
        Ok(channel)
    }

    /// Publishes persistent messages to the tenant's queue and returns once the broker has confirmed all of
    /// them. A message the broker returns as unroutable (the queue is not declared yet) is published again
    /// after declaring the tenant's queues, unless the tenant was deleted meanwhile (its retirement deleted
    /// the queues): a publish that raced with the delete fails rather than bring them back.
    #[tracing::instrument(name = "publish", skip_all, fields(%tenant, messages = messages.len()))]
    pub async fn publish(&self, tenant: TenantId, messages: &[OutgoingMessage]) -> Result<(), PublishError> {
        tokio::time::timeout(self.timeout, self.publish_confirmed(tenant, messages))
            .await
            .map_err(|_| PublishError::Timeout(self.timeout))?
    }

    async fn publish_confirmed(&self, tenant: TenantId, messages: &[OutgoingMessage]) -> Result<(), PublishError> {
        let channel = self.channel().await?;
        let queue = TenantQueues::of(tenant).queue;
        let returned = send(&channel, &queue, messages.iter()).await?;
        if returned.is_empty() {
            return Ok(());
        }
        if self.tenants.get_active(tenant).await?.is_none() {
            return Err(PublishError::TenantDeleted);
        }
        tracing::info!(%tenant, returned = returned.len(), "the broker returned messages as unroutable; declaring the tenant's queues");
        broker::declare(&channel, tenant, self.queue_type).await?;
        let again = send(&channel, &queue, returned.iter().map(|&i| &messages[i])).await?;
        if again.is_empty() { Ok(()) } else { Err(PublishError::Unroutable) }
    }
}

/// Publishes `body` as it is to the tenant's queue on a connection of its own, as any AMQP producer may: no
/// JSON check, so a body that is not JSON shows the dead-letter path (`tenantmq publish`). Returns the
/// message id.
pub async fn publish_raw(url: &str, tenant: TenantId, body: &[u8]) -> Result<Uuid, BrokerError> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let id = Uuid::now_v7();
    let properties = BasicProperties::default().with_message_id(id.to_string().into()).with_delivery_mode(2);
    let published = broker::publish_confirmed(&channel, &TenantQueues::of(tenant).queue, body, properties).await;
    let _ = connection.close(200, "published".into()).await;
    published.map(|()| id)
}

/// Publishes all, then awaits all confirms (pipelined). Returns the indices the broker returned as unroutable.
async fn send<'a>(
    channel: &Channel,
    queue: &str,
    messages: impl Iterator<Item = &'a OutgoingMessage>,
) -> Result<Vec<usize>, PublishError> {
    let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
    let timestamp = chrono::Utc::now().timestamp().try_into().unwrap_or_default();
    // The `publish` span's context (W3C `traceparent`), so each message's handling joins the request's trace.
    let mut headers = FieldTable::default();
    telemetry::inject_current(&mut headers);
    let mut confirms = Vec::new();
    for message in messages {
        let mut properties = BasicProperties::default()
            .with_message_id(message.id.to_string().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_timestamp(timestamp);
        if !headers.inner().is_empty() {
            properties = properties.with_headers(headers.clone());
        }
        confirms.push(channel.basic_publish("".into(), queue.into(), options, &message.body, properties).await?);
    }
    let mut returned = Vec::new();
    for (index, confirm) in confirms.into_iter().enumerate() {
        match confirm.await? {
            Confirmation::Ack(None) => {}
            Confirmation::Ack(Some(_)) => returned.push(index),
            Confirmation::Nack(_) | Confirmation::NotRequested => return Err(PublishError::Nacked),
        }
    }
    Ok(returned)
}

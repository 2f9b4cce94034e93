//! Publishing with publisher confirms, in one place: the API's publisher (a small pool of confirm channels),
//! the consumers' retries and dead letters, DLQ replays and `tenantmq publish` all go through
//! [`publish_all`], so a confirm means the same everywhere.

use std::sync::atomic::{AtomicUsize, Ordering};

use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::FieldTable,
};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::{
    config::{QueueType, RabbitMqConfig},
    domain::tenant::TenantId,
    telemetry,
};

use super::{Broker, BrokerError, failure_headers, queues};

/// Publishes each message to `queue` through the default exchange with `mandatory`, then awaits every confirm
/// (pipelined, on a channel in confirm mode). Returns the indices of the messages the broker returned as
/// unroutable (their queue does not exist); a nack fails the whole call.
pub async fn publish_all(
    channel: &Channel,
    queue: &str,
    messages: Vec<(&[u8], BasicProperties)>,
) -> Result<Vec<usize>, BrokerError> {
    let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
    // Joined, not awaited one by one: each publish queues its frames when first polled, in order, and then
    // waits for the connection's I/O thread to write them; awaiting each in turn would cost a round trip to
    // that thread per message, where joined they go out together.
    let publishes = messages
        .into_iter()
        .map(|(body, properties)| channel.basic_publish("".into(), queue.into(), options, body, properties));
    let confirms = futures_util::future::try_join_all(publishes).await?;
    let mut returned = Vec::new();
    for (index, confirm) in confirms.into_iter().enumerate() {
        match confirm.await? {
            Confirmation::Ack(None) => {}
            Confirmation::Ack(Some(_)) => returned.push(index),
            Confirmation::Nack(_) | Confirmation::NotRequested => return Err(BrokerError::Refused),
        }
    }
    Ok(returned)
}

/// Publishes one message and waits for its confirm: `Ok` means the queue has it; a message returned as
/// unroutable is [`BrokerError::Refused`].
pub async fn publish_confirmed(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), BrokerError> {
    let returned = publish_all(channel, queue, vec![(body, properties)]).await?;
    if returned.is_empty() { Ok(()) } else { Err(BrokerError::Refused) }
}

/// A message on its way to a tenant queue: its id (the AMQP `message_id`) and its JSON body.
pub struct OutgoingMessage {
    pub id: Uuid,
    pub body: Vec<u8>,
}

/// Publishes clients' messages over a small pool of confirm channels, reopened after a reconnect.
pub struct Publisher {
    broker: Broker,
    /// Each slot holds a confirm channel and the connection generation it was opened on.
    slots: Vec<Mutex<Option<(u64, Channel)>>>,
    next: AtomicUsize,
    queue_type: QueueType,
    /// The frame size its connection asks for ([`RabbitMqConfig::effective_frame_max`]).
    frame_max: u32,
}

impl Publisher {
    /// `rabbitmq.publisher_channels` confirm channels on `broker`, opened as they are first used.
    pub fn new(broker: Broker, rabbitmq: &RabbitMqConfig) -> Self {
        let slots = (0..rabbitmq.publisher_channels.max(1)).map(|_| Mutex::new(None)).collect();
        let (queue_type, frame_max) = (rabbitmq.queue_type, rabbitmq.effective_frame_max());
        Self { broker, slots, next: AtomicUsize::new(0), queue_type, frame_max }
    }

    /// How many bytes of a failed message's headers its copies carry
    /// ([`failure_headers::header_bytes_carried`]), by the frame size the connection asks for (the broker's
    /// own may be smaller, but then no producer could send it larger headers either).
    pub fn header_bytes_carried(&self) -> usize {
        failure_headers::header_bytes_carried(self.frame_max)
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

    /// Publishes persistent JSON messages to the tenant's queue, carrying the current trace context, and
    /// waits for every confirm. Returns the indices of those returned as unroutable (the queue is missing).
    pub async fn send(&self, tenant: TenantId, messages: &[&OutgoingMessage]) -> Result<Vec<usize>, BrokerError> {
        self.refuse_if_blocked()?;
        let channel = self.channel().await?;
        let timestamp = chrono::Utc::now().timestamp().try_into().unwrap_or_default();
        // The current span's context (W3C `traceparent`), so each message's handling joins the request's trace.
        let mut headers = FieldTable::default();
        telemetry::inject_current(&mut headers);
        let with_properties = messages.iter().map(|message| {
            let mut properties = BasicProperties::default()
                .with_message_id(message.id.to_string().into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_timestamp(timestamp);
            if !headers.inner().is_empty() {
                properties = properties.with_headers(headers.clone());
            }
            (message.body.as_slice(), properties)
        });
        let with_properties = with_properties.collect();
        publish_all(&channel, &tenant.queue_name(), with_properties).await
    }

    /// Publishes one message and waits for its confirm, as [`publish_confirmed`]; while the broker blocks
    /// publishers, sends nothing and fails at once (for a caller that gives up, such as a request).
    pub async fn publish_unless_blocked(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        self.refuse_if_blocked()?;
        self.publish(queue, body, properties).await
    }

    /// Publishes one message and waits for its confirm, as [`publish_confirmed`]. While the broker blocks
    /// publishers, the message waits in the client until the block ends, and so does the caller.
    pub async fn publish(&self, queue: &str, body: &[u8], properties: BasicProperties) -> Result<(), BrokerError> {
        publish_confirmed(&self.channel().await?, queue, body, properties).await
    }

    /// A publish started while the broker blocks publishers would wait in the client's buffer and reach the
    /// queue whenever the block ends, long after a caller who gave up was told it failed: refuse it instead.
    fn refuse_if_blocked(&self) -> Result<(), BrokerError> {
        if self.broker.is_blocked() { Err(BrokerError::Blocked) } else { Ok(()) }
    }

    /// Declares the tenant's queues (for a publish that found them missing).
    pub async fn declare(&self, tenant: TenantId) -> Result<(), BrokerError> {
        queues::declare(&self.channel().await?, tenant, self.queue_type).await
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
    let published = publish_confirmed(&channel, &tenant.queue_name(), body, properties).await;
    let _ = connection.close(200, "published".into()).await;
    published.map(|()| id)
}

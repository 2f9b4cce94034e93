//! Publishing with publisher confirms, in one place: the API's publisher (a small pool of confirm channels),
//! the consumers' retries and dead letters, DLQ replays and `tenantmq publish` all go through
//! [`publish_all`], so a confirm means the same everywhere.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::FieldTable,
};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::{
    config::{QueueType, RabbitMqConfig},
    detach::DetachOnDrop,
    domain::tenant::TenantId,
    telemetry,
};

use super::{Broker, BrokerError, PerTenant, failure_headers, queues};

/// Publishes each message to `queue` through the default exchange with `mandatory`, then awaits every confirm
/// (pipelined, on a channel in confirm mode). Returns the indices of the messages the broker returned as
/// unroutable (their queue does not exist); a nack fails the whole call, once every confirm is in.
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
    for (index, confirmation) in futures_util::future::join_all(confirms).await.into_iter().enumerate() {
        match confirmation? {
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
    publish_all(channel, queue, vec![(body, properties)]).await.and_then(confirmed)
}

/// A single publish's outcome: one returned as unroutable is [`BrokerError::Refused`].
fn confirmed(returned: Vec<usize>) -> Result<(), BrokerError> {
    if returned.is_empty() { Ok(()) } else { Err(BrokerError::Refused) }
}

/// A message on its way to a tenant queue: its id (the AMQP `message_id`) and its JSON body.
pub struct OutgoingMessage {
    pub id: Uuid,
    pub body: Vec<u8>,
}

/// What a message weighs on its way besides its body, for [`InFlight`]: its frames, properties, confirm and
/// the future that sends it. Measured: 300 batches of 1,000 small messages, each hung up on at once, held about
/// 4 KiB a message on their way.
const MESSAGE_OVERHEAD_BYTES: usize = 4096;

/// Room for what clients publish through this instance and the broker has not confirmed yet
/// (`rabbitmq.max_publish_bytes_in_flight`). A client that hangs up does not take back what it sent: its
/// messages go on to the broker. Without this bound, clients that hang up at once could have the service hold
/// as much as they send, faster than the broker takes it (300 batches of 1,000 sent that way held 330 MB).
struct InFlight {
    room: Arc<Semaphore>,
    budget: u32,
    /// Each tenant's share, a quarter of the room: a tenant whose queue does not confirm holds room with each
    /// publish until `rabbitmq.publish_timeout`, and clients that keep sending to it must leave the rest of the
    /// room to the other tenants. An entry goes with the last publish that holds it.
    shares: PerTenant<Semaphore>,
}

/// Room one publish holds, in its tenant's share and in the whole, until it is dropped.
pub struct Room {
    _share: OwnedSemaphorePermit,
    _whole: OwnedSemaphorePermit,
}

impl InFlight {
    fn new(budget: u32) -> Self {
        Self { room: Arc::new(Semaphore::new(budget as usize)), budget, shares: PerTenant::default() }
    }

    fn share(&self) -> u32 {
        (self.budget / 4).max(1)
    }

    /// Waits for room for `bytes` of `tenant`'s, first in its share, then in the whole. More than a share
    /// waits for all of the share, and goes alone for its tenant.
    async fn reserve(&self, tenant: TenantId, bytes: usize) -> Result<Room, BrokerError> {
        let wanted = u32::try_from(bytes).unwrap_or(u32::MAX).min(self.share());
        // The semaphores are never closed.
        let share = self.share_of(tenant).acquire_many_owned(wanted).await.map_err(|_| BrokerError::Unavailable)?;
        let whole = self.room.clone().acquire_many_owned(wanted).await.map_err(|_| BrokerError::Unavailable)?;
        Ok(Room { _share: share, _whole: whole })
    }

    fn share_of(&self, tenant: TenantId) -> Arc<Semaphore> {
        self.shares.get(tenant, || Semaphore::new(self.share() as usize))
    }

    fn used(&self) -> u64 {
        u64::from(self.budget).saturating_sub(self.room.available_permits() as u64)
    }
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
    in_flight: InFlight,
    /// `rabbitmq.publish_timeout`: the longest a publish, detached or not, waits for its confirms.
    confirm_timeout: Duration,
}

impl Publisher {
    /// `rabbitmq.publisher_channels` confirm channels on `broker`, opened as they are first used.
    pub fn new(broker: Broker, rabbitmq: &RabbitMqConfig) -> Self {
        let slots = (0..rabbitmq.publisher_channels.max(1)).map(|_| Mutex::new(None)).collect();
        let (queue_type, frame_max) = (rabbitmq.queue_type, rabbitmq.effective_frame_max());
        let in_flight = InFlight::new(rabbitmq.max_publish_bytes_in_flight);
        let confirm_timeout = rabbitmq.publish_timeout;
        Self { broker, slots, next: AtomicUsize::new(0), queue_type, frame_max, in_flight, confirm_timeout }
    }

    /// Bytes of clients' messages on their way to the broker, not yet confirmed.
    pub fn bytes_in_flight(&self) -> u64 {
        self.in_flight.used()
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
        let bytes = messages.iter().map(|m| m.body.len() + MESSAGE_OVERHEAD_BYTES).sum();
        let (channel, room) = self.channel_with_room(tenant, bytes).await?;
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
            (message.body.clone(), properties)
        });
        self.send_detached(channel, tenant.queue_name(), with_properties.collect(), Some(room)).await
    }

    /// Publishes one message and waits for its confirm, as [`publish_confirmed`]; while the broker blocks
    /// publishers, sends nothing and fails at once (for a caller that gives up, such as a request).
    pub async fn publish_unless_blocked(
        &self,
        tenant: TenantId,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        let (channel, room) = self.channel_with_room(tenant, body.len() + MESSAGE_OVERHEAD_BYTES).await?;
        self.send_one_detached(channel, tenant.queue_name(), body, properties, Some(room)).await
    }

    /// Publishes one message and waits for its confirm, as [`publish_confirmed`]. While the broker blocks
    /// publishers, the message waits in the client until the block ends, and so does the caller (up to
    /// `rabbitmq.publish_timeout`). For the workers' copies of failed messages, which their prefetch bounds:
    /// they take no room.
    pub async fn publish(&self, queue: &str, body: &[u8], properties: BasicProperties) -> Result<(), BrokerError> {
        let channel = self.channel().await?;
        self.send_one_detached(channel, queue.to_owned(), body, properties, None).await
    }

    /// A pooled channel, and room for `bytes` of the tenant's, unless the broker blocks publishers: asked again
    /// once there is room, since a block may have begun while this waited for it.
    async fn channel_with_room(&self, tenant: TenantId, bytes: usize) -> Result<(Channel, Room), BrokerError> {
        self.refuse_if_blocked()?;
        let room = self.in_flight.reserve(tenant, bytes).await?;
        let channel = self.channel().await?;
        self.refuse_if_blocked()?;
        Ok((channel, room))
    }

    /// One message through [`Publisher::send_detached`]; one returned as unroutable is [`BrokerError::Refused`].
    async fn send_one_detached(
        &self,
        channel: Channel,
        queue: String,
        body: &[u8],
        properties: BasicProperties,
        room: Option<Room>,
    ) -> Result<(), BrokerError> {
        self.send_detached(channel, queue, vec![(body.to_vec(), properties)], room).await.and_then(confirmed)
    }

    /// [`publish_all`] on a pooled channel, to the end even when the caller gives up (its client gone, a
    /// timeout), holding `room` until then: lapin keeps each confirm whose publish or wait was dropped half way
    /// until its channel closes, which a pooled channel never does, and what was sent is still on its way. What
    /// runs detached owns what it sends, hence a copy of each body. Confirms not in after
    /// `rabbitmq.publish_timeout` close the channel, which fails every confirm awaited on it (the pool opens
    /// another): a broker that never confirms must not hold the room for good, and with it every tenant's
    /// publishes.
    async fn send_detached(
        &self,
        channel: Channel,
        queue: String,
        messages: Vec<(Vec<u8>, BasicProperties)>,
        room: Option<Room>,
    ) -> Result<Vec<usize>, BrokerError> {
        let confirm_timeout = self.confirm_timeout;
        DetachOnDrop::new(async move {
            let _room = room;
            let borrowed = messages.iter().map(|(body, properties)| (body.as_slice(), properties.clone())).collect();
            match tokio::time::timeout(confirm_timeout, publish_all(&channel, &queue, borrowed)).await {
                Ok(published) => published,
                Err(_) => {
                    let _ =
                        tokio::time::timeout(confirm_timeout, super::close_channel(&channel, "confirms overdue")).await;
                    Err(BrokerError::Unavailable)
                }
            }
        })
        .await
    }

    /// A publish started while the broker blocks publishers would wait in the client's buffer and reach the
    /// queue whenever the block ends, long after a caller who gave up was told it failed: refuse it instead.
    fn refuse_if_blocked(&self) -> Result<(), BrokerError> {
        if self.broker.is_blocked() { Err(BrokerError::Blocked) } else { Ok(()) }
    }

    /// Declares the tenant's queues (for a publish that found them missing), on a channel of their own: see
    /// [`queues::declare_apart`].
    pub async fn declare(&self, tenant: TenantId) -> Result<(), BrokerError> {
        queues::declare_apart(&self.broker, tenant, self.queue_type).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn room_is_held_until_its_publish_goes_and_more_than_a_share_waits_for_all_of_it() {
        let (in_flight, tenant) = (InFlight::new(4000), TenantId::generate());
        let first = in_flight.reserve(tenant, 600).await.expect("room");
        assert_eq!(in_flight.used(), 600);
        let waiting = tokio::time::timeout(Duration::from_millis(50), in_flight.reserve(tenant, 600)).await;
        assert!(waiting.is_err(), "600 more bytes do not fit beside 600 in a share of 1000");
        drop(first);
        assert_eq!(in_flight.used(), 0);
        let whole = in_flight.reserve(tenant, 5000).await.expect("room");
        assert_eq!(in_flight.used(), 1000, "a send larger than a share takes all of it, and goes alone");
        drop(whole);
        assert_eq!(in_flight.used(), 0);
    }

    #[tokio::test]
    async fn a_tenant_that_holds_its_whole_share_leaves_the_rest_of_the_room_to_the_others() {
        let in_flight = InFlight::new(4000);
        let (stuck, others) = (TenantId::generate(), [TenantId::generate(), TenantId::generate()]);
        let _held = in_flight.reserve(stuck, 1000).await.expect("room");
        let more = tokio::time::timeout(Duration::from_millis(50), in_flight.reserve(stuck, 1)).await;
        assert!(more.is_err(), "the stuck tenant's share is full");
        let mut rooms = Vec::new();
        for tenant in others {
            rooms.push(in_flight.reserve(tenant, 1000).await.expect("room beside the stuck tenant's"));
        }
        assert_eq!(in_flight.used(), 3000);
        drop(rooms);
        assert_eq!(in_flight.shares.held(), 1);
    }
}

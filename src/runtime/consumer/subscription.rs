//! Subscribing to the tenant's queue: the prefetch, the consumer tag, handing deliveries to the pool
//! (registered with the ack coordinator first) and the handover of a cancelled consumer on a resize.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::{
    Channel, Consumer,
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use tokio::{sync::mpsc, time::Instant};

use super::pool::{Arrival, Handed};
use crate::{
    broker::TenantQueues,
    runtime::{acks::AckCoordinator, tenant_runtime::TenantRuntime},
};

use super::{ConsumerError, ConsumerSettings};

/// A consumer's prefetch: room for a full batch per worker.
pub fn prefetch(workers: u16, batch_size: u16) -> u16 {
    workers.saturating_mul(batch_size).max(1)
}

pub(super) async fn subscribe(
    channel: &Channel,
    runtime: &TenantRuntime,
    settings: &ConsumerSettings,
    generation: u64,
    subscription: u32,
) -> Result<Consumer, ConsumerError> {
    let workers = runtime.desired().get();
    channel.basic_qos(prefetch(workers, settings.batch_size), BasicQosOptions { global: false }).await?;
    let tag = format!("tenantmq.{}.{}.{generation}.{subscription}", settings.instance_id, runtime.tenant);
    let queue = TenantQueues::of(runtime.tenant).queue;
    let consumer = channel
        .basic_consume(queue.into(), tag.as_str().into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    runtime.set_consumer_tag(tag);
    Ok(consumer)
}

/// Passes a delivery to the pool, registered with the ack coordinator first. False when the pool is gone.
pub(super) async fn enqueue(
    delivery: Delivery,
    deliveries: &mpsc::Sender<Handed>,
    runtime: &TenantRuntime,
    acks: &AckCoordinator,
) -> bool {
    runtime.delivery_received();
    acks.received(delivery.delivery_tag);
    deliveries.send(Box::new(Arrival { delivery, at: Instant::now() })).await.is_ok()
}

/// Cancels `consumer` and passes the deliveries it had already received to the pool. Fails when the stream
/// does not end in time or ends in an error: what it still holds was never registered, and the channel must
/// close for the broker to deliver it again.
pub(super) async fn handover(
    channel: &Channel,
    consumer: &mut Consumer,
    deliveries: &mpsc::Sender<Handed>,
    runtime: &TenantRuntime,
    acks: &AckCoordinator,
) -> Result<(), ConsumerError> {
    channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await?;
    // After cancel-ok the stream yields what it buffered, then ends.
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(delivery) = consumer.next().await {
            if !enqueue(delivery?, deliveries, runtime, acks).await {
                return Err(ConsumerError::CancelledByBroker);
            }
        }
        Ok(())
    })
    .await;
    match drained {
        Ok(drained) => drained,
        Err(_) => {
            tracing::warn!(tag = %consumer.tag(), "a cancelled consumer did not end in time; closing its channel");
            Err(ConsumerError::HandoverTimedOut)
        }
    }
}

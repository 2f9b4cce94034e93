//! One tenant's consumer: an AMQP consumer feeding a bounded channel, read by a worker pool whose size
//! follows the tenant's desired workers live.
//!
//! Prefetch is `workers × batch_size` per consumer. RabbitMQ applies `basic.qos` only to consumers started
//! after it (and quorum queues have no channel-wide prefetch), so a resize re-subscribes: cancel the
//! consumer, hand its already-delivered messages to the pool, set the new prefetch and consume again with
//! the next tag. Unacked deliveries stay valid across this because the channel stays open.

mod batch;
mod pool;
mod processing;
mod subscription;

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use lapin::options::ConfirmSelectOptions;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::{Broker, BrokerError, queues},
    config::QueueType,
    store::messages::MessageWriter,
};

use super::{
    acks::AckCoordinator,
    failure::RetryPolicy,
    manager::{ConsumerState, Control, TenantRuntime},
};

pub(crate) use self::processing::decode;
pub use self::processing::row_id;
use self::{
    pool::WorkerPool,
    subscription::{enqueue, handover, prefetch, subscribe},
};

/// Settings every consumer shares.
#[derive(Clone)]
pub struct ConsumerSettings {
    pub queue_type: QueueType,
    pub batch_size: u16,
    pub batch_wait: Duration,
    pub batch_max_wait: Duration,
    pub instance_id: String,
    pub retry: RetryPolicy,
    /// `max_payload_depth`: deeper bodies are dead-lettered without an insert.
    pub max_payload_depth: usize,
}

/// How a consumer ended when nothing went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerEnd {
    /// The tenant was deleted: every delivery handed to the pool is settled; its queues stay, for the tenant's
    /// retirement (see [`retirement`](super::retirement)).
    Deleted,
    /// The service is shutting down.
    ShutDown,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("the broker cancelled the consumer (queue deleted?)")]
    CancelledByBroker,
    #[error("the broker connection was lost")]
    ConnectionLost,
    /// Deliveries may be left in the old consumer's stream, unregistered: only closing the channel gets them
    /// redelivered.
    #[error("a cancelled consumer did not hand over its deliveries in time")]
    HandoverTimedOut,
}

impl From<lapin::Error> for ConsumerError {
    fn from(error: lapin::Error) -> Self {
        Self::Broker(error.into())
    }
}

/// Runs until stopped, shut down or failed. Every delivery handed to the pool is acked, rejected or
/// nacked before this returns; anything still unacked when the channel closes goes back to the queue.
///
/// When the tenant is deleted, the subscription stays until the pool has settled every delivery it holds
/// (what arrives meanwhile stays unacked, and returns to the queue with the channel): so while any instance
/// still writes for the tenant, the broker still counts its consumer, and the retirement waits for it.
pub async fn run(
    runtime: Arc<TenantRuntime>,
    mut control: mpsc::UnboundedReceiver<Control>,
    broker: Broker,
    writer: MessageWriter,
    settings: Arc<ConsumerSettings>,
    generation: u64,
    shutdown: CancellationToken,
) -> Result<ConsumerEnd, ConsumerError> {
    let tenant = runtime.tenant;
    // The connection can die without every consumer stream hearing of it: follow the supervisor's view too.
    let mut connection = broker.subscribe();
    let connected_on = connection.borrow_and_update().as_ref().map(|c| c.generation);
    let channel = broker.channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    queues::declare(&channel, tenant, settings.queue_type).await?;
    let mut subscription = 0;
    let mut consumer = subscribe(&channel, &runtime, &settings, generation, subscription).await?;
    runtime.set_state(ConsumerState::Running);

    // Never full in practice: the broker keeps at most one prefetch per consumer unacked, and at most two
    // consumers (old and new, during a resize) feed it.
    let capacity = 2 * prefetch(u16::MAX, settings.batch_size) as usize;
    let (deliveries, receiver) = mpsc::channel(capacity);
    let acks = Arc::new(AckCoordinator::new(channel.clone()));
    let mut pool =
        WorkerPool::new(receiver, runtime.clone(), writer, channel.clone(), acks.clone(), &settings, shutdown.clone());
    pool.fill();
    // Whether the current consumer has already been cancelled (and its stream drained, or given up on).
    let mut handed_over = false;

    let ended = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(ConsumerEnd::ShutDown),
            // The control channel cannot close while this consumer runs: its runtime, which it holds, keeps
            // the sender.
            Some(command) = control.recv() => match command {
                Control::Resize => {
                    pool.fill();
                    if let Err(error) = handover(&channel, &mut consumer, &deliveries, &runtime, &acks).await {
                        handed_over = true;
                        break Err(error);
                    }
                    subscription += 1;
                    consumer = match subscribe(&channel, &runtime, &settings, generation, subscription).await {
                        Ok(consumer) => consumer,
                        Err(error) => break Err(error),
                    };
                }
                Control::Delete => break Ok(ConsumerEnd::Deleted),
            },
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    if !enqueue(delivery, &deliveries, &runtime, &acks).await {
                        break Err(ConsumerError::CancelledByBroker);
                    }
                }
                Some(Err(error)) => break Err(error.into()),
                None => break Err(ConsumerError::CancelledByBroker),
            },
            Some(exited) = pool.tasks.join_next_with_id() => pool.exited(exited),
            changed = connection.changed() => {
                if changed.is_err() || connection.borrow_and_update().as_ref().map(|c| c.generation) != connected_on {
                    break Err(ConsumerError::ConnectionLost);
                }
            }
        }
    };

    runtime.set_state(ConsumerState::Stopping);
    let deleted = matches!(ended, Ok(ConsumerEnd::Deleted));
    if channel.status().connected() && !handed_over && !deleted {
        let _ = handover(&channel, &mut consumer, &deliveries, &runtime, &acks).await;
    }
    drop(deliveries);
    if channel.status().connected() {
        pool.drain().await;
    } else {
        // Settling on a dead channel can wait forever, and is pointless: the broker requeues whatever was
        // unacked. Give the workers a moment to finish their inserts (idempotent), then stop them.
        if tokio::time::timeout(DRAIN_AFTER_CONNECTION_LOSS, pool.drain()).await.is_err() {
            tracing::warn!(%tenant, "workers did not finish after the connection was lost; stopping them");
            pool.tasks.abort_all();
            pool.drain().await;
        }
    }
    if channel.status().connected() {
        let _ = channel.close(200, "consumer stopped".into()).await;
    }
    ended
}

/// How long workers may take to finish once the channel is gone.
const DRAIN_AFTER_CONNECTION_LOSS: Duration = Duration::from_secs(5);

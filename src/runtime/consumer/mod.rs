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
use lapin::Channel;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::{self, Broker, BrokerError, Publisher, Slot, queues},
    config::{Config, QueueType},
    domain::payload::PayloadLimits,
    store::messages::MessageWriter,
};

use super::{
    acks::AckCoordinator,
    failure::RetryPolicy,
    registry::ConsumerFailureReason,
    tenant_runtime::{ConsumerState, Control, TenantRuntime},
    write_share::WriteShare,
};

pub(crate) use self::processing::decode;
pub use self::processing::row_id;
pub use self::subscription::prefetch;
use self::{
    pool::{Handed, WorkerPanicked, WorkerPool},
    subscription::{enqueue, handover, subscribe},
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
    /// `max_payload_bytes` and `max_payload_depth`: larger or deeper bodies are dead-lettered without an
    /// insert.
    pub payload_limits: PayloadLimits,
    /// The write connections every tenant's workers share, fairly (`database.write_connections`).
    pub write_share: WriteShare,
    /// Where failed messages' copies go to the retry queue or the DLQ: not on the consumers' connections,
    /// which RabbitMQ would block from acking while a memory or disk alarm lasts.
    pub publisher: Arc<Publisher>,
}

impl ConsumerSettings {
    pub fn from_config(config: &Config, publisher: Arc<Publisher>) -> Self {
        Self {
            queue_type: config.rabbitmq.queue_type,
            batch_size: config.consumer.batch_size,
            batch_wait: config.consumer.batch_wait,
            batch_max_wait: config.consumer.batch_max_wait(),
            instance_id: config.consumer.instance_id(),
            retry: RetryPolicy {
                max_retries: config.max_retries,
                delay: config.consumer.retry_delay,
                max_delay: config.consumer.retry_max_delay,
            },
            payload_limits: config.payload_limits(),
            write_share: WriteShare::new(usize::try_from(config.write_connections()).unwrap_or(usize::MAX)),
            publisher,
        }
    }
}

/// How a consumer ended when nothing went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerEnd {
    /// The tenant was deleted: every delivery handed to the pool is settled; its queues stay, for the tenant's
    /// retirement (see [`retirement`](super::retirement)).
    Deleted,
    /// The service is shutting down.
    ShutDown,
    /// This instance could not reach the database for `consumer.database_outage_grace`: what the pool held
    /// went back to the queue, for instances that can write it; the reconciler starts it again once it can.
    Paused,
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
    #[error(transparent)]
    WorkerPanicked(#[from] WorkerPanicked),
}

impl ConsumerError {
    /// Why the consumer failed, as the tenant's runtime view shows it while the consumer waits to start again.
    pub fn reason(&self) -> ConsumerFailureReason {
        match self {
            Self::Broker(BrokerError::Amqp(error)) if broker::is_access_refused(error) => {
                ConsumerFailureReason::AccessRefused
            }
            Self::Broker(BrokerError::Amqp(error)) if broker::is_inequivalent_declaration(error) => {
                ConsumerFailureReason::QueueArgumentsDiffer
            }
            Self::Broker(BrokerError::Amqp(error)) if broker::is_connection_lost(error) => {
                ConsumerFailureReason::ConnectionLost
            }
            Self::Broker(_) => ConsumerFailureReason::BrokerError,
            Self::CancelledByBroker => ConsumerFailureReason::SubscriptionCancelled,
            Self::ConnectionLost => ConsumerFailureReason::ConnectionLost,
            Self::HandoverTimedOut => ConsumerFailureReason::HandoverTimedOut,
            Self::WorkerPanicked(_) => ConsumerFailureReason::Panicked,
        }
    }
}

impl From<lapin::Error> for ConsumerError {
    fn from(error: lapin::Error) -> Self {
        Self::Broker(error.into())
    }
}

/// Runs until stopped, shut down or failed. Every delivery handed to the pool is acked, rejected or
/// nacked before this returns; anything still unacked when the channel closes goes back to the queue.
///
/// When the tenant is deleted or the service shuts down, the subscription stays until the pool has settled
/// every delivery it holds (what arrives meanwhile stays unacked, and returns to the queue with the channel):
/// so while any instance still writes for the tenant, the broker still counts its consumer, and a retirement
/// waits for it.
pub async fn run(
    runtime: Arc<TenantRuntime>,
    mut control: mpsc::UnboundedReceiver<Control>,
    slot: Slot,
    writer: MessageWriter,
    settings: Arc<ConsumerSettings>,
    generation: u64,
    shutdown: CancellationToken,
) -> Result<ConsumerEnd, ConsumerError> {
    let broker = slot.broker();
    // The connection can die without every consumer stream hearing of it: follow the supervisor's view too.
    // A connection just opened for this slot (or reconnecting) is waited for rather than failed on.
    let mut connection = broker.subscribe();
    let connected_on = loop {
        tokio::select! {
            // A consumer started as the service began to shut down takes no deliveries.
            biased;
            _ = shutdown.cancelled() => return Ok(ConsumerEnd::ShutDown),
            // Deleted before it could start: nothing is declared or held, and the tenant's queues must not come
            // back (another instance may have retired it meanwhile). A resize is read at the start.
            Some(command) = control.recv() => match command {
                Control::Delete => return Ok(ConsumerEnd::Deleted),
                Control::Pause => return Ok(ConsumerEnd::Paused),
                Control::Resize => {}
            },
            connected = connection.wait_for(Option::is_some) => {
                break connected.map_err(|_| ConsumerError::ConnectionLost)?.as_ref().map(|c| c.generation);
            }
        }
    };
    // The rarely taken steps are boxed, so that an idle consumer's task stays small (RSS per idle tenant).
    let mut running = Box::pin(Running::start(broker, runtime, writer, settings, generation, &shutdown)).await?;
    let ended = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(ConsumerEnd::ShutDown),
            // The control channel cannot close while this consumer runs: its runtime, which it holds, keeps
            // the sender.
            Some(command) = control.recv() => match command {
                Control::Resize => if let Err(error) = Box::pin(running.resize()).await {
                    break Err(error);
                },
                Control::Delete => break Ok(ConsumerEnd::Deleted),
                Control::Pause => break Ok(ConsumerEnd::Paused),
            },
            delivery = running.consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    if !enqueue(delivery, &running.deliveries, &running.runtime, &running.acks).await {
                        break Err(ConsumerError::CancelledByBroker);
                    }
                    running.pool.offer(running.queued());
                }
                Some(Err(error)) => break Err(error.into()),
                None => {
                    // The broker ended the subscription (its queue was deleted): nothing is left to hand over,
                    // and a cancel would wait out the handover's timeout on a stream that has already ended.
                    running.handed_over = true;
                    break Err(ConsumerError::CancelledByBroker);
                }
            },
            Some(exited) = running.pool.tasks.join_next_with_id() => {
                let queued = running.queued();
                if let Err(panicked) = running.pool.exited(exited, queued) {
                    break Err(panicked.into());
                }
            }
            changed = connection.changed() => {
                if changed.is_err() || connection.borrow_and_update().as_ref().map(|c| c.generation) != connected_on {
                    break Err(ConsumerError::ConnectionLost);
                }
            }
        }
    };
    Box::pin(running.stop(&ended)).await;
    ended
}

/// A subscribed consumer and its worker pool, on one confirm channel.
struct Running {
    runtime: Arc<TenantRuntime>,
    settings: Arc<ConsumerSettings>,
    generation: u64,
    channel: Channel,
    consumer: lapin::Consumer,
    /// Numbers the subscriptions of this consumer (each resize subscribes again), for unique tags.
    subscription: u32,
    deliveries: mpsc::Sender<Handed>,
    acks: Arc<AckCoordinator>,
    pool: WorkerPool,
    /// Cancelled when this consumer stops: workers then hand back what they hold instead of keeping it.
    stopping: CancellationToken,
    /// Whether the current subscription has already been cancelled (and its stream drained, or given up on).
    handed_over: bool,
}

impl Running {
    /// Declares the tenant's queues, subscribes and sets up the pool (its workers start with the first
    /// deliveries).
    async fn start(
        broker: &Broker,
        runtime: Arc<TenantRuntime>,
        writer: MessageWriter,
        settings: Arc<ConsumerSettings>,
        generation: u64,
        shutdown: &CancellationToken,
    ) -> Result<Self, ConsumerError> {
        queues::declare_apart(broker, runtime.tenant, settings.queue_type).await?;
        let channel = broker.channel().await?;
        let consumer = subscribe(&channel, &runtime, &settings, generation, 0).await?;
        runtime.set_state(ConsumerState::Running);
        // Never full in practice: the broker keeps at most one prefetch per consumer unacked, and at most two
        // consumers (old and new, during a resize) feed it.
        let capacity = 2 * prefetch(u16::MAX, settings.batch_size) as usize;
        let (deliveries, receiver) = mpsc::channel(capacity);
        let acks = Arc::new(AckCoordinator::new(channel.clone()));
        let stopping = shutdown.child_token();
        let pool = WorkerPool::new(
            receiver,
            runtime.clone(),
            writer,
            channel.clone(),
            acks.clone(),
            &settings,
            stopping.clone(),
        );
        pool.resized();
        Ok(Self {
            runtime,
            settings,
            generation,
            channel,
            consumer,
            subscription: 0,
            deliveries,
            acks,
            pool,
            stopping,
            handed_over: false,
        })
    }

    /// Deliveries handed to the pool that no worker has taken yet.
    fn queued(&self) -> usize {
        self.deliveries.max_capacity() - self.deliveries.capacity()
    }

    /// Follows a new pool size: resizes the pool, then subscribes again with the matching prefetch.
    async fn resize(&mut self) -> Result<(), ConsumerError> {
        self.pool.resized();
        let handed_over =
            handover(&self.channel, &mut self.consumer, &self.deliveries, &self.runtime, &self.acks).await;
        self.pool.offer(self.queued());
        // Handed over or given up on: either way nothing more is to be taken from this subscription.
        self.handed_over = true;
        handed_over?;
        self.subscription += 1;
        self.consumer =
            subscribe(&self.channel, &self.runtime, &self.settings, self.generation, self.subscription).await?;
        self.handed_over = false;
        Ok(())
    }

    /// Stops taking deliveries, lets the workers settle what they hold, and closes the channel. Deleted or shut
    /// down, the consumer keeps its subscription until then (see [`run`]).
    async fn stop(mut self, ended: &Result<ConsumerEnd, ConsumerError>) {
        // A shutdown too: the tenant may be deleted meanwhile, and retired by another instance as soon as the
        // broker counts no consumer, while this one still writes (and, for what it cannot write, would send
        // it back to a queue that is gone). What arrives meanwhile returns to the queue with the channel.
        let keeps_subscription = matches!(ended, Ok(ConsumerEnd::Deleted | ConsumerEnd::ShutDown));
        let database_lost = matches!(ended, Ok(ConsumerEnd::Paused));
        self.runtime.set_state(ConsumerState::Stopping);
        self.stopping.cancel();
        // Paused, what the subscription still holds goes back with the channel: workers could not write it.
        if self.channel.status().connected() && !self.handed_over && !keeps_subscription && !database_lost {
            let _ = handover(&self.channel, &mut self.consumer, &self.deliveries, &self.runtime, &self.acks).await;
        }
        if self.channel.status().connected() && !database_lost {
            // Workers for what the channel still holds: they write it and ack it.
            self.pool.offer(self.queued());
            drop(self.deliveries);
            self.pool.drain().await;
        } else {
            // Settling on a dead channel can wait forever, and is pointless: the broker requeues whatever was
            // unacked; so can a write to a database that stalls (until the kernel gives up on the connection),
            // or that waits for a lock. Give the running workers a moment to finish their inserts (idempotent),
            // then stop them; closing the channel hands back what they held, and what no worker took. A worker
            // started for that now could only wait as long, and would keep the consumer from its restart.
            drop(self.deliveries);
            if tokio::time::timeout(DRAIN_AFTER_CONNECTION_LOSS, self.pool.join()).await.is_err() {
                tracing::warn!(tenant = %self.runtime.tenant, "workers did not finish in time; stopping them");
                self.pool.tasks.abort_all();
                self.pool.join().await;
            }
        }
        // Copies of failed messages still under way get as long as workers on a lost connection; then what
        // they held goes back to the queue with the channel.
        let mover = self.pool.context.moving.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take_mover();
        if let Some(mut mover) = mover
            && tokio::time::timeout(DRAIN_AFTER_CONNECTION_LOSS, &mut mover).await.is_err()
        {
            tracing::warn!(tenant = %self.runtime.tenant, "failed messages could not be moved in time; they go back to the queue");
            mover.abort();
        }
        broker::close_channel(&self.channel, "consumer stopped").await;
    }
}

/// How long workers may take to finish once the channel is gone.
const DRAIN_AFTER_CONNECTION_LOSS: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};

    use crate::{
        broker::ConsumerConnections,
        domain::tenant::{TenantId, Workers},
        metrics::Metrics,
        runtime::tenant_stats::TenantStats,
    };

    #[test]
    fn a_failure_from_the_broker_is_named_by_its_code() {
        let refused = |kind, text: &str| {
            let error = lapin::protocol::AMQPError::new(AMQPErrorKind::Soft(kind), text.into());
            ConsumerError::from(lapin::Error::from(lapin::ErrorKind::ProtocolError(error))).reason()
        };
        let exclusive = "ACCESS_REFUSED - queue 'tenant_x_queue' in vhost '/' in exclusive use";
        assert_eq!(refused(AMQPSoftError::ACCESSREFUSED, exclusive), ConsumerFailureReason::AccessRefused);
        let differ = "PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-exchange' for queue 'tenant_x_queue'";
        assert_eq!(refused(AMQPSoftError::PRECONDITIONFAILED, differ), ConsumerFailureReason::QueueArgumentsDiffer);
        let ack_timeout = "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out";
        assert_eq!(refused(AMQPSoftError::PRECONDITIONFAILED, ack_timeout), ConsumerFailureReason::BrokerError);
        assert_eq!(refused(AMQPSoftError::NOTFOUND, "NOT_FOUND - no queue"), ConsumerFailureReason::BrokerError);
        let forced = lapin::protocol::AMQPError::new(
            AMQPErrorKind::Hard(lapin::protocol::AMQPHardError::CONNECTIONFORCED),
            "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'".into(),
        );
        let closed = ConsumerError::from(lapin::Error::from(lapin::ErrorKind::ProtocolError(forced)));
        assert_eq!(closed.reason(), ConsumerFailureReason::ConnectionLost);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let reset = ConsumerError::from(lapin::Error::from(lapin::ErrorKind::IOError(reset.into())));
        assert_eq!(reset.reason(), ConsumerFailureReason::ConnectionLost);
        assert_eq!(ConsumerError::CancelledByBroker.reason(), ConsumerFailureReason::SubscriptionCancelled);
        assert_eq!(ConsumerError::Broker(BrokerError::Unavailable).reason(), ConsumerFailureReason::BrokerError);
    }

    /// Its connection never comes (nothing listens on port 1): the delete must still end it, at once.
    #[tokio::test]
    async fn a_consumer_waiting_for_its_connection_ends_when_its_tenant_is_deleted() {
        let stop = CancellationToken::new();
        let nowhere = "amqp://127.0.0.1:1/%2f".to_owned();
        let reference = crate::broker::Broker::new(nowhere.clone(), "test".into());
        let connections = ConsumerConnections::new(nowhere, "test".into(), 8, reference, stop.clone());
        let tenant = TenantId::from_uuid(uuid::Uuid::now_v7());
        let workers = Workers::new(std::num::NonZeroU16::MIN);
        let (control, commands) = mpsc::unbounded_channel();
        let runtime =
            Arc::new(TenantRuntime::new(tenant, workers, control.clone(), Arc::new(TenantStats::new(workers))));
        let pool = sea_orm::sqlx::PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").expect("a lazy pool");
        let writer = MessageWriter::new(pool, tenant, Metrics::new().expect("metrics"));
        let nowhere = Broker::new("amqp://127.0.0.1:1/%2f".into(), "test".into());
        let publisher = Arc::new(Publisher::new(nowhere, &crate::config::RabbitMqConfig::default()));
        let settings = Arc::new(ConsumerSettings::from_config(&Config::default(), publisher));
        let slot = connections.take_slot(tenant);
        let consumer = tokio::spawn(run(runtime, commands, slot, writer, settings, 1, stop.clone()));
        control.send(Control::Resize).expect("sent");
        control.send(Control::Delete).expect("sent");
        let ended = tokio::time::timeout(Duration::from_secs(5), consumer).await;
        stop.cancel();
        let ended = ended.expect("the consumer ended on the delete").expect("the consumer task");
        assert!(matches!(ended, Ok(ConsumerEnd::Deleted)), "{ended:?}");
    }
}

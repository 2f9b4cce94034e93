//! One tenant's consumer: an AMQP consumer feeding a bounded channel, read by a worker pool whose size
//! follows the tenant's desired workers live.
//!
//! Prefetch is `workers × batch_size` per consumer. RabbitMQ applies `basic.qos` only to consumers started
//! after it (and quorum queues have no channel-wide prefetch), so a resize re-subscribes: cancel the
//! consumer, hand its already-delivered messages to the pool, set the new prefetch and consume again with
//! the next tag. Unacked deliveries stay valid across this because the channel stays open.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use futures_util::StreamExt;
use lapin::{
    Channel, Consumer,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
    },
    types::FieldTable,
};
use tokio::{
    sync::{Mutex, mpsc, watch},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    config::QueueType,
    domain::tenant::{TenantId, Workers},
    store::messages::{self, MessageWriter, NewMessage},
};

use super::{
    broker::{self, Broker, BrokerError, TenantQueues},
    manager::{ConsumerState, Control, FailureReason, TenantRuntime},
};

/// Settings every consumer shares.
#[derive(Clone)]
pub struct ConsumerSettings {
    pub queue_type: QueueType,
    pub batch_size: u16,
    pub batch_wait: Duration,
    pub instance_id: String,
}

/// How a consumer ended when nothing went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerEnd {
    /// Its control channel closed (the manager let go of it); its queues stay.
    Stopped,
    /// The tenant was deleted; its queues were deleted.
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
}

impl From<lapin::Error> for ConsumerError {
    fn from(error: lapin::Error) -> Self {
        Self::Broker(error.into())
    }
}

/// Runs until stopped, shut down or failed. Every delivery handed to the pool is acked, rejected or
/// nacked before this returns; anything still unacked when the channel closes goes back to the queue.
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
    let channel = broker.channel().await?;
    broker::declare(&channel, tenant, settings.queue_type).await?;
    let mut subscription = 0;
    let mut consumer = subscribe(&channel, &runtime, &settings, generation, subscription).await?;
    runtime.set_state(ConsumerState::Running);

    // Never full in practice: the broker keeps at most one prefetch per consumer unacked, and at most two
    // consumers (old and new, during a resize) feed it.
    let capacity = 2 * prefetch(u16::MAX, settings.batch_size) as usize;
    let (deliveries, receiver) = mpsc::channel(capacity);
    let mut pool = WorkerPool::new(receiver, runtime.clone(), writer, &settings, shutdown.clone());
    pool.fill();

    let ended = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(ConsumerEnd::ShutDown),
            command = control.recv() => match command {
                Some(Control::Resize(_)) => {
                    pool.fill();
                    if let Err(error) = handover(&channel, &mut consumer, &deliveries, &runtime).await {
                        break Err(error);
                    }
                    subscription += 1;
                    consumer = match subscribe(&channel, &runtime, &settings, generation, subscription).await {
                        Ok(consumer) => consumer,
                        Err(error) => break Err(error),
                    };
                }
                Some(Control::Delete) => break Ok(ConsumerEnd::Deleted),
                None => break Ok(ConsumerEnd::Stopped),
            },
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    runtime.delivery_received();
                    if deliveries.send(delivery).await.is_err() {
                        break Err(ConsumerError::CancelledByBroker);
                    }
                }
                Some(Err(error)) => break Err(error.into()),
                None => break Err(ConsumerError::CancelledByBroker),
            },
            Some(exited) = pool.tasks.join_next_with_id() => pool.exited(exited),
        }
    };

    runtime.set_state(ConsumerState::Stopping);
    if channel.status().connected() {
        let _ = handover(&channel, &mut consumer, &deliveries, &runtime).await;
    }
    drop(deliveries);
    pool.drain().await;
    if matches!(ended, Ok(ConsumerEnd::Deleted)) {
        broker::delete(&channel, tenant).await?;
    }
    if channel.status().connected() {
        let _ = channel.close(200, "consumer stopped".into()).await;
    }
    ended
}

fn prefetch(workers: u16, batch_size: u16) -> u16 {
    workers.saturating_mul(batch_size).max(1)
}

async fn subscribe(
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

/// Cancels `consumer` and passes the deliveries it had already received to the pool.
async fn handover(
    channel: &Channel,
    consumer: &mut Consumer,
    deliveries: &mpsc::Sender<Delivery>,
    runtime: &TenantRuntime,
) -> Result<(), ConsumerError> {
    channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await?;
    // After cancel-ok the stream yields what it buffered, then ends. Anything not drained in time stays
    // unacked and returns to the queue when the channel closes.
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(delivery)) = consumer.next().await {
            runtime.delivery_received();
            if deliveries.send(delivery).await.is_err() {
                break;
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(tag = %consumer.tag(), "a cancelled consumer did not end in time");
    }
    Ok(())
}

/// What every worker of one tenant shares.
struct WorkerContext {
    runtime: Arc<TenantRuntime>,
    writer: MessageWriter,
    batch_size: usize,
    batch_wait: Duration,
    shutdown: CancellationToken,
}

struct WorkerPool {
    receiver: Arc<Mutex<mpsc::Receiver<Delivery>>>,
    context: Arc<WorkerContext>,
    tasks: JoinSet<u16>,
    /// Indices of live workers; worker `i` retires once the desired size is `i` or less.
    live: BTreeSet<u16>,
    ids: HashMap<tokio::task::Id, u16>,
}

impl WorkerPool {
    fn new(
        receiver: mpsc::Receiver<Delivery>,
        runtime: Arc<TenantRuntime>,
        writer: MessageWriter,
        settings: &ConsumerSettings,
        shutdown: CancellationToken,
    ) -> Self {
        let context = Arc::new(WorkerContext {
            runtime,
            writer,
            batch_size: settings.batch_size.into(),
            batch_wait: settings.batch_wait,
            shutdown,
        });
        Self {
            receiver: Arc::new(Mutex::new(receiver)),
            context,
            tasks: JoinSet::new(),
            live: BTreeSet::new(),
            ids: HashMap::new(),
        }
    }

    /// Spawns workers up to the desired size; surplus workers retire by themselves.
    fn fill(&mut self) {
        for index in 0..self.context.runtime.desired().get() {
            if self.live.insert(index) {
                let handle = self.tasks.spawn(worker(index, self.context.clone(), self.receiver.clone()));
                self.ids.insert(handle.id(), index);
            }
        }
        self.publish_running();
    }

    /// Replaces a worker that ended while still wanted (it panicked); retired ones are not replaced.
    fn exited(&mut self, exited: Result<(tokio::task::Id, u16), tokio::task::JoinError>) {
        self.forget(exited);
        self.fill();
    }

    fn forget(&mut self, exited: Result<(tokio::task::Id, u16), tokio::task::JoinError>) {
        let id = match exited {
            Ok((id, _)) => id,
            Err(error) => {
                tracing::error!(tenant = %self.context.runtime.tenant, %error, "a worker panicked");
                error.id()
            }
        };
        if let Some(index) = self.ids.remove(&id) {
            self.live.remove(&index);
        }
        self.publish_running();
    }

    fn publish_running(&self) {
        self.context.runtime.set_running(u16::try_from(self.live.len()).unwrap_or(u16::MAX));
    }

    /// Waits for every worker to finish what the channel still holds (the sender is dropped first).
    async fn drain(&mut self) {
        while let Some(exited) = self.tasks.join_next_with_id().await {
            self.forget(exited);
        }
    }
}

async fn worker(index: u16, context: Arc<WorkerContext>, receiver: Arc<Mutex<mpsc::Receiver<Delivery>>>) -> u16 {
    let mut desired = context.runtime.watch_desired();
    loop {
        if index >= desired.borrow_and_update().get() {
            break;
        }
        match next_batch(&receiver, &mut desired, context.batch_size, context.batch_wait).await {
            Next::Batch(batch) => {
                let _busy = context.runtime.busy_guard();
                process(batch, &context).await;
            }
            Next::Resized => {}
            Next::Closed => break,
        }
    }
    index
}

enum Next {
    Batch(Vec<Delivery>),
    /// The pool size changed while waiting for work: check whether to retire.
    Resized,
    /// The consumer stopped and the channel is drained.
    Closed,
}

/// Takes up to `max` deliveries: waits for the first, then for more until `wait` has passed. A resize can
/// interrupt only the wait for the lock or for the first delivery, never a batch being gathered, so no
/// delivery is ever dropped unsettled.
async fn next_batch(
    receiver: &Mutex<mpsc::Receiver<Delivery>>,
    desired: &mut watch::Receiver<Workers>,
    max: usize,
    wait: Duration,
) -> Next {
    let mut receiver = tokio::select! {
        receiver = receiver.lock() => receiver,
        _ = desired.changed() => return Next::Resized,
    };
    let first = tokio::select! {
        first = receiver.recv() => first,
        _ = desired.changed() => return Next::Resized,
    };
    let Some(first) = first else { return Next::Closed };
    let mut batch = Vec::with_capacity(max);
    batch.push(first);
    let deadline = tokio::time::Instant::now() + wait;
    while batch.len() < max {
        match receiver.try_recv() {
            Ok(delivery) => batch.push(delivery),
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(delivery)) => batch.push(delivery),
                Ok(None) | Err(_) => break,
            },
        }
    }
    Next::Batch(batch)
}

/// Persists a batch and settles every delivery in it: ack after commit, reject (to the dead-letter queue)
/// what can never be stored, nack with requeue after a pause what failed for a passing reason.
#[tracing::instrument(name = "handle", skip_all, fields(tenant = %context.runtime.tenant, messages = batch.len()))]
async fn process(batch: Vec<Delivery>, context: &WorkerContext) {
    let tenant = context.runtime.tenant;
    let mut rows = Vec::with_capacity(batch.len());
    let mut accepted = Vec::with_capacity(batch.len());
    for delivery in batch {
        match decode(&delivery) {
            Ok(row) => {
                rows.push(row);
                accepted.push(delivery);
            }
            Err(reason) => {
                tracing::warn!(%tenant, reason, "rejecting a message that is not JSON");
                settle(&delivery, Outcome::Reject, context).await;
            }
        }
    }
    if rows.is_empty() {
        return;
    }
    match context.writer.insert(&rows).await {
        Ok(_) => {
            for delivery in &accepted {
                settle(delivery, Outcome::Ack, context).await;
            }
        }
        Err(error) if messages::is_permanent(&error) && rows.len() > 1 => {
            // One bad row fails the whole statement: find it by writing one at a time.
            for (row, delivery) in rows.iter().zip(&accepted) {
                let outcome = match context.writer.insert(std::slice::from_ref(row)).await {
                    Ok(_) => Outcome::Ack,
                    Err(error) => failure_outcome(tenant, &error),
                };
                settle_after_pause(delivery, outcome, context).await;
            }
        }
        Err(error) => {
            let outcome = failure_outcome(tenant, &error);
            for delivery in &accepted {
                settle_after_pause(delivery, outcome, context).await;
            }
        }
    }
}

fn failure_outcome(tenant: TenantId, error: &sea_orm::sqlx::Error) -> Outcome {
    if messages::is_permanent(error) {
        tracing::warn!(%tenant, %error, "rejecting a message the database refuses");
        Outcome::Reject
    } else {
        tracing::warn!(%tenant, %error, "cannot persist; the message will be redelivered");
        Outcome::Requeue
    }
}

/// The id is the AMQP `message_id` when it is a UUID, otherwise a new UUIDv7; the body must be JSON.
fn decode(delivery: &Delivery) -> Result<NewMessage, &'static str> {
    let id = delivery
        .properties
        .message_id()
        .as_ref()
        .and_then(|id| Uuid::try_parse(id.as_str()).ok())
        .unwrap_or_else(Uuid::now_v7);
    let text = std::str::from_utf8(&delivery.data).map_err(|_| "body is not UTF-8")?;
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|_| "body is not JSON")?;
    Ok(NewMessage { id, payload: text.to_owned() })
}

/// How long a worker waits before requeueing what failed for a passing reason (database down).
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ack,
    Reject,
    Requeue,
}

async fn settle_after_pause(delivery: &Delivery, outcome: Outcome, context: &WorkerContext) {
    if outcome == Outcome::Requeue {
        // Do not spin on a database that is down: pause before the message comes back.
        tokio::select! {
            _ = context.shutdown.cancelled() => {}
            _ = tokio::time::sleep(REQUEUE_PAUSE) => {}
        }
    }
    settle(delivery, outcome, context).await;
}

/// Acks, rejects or requeues, and counts what was persisted or dead-lettered.
async fn settle(delivery: &Delivery, outcome: Outcome, context: &WorkerContext) {
    let stats = context.runtime.stats();
    match outcome {
        Outcome::Ack => stats.persisted(1),
        Outcome::Reject => {
            stats.failed(FailureReason::Permanent);
            stats.dead_lettered();
        }
        Outcome::Requeue => stats.failed(FailureReason::Transient),
    }
    let settled = match outcome {
        Outcome::Ack => delivery.acker.ack(BasicAckOptions::default()).await,
        Outcome::Reject => delivery.acker.reject(BasicRejectOptions { requeue: false }).await,
        Outcome::Requeue => delivery.acker.nack(BasicNackOptions { requeue: true, multiple: false }).await,
    };
    context.runtime.delivery_settled();
    if let Err(error) = settled {
        // The channel is gone: the broker redelivers, and the insert is idempotent.
        tracing::debug!(%error, ?outcome, "could not settle a delivery");
    }
}

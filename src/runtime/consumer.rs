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
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
        ConfirmSelectOptions,
    },
    types::FieldTable,
};
use opentelemetry::trace::TraceContextExt;
use tokio::{
    sync::{Mutex, mpsc, watch},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::{
    backoff::Backoff,
    config::QueueType,
    domain::{
        payload,
        tenant::{TenantId, Workers},
    },
    metrics::FailureReason,
    store::messages::{MessageWriter, NewMessage},
    telemetry,
};

use super::{
    acks::AckCoordinator,
    broker::{self, Broker, BrokerError, TenantQueues},
    failure::{self, Disposition, Failure, FailureRecord, RetryPolicy, WriteFailure},
    manager::{ConsumerState, Control, TenantRuntime},
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
    broker::declare(&channel, tenant, settings.queue_type).await?;
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

/// Passes a delivery to the pool, registered with the ack coordinator first. False when the pool is gone.
async fn enqueue(
    delivery: Delivery,
    deliveries: &mpsc::Sender<Delivery>,
    runtime: &TenantRuntime,
    acks: &AckCoordinator,
) -> bool {
    runtime.delivery_received();
    acks.received(delivery.delivery_tag);
    deliveries.send(delivery).await.is_ok()
}

/// Cancels `consumer` and passes the deliveries it had already received to the pool. Fails when the stream
/// does not end in time or ends in an error: what it still holds was never registered, and the channel must
/// close for the broker to deliver it again.
async fn handover(
    channel: &Channel,
    consumer: &mut Consumer,
    deliveries: &mpsc::Sender<Delivery>,
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

/// What every worker of one tenant shares.
struct WorkerContext {
    runtime: Arc<TenantRuntime>,
    writer: MessageWriter,
    /// The consumer's channel, in confirm mode: failed messages are republished on it.
    channel: Channel,
    acks: Arc<AckCoordinator>,
    queues: TenantQueues,
    retry: RetryPolicy,
    max_payload_depth: usize,
    batch_size: usize,
    linger: Linger,
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
        channel: Channel,
        acks: Arc<AckCoordinator>,
        settings: &ConsumerSettings,
        shutdown: CancellationToken,
    ) -> Self {
        let context = Arc::new(WorkerContext {
            queues: TenantQueues::of(runtime.tenant),
            runtime,
            writer,
            channel,
            acks,
            retry: settings.retry,
            max_payload_depth: settings.max_payload_depth,
            batch_size: settings.batch_size.into(),
            linger: Linger { wait: settings.batch_wait, max_wait: settings.batch_max_wait },
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
    let mut unavailable = Backoff::new();
    loop {
        if index >= desired.borrow_and_update().get() {
            break;
        }
        match next_batch(&receiver, &mut desired, context.batch_size, context.linger).await {
            Next::Batch(batch) => {
                let held_back = {
                    let _busy = context.runtime.busy_guard();
                    process(batch, &context).await
                };
                if held_back.is_empty() {
                    unavailable.reset();
                    continue;
                }
                // Do not spin on a database that is down: pause, longer each time, before they come back.
                tokio::select! {
                    _ = context.shutdown.cancelled() => {}
                    _ = tokio::time::sleep(unavailable.next_delay()) => {}
                }
                for delivery in &held_back {
                    settle(delivery, Outcome::Requeue, &context).await;
                }
            }
            Next::Resized => {}
            Next::Closed => break,
        }
    }
    index
}

#[derive(Debug, PartialEq)]
enum Next<T> {
    Batch(Vec<T>),
    /// The pool size changed while waiting for work: check whether to retire.
    Resized,
    /// The consumer stopped and the channel is drained.
    Closed,
}

/// How long a worker holds a batch open for more deliveries.
#[derive(Debug, Clone, Copy)]
struct Linger {
    /// Waited after each look at the channel that found it empty.
    wait: Duration,
    /// Longest a batch stays open, from its first delivery.
    max_wait: Duration,
}

/// Takes up to `max` deliveries: waits for the first, then, while the batch is not full, lets more arrive for
/// `linger.wait` and takes them, again as long as each wait brought more, until `linger.max_wait`. A lone
/// message waits `wait` (a zero `wait` takes what is there and goes); under load batches fill up, which is
/// what makes a write cheap per message. A resize
/// can interrupt only the wait for the lock or for the first delivery, never a batch being gathered, so no
/// delivery is ever dropped unsettled.
async fn next_batch<T>(
    receiver: &Mutex<mpsc::Receiver<T>>,
    desired: &mut watch::Receiver<Workers>,
    max: usize,
    linger: Linger,
) -> Next<T> {
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
    // Sleeping and then taking what arrived wakes this task once per wait instead of once per delivery.
    let closes = tokio::time::Instant::now() + linger.max_wait;
    let mut full = take_ready(&mut receiver, &mut batch, max);
    while !full && !linger.wait.is_zero() {
        let before = batch.len();
        let now = tokio::time::Instant::now();
        if now >= closes {
            break;
        }
        tokio::time::sleep_until((now + linger.wait).min(closes)).await;
        full = take_ready(&mut receiver, &mut batch, max);
        if batch.len() == before {
            break;
        }
    }
    Next::Batch(batch)
}

/// Moves deliveries that are already in the channel into `batch`, up to `max`. True when the batch is full
/// or no more can come (the consumer stopped).
fn take_ready<T>(receiver: &mut mpsc::Receiver<T>, batch: &mut Vec<T>, max: usize) -> bool {
    while batch.len() < max {
        match receiver.try_recv() {
            Ok(delivery) => batch.push(delivery),
            Err(mpsc::error::TryRecvError::Empty) => return false,
            Err(mpsc::error::TryRecvError::Disconnected) => return true,
        }
    }
    true
}

/// Persists a batch and settles what it can: ack after commit; a message that failed goes to the retry
/// queue or the DLQ (see [`failure`](super::failure)). Returns what must go back to the queue because the
/// database is unavailable (the caller pauses first, so a database that is down is not hammered).
///
/// The `handle` span links to the trace context each message carries (its `publish` span): a batch holds
/// messages of many traces, and a span has one parent, so links, not parenthood, join the traces.
#[tracing::instrument(name = "handle", skip_all, fields(tenant = %context.runtime.tenant, messages = batch.len()))]
async fn process(batch: Vec<Delivery>, context: &WorkerContext) -> Vec<Delivery> {
    let span = tracing::Span::current();
    for delivery in &batch {
        let published = telemetry::extract(delivery.properties.headers().as_ref());
        // add_link ignores an invalid (absent) context.
        span.add_link(published.span().span_context().clone());
    }
    let mut rows = Vec::with_capacity(batch.len());
    let mut accepted = Vec::with_capacity(batch.len());
    let mut failed = Vec::new();
    let tenant = context.runtime.tenant;
    for delivery in batch {
        match decode(tenant, &delivery, context.max_payload_depth) {
            Ok(row) => {
                rows.push(row);
                accepted.push(delivery);
            }
            Err(reason) => failed.push((row_id(tenant, &delivery), delivery, Failure::Permanent(reason))),
        }
    }
    let mut held_back = Vec::new();
    // A row the database refuses fails alone; the rest of the batch commits.
    let refused = context.writer.insert_isolating(&rows).await;
    let mut refusal_of = vec![None; rows.len()];
    for (index, (part, _)) in refused.iter().enumerate() {
        refusal_of[part.clone()].fill(Some(index));
    }
    let mut committed = Vec::with_capacity(rows.len());
    for ((row, delivery), refusal) in rows.into_iter().zip(accepted).zip(refusal_of) {
        let Some(error) = refusal.map(|index| &refused[index].1) else {
            committed.push(delivery);
            continue;
        };
        match failure::classify(error) {
            WriteFailure::Unavailable => held_back.push(delivery),
            kind => failed.push((row.id, delivery, write_failure(kind, error))),
        }
    }
    if !committed.is_empty() {
        acknowledge_committed(&committed, context).await;
    }
    if !held_back.is_empty() {
        tracing::warn!(%tenant, "the database is unavailable");
    }
    let stats = context.runtime.stats();
    for _ in &held_back {
        stats.failed(FailureReason::Transient);
    }
    for (id, delivery, failure) in failed {
        stats.failed(match failure {
            Failure::Transient(_) => FailureReason::Transient,
            Failure::Permanent(_) => FailureReason::Permanent,
        });
        if let Err(delivery) = retry_or_dead_letter(delivery, id, &failure, context).await {
            held_back.push(*delivery);
        }
    }
    held_back
}

fn write_failure(kind: WriteFailure, error: &sea_orm::sqlx::Error) -> Failure {
    let reason = format!("the database refused the message: {error}");
    match kind {
        WriteFailure::Refused | WriteFailure::Permanent => Failure::Permanent(reason),
        WriteFailure::Unavailable | WriteFailure::Transient => Failure::Transient(reason),
    }
}

/// Moves a failed message to the retry queue or the DLQ, by the retry policy and the attempts it carries.
/// Gives the delivery back when the copy could not be published (it must then be requeued).
async fn retry_or_dead_letter(
    delivery: Delivery,
    id: Uuid,
    failure: &Failure,
    context: &WorkerContext,
) -> Result<(), Box<Delivery>> {
    let tenant = context.runtime.tenant;
    let previous = FailureRecord::read(delivery.properties.headers().as_ref());
    let record = FailureRecord::after(previous, failure.reason(), chrono::Utc::now());
    let disposition = context.retry.decide(failure, &record);
    let queue = match disposition {
        Disposition::Retry { .. } => &context.queues.retry,
        Disposition::DeadLetter => &context.queues.dead_letters,
    };
    if let Err(error) = failure::republish(&context.channel, queue, &delivery, id, &record, disposition).await {
        tracing::warn!(%tenant, %error, "cannot move a failed message; it goes back to the queue");
        return Err(Box::new(delivery));
    }
    match disposition {
        Disposition::Retry { after } => {
            context.runtime.stats().retried();
            tracing::info!(%tenant, %id, attempts = record.attempts, ?after, reason = record.reason, "retrying later");
        }
        Disposition::DeadLetter => {
            tracing::warn!(%tenant, %id, attempts = record.attempts, reason = record.reason, "dead-lettered");
            context.runtime.stats().dead_lettered();
        }
    }
    settle(&delivery, Outcome::Moved, context).await;
    Ok(())
}

/// The namespace of the UUIDv5 row ids of messages whose `message_id` is not a UUID.
const MESSAGE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1d_0c2e_9a57_4b1e_8d3c_5e2a_71f4_c0b9);

/// A delivery's row id, the same for every delivery of the same message, so a redelivery or a retried copy
/// finds its row:
/// - a `message_id` that is a UUID is the id;
/// - any other non-empty `message_id` gives UUIDv5 of `<tenant id>/<message_id>` in [`MESSAGE_ID_NAMESPACE`];
/// - without a `message_id` nothing identifies the message across deliveries: it is at-least-once, and its id
///   is a fresh UUIDv7 stamped as version 8 (time-ordered still), so the row shows it.
pub fn row_id(tenant: TenantId, delivery: &Delivery) -> Uuid {
    match delivery.properties.message_id().as_ref().map(|id| id.as_str()).filter(|id| !id.is_empty()) {
        Some(message_id) => Uuid::try_parse(message_id).unwrap_or_else(|_| named_row_id(tenant, message_id)),
        None => uuid::Builder::from_custom_bytes(Uuid::now_v7().into_bytes()).into_uuid(),
    }
}

fn named_row_id(tenant: TenantId, message_id: &str) -> Uuid {
    use sha1::{Digest, Sha1};
    let mut hasher = Sha1::new();
    hasher.update(MESSAGE_ID_NAMESPACE.as_bytes());
    hasher.update(format!("{tenant}/{message_id}").as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// The id is [`row_id`]; the body must be JSON that `jsonb` can store.
pub(super) fn decode(tenant: TenantId, delivery: &Delivery, max_depth: usize) -> Result<NewMessage, String> {
    let id = row_id(tenant, delivery);
    let text = std::str::from_utf8(&delivery.data).map_err(|_| "body is not UTF-8".to_owned())?;
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|_| "body is not JSON".to_owned())?;
    payload::check(text, max_depth).map_err(|error| error.to_string())?;
    Ok(NewMessage { id, payload: text.to_owned() })
}

/// Their rows are committed: counted, and acked through the coordinator (in `multiple` acks where safe).
async fn acknowledge_committed(deliveries: &[Delivery], context: &WorkerContext) {
    context.runtime.stats().persisted(deliveries.len() as u64);
    for _ in deliveries {
        context.runtime.delivery_settled();
    }
    if let Err(error) = context.acks.committed(deliveries.iter().map(|d| d.delivery_tag)).await {
        // The channel is gone: the broker redelivers, and the insert is idempotent.
        tracing::debug!(%error, "could not ack committed deliveries");
    }
}

/// How a delivery is settled on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A copy is in the retry queue or the DLQ: ack.
    Moved,
    /// Back to the queue, to be delivered again: nack with requeue.
    Requeue,
}

/// Acks or requeues one delivery, then lets the coordinator ack what it held back.
async fn settle(delivery: &Delivery, outcome: Outcome, context: &WorkerContext) {
    let settled = match outcome {
        Outcome::Moved => delivery.acker.ack(BasicAckOptions::default()).await,
        Outcome::Requeue => delivery.acker.nack(BasicNackOptions { requeue: true, multiple: false }).await,
    };
    context.runtime.delivery_settled();
    let released = context.acks.settled_alone(delivery.delivery_tag).await;
    if let Err(error) = settled.map(|_| ()).and(released) {
        // The channel is gone: the broker redelivers, and the insert is idempotent.
        tracing::debug!(%error, ?outcome, "could not settle a delivery");
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU16;

    use tokio::time::Instant;

    use super::*;

    const LINGER: Linger = Linger { wait: Duration::from_millis(5), max_wait: Duration::from_millis(25) };

    fn pool_of(workers: u16) -> (watch::Sender<Workers>, watch::Receiver<Workers>) {
        watch::channel(Workers::new(NonZeroU16::new(workers).expect("non-zero")))
    }

    async fn gather(receiver: &Mutex<mpsc::Receiver<u32>>, max: usize) -> (Next<u32>, Duration) {
        let (_size, mut desired) = pool_of(1);
        let started = Instant::now();
        let next = next_batch(receiver, &mut desired, max, LINGER).await;
        (next, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_message_waits_one_wait() {
        let (sender, receiver) = mpsc::channel(10);
        sender.send(1).await.expect("open");
        let (next, took) = gather(&Mutex::new(receiver), 100).await;
        assert_eq!(next, Next::Batch(vec![1]));
        assert_eq!(took, LINGER.wait);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_at_once_and_leaves_the_rest() {
        let (sender, receiver) = mpsc::channel(10);
        for n in 0..7 {
            sender.send(n).await.expect("open");
        }
        let receiver = Mutex::new(receiver);
        let (next, took) = gather(&receiver, 5).await;
        assert_eq!(next, Next::Batch(vec![0, 1, 2, 3, 4]));
        assert_eq!(took, Duration::ZERO);
        let (next, _) = gather(&receiver, 5).await;
        assert_eq!(next, Next::Batch(vec![5, 6]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_keeps_the_batch_open_until_max_wait() {
        let (sender, receiver) = mpsc::channel(100);
        sender.send(0).await.expect("open");
        let producer = tokio::spawn(async move {
            for n in 1..=40 {
                tokio::time::sleep(Duration::from_millis(2)).await;
                if sender.send(n).await.is_err() {
                    break;
                }
            }
        });
        let (next, took) = gather(&Mutex::new(receiver), 100).await;
        producer.abort();
        assert_eq!(took, LINGER.max_wait);
        let Next::Batch(batch) = next else { panic!("expected a batch, got {next:?}") };
        // One every 2 ms for 25 ms, in order and without gaps.
        assert_eq!(batch, (0..=12).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn the_batch_closes_after_a_wait_that_brought_nothing() {
        let (sender, receiver) = mpsc::channel(100);
        sender.send(0).await.expect("open");
        let producer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(3)).await;
            sender.send(1).await.expect("open");
            // Then silence, with the channel still open.
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let (next, took) = gather(&Mutex::new(receiver), 100).await;
        producer.abort();
        assert_eq!(next, Next::Batch(vec![0, 1]));
        assert_eq!(took, 2 * LINGER.wait);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_wait_takes_what_is_there_and_goes() {
        let (sender, receiver) = mpsc::channel(10);
        for n in 0..3 {
            sender.send(n).await.expect("open");
        }
        let (_size, mut desired) = pool_of(1);
        let started = Instant::now();
        let no_linger = Linger { wait: Duration::ZERO, max_wait: Duration::ZERO };
        let next = next_batch(&Mutex::new(receiver), &mut desired, 100, no_linger).await;
        assert_eq!(next, Next::Batch(vec![0, 1, 2]));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumer_that_stops_during_the_wait_gets_its_batch_written() {
        let (sender, receiver) = mpsc::channel(10);
        sender.send(0).await.expect("open");
        let stop = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            sender.send(1).await.expect("open");
            drop(sender);
        });
        let receiver = Mutex::new(receiver);
        let (next, took) = gather(&receiver, 100).await;
        stop.await.expect("sender task");
        // Taken at the end of the first wait, without waiting again for a consumer that is gone.
        assert_eq!(next, Next::Batch(vec![0, 1]));
        assert_eq!(took, LINGER.wait);
        assert_eq!(gather(&receiver, 100).await.0, Next::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_channel_ends_the_worker_and_a_resize_interrupts_the_wait_for_work() {
        let (sender, receiver) = mpsc::channel::<u32>(1);
        let receiver = Mutex::new(receiver);
        let (size, mut desired) = pool_of(2);
        let resize = async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            size.send_replace(Workers::new(NonZeroU16::MIN));
        };
        let (next, ()) = tokio::join!(next_batch(&receiver, &mut desired, 10, LINGER), resize);
        assert_eq!(next, Next::Resized);
        drop(sender);
        assert_eq!(next_batch(&receiver, &mut desired, 10, LINGER).await, Next::Closed);
    }
}

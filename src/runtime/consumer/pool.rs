//! The worker pool: its size follows the tenant's desired workers live; each worker takes a batch at a time
//! and retires after it when the pool shrank below its index.
//!
//! A worker's task runs only while there is work: the pool starts one when a delivery arrives and no worker
//! is waiting for one, and a worker that waited [`Linger::park_after`] for a delivery ends. So an idle
//! tenant holds no worker tasks (memory per idle tenant), while under load every worker of the pool runs.
//! The pool's size, what `running_workers` reports, counts parked workers too: they start on demand.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU16, Ordering},
    },
};

use lapin::{Channel, message::Delivery};
use tokio::{
    sync::{Mutex, mpsc},
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::Backoff, config::QueueType, domain::payload::PayloadLimits, metrics::FailureReason,
    store::messages::MessageWriter,
};

use crate::{
    broker::{Publisher, TenantQueues},
    runtime::{acks::AckCoordinator, failure::RetryPolicy, tenant_runtime::TenantRuntime, write_share::WriteShare},
};

use super::{
    ConsumerSettings,
    batch::{Arrived, Linger, Next, next_batch},
    processing::{Moving, Outcome, process, settle},
};

/// What every worker of one tenant shares.
pub(super) struct WorkerContext {
    pub(super) runtime: Arc<TenantRuntime>,
    pub(super) writer: MessageWriter,
    /// The consumer's channel: deliveries are acked on it.
    pub(super) channel: Channel,
    /// Publishes failed messages' copies (see [`ConsumerSettings::publisher`]).
    pub(super) publisher: Arc<Publisher>,
    /// Failed messages' copies waiting to be published, each with its delivery set aside, and the task
    /// publishing them (see [`move_aside`](super::processing::move_aside)).
    pub(super) moving: std::sync::Mutex<Moving>,
    pub(super) acks: Arc<AckCoordinator>,
    pub(super) queues: TenantQueues,
    pub(super) queue_type: QueueType,
    pub(super) retry: RetryPolicy,
    pub(super) payload_limits: PayloadLimits,
    pub(super) batch_size: usize,
    pub(super) linger: Linger,
    pub(super) write_share: WriteShare,
    /// Cancelled when the consumer stops, for whatever reason (a child of the service's shutdown).
    pub(super) stopping: CancellationToken,
    /// Workers waiting for a first delivery (see [`next_batch`]).
    pub(super) waiting: AtomicU16,
}

/// A delivery on its way from the consumer to a worker, with when it arrived (for
/// `tenantmq_message_persist_delay_seconds`). Boxed, because the channel allocates room for 32 of its items up
/// front, for every tenant, busy or not.
pub(super) type Handed = Box<Arrival>;

pub(super) struct Arrival {
    pub(super) delivery: Delivery,
    pub(super) at: Instant,
}

impl Arrived for Handed {
    fn arrived(&self) -> Instant {
        self.at
    }
}

pub(super) struct WorkerPool {
    pub(super) receiver: Arc<Mutex<mpsc::Receiver<Handed>>>,
    pub(super) context: Arc<WorkerContext>,
    pub(super) tasks: JoinSet<u16>,
    /// Indices of live workers; worker `i` retires once the desired size is `i` or less.
    pub(super) live: BTreeSet<u16>,
    pub(super) ids: HashMap<tokio::task::Id, u16>,
    /// Draining for the consumer's stop: the pool's size is then the workers still running.
    draining: bool,
}

impl WorkerPool {
    pub(super) fn new(
        receiver: mpsc::Receiver<Handed>,
        runtime: Arc<TenantRuntime>,
        writer: MessageWriter,
        channel: Channel,
        acks: Arc<AckCoordinator>,
        settings: &ConsumerSettings,
        stopping: CancellationToken,
    ) -> Self {
        let context = Arc::new(WorkerContext {
            queues: TenantQueues::of(runtime.tenant),
            runtime,
            writer,
            channel,
            acks,
            retry: settings.retry,
            queue_type: settings.queue_type,
            payload_limits: settings.payload_limits,
            batch_size: settings.batch_size.into(),
            linger: Linger {
                wait: settings.batch_wait,
                max_wait: settings.batch_max_wait,
                // Not before a worker waiting for the lock could have had its turn.
                park_after: PARK_AFTER.max(2 * settings.batch_max_wait),
            },
            write_share: settings.write_share.clone(),
            publisher: settings.publisher.clone(),
            moving: std::sync::Mutex::default(),
            stopping,
            waiting: AtomicU16::new(0),
        });
        Self {
            receiver: Arc::new(Mutex::new(receiver)),
            context,
            tasks: JoinSet::new(),
            live: BTreeSet::new(),
            ids: HashMap::new(),
            draining: false,
        }
    }

    /// `queued` deliveries wait in the channel: starts workers for them, a batch each, counting the workers
    /// already waiting, up to the pool's size. Surplus workers retire by themselves.
    pub(super) fn offer(&mut self, queued: usize) {
        let waiting = usize::from(self.context.waiting.load(Ordering::SeqCst));
        for _ in waiting..queued.div_ceil(self.context.batch_size) {
            let desired = self.context.runtime.desired().get();
            let Some(index) = (0..desired).find(|index| !self.live.contains(index)) else { break };
            self.live.insert(index);
            // Counted as waiting from now: deliveries arriving before it runs need no other worker.
            self.context.waiting.fetch_add(1, Ordering::SeqCst);
            let handle = self.tasks.spawn(worker(index, self.context.clone(), self.receiver.clone()));
            self.ids.insert(handle.id(), index);
        }
        self.publish_running();
    }

    /// The pool's size changed, or was set at the start.
    pub(super) fn resized(&self) {
        self.publish_running();
    }

    /// A worker ended: it parked or retired, and others start for deliveries still `queued` (a worker may park
    /// in the moment one arrives); or it panicked, and the consumer must end (see [`WorkerPanicked`]).
    pub(super) fn exited(
        &mut self,
        exited: Result<(tokio::task::Id, u16), tokio::task::JoinError>,
        queued: usize,
    ) -> Result<(), WorkerPanicked> {
        self.forget(exited)?;
        self.offer(queued);
        Ok(())
    }

    fn forget(&mut self, exited: Result<(tokio::task::Id, u16), tokio::task::JoinError>) -> Result<(), WorkerPanicked> {
        let (id, ended) = worker_ended(exited);
        if let Err(WorkerPanicked(error)) = &ended {
            tracing::error!(tenant = %self.context.runtime.tenant, %error, "a worker panicked");
        }
        if let Some(index) = self.ids.remove(&id) {
            self.live.remove(&index);
        }
        self.publish_running();
        ended
    }

    /// The pool's size: its desired workers, running or parked, and the retiring ones still finishing a batch;
    /// while draining, the workers still running.
    fn publish_running(&self) {
        let size = if self.draining {
            self.live.len()
        } else {
            let desired = self.context.runtime.desired().get();
            usize::from(desired) + self.live.range(desired..).count()
        };
        self.context.runtime.set_running(u16::try_from(size).unwrap_or(u16::MAX));
    }

    /// Waits for the running workers to end, starting none for what the channel still holds: that goes back to
    /// the broker with the channel.
    pub(super) async fn join(&mut self) {
        self.draining = true;
        while let Some(exited) = self.tasks.join_next_with_id().await {
            // Stopping already: the channel's close gives the broker back what a panicked worker held.
            let _ = self.forget(exited);
        }
    }

    /// Waits for workers to take and settle everything the channel still holds (its sender is dropped first),
    /// starting them as needed: a worker may have parked just as the last deliveries came.
    pub(super) async fn drain(&mut self) {
        self.draining = true;
        loop {
            self.offer(self.unclaimed());
            let Some(exited) = self.tasks.join_next_with_id().await else { break };
            // Stopping already: the channel's close gives the broker back what the panicked worker held.
            let _ = self.forget(exited);
        }
    }

    /// Deliveries in the channel while no worker holds it (one that does takes them, or ends and is
    /// followed by another look).
    fn unclaimed(&self) -> usize {
        self.receiver.try_lock().map_or(0, |receiver| receiver.len())
    }
}

/// A worker panicked with a batch in hand. Its deliveries stay in flight for good, so no `multiple` ack may
/// pass them: every later commit would wait behind them until the prefetch is spent and the tenant stalls.
/// Only closing the channel gives them back to the broker, so the consumer ends and is restarted.
#[derive(Debug, thiserror::Error)]
#[error("a worker panicked: {0}")]
pub struct WorkerPanicked(String);

/// Which worker ended, and whether it panicked.
fn worker_ended(
    exited: Result<(tokio::task::Id, u16), tokio::task::JoinError>,
) -> (tokio::task::Id, Result<(), WorkerPanicked>) {
    match exited {
        Ok((id, _)) => (id, Ok(())),
        Err(error) if error.is_panic() => (error.id(), Err(WorkerPanicked(error.to_string()))),
        // Aborted by the consumer's stop.
        Err(error) => (error.id(), Ok(())),
    }
}

/// Hands deliveries back to the queue, for another consumer (or this one, after a restart) to take.
async fn requeue(deliveries: &[Delivery], context: &WorkerContext) {
    for delivery in deliveries {
        settle(delivery, Outcome::Requeue, context).await;
    }
}

/// How long a worker waits for a delivery before its task ends.
const PARK_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

pub(super) async fn worker(
    index: u16,
    context: Arc<WorkerContext>,
    receiver: Arc<Mutex<mpsc::Receiver<Handed>>>,
) -> u16 {
    // Counted as waiting since `offer` spawned it; from here on `next_batch` counts it.
    context.waiting.fetch_sub(1, Ordering::SeqCst);
    let mut desired = context.runtime.watch_desired();
    let mut unavailable = Backoff::new();
    loop {
        if index >= desired.borrow_and_update().get() {
            break;
        }
        match next_batch(&receiver, &mut desired, context.batch_size, context.linger, &context.waiting).await {
            Next::Batch(batch) => {
                // Busy until the batch is settled: one the database cannot take yet keeps its worker through
                // the pauses between tries.
                let _busy = context.runtime.busy_guard();
                let mut batch: Vec<Arrival> = batch.into_iter().map(|arrival| *arrival).collect();
                let mut counted = false;
                loop {
                    // Boxed: the write's state is large and needed only while a batch is written, and an idle
                    // tenant's workers would each carry it all the time (RSS per idle tenant).
                    let unwritten = Box::pin(process(batch, &context)).await;
                    if unwritten.is_empty() {
                        unavailable.reset();
                        break;
                    }
                    // A delivery held back counts as one failed attempt, however many tries the outage takes:
                    // else a minute's outage would count each message a dozen times against one consumed.
                    if !counted {
                        for _ in &unwritten {
                            context.runtime.stats().failed(FailureReason::Transient);
                        }
                        counted = true;
                    }
                    // Do not spin on a database that fails: pause, longer each time.
                    let stopping = tokio::select! {
                        _ = context.stopping.cancelled() => true,
                        _ = tokio::time::sleep(unavailable.next_delay()) => false,
                    };
                    // What the database could not take is kept and tried again rather than handed back: the
                    // broker counts each return as a delivery, and a quorum queue dead-letters a message past
                    // its delivery limit (20 by default since RabbitMQ 4.0), which an outage of minutes would
                    // reach. Unless the consumer stops (for any reason) or its channel is gone: then it goes
                    // back (on a dead channel, the broker has it back already).
                    if stopping || !context.channel.status().connected() {
                        let unwritten: Vec<Delivery> = unwritten.into_iter().map(|arrival| arrival.delivery).collect();
                        Box::pin(requeue(&unwritten, &context)).await;
                        break;
                    }
                    batch = unwritten;
                }
            }
            Next::Resized => {}
            Next::Closed | Next::Idle => break,
        }
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicked_worker_is_told_apart_from_one_that_parked_or_was_aborted() {
        let mut tasks = JoinSet::new();
        let parked = tasks.spawn(async { 0_u16 }).id();
        let panicked = tasks.spawn(async { panic!("a bug in a worker") }).id();
        let aborted = tasks.spawn(std::future::pending::<u16>());
        let aborted_id = aborted.id();
        aborted.abort();
        let mut ended = HashMap::new();
        while let Some(exited) = tasks.join_next_with_id().await {
            let (id, outcome) = worker_ended(exited);
            ended.insert(id, outcome.map_err(|error| error.to_string()));
        }
        assert_eq!(ended[&parked], Ok(()));
        assert_eq!(ended[&aborted_id], Ok(()), "a worker the consumer's stop aborted did not panic");
        let Err(error) = &ended[&panicked] else { panic!("a panic must end the consumer") };
        assert!(error.contains("panicked"), "{error}");
    }
}

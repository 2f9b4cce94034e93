//! The worker pool: its size follows the tenant's desired workers live; each worker takes a batch at a time
//! and retires after it when the pool shrank below its index.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use lapin::{Channel, message::Delivery};
use tokio::{
    sync::{Mutex, mpsc},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use crate::{backoff::Backoff, config::QueueType, store::messages::MessageWriter};

use crate::{
    broker::TenantQueues,
    runtime::{acks::AckCoordinator, failure::RetryPolicy, tenant_runtime::TenantRuntime, write_share::WriteShare},
};

use super::{
    ConsumerSettings,
    batch::{Linger, Next, next_batch},
    processing::{Outcome, process, settle},
};

/// What every worker of one tenant shares.
pub(super) struct WorkerContext {
    pub(super) runtime: Arc<TenantRuntime>,
    pub(super) writer: MessageWriter,
    /// The consumer's channel, in confirm mode: failed messages are republished on it.
    pub(super) channel: Channel,
    pub(super) acks: Arc<AckCoordinator>,
    pub(super) queues: TenantQueues,
    pub(super) queue_type: QueueType,
    pub(super) retry: RetryPolicy,
    pub(super) max_payload_depth: usize,
    pub(super) batch_size: usize,
    pub(super) linger: Linger,
    pub(super) write_share: WriteShare,
    pub(super) shutdown: CancellationToken,
}

pub(super) struct WorkerPool {
    pub(super) receiver: Arc<Mutex<mpsc::Receiver<Delivery>>>,
    pub(super) context: Arc<WorkerContext>,
    pub(super) tasks: JoinSet<u16>,
    /// Indices of live workers; worker `i` retires once the desired size is `i` or less.
    pub(super) live: BTreeSet<u16>,
    pub(super) ids: HashMap<tokio::task::Id, u16>,
}

impl WorkerPool {
    pub(super) fn new(
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
            queue_type: settings.queue_type,
            max_payload_depth: settings.max_payload_depth,
            batch_size: settings.batch_size.into(),
            linger: Linger { wait: settings.batch_wait, max_wait: settings.batch_max_wait },
            write_share: settings.write_share.clone(),
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
    pub(super) fn fill(&mut self) {
        for index in 0..self.context.runtime.desired().get() {
            if self.live.insert(index) {
                let handle = self.tasks.spawn(worker(index, self.context.clone(), self.receiver.clone()));
                self.ids.insert(handle.id(), index);
            }
        }
        self.publish_running();
    }

    /// Replaces a worker that ended while still wanted (it panicked); retired ones are not replaced.
    pub(super) fn exited(&mut self, exited: Result<(tokio::task::Id, u16), tokio::task::JoinError>) {
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
    pub(super) async fn drain(&mut self) {
        while let Some(exited) = self.tasks.join_next_with_id().await {
            self.forget(exited);
        }
    }
}

pub(super) async fn worker(
    index: u16,
    context: Arc<WorkerContext>,
    receiver: Arc<Mutex<mpsc::Receiver<Delivery>>>,
) -> u16 {
    let mut desired = context.runtime.watch_desired();
    let mut unavailable = Backoff::new();
    loop {
        if index >= desired.borrow_and_update().get() {
            break;
        }
        match next_batch(&receiver, &mut desired, context.batch_size, context.linger).await {
            Next::Batch(batch) => {
                // Boxed: the write's state is large and needed only while a batch is written, and an idle
                // tenant's workers would each carry it all the time (RSS per idle tenant).
                let held_back = {
                    let _busy = context.runtime.busy_guard();
                    Box::pin(process(batch, &context)).await
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
                Box::pin(async {
                    for delivery in &held_back {
                        settle(delivery, Outcome::Requeue, &context).await;
                    }
                })
                .await;
            }
            Next::Resized => {}
            Next::Closed => break,
        }
    }
    index
}

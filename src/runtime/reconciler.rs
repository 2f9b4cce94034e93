//! The reconciler: level-triggered, like a Kubernetes controller. It compares the desired runtime (live
//! tenants and their pool sizes, from the tenants projection) with the actual one (the TenantManager) and
//! acts: start, resize, stop, restart what crashed. It wakes on projected changes, consumer exits, broker
//! reconnects and a periodic resync. Broker work happens in the consumer tasks, so one slow tenant never
//! stalls the others; failed starts are retried with backoff.

use std::{collections::HashMap, num::NonZeroU16, sync::Arc, time::Duration};

use sea_orm::sqlx::PgPool;
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{
    domain::tenant::{TenantId, Workers},
    metrics::{Metrics, ReconcilerAction, ReconcilerError},
    store::{messages::MessageWriter, tenants::TenantReadModel},
    {backoff::Backoff, projectors::Progress},
};

use super::{
    broker::{self, Broker},
    consumer::{self, ConsumerEnd, ConsumerError, ConsumerSettings},
    manager::{ConsumerState, Control, TenantManager, TenantRuntime},
    retirement::Retirement,
};

type ConsumerResult = (TenantId, Result<ConsumerEnd, ConsumerError>);

pub struct Reconciler {
    pub manager: TenantManager,
    pub broker: Broker,
    pub tenants: TenantReadModel,
    pub pool: PgPool,
    pub settings: Arc<ConsumerSettings>,
    pub projection: watch::Receiver<Progress>,
    pub resync_interval: Duration,
    pub metrics: Metrics,
    pub retirement: Retirement,
}

/// A tenant whose consumer failed, and when to try again.
struct Retry {
    at: Instant,
    backoff: Backoff,
}

impl Reconciler {
    /// Runs until `shutdown`; then stops every consumer (they finish and ack what they hold) and waits.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut consumers: JoinSet<ConsumerResult> = JoinSet::new();
        let mut tenants_of: HashMap<tokio::task::Id, TenantId> = HashMap::new();
        let mut retries: HashMap<TenantId, Retry> = HashMap::new();
        let mut generation = 0_u64;
        let mut connection = self.broker.subscribe();
        let mut cleaned_up_deleted = false;
        loop {
            if self.broker.is_connected() && !cleaned_up_deleted {
                cleaned_up_deleted = self.delete_queues_of_deleted_tenants().await;
            }
            self.reconcile(&mut consumers, &mut tenants_of, &retries, &mut generation, &shutdown).await;
            let next_retry = retries.values().map(|r| r.at).min();
            let wake_at = next_retry
                .map_or(Instant::now() + self.resync_interval, |at| at.min(Instant::now() + self.resync_interval));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = self.projection.changed() => if changed.is_err() {
                    // The projector stopped (shutting down); keep resyncing on the timer.
                    self.projection = watch::Sender::new(Progress::default()).subscribe();
                },
                _ = connection.changed() => retries.clear(),
                Some(ended) = consumers.join_next_with_id() => {
                    self.consumer_ended(ended, &mut tenants_of, &mut retries);
                }
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
        while let Some(ended) = consumers.join_next_with_id().await {
            self.consumer_ended(ended, &mut tenants_of, &mut retries);
        }
    }

    async fn reconcile(
        &self,
        consumers: &mut JoinSet<ConsumerResult>,
        tenants_of: &mut HashMap<tokio::task::Id, TenantId>,
        retries: &HashMap<TenantId, Retry>,
        generation: &mut u64,
        shutdown: &CancellationToken,
    ) {
        let desired = match self.tenants.desired_runtime().await {
            Ok(desired) => desired,
            Err(error) => {
                tracing::warn!(%error, "cannot read the desired runtime; retrying at the next resync");
                self.metrics.reconciler_error(ReconcilerError::DesiredState);
                return;
            }
        };
        let connected = self.broker.is_connected();
        let now = Instant::now();
        let mut wanted = HashMap::with_capacity(desired.len());
        for (tenant, workers) in desired {
            let Some(workers) = u16::try_from(workers).ok().and_then(NonZeroU16::new).map(Workers::new) else {
                continue;
            };
            wanted.insert(tenant, workers);
            match self.manager.get(tenant) {
                Some(running) if running.state() == ConsumerState::Stopping => {}
                Some(running) if running.desired() != workers => {
                    tracing::info!(%tenant, from = running.desired().get(), to = workers.get(), "resizing");
                    running.set_desired(workers);
                    running.send(Control::Resize(workers));
                    self.metrics.reconciler_action(ReconcilerAction::Resize);
                }
                Some(_) => {}
                None if connected && retries.get(&tenant).is_none_or(|r| r.at <= now) => {
                    *generation += 1;
                    self.start(tenant, workers, *generation, consumers, tenants_of, shutdown);
                }
                None => {}
            }
        }
        for running in self.manager.all() {
            if !wanted.contains_key(&running.tenant) && running.state() != ConsumerState::Stopping {
                tracing::info!(tenant = %running.tenant, "stopping: the tenant was deleted");
                running.set_state(ConsumerState::Stopping);
                running.send(Control::Delete);
                self.metrics.reconciler_action(ReconcilerAction::Stop);
            }
        }
        self.manager.forget_stats_unless(|tenant| wanted.contains_key(tenant));
        if connected {
            self.retirement.retire_stopped(|tenant| self.manager.get(tenant).is_some()).await;
        }
    }

    fn start(
        &self,
        tenant: TenantId,
        workers: Workers,
        generation: u64,
        consumers: &mut JoinSet<ConsumerResult>,
        tenants_of: &mut HashMap<tokio::task::Id, TenantId>,
        shutdown: &CancellationToken,
    ) {
        tracing::info!(%tenant, workers = workers.get(), generation, "starting consumer");
        self.metrics.reconciler_action(ReconcilerAction::Start);
        let (control, commands) = mpsc::unbounded_channel();
        let stats = self.manager.stats_of(tenant, workers);
        let runtime = Arc::new(TenantRuntime::new(tenant, workers, control, stats));
        self.manager.insert(runtime.clone());
        let writer = MessageWriter::new(self.pool.clone(), tenant, self.metrics.clone());
        let (broker, settings, shutdown) = (self.broker.clone(), self.settings.clone(), shutdown.clone());
        let handle = consumers.spawn(async move {
            let ended = consumer::run(runtime, commands, broker, writer, settings, generation, shutdown).await;
            (tenant, ended)
        });
        tenants_of.insert(handle.id(), tenant);
    }

    fn consumer_ended(
        &self,
        ended: Result<(tokio::task::Id, ConsumerResult), tokio::task::JoinError>,
        tenants_of: &mut HashMap<tokio::task::Id, TenantId>,
        retries: &mut HashMap<TenantId, Retry>,
    ) {
        let (id, outcome) = match ended {
            Ok((id, (_, outcome))) => (id, outcome.map_err(|e| e.to_string())),
            Err(error) => (error.id(), Err(format!("consumer task panicked: {error}"))),
        };
        let Some(tenant) = tenants_of.remove(&id) else { return };
        self.manager.remove(tenant);
        match outcome {
            Ok(end) => {
                tracing::info!(%tenant, ?end, "consumer ended");
                retries.remove(&tenant);
            }
            Err(error) => {
                let retry =
                    retries.entry(tenant).or_insert_with(|| Retry { at: Instant::now(), backoff: Backoff::new() });
                let delay = retry.backoff.next_delay();
                retry.at = Instant::now() + delay;
                tracing::warn!(%tenant, %error, ?delay, "consumer failed; restarting after a pause");
                self.metrics.reconciler_action(ReconcilerAction::Restart);
                self.metrics.reconciler_error(ReconcilerError::ConsumerFailed);
            }
        }
    }

    /// Deleted tenants whose consumer was not running here when they were deleted may still have queues.
    /// Returns whether the sweep completed.
    async fn delete_queues_of_deleted_tenants(&self) -> bool {
        let deleted = match self.tenants.retired_ids().await {
            Ok(deleted) => deleted,
            Err(error) => {
                tracing::warn!(%error, "cannot list deleted tenants");
                self.metrics.reconciler_error(ReconcilerError::QueueSweep);
                return false;
            }
        };
        if deleted.is_empty() {
            return true;
        }
        let channel = match self.broker.channel().await {
            Ok(channel) => channel,
            Err(_) => return false,
        };
        for tenant in deleted {
            if let Err(error) = broker::delete(&channel, tenant).await {
                tracing::warn!(%tenant, %error, "cannot delete the queues of a deleted tenant");
                self.metrics.reconciler_error(ReconcilerError::QueueSweep);
                return false;
            }
        }
        let _ = channel.close(200, "swept".into()).await;
        true
    }
}

//! The reconciler: level-triggered, like a Kubernetes controller. It compares the desired runtime (live
//! tenants and their pool sizes, from the tenants projection) with the actual one (the ConsumerRegistry) and
//! acts: start, resize, stop, restart what crashed. It wakes on projected changes, a consumer that ended as
//! asked, a failed consumer's restart time, broker reconnects and a periodic resync. Broker work happens in
//! the consumer tasks, so one slow tenant never stalls the others; failed starts are retried with backoff.
//! Each consumer gets a channel slot on a consumer connection with room ([`ConsumerConnections`]), so no start
//! fails on a connection's channel limit.

use std::{
    collections::{HashMap, HashSet},
    num::NonZeroU16,
    sync::Arc,
    time::Duration,
};

use chrono::Utc;
use sea_orm::sqlx::{Connection, PgConnection, PgPool};
use tokio::{
    sync::{mpsc, watch},
    task::{JoinHandle, JoinSet},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::Backoff,
    broker::{Broker, ConsumerConnections, Inspector, queues},
    domain::tenant::{TenantId, Workers},
    metrics::{Metrics, ReconcilerAction, ReconcilerError},
    projectors::Progress,
    store::{messages::MessageWriter, publish_buckets, tenants::TenantReadModel},
};

use super::{
    consumer::{self, ConsumerEnd, ConsumerError, ConsumerSettings},
    registry::{ConsumerFailure, ConsumerFailureReason, ConsumerRegistry},
    retirement::Retirement,
    tenant_runtime::{ConsumerState, Control, TenantRuntime},
};

type ConsumerResult = (TenantId, Result<ConsumerEnd, ConsumerError>);

/// Resync intervals between two sweeps of retired tenants' queues (10 minutes by default): a consumer that
/// started just as another instance retired its tenant may have declared them again.
const RETIRED_SWEEP_EVERY: u32 = 120;

/// Tenants deleted this long ago or less are swept, or within six sweeps if that is longer (a long
/// `consumer.resync_interval`). A consumer that declared its tenant's queues again after the retirement
/// deletes them itself when it stops for the delete
/// ([`Retirement::delete_queues_declared_late`]); the sweep is for one that cannot (its instance crashed
/// first). Each tenant in the window costs three broker calls a sweep, in this loop: a week's window, at
/// thousands of deletes a day, made each sweep tens of thousands of calls that held up every consumer change.
const RETIRED_SWEEP_WINDOW: Duration = Duration::from_secs(3600);

/// How much earlier than its restart time a failed consumer may start, to share a pass with others.
const RESTART_SLACK: Duration = Duration::from_millis(50);

/// The longest a read of the desired runtime may take before the database counts as unreachable.
const DESIRED_STATE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Reconciler {
    pub registry: ConsumerRegistry,
    pub broker: Broker,
    pub consumer_connections: ConsumerConnections,
    pub tenants: TenantReadModel,
    pub pool: PgPool,
    pub settings: Arc<ConsumerSettings>,
    pub projection: watch::Receiver<Progress>,
    pub resync_interval: Duration,
    /// How long the desired runtime may be unreadable before the consumers are paused.
    pub database_outage_grace: Duration,
    pub metrics: Metrics,
    pub retirement: Arc<Retirement>,
}

/// This instance lost the database: since when, and when the consumers found alone were looked at.
struct DatabaseLost {
    since: Instant,
    /// When each consumer found alone on its queue was last looked at.
    looked_at: HashMap<TenantId, Instant>,
}

/// At most one retirement pass at a time; a pass wanted while one runs starts when it ends.
#[derive(Default)]
struct Retirements {
    running: Option<JoinHandle<()>>,
    wanted_again: bool,
}

impl Retirements {
    fn wanted(&mut self, start: impl FnOnce() -> JoinHandle<()>) {
        match &self.running {
            Some(pass) if !pass.is_finished() => self.wanted_again = true,
            _ => self.running = Some(start()),
        }
    }

    /// Resolves when the running pass ends (never while none runs).
    async fn finished(&mut self) {
        match self.running.as_mut() {
            Some(pass) => {
                if let Err(error) = pass.await {
                    tracing::error!(%error, "a retirement pass failed");
                }
                self.running = None;
            }
            None => std::future::pending().await,
        }
    }

    /// After a pass ended: the next one, if one was wanted meanwhile.
    fn again(&mut self, start: impl FnOnce() -> JoinHandle<()>) {
        if std::mem::take(&mut self.wanted_again) {
            self.running = Some(start());
        }
    }

    fn abort(&mut self) {
        if let Some(pass) = self.running.take() {
            pass.abort();
        }
    }
}

/// When tenants whose consumer failed may start again. A tenant is *due* (has a time) only while it waits
/// for its restart: once started it keeps its backoff, so a consumer that keeps failing backs off further,
/// but it no longer sets a wake-up time. A due time left in the past would make the loop spin.
#[derive(Debug, Default)]
struct RestartSchedule {
    tenants: HashMap<TenantId, Restart>,
}

#[derive(Debug, Default)]
struct Restart {
    due: Option<Instant>,
    started: Option<Instant>,
    backoff: Backoff,
    /// Failures since the last stable run.
    in_a_row: u32,
}

impl RestartSchedule {
    /// A consumer that ran at least this long before it failed starts again from the shortest delay.
    const STABLE: Duration = Duration::from_secs(60);

    /// Records a failure; returns the delay before the tenant may start again, and the failures in a row.
    fn failed(&mut self, tenant: TenantId, now: Instant) -> (Duration, u32) {
        let restart = self.tenants.entry(tenant).or_default();
        if restart.started.is_some_and(|started| now.duration_since(started) >= Self::STABLE) {
            restart.backoff.reset();
            restart.in_a_row = 0;
        }
        let delay = restart.backoff.next_delay();
        restart.due = Some(now + delay);
        restart.started = None;
        restart.in_a_row += 1;
        (delay, restart.in_a_row)
    }

    /// Due now, or within [`RESTART_SLACK`]: consumers that failed together (a lost connection ends each a
    /// moment apart) start in one pass.
    fn may_start(&self, tenant: TenantId, now: Instant) -> bool {
        self.tenants.get(&tenant).and_then(|r| r.due).is_none_or(|due| due <= now + RESTART_SLACK)
    }

    fn started(&mut self, tenant: TenantId, now: Instant) {
        if let Some(restart) = self.tenants.get_mut(&tenant) {
            restart.due = None;
            restart.started = Some(now);
        }
    }

    /// The consumer ended as asked (stopped or deleted): nothing to restart.
    fn ended(&mut self, tenant: TenantId) {
        self.tenants.remove(&tenant);
    }

    /// Forgets tenants that are no longer wanted (deleted while they waited).
    fn retain(&mut self, wanted: impl Fn(&TenantId) -> bool) {
        self.tenants.retain(|tenant, _| wanted(tenant));
    }

    /// A new broker connection: every tenant may start at once.
    fn clear(&mut self) {
        self.tenants.clear();
    }

    /// The earliest restart still waiting.
    fn next_due(&self) -> Option<Instant> {
        self.tenants.values().filter_map(|r| r.due).min()
    }
}

/// Whether a consumer's failure, the `in_a_row`th without a stable run, is logged as a warning: the first few,
/// then every 30th (about every 5 minutes at the longest pause). A consumer that cannot start until an
/// operator acts (a queue declared by someone else) fails every 10 s for as long as that lasts, which 200 such
/// tenants made 20 warnings a second; its tenant's details and `tenantmq_consumer_up` show it all along. A lost
/// connection is never one: its supervisor warns once for all the consumers it carried.
fn worth_a_warning(reason: ConsumerFailureReason, in_a_row: u32) -> bool {
    reason != ConsumerFailureReason::ConnectionLost && (in_a_row <= 3 || in_a_row.is_multiple_of(30))
}

impl Reconciler {
    /// Runs until `shutdown`; then stops every consumer (they finish and ack what they hold) and waits.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut consumers: JoinSet<ConsumerResult> = JoinSet::new();
        let mut tenants_of: HashMap<tokio::task::Id, TenantId> = HashMap::new();
        let mut restarts = RestartSchedule::default();
        let mut generation = 0_u64;
        let mut connection = self.broker.subscribe();
        let mut projection = Some(self.projection.clone());
        let mut swept_at: Option<Instant> = None;
        let mut retirements = Retirements::default();
        let mut database_lost = None;
        loop {
            let sweep_due = swept_at.is_none_or(|at| at.elapsed() >= self.resync_interval * RETIRED_SWEEP_EVERY);
            if self.broker.is_connected() && sweep_due && self.sweep_retired_tenants().await {
                swept_at = Some(Instant::now());
            }
            let read = self.reconcile(&mut consumers, &mut tenants_of, &mut restarts, &mut generation, &shutdown).await;
            self.pause_if_database_lost(read, &mut database_lost).await;
            if self.broker.is_connected() {
                retirements.wanted(|| self.start_retirement());
            }
            let wake = |restarts: &RestartSchedule| {
                let next_restart = self.broker.is_connected().then(|| restarts.next_due()).flatten();
                next_wake(Instant::now(), self.resync_interval, next_restart)
            };
            let mut wake_at = wake(&restarts);
            // A retirement pass that ends is not a reason to reconcile: waiting goes on (else the loop would
            // reconcile and retire back to back).
            let stop = loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break true,
                    () = projection_changed(&mut projection) => break false,
                    _ = connection.changed() => {
                        restarts.clear();
                        break false;
                    }
                    Some(ended) = consumers.join_next_with_id() => {
                        // A lost connection ends every consumer it carried at once: one pass for them all, at
                        // their restart time, not one pass (a read of every tenant) for each.
                        let mut pass_now = self.consumer_ended(ended, &mut tenants_of, &mut restarts);
                        while let Some(ended) = consumers.try_join_next_with_id() {
                            pass_now |= self.consumer_ended(ended, &mut tenants_of, &mut restarts);
                        }
                        if pass_now {
                            break false;
                        }
                        wake_at = wake_at.min(wake(&restarts));
                    }
                    () = retirements.finished() => retirements.again(|| self.start_retirement()),
                    _ = tokio::time::sleep_until(wake_at) => break false,
                }
            };
            if stop {
                break;
            }
        }
        // Safe to cut short: a retirement commits its last step, the partition's DDL, or nothing.
        retirements.abort();
        while let Some(ended) = consumers.join_next_with_id().await {
            let _ = self.consumer_ended(ended, &mut tenants_of, &mut restarts);
        }
    }

    /// A retirement pass in a task of its own: with `detach`, persisting a deleted tenant's queued messages
    /// can take minutes, and must not hold up the starts, resizes and stops of every other tenant. It skips
    /// the tenants this instance runs a consumer of when it starts; the retirement itself also waits for the
    /// broker to show no consumer anywhere.
    fn start_retirement(&self) -> JoinHandle<()> {
        let running_here: HashSet<TenantId> = self.registry.all().iter().map(|running| running.tenant).collect();
        let retirement = self.retirement.clone();
        tokio::spawn(async move { retirement.retire_stopped(|tenant| running_here.contains(&tenant)).await })
    }

    /// While the database cannot be reached, workers keep what they cannot write and try again; this
    /// instance's consumers stay subscribed, so the broker sends them nothing new. But another instance may
    /// reach the database: past `database_outage_grace`, each consumer whose queue has another consumer (one of
    /// another instance) stops and hands back what it holds, for that one. A consumer alone on its queue stays:
    /// handing back would only count a delivery (which a quorum queue's delivery limit counts against the
    /// message). One found alone is looked at again a grace later: another instance may have come (started,
    /// or back from a restart) since. They start again at the first pass that reads the desired runtime.
    async fn pause_if_database_lost(&self, read: bool, lost: &mut Option<DatabaseLost>) {
        // A read that failed on a database that answers (a lock held on `tenants`, a pool busy to the last
        // connection) is no outage.
        if read || self.database_answers().await {
            *lost = None;
            return;
        }
        let lost = lost.get_or_insert_with(|| DatabaseLost { since: Instant::now(), looked_at: HashMap::new() });
        if lost.since.elapsed() < self.database_outage_grace {
            return;
        }
        let mut inspector = Inspector::new(&self.broker);
        for running in self.registry.all() {
            let looked_at_lately =
                lost.looked_at.get(&running.tenant).is_some_and(|at| at.elapsed() < self.database_outage_grace);
            if running.state() == ConsumerState::Stopping || looked_at_lately {
                continue;
            }
            lost.looked_at.insert(running.tenant, Instant::now());
            let shared =
                inspector.counts(&running.tenant.queue_name()).await.is_some_and(|(_, consumers)| consumers > 1);
            if shared {
                tracing::warn!(tenant = %running.tenant, unreachable_for = ?lost.since.elapsed(), "pausing: the database is unreachable from this instance");
                running.set_state(ConsumerState::Stopping);
                running.send(Control::Pause);
                self.metrics.reconciler_action(ReconcilerAction::Pause);
            }
        }
        inspector.close().await;
    }

    /// Whether a connection of its own (the pool's may all be busy) reaches the database and gets an answer
    /// within half of [`DESIRED_STATE_TIMEOUT`].
    async fn database_answers(&self) -> bool {
        let options = self.pool.connect_options();
        let ask = async {
            let mut connection = PgConnection::connect_with(&options).await?;
            sea_orm::sqlx::query("SELECT 1").execute(&mut connection).await?;
            connection.close().await
        };
        matches!(tokio::time::timeout(DESIRED_STATE_TIMEOUT / 2, ask).await, Ok(Ok(())))
    }

    /// Returns whether it could read the desired runtime.
    async fn reconcile(
        &self,
        consumers: &mut JoinSet<ConsumerResult>,
        tenants_of: &mut HashMap<tokio::task::Id, TenantId>,
        restarts: &mut RestartSchedule,
        generation: &mut u64,
        shutdown: &CancellationToken,
    ) -> bool {
        self.metrics.reconciler_pass();
        // Bounded twice: the server cancels a read that waits for a lock, and a database that does not answer
        // at all (a network partition) would otherwise hold this loop until the kernel gives up on the
        // connection, minutes later.
        let read = self.tenants.desired_runtime(DESIRED_STATE_TIMEOUT / 2);
        let desired = match tokio::time::timeout(DESIRED_STATE_TIMEOUT, read).await {
            Ok(Ok(desired)) => desired,
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot read the desired runtime; retrying at the next resync");
                self.metrics.reconciler_error(ReconcilerError::DesiredState);
                return false;
            }
            Err(_) => {
                tracing::warn!(timeout = ?DESIRED_STATE_TIMEOUT, "the desired runtime took too long to read; retrying at the next resync");
                self.metrics.reconciler_error(ReconcilerError::DesiredState);
                return false;
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
            match self.registry.get(tenant) {
                Some(running) if running.state() == ConsumerState::Stopping => {}
                Some(running) if running.desired() != workers => {
                    tracing::info!(%tenant, from = running.desired().get(), to = workers.get(), "resizing");
                    running.set_desired(workers);
                    running.send(Control::Resize);
                    self.metrics.reconciler_action(ReconcilerAction::Resize);
                }
                Some(_) => {}
                // None starts once the service shuts down: it would only subscribe to stop again.
                None if connected && !shutdown.is_cancelled() && restarts.may_start(tenant, now) => {
                    *generation += 1;
                    restarts.started(tenant, now);
                    self.start(tenant, workers, *generation, consumers, tenants_of, shutdown);
                }
                None => self.registry.set_desired(tenant, workers),
            }
        }
        for running in self.registry.all() {
            if !wanted.contains_key(&running.tenant) && running.state() != ConsumerState::Stopping {
                tracing::info!(tenant = %running.tenant, "stopping: the tenant was deleted");
                running.set_state(ConsumerState::Stopping);
                running.send(Control::Delete);
                self.metrics.reconciler_action(ReconcilerAction::Stop);
            }
        }
        self.registry.forget_unless(|tenant| wanted.contains_key(tenant));
        self.consumer_connections.forget_unless(|tenant| wanted.contains_key(tenant));
        restarts.retain(|tenant| wanted.contains_key(tenant));
        true
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
        let stats = self.registry.stats_of(tenant, workers);
        let runtime = Arc::new(TenantRuntime::new(tenant, workers, control, stats));
        self.registry.insert(runtime.clone());
        let writer = MessageWriter::new(self.pool.clone(), tenant, self.metrics.clone());
        // The slot goes with the task: it is given back when the consumer has ended and closed its channel.
        let slot = self.consumer_connections.take_slot(tenant);
        let (settings, shutdown, retirement) = (self.settings.clone(), shutdown.clone(), self.retirement.clone());
        let handle = consumers.spawn(async move {
            let ended = consumer::run(runtime, commands, slot, writer, settings, generation, shutdown).await;
            if matches!(ended, Ok(ConsumerEnd::Deleted)) {
                retirement.delete_queues_declared_late(tenant).await;
            }
            (tenant, ended)
        });
        tenants_of.insert(handle.id(), tenant);
    }

    /// Returns whether a pass is wanted now: after a consumer that ended as asked or while it was stopping (a
    /// deleted tenant's, whose retirement may start; a paused one, which starts again once the desired runtime
    /// reads). A failed one waits for its restart time, which the loop wakes for.
    fn consumer_ended(
        &self,
        ended: Result<(tokio::task::Id, ConsumerResult), tokio::task::JoinError>,
        tenants_of: &mut HashMap<tokio::task::Id, TenantId>,
        restarts: &mut RestartSchedule,
    ) -> bool {
        let (id, outcome) = match ended {
            Ok((id, (_, outcome))) => (id, outcome.map_err(|e| (e.reason(), e.to_string()))),
            Err(error) => {
                (error.id(), Err((ConsumerFailureReason::Panicked, format!("consumer task panicked: {error}"))))
            }
        };
        let Some(tenant) = tenants_of.remove(&id) else { return false };
        let stopping = self.registry.get(tenant).is_some_and(|running| running.state() == ConsumerState::Stopping);
        let pass_now = outcome.is_ok() || stopping;
        match outcome {
            Ok(end) => {
                tracing::info!(%tenant, ?end, "consumer ended");
                restarts.ended(tenant);
            }
            Err((reason, error)) => {
                let (delay, in_a_row) = restarts.failed(tenant, Instant::now());
                let failed_at = Utc::now();
                // The delay is at most the backoff's longest: neither step can fail.
                let restart_at = chrono::Duration::from_std(delay)
                    .ok()
                    .and_then(|delay| failed_at.checked_add_signed(delay))
                    .unwrap_or(failed_at);
                // Before the runtime goes: a reader that finds no consumer finds why.
                self.registry.failed(tenant, ConsumerFailure { reason, failed_at, restart_at, in_a_row });
                if worth_a_warning(reason, in_a_row) {
                    tracing::warn!(%tenant, %error, ?delay, in_a_row, "consumer failed; restarting after a pause");
                } else {
                    tracing::debug!(%tenant, %error, ?delay, in_a_row, "consumer failed; restarting after a pause");
                }
                self.metrics.reconciler_action(ReconcilerAction::Restart);
                self.metrics.reconciler_error(ReconcilerError::ConsumerFailed);
            }
        }
        self.registry.remove(tenant);
        pass_now
    }

    /// Deleted tenants whose consumer was not running here when they were deleted may still have queues, and a
    /// publish that raced a delete may have left a rate-limit bucket. Returns whether the sweep completed.
    async fn sweep_retired_tenants(&self) -> bool {
        if let Err(error) = publish_buckets::forget_deleted(&self.retirement.db).await {
            tracing::warn!(%error, "cannot forget the rate-limit buckets of deleted tenants");
            self.metrics.reconciler_error(ReconcilerError::QueueSweep);
            return false;
        }
        let window = RETIRED_SWEEP_WINDOW.max(6 * RETIRED_SWEEP_EVERY * self.resync_interval);
        let deleted = match self.tenants.retired_ids(window).await {
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
        let swept = queues::delete_of_each(&self.broker, deleted).await.is_ok();
        if !swept {
            self.metrics.reconciler_error(ReconcilerError::QueueSweep);
        }
        swept
    }
}

/// When the loop wakes by itself: at the next resync, or earlier for a restart that is due.
fn next_wake(now: Instant, resync_interval: Duration, next_restart: Option<Instant>) -> Instant {
    let resync = now + resync_interval;
    next_restart.map_or(resync, |due| due.clamp(now, resync))
}

/// Waits for the tenants projection to move on. Once its projector has stopped (the service is shutting
/// down) this never returns, and the loop goes on with its timer: a closed watch answers at once, forever.
async fn projection_changed(projection: &mut Option<watch::Receiver<Progress>>) {
    if let Some(receiver) = projection
        && receiver.changed().await.is_ok()
    {
        return;
    }
    *projection = None;
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId::from_uuid(uuid::Uuid::new_v4())
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_consumer_sets_no_wake_up_time() {
        let (mut schedule, tenant, now) = (RestartSchedule::default(), tenant(), Instant::now());
        let (delay, _) = schedule.failed(tenant, now);
        assert!(!schedule.may_start(tenant, now));
        assert_eq!(schedule.next_due(), Some(now + delay));
        tokio::time::advance(delay).await;
        let later = Instant::now();
        assert!(schedule.may_start(tenant, later));
        schedule.started(tenant, later);
        // The restarted consumer runs: the loop must sleep until its resync, not wake at a past due time.
        assert_eq!(schedule.next_due(), None);
        assert_eq!(next_wake(later, Duration::from_secs(5), schedule.next_due()), later + Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_failures_back_off_further_and_are_counted_and_a_stable_run_resets_both() {
        let (mut schedule, tenant) = (RestartSchedule::default(), tenant());
        let first = schedule.failed(tenant, Instant::now());
        assert_eq!(first.1, 1);
        schedule.started(tenant, Instant::now());
        let second = schedule.failed(tenant, Instant::now());
        assert!(second.0 > first.0, "{second:?} after {first:?}");
        assert_eq!(second.1, 2);
        schedule.started(tenant, Instant::now());
        tokio::time::advance(RestartSchedule::STABLE).await;
        assert_eq!(schedule.failed(tenant, Instant::now()), first);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_deleted_while_it_waits_leaves_no_due_time() {
        let (mut schedule, tenant) = (RestartSchedule::default(), tenant());
        schedule.failed(tenant, Instant::now());
        tokio::time::advance(Duration::from_secs(60)).await;
        schedule.retain(|_| false);
        assert_eq!(schedule.next_due(), None);
    }

    #[test]
    fn a_consumer_that_keeps_failing_warns_at_first_then_every_thirtieth_time_and_a_lost_connection_never() {
        let warned: Vec<u32> =
            (1..=100).filter(|&n| worth_a_warning(ConsumerFailureReason::QueueArgumentsDiffer, n)).collect();
        assert_eq!(warned, [1, 2, 3, 30, 60, 90]);
        assert!(!(1..=100).any(|n| worth_a_warning(ConsumerFailureReason::ConnectionLost, n)));
    }

    #[test]
    fn the_wake_up_is_never_in_the_past_nor_after_the_resync() {
        let now = Instant::now();
        let resync = Duration::from_secs(5);
        assert_eq!(next_wake(now, resync, None), now + resync);
        assert_eq!(next_wake(now, resync, now.checked_sub(Duration::from_secs(1))), now);
        assert_eq!(next_wake(now, resync, Some(now + Duration::from_secs(1))), now + Duration::from_secs(1));
        assert_eq!(next_wake(now, resync, Some(now + Duration::from_secs(60))), now + resync);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_projector_does_not_wake_the_loop() {
        let (sender, receiver) = watch::channel(Progress::default());
        let mut projection = Some(receiver);
        sender.send_modify(|_| {});
        projection_changed(&mut projection).await;
        drop(sender);
        // Paused time: the timeout fires only once nothing else can make progress.
        let waited = tokio::time::timeout(Duration::from_secs(3600), projection_changed(&mut projection)).await;
        assert!(waited.is_err(), "a closed watch must not wake the loop");
        let again = tokio::time::timeout(Duration::from_secs(3600), projection_changed(&mut projection)).await;
        assert!(again.is_err());
    }
}

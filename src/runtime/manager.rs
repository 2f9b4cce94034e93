//! The TenantManager: the *actual* runtime state, one entry per tenant with a consumer on this instance.
//! The reconciler owns the changes; the API reads it.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicI64, AtomicU16, AtomicU32, AtomicU64, Ordering},
    },
};

use tokio::sync::{mpsc, watch};

use crate::{
    domain::tenant::{QueueKind, TenantId, Workers},
    metrics::{FailureReason, TenantStatsSnapshot},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerState {
    Starting,
    Running,
    Stopping,
}

impl ConsumerState {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
        }
    }
}

/// What the reconciler tells a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// The pool size changed ([`TenantRuntime::set_desired`]): follow it, and the prefetch with it.
    Resize,
    /// The tenant was deleted: stop, and delete its queues.
    Delete,
}

/// A tenant's message counters and last known queue depths, for `/metrics`. Kept by the [`TenantManager`]
/// from the tenant's first consumer start until the tenant is gone from this instance, so that the counters
/// survive consumer restarts (a Prometheus counter must not reset while its process lives) and the series
/// disappear with the tenant.
#[derive(Debug)]
pub struct TenantStats {
    consumed: AtomicU64,
    persisted: AtomicU64,
    failed: [AtomicU64; 2],
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    /// Desired workers as last set, reported also while no consumer runs.
    desired: AtomicU16,
    /// Ready messages per [`QueueKind`] from the last poll; -1 when unknown (the queue does not exist, or
    /// the broker could not be asked).
    queue_ready: [AtomicI64; 3],
}

impl TenantStats {
    fn new(desired: Workers) -> Self {
        Self {
            consumed: AtomicU64::new(0),
            persisted: AtomicU64::new(0),
            failed: [AtomicU64::new(0), AtomicU64::new(0)],
            retried: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            desired: AtomicU16::new(desired.get()),
            queue_ready: [AtomicI64::new(-1), AtomicI64::new(-1), AtomicI64::new(-1)],
        }
    }

    /// Deliveries received from the broker (each redelivery counts again).
    pub fn consumed(&self, count: u64) {
        self.consumed.fetch_add(count, Ordering::Relaxed);
    }

    /// Deliveries acked after their row was committed.
    pub fn persisted(&self, count: u64) {
        self.persisted.fetch_add(count, Ordering::Relaxed);
    }

    /// A processing attempt that failed (whatever happens to the message next).
    pub fn failed(&self, reason: FailureReason) {
        let index = match reason {
            FailureReason::Transient => 0,
            FailureReason::Permanent => 1,
        };
        self.failed[index].fetch_add(1, Ordering::Relaxed);
    }

    /// A message scheduled for another attempt.
    pub fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }

    /// A message sent to the tenant's dead-letter queue.
    pub fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a polled queue depth (`None`: unknown).
    pub fn set_queue_ready(&self, queue: QueueKind, ready: Option<u32>) {
        self.queue_ready[queue as usize].store(ready.map_or(-1, i64::from), Ordering::Relaxed);
    }

    fn set_desired(&self, workers: Workers) {
        self.desired.store(workers.get(), Ordering::Relaxed);
    }
}

/// One running tenant: shared by its consumer task (which updates it) and the API (which reads it).
pub struct TenantRuntime {
    pub tenant: TenantId,
    stats: Arc<TenantStats>,
    /// Deliveries received and not yet settled by this consumer (per consumer: a restart starts at 0, as
    /// the broker requeues what the old channel held).
    unacked: AtomicU32,
    /// The pool size the workers follow; a watch so that idle workers notice a shrink at once.
    desired: watch::Sender<Workers>,
    running: AtomicU16,
    busy: AtomicU16,
    state: Mutex<ConsumerState>,
    consumer_tag: Mutex<String>,
    control: mpsc::UnboundedSender<Control>,
}

impl TenantRuntime {
    pub fn new(
        tenant: TenantId,
        workers: Workers,
        control: mpsc::UnboundedSender<Control>,
        stats: Arc<TenantStats>,
    ) -> Self {
        stats.set_desired(workers);
        Self {
            tenant,
            stats,
            unacked: AtomicU32::new(0),
            desired: watch::Sender::new(workers),
            running: AtomicU16::new(0),
            busy: AtomicU16::new(0),
            state: Mutex::new(ConsumerState::Starting),
            consumer_tag: Mutex::new(String::new()),
            control,
        }
    }

    pub fn desired(&self) -> Workers {
        *self.desired.borrow()
    }

    pub fn watch_desired(&self) -> watch::Receiver<Workers> {
        self.desired.subscribe()
    }

    pub(super) fn set_desired(&self, workers: Workers) {
        self.stats.set_desired(workers);
        self.desired.send_replace(workers);
    }

    /// The tenant's counters (they outlive this consumer).
    pub fn stats(&self) -> &TenantStats {
        &self.stats
    }

    /// A delivery arrived from the broker: consumed, and held until [`TenantRuntime::delivery_settled`].
    pub fn delivery_received(&self) {
        self.stats.consumed(1);
        self.unacked.fetch_add(1, Ordering::Relaxed);
    }

    /// A delivery was acked, rejected or nacked (or the attempt failed because the channel is gone).
    pub fn delivery_settled(&self) {
        let _ = self.unacked.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    pub fn unacked(&self) -> u32 {
        self.unacked.load(Ordering::Relaxed)
    }

    pub fn running(&self) -> u16 {
        self.running.load(Ordering::Relaxed)
    }

    pub(super) fn set_running(&self, n: u16) {
        self.running.store(n, Ordering::Relaxed);
    }

    pub fn busy(&self) -> u16 {
        self.busy.load(Ordering::Relaxed)
    }

    /// Marks a worker busy until the guard drops.
    pub(super) fn busy_guard(&self) -> BusyGuard<'_> {
        self.busy.fetch_add(1, Ordering::Relaxed);
        BusyGuard(&self.busy)
    }

    pub fn state(&self) -> ConsumerState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn set_state(&self, state: ConsumerState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    pub fn consumer_tag(&self) -> String {
        self.consumer_tag.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn set_consumer_tag(&self, tag: String) {
        *self.consumer_tag.lock().unwrap_or_else(|e| e.into_inner()) = tag;
    }

    /// Sends a control message; false if the consumer has already ended.
    pub(super) fn send(&self, control: Control) -> bool {
        self.control.send(control).is_ok()
    }
}

pub(super) struct BusyGuard<'a>(&'a AtomicU16);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The registry of running tenants, and of the stats of every tenant this instance has consumed for.
#[derive(Clone, Default)]
pub struct TenantManager {
    tenants: Arc<RwLock<HashMap<TenantId, Arc<TenantRuntime>>>>,
    stats: Arc<RwLock<HashMap<TenantId, Arc<TenantStats>>>>,
}

impl TenantManager {
    /// The tenant's stats, created on first use.
    pub(super) fn stats_of(&self, tenant: TenantId, workers: Workers) -> Arc<TenantStats> {
        if let Some(stats) = self.stats.read().unwrap_or_else(|e| e.into_inner()).get(&tenant) {
            return stats.clone();
        }
        let mut stats = self.stats.write().unwrap_or_else(|e| e.into_inner());
        stats.entry(tenant).or_insert_with(|| Arc::new(TenantStats::new(workers))).clone()
    }

    /// Tenants with stats: the ones `/metrics` reports.
    pub fn tenants_with_stats(&self) -> Vec<(TenantId, Arc<TenantStats>)> {
        let stats = self.stats.read().unwrap_or_else(|e| e.into_inner());
        stats.iter().map(|(tenant, stats)| (*tenant, stats.clone())).collect()
    }

    /// Drops the stats of tenants that are not `wanted` and have no consumer here any more, so that their
    /// series leave `/metrics`.
    pub(super) fn forget_stats_unless(&self, wanted: impl Fn(&TenantId) -> bool) {
        let running = self.read();
        self.stats
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|tenant, _| wanted(tenant) || running.contains_key(tenant));
    }

    /// Every tenant's numbers, for one scrape.
    pub fn snapshot(&self) -> Vec<TenantStatsSnapshot> {
        let running = self.read();
        let stats = self.stats.read().unwrap_or_else(|e| e.into_inner());
        stats
            .iter()
            .map(|(&tenant, stats)| {
                let runtime = running.get(&tenant);
                let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
                TenantStatsSnapshot {
                    tenant,
                    consumed: load(&stats.consumed),
                    persisted: load(&stats.persisted),
                    failed_transient: load(&stats.failed[0]),
                    failed_permanent: load(&stats.failed[1]),
                    retried: load(&stats.retried),
                    dead_lettered: load(&stats.dead_lettered),
                    workers_desired: stats.desired.load(Ordering::Relaxed),
                    workers_running: runtime.map_or(0, |r| r.running()),
                    workers_busy: runtime.map_or(0, |r| r.busy()),
                    consumer_up: runtime.is_some_and(|r| r.state() == ConsumerState::Running),
                    unacked: runtime.map_or(0, |r| r.unacked()),
                    queue_ready: std::array::from_fn(|i| {
                        u64::try_from(stats.queue_ready[i].load(Ordering::Relaxed)).ok()
                    }),
                }
            })
            .collect()
    }

    pub fn get(&self, tenant: TenantId) -> Option<Arc<TenantRuntime>> {
        self.read().get(&tenant).cloned()
    }

    pub fn all(&self) -> Vec<Arc<TenantRuntime>> {
        self.read().values().cloned().collect()
    }

    pub(super) fn insert(&self, runtime: Arc<TenantRuntime>) {
        self.write().insert(runtime.tenant, runtime);
    }

    pub(super) fn remove(&self, tenant: TenantId) {
        self.write().remove(&tenant);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<TenantId, Arc<TenantRuntime>>> {
        self.tenants.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<TenantId, Arc<TenantRuntime>>> {
        self.tenants.write().unwrap_or_else(|e| e.into_inner())
    }
}

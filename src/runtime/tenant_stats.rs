//! A tenant's numbers for `/metrics`: message counters, desired workers, last polled queue depths.

use std::sync::atomic::{AtomicI64, AtomicU16, AtomicU64, Ordering};

use crate::{
    domain::tenant::{QueueKind, TenantId, Workers},
    metrics::{FailureReason, TenantStatsSnapshot},
};

use super::tenant_runtime::{ConsumerState, TenantRuntime};

/// A tenant's message counters and last known queue depths, for `/metrics`. Kept by the [`ConsumerRegistry`](super::registry::ConsumerRegistry)
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
    pub(super) fn new(desired: Workers) -> Self {
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

    pub(super) fn set_desired(&self, workers: Workers) {
        self.desired.store(workers.get(), Ordering::Relaxed);
    }

    /// The numbers for one scrape, with those of the tenant's consumer on this instance, if one runs.
    pub(super) fn snapshot(&self, tenant: TenantId, runtime: Option<&TenantRuntime>) -> TenantStatsSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TenantStatsSnapshot {
            tenant,
            consumed: load(&self.consumed),
            persisted: load(&self.persisted),
            failed_transient: load(&self.failed[0]),
            failed_permanent: load(&self.failed[1]),
            retried: load(&self.retried),
            dead_lettered: load(&self.dead_lettered),
            workers_desired: self.desired.load(Ordering::Relaxed),
            workers_running: runtime.map_or(0, TenantRuntime::running),
            workers_busy: runtime.map_or(0, TenantRuntime::busy),
            workers_waiting_for_write: runtime.map_or(0, TenantRuntime::waiting_for_write),
            consumer_up: runtime.is_some_and(|r| r.state() == ConsumerState::Running),
            unacked: runtime.map_or(0, TenantRuntime::unacked),
            queue_ready: std::array::from_fn(|i| u64::try_from(self.queue_ready[i].load(Ordering::Relaxed)).ok()),
        }
    }
}

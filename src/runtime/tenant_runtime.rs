//! One tenant's running consumer as the rest of the service sees it: its state, pool size, busy workers,
//! unacked deliveries and the channel the reconciler controls it through.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU16, AtomicU32, Ordering},
};

use tokio::sync::{mpsc, watch};

use crate::domain::tenant::{TenantId, Workers};

use super::tenant_stats::TenantStats;

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
    /// This instance cannot reach the database: stop, handing back what is held, until it can.
    Pause,
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
    /// Of the busy workers, those waiting for the tenant's turn at the shared write connections.
    waiting_for_write: AtomicU16,
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
            waiting_for_write: AtomicU16::new(0),
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
    pub(super) fn busy_guard(&self) -> CountGuard<'_> {
        CountGuard::new(&self.busy)
    }

    pub fn waiting_for_write(&self) -> u16 {
        self.waiting_for_write.load(Ordering::Relaxed)
    }

    /// Marks a busy worker as waiting for a write turn until the guard drops.
    pub(super) fn waiting_for_write_guard(&self) -> CountGuard<'_> {
        CountGuard::new(&self.waiting_for_write)
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

/// Counts its holder in a gauge for as long as it lives.
pub(super) struct CountGuard<'a>(&'a AtomicU16);

impl<'a> CountGuard<'a> {
    fn new(count: &'a AtomicU16) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for CountGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

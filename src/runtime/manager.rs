//! The TenantManager: the *actual* runtime state, one entry per tenant with a consumer on this instance.
//! The reconciler owns the changes; the API reads it.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU16, Ordering},
    },
};

use tokio::sync::{mpsc, watch};

use crate::domain::tenant::{TenantId, Workers};

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
    /// Change the pool size (and the prefetch with it).
    Resize(Workers),
    /// The tenant was deleted: stop, and delete its queues.
    Delete,
}

/// One running tenant: shared by its consumer task (which updates it) and the API (which reads it).
pub struct TenantRuntime {
    pub tenant: TenantId,
    /// The pool size the workers follow; a watch so that idle workers notice a shrink at once.
    desired: watch::Sender<Workers>,
    running: AtomicU16,
    busy: AtomicU16,
    state: Mutex<ConsumerState>,
    consumer_tag: Mutex<String>,
    control: mpsc::UnboundedSender<Control>,
}

impl TenantRuntime {
    pub fn new(tenant: TenantId, workers: Workers, control: mpsc::UnboundedSender<Control>) -> Self {
        Self {
            tenant,
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
        self.desired.send_replace(workers);
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

/// The registry of running tenants.
#[derive(Clone, Default)]
pub struct TenantManager {
    tenants: Arc<RwLock<HashMap<TenantId, Arc<TenantRuntime>>>>,
}

impl TenantManager {
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

//! The registry of this instance's running consumers (the *actual* runtime state, one entry per tenant with a
//! consumer here) and of the numbers of every tenant consumed for. The reconciler changes it; the API and
//! `/metrics` read it.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use chrono::{DateTime, Utc};

use crate::{
    domain::tenant::{TenantId, Workers},
    metrics::TenantStatsSnapshot,
};

use super::{tenant_runtime::TenantRuntime, tenant_stats::TenantStats};

/// The registry of running tenants, of those whose consumer failed and waits to start again, and of the stats
/// of every tenant this instance has consumed for.
#[derive(Clone, Default)]
pub struct ConsumerRegistry {
    tenants: Arc<RwLock<HashMap<TenantId, Arc<TenantRuntime>>>>,
    failed: Arc<RwLock<HashMap<TenantId, ConsumerFailure>>>,
    stats: Arc<RwLock<HashMap<TenantId, Arc<TenantStats>>>>,
}

/// Why a consumer failed, in terms an operator can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerFailureReason {
    /// The broker refused the subscription: another client consumes the queue exclusively, or the broker user
    /// may not read it.
    AccessRefused,
    /// The tenant's queue exists with other arguments than the service declares (declared by someone else).
    QueueArgumentsDiffer,
    /// The broker ended the subscription: the queue was deleted, or its leader moved.
    SubscriptionCancelled,
    /// The consumer's broker connection closed.
    ConnectionLost,
    /// A resize could not hand the old subscription's deliveries over in time.
    HandoverTimedOut,
    /// A worker or the consumer panicked (a bug: the log has it).
    Panicked,
    /// Any other error from the broker (the log has it).
    BrokerError,
}

impl ConsumerFailureReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AccessRefused => "access_refused",
            Self::QueueArgumentsDiffer => "queue_arguments_differ",
            Self::SubscriptionCancelled => "subscription_cancelled",
            Self::ConnectionLost => "connection_lost",
            Self::HandoverTimedOut => "handover_timed_out",
            Self::Panicked => "panicked",
            Self::BrokerError => "broker_error",
        }
    }
}

/// A tenant whose consumer failed on this instance and has not started again yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerFailure {
    pub reason: ConsumerFailureReason,
    pub failed_at: DateTime<Utc>,
    /// The earliest the consumer starts again (later while this instance has no broker connection).
    pub restart_at: DateTime<Utc>,
    /// Failures in a row, without a run of a minute in between.
    pub in_a_row: u32,
}

impl ConsumerRegistry {
    /// The tenant's stats, created on first use.
    pub(super) fn stats_of(&self, tenant: TenantId, workers: Workers) -> Arc<TenantStats> {
        if let Some(stats) = self.stats.read().unwrap_or_else(|e| e.into_inner()).get(&tenant) {
            return stats.clone();
        }
        let mut stats = self.stats.write().unwrap_or_else(|e| e.into_inner());
        stats.entry(tenant).or_insert_with(|| Arc::new(TenantStats::new(workers))).clone()
    }

    /// A tenant with no consumer here (waiting to restart, or for the broker) still reports the workers it is
    /// meant to have, if it reports at all.
    pub(super) fn set_desired(&self, tenant: TenantId, workers: Workers) {
        if let Some(stats) = self.stats.read().unwrap_or_else(|e| e.into_inner()).get(&tenant) {
            stats.set_desired(workers);
        }
    }

    /// Tenants with stats: the ones `/metrics` reports.
    pub fn tenants_with_stats(&self) -> Vec<(TenantId, Arc<TenantStats>)> {
        let stats = self.stats.read().unwrap_or_else(|e| e.into_inner());
        stats.iter().map(|(tenant, stats)| (*tenant, stats.clone())).collect()
    }

    /// Forgets what tenants that are not `wanted` (deleted) left here: their failures (deleted while their
    /// consumer waited to restart), and their stats once no consumer of theirs runs here any more, so that
    /// their series leave `/metrics`.
    pub(super) fn forget_unless(&self, wanted: impl Fn(&TenantId) -> bool) {
        self.failed.write().unwrap_or_else(|e| e.into_inner()).retain(|tenant, _| wanted(tenant));
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
        stats.iter().map(|(&tenant, stats)| stats.snapshot(tenant, running.get(&tenant).map(Arc::as_ref))).collect()
    }

    pub fn get(&self, tenant: TenantId) -> Option<Arc<TenantRuntime>> {
        self.read().get(&tenant).cloned()
    }

    pub fn all(&self) -> Vec<Arc<TenantRuntime>> {
        self.read().values().cloned().collect()
    }

    /// Why the tenant's consumer is not running here, while it waits to start again.
    pub fn failure(&self, tenant: TenantId) -> Option<ConsumerFailure> {
        self.failed.read().unwrap_or_else(|e| e.into_inner()).get(&tenant).cloned()
    }

    pub(super) fn failed(&self, tenant: TenantId, failure: ConsumerFailure) {
        self.failed.write().unwrap_or_else(|e| e.into_inner()).insert(tenant, failure);
    }

    /// A consumer starts: it is no longer waiting after a failure. The runtime goes in first, so that a reader
    /// that finds no runtime still finds the failure.
    pub(super) fn insert(&self, runtime: Arc<TenantRuntime>) {
        let tenant = runtime.tenant;
        self.write().insert(tenant, runtime);
        self.failed.write().unwrap_or_else(|e| e.into_inner()).remove(&tenant);
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

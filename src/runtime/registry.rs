//! The registry of this instance's running consumers (the *actual* runtime state, one entry per tenant with a
//! consumer here) and of the numbers of every tenant consumed for. The reconciler changes it; the API and
//! `/metrics` read it.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use crate::{
    domain::tenant::{TenantId, Workers},
    metrics::TenantStatsSnapshot,
};

use super::{tenant_runtime::TenantRuntime, tenant_stats::TenantStats};

/// The registry of running tenants, and of the stats of every tenant this instance has consumed for.
#[derive(Clone, Default)]
pub struct ConsumerRegistry {
    tenants: Arc<RwLock<HashMap<TenantId, Arc<TenantRuntime>>>>,
    stats: Arc<RwLock<HashMap<TenantId, Arc<TenantStats>>>>,
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
        stats.iter().map(|(&tenant, stats)| stats.snapshot(tenant, running.get(&tenant).map(Arc::as_ref))).collect()
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

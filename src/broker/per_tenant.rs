//! One value per tenant, shared by whoever holds it at the moment (a tenant's share of the publishing budget,
//! its turn at its dead letters): a tenant's entry goes once no one holds it, so the map grows with the tenants
//! in use, never with every tenant seen.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, Weak},
};

use crate::domain::tenant::TenantId;

pub struct PerTenant<T>(Mutex<HashMap<TenantId, Weak<T>>>);

impl<T> Default for PerTenant<T> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<T> PerTenant<T> {
    /// The tenant's value while someone holds it, else a new one from `make` (and the entries no one holds
    /// any more are dropped).
    pub fn get(&self, tenant: TenantId, make: impl FnOnce() -> T) -> Arc<T> {
        let mut entries = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = entries.get(&tenant).and_then(Weak::upgrade) {
            return held;
        }
        entries.retain(|_, entry| entry.strong_count() > 0);
        let made = Arc::new(make());
        entries.insert(tenant, Arc::downgrade(&made));
        made
    }

    /// Tenants whose value someone holds.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).values().filter(|entry| entry.strong_count() > 0).count()
    }
}

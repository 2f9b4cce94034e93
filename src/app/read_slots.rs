//! How many of one tenant's message pages may be read from the database at once.
//!
//! A page read holds a connection of the pool every part of the service shares. Behind a lock on the tenant's
//! partition (an operator's `VACUUM FULL`, `CLUSTER` or `ALTER TABLE` on it) a read waits, and without a
//! cap that tenant's clients, each sending its next request, would take every connection: the other tenants'
//! writes, pages and commands, the projectors and readiness would all fail. With one, the tenant's reads
//! beyond its slots wait here, holding no connection, and answer 503 when none frees in time.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::domain::tenant::TenantId;

use super::AppError;

/// The longest a page read waits for one of its tenant's slots.
pub const SLOT_WAIT: Duration = Duration::from_secs(5);

type SlotsByTenant = HashMap<TenantId, Arc<Semaphore>>;

pub struct ReadSlots {
    per_tenant: usize,
    wait: Duration,
    /// Only tenants with a read under way or waiting: a tenant's entry goes with its last read.
    tenants: Arc<Mutex<SlotsByTenant>>,
}

/// One of a tenant's slots, held for a read; given back when dropped.
pub struct ReadSlot {
    permit: Option<OwnedSemaphorePermit>,
    tenant: TenantId,
    tenants: Arc<Mutex<SlotsByTenant>>,
}

impl ReadSlots {
    /// `per_tenant` (`read.max_concurrent_per_tenant`) slots for each tenant; at least one.
    pub fn new(per_tenant: usize, wait: Duration) -> Self {
        Self { per_tenant: per_tenant.max(1), wait, tenants: Arc::default() }
    }

    /// A slot of `tenant`'s, once one is free; [`AppError::PageReadsWaiting`] if none frees within the wait.
    pub async fn acquire(&self, tenant: TenantId) -> Result<ReadSlot, AppError> {
        let semaphore = {
            let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
            tenants.entry(tenant).or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant))).clone()
        };
        // Made before the wait, so that a wait given up (timed out, or its request dropped) forgets the
        // tenant as a finished read does.
        let mut slot = ReadSlot { permit: None, tenant, tenants: self.tenants.clone() };
        let acquired = tokio::time::timeout(self.wait, semaphore.acquire_owned()).await;
        match acquired {
            Ok(Ok(permit)) => {
                slot.permit = Some(permit);
                Ok(slot)
            }
            // The semaphore is never closed.
            Ok(Err(_)) | Err(_) => Err(AppError::PageReadsWaiting),
        }
    }

    #[cfg(test)]
    fn tenants_tracked(&self) -> usize {
        self.tenants.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl Drop for ReadSlot {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        // Held by the map alone: no read of the tenant holds or awaits a slot (a new one would take the lock
        // first), so its entry can go.
        if tenants.get(&self.tenant).is_some_and(|semaphore| Arc::strong_count(semaphore) == 1) {
            tenants.remove(&self.tenant);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_tenant_gets_its_slots_and_waits_for_a_free_one_then_gives_up() {
        let slots = ReadSlots::new(2, Duration::from_secs(5));
        let busy = TenantId::generate();
        let first = slots.acquire(busy).await.expect("a free slot");
        let _second = slots.acquire(busy).await.expect("a free slot");
        assert!(matches!(slots.acquire(busy).await, Err(AppError::PageReadsWaiting)), "both taken");

        let waiting = slots.acquire(busy);
        tokio::pin!(waiting);
        assert!(tokio::time::timeout(Duration::from_secs(1), &mut waiting).await.is_err(), "still both taken");
        drop(first);
        assert!(waiting.await.is_ok(), "the slot given back");
    }

    #[tokio::test(start_paused = true)]
    async fn one_tenants_reads_leave_the_others_slots_free() {
        let slots = ReadSlots::new(1, Duration::from_secs(5));
        let _held = slots.acquire(TenantId::generate()).await.expect("a free slot");
        assert!(slots.acquire(TenantId::generate()).await.is_ok(), "another tenant's slot");
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_is_forgotten_with_its_last_read_or_wait() {
        let slots = ReadSlots::new(1, Duration::from_secs(5));
        let tenant = TenantId::generate();
        let held = slots.acquire(tenant).await.expect("a free slot");
        assert!(slots.acquire(tenant).await.is_err(), "the wait given up");
        assert_eq!(slots.tenants_tracked(), 1, "still read");
        drop(held);
        assert_eq!(slots.tenants_tracked(), 0);
    }
}

//! How many of one tenant's message pages may be read from the database at once.
//!
//! A page read holds a connection of the pool every part of the service shares. Behind a lock on the tenant's
//! partition (an operator's `VACUUM FULL`, `CLUSTER` or `ALTER TABLE` on it) a read waits, and without a
//! cap that tenant's clients, each sending its next request, would take every connection: the other tenants'
//! writes, pages and commands, the projectors and readiness would all fail. With one, the tenant's reads
//! beyond its slots wait here, holding no connection, and answer 503 when none frees in time. The cap is per
//! tenant: readers of several locked tenants hold that many connections each.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

use crate::domain::tenant::TenantId;

type SlotsByTenant = HashMap<TenantId, Arc<Semaphore>>;

pub struct ReadSlots {
    per_tenant: usize,
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
    /// `per_tenant` (`read.max_concurrent_per_tenant`, validated to be at least 1) slots for each tenant.
    pub fn new(per_tenant: usize) -> Self {
        Self { per_tenant, tenants: Arc::default() }
    }

    /// A slot of `tenant`'s, once one is free; `None` if none frees by `deadline`.
    pub async fn acquire(&self, tenant: TenantId, deadline: Instant) -> Option<ReadSlot> {
        let semaphore = {
            let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
            tenants.entry(tenant).or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant))).clone()
        };
        // Made before the wait, so that a wait given up (timed out, or its request dropped) forgets the
        // tenant as a finished read does. The wait owns `semaphore`, so that it is gone before `slot` is.
        let mut slot = ReadSlot { permit: None, tenant, tenants: self.tenants.clone() };
        let acquired = tokio::time::timeout_at(deadline, semaphore.acquire_owned()).await;
        // The semaphore is never closed.
        slot.permit = Some(acquired.ok()?.ok()?);
        Some(slot)
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
    use std::time::Duration;

    use super::*;

    fn in_5s() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_gets_its_slots_and_waits_for_a_free_one_until_its_deadline() {
        let slots = ReadSlots::new(2);
        let busy = TenantId::generate();
        let first = slots.acquire(busy, in_5s()).await.expect("a free slot");
        let _second = slots.acquire(busy, in_5s()).await.expect("a free slot");
        let started = Instant::now();
        assert!(slots.acquire(busy, in_5s()).await.is_none(), "both taken");
        assert_eq!(started.elapsed(), Duration::from_secs(5), "gave up at the deadline");

        let waiting = slots.acquire(busy, in_5s());
        tokio::pin!(waiting);
        assert!(tokio::time::timeout(Duration::from_secs(1), &mut waiting).await.is_err(), "still both taken");
        drop(first);
        assert!(waiting.await.is_some(), "the slot given back");
    }

    #[tokio::test(start_paused = true)]
    async fn one_tenants_reads_leave_the_others_slots_free() {
        let slots = ReadSlots::new(1);
        let _held = slots.acquire(TenantId::generate(), in_5s()).await.expect("a free slot");
        assert!(slots.acquire(TenantId::generate(), in_5s()).await.is_some(), "another tenant's slot");
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_is_forgotten_with_its_last_read_or_wait_even_one_cancelled() {
        let slots = ReadSlots::new(1);
        let tenant = TenantId::generate();
        let held = slots.acquire(tenant, in_5s()).await.expect("a free slot");
        assert!(slots.acquire(tenant, in_5s()).await.is_none(), "the wait given up");
        // A wait dropped half way, as when its client goes.
        assert!(tokio::time::timeout(Duration::from_secs(1), slots.acquire(tenant, in_5s())).await.is_err());
        assert_eq!(slots.tenants_tracked(), 1, "still read");
        drop(held);
        assert_eq!(slots.tenants_tracked(), 0);

        // The last to go a wait dropped half way: its client gone after the slot it waited for was freed.
        let held = slots.acquire(tenant, in_5s()).await.expect("a free slot");
        let mut waiting = Box::pin(slots.acquire(tenant, in_5s()));
        assert!(futures_util::poll!(&mut waiting).is_pending(), "waits");
        drop(held);
        drop(waiting);
        assert_eq!(slots.tenants_tracked(), 0, "forgotten with the dropped wait");
    }
}

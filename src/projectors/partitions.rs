//! One `messages` partition per tenant, created on TenantCreated. TenantDeleted leaves it: the runtime drops
//! or detaches it once every consumer of the tenant has stopped (see `runtime::retirement`), since a
//! projector cannot know what the consumers of every instance still write. Creating is idempotent. A replay
//! skips tenants the tenants read model already shows deleted, so it neither changes existing partitions nor
//! brings back retired ones; live, a deleted tenant still gets its partition, since it cannot have been retired
//! without one (its creation may have waited for a lock until after the delete), and the retirement follows.

use sea_orm::DatabaseTransaction;

use crate::{
    domain::tenant::{TenantEvent, TenantId},
    store::{StoreError, events::RecordedEvent, partitions},
};

use super::Projector;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionsProjector {
    /// Following the log as it grows.
    Live,
    /// Rebuilding from the start (`tenantmq replay`).
    Replay,
}

impl Projector for PartitionsProjector {
    const NAME: &'static str = partitions::PROJECTOR;

    async fn apply(&self, txn: &DatabaseTransaction, event: &RecordedEvent) -> Result<(), StoreError> {
        let tenant = TenantId::from_uuid(event.stream_id);
        match event.decode::<TenantEvent>()? {
            TenantEvent::Created { .. } if *self == Self::Live || !partitions::is_deleted(txn, tenant).await? => {
                partitions::create(txn, tenant).await
            }
            _ => Ok(()),
        }
    }

    /// Partitions hold messages, which the log cannot rebuild: a replay keeps them and re-applies the
    /// idempotent DDL.
    async fn reset(&self, _txn: &DatabaseTransaction) -> Result<(), StoreError> {
        Ok(())
    }
}

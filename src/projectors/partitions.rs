//! One `messages` partition per tenant, created on TenantCreated. TenantDeleted leaves it: the runtime drops
//! or detaches it once every consumer of the tenant has stopped (see `runtime::retirement`), since a
//! projector cannot know what the consumers of every instance still write. Creating is idempotent. Live, a
//! deleted tenant still gets its partition, since it cannot have been retired without one (its creation may
//! have waited for a lock until after the delete), and the retirement follows. A replay skips the deleted
//! tenants the live projector had passed, so it brings back no retired partition, and makes the partitions
//! still owed, those of deleted tenants included: without one, a tenant would look retired before its
//! retirement ran.

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
    /// Rebuilding from the start (`tenantmq replay`), with the live projector's checkpoint when it began.
    Replay { live_reached: i64 },
}

impl PartitionsProjector {
    /// Whether the tenant created at `position` gets a partition: always live; in a replay unless it is deleted
    /// and the live projector had passed its creation (so its partition was made, and may be retired since).
    async fn owes_partition(
        &self,
        txn: &DatabaseTransaction,
        tenant: TenantId,
        position: i64,
    ) -> Result<bool, StoreError> {
        match *self {
            Self::Live => Ok(true),
            Self::Replay { live_reached } => Ok(position > live_reached || !partitions::is_deleted(txn, tenant).await?),
        }
    }
}

impl Projector for PartitionsProjector {
    const NAME: &'static str = partitions::PROJECTOR;

    async fn apply(&self, txn: &DatabaseTransaction, event: &RecordedEvent) -> Result<(), StoreError> {
        // Only creations matter here: any other event, one of a type a newer release added included, is
        // passed over undecoded, so that it cannot stop the partitions of the tenants created after it. A
        // creation of a version this release does not know stops the projector (it cannot be decoded): passed
        // over, its tenant would get no partition, and would look retired once deleted.
        if !event.event_type.starts_with(TenantEvent::CREATED_PREFIX) {
            return Ok(());
        }
        let tenant = TenantId::from_uuid(event.stream_id);
        match event.decode::<TenantEvent>()? {
            TenantEvent::Created { .. } if self.owes_partition(txn, tenant, event.position).await? => {
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

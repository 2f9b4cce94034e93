//! One `messages` partition per tenant: created on TenantCreated, dropped (or detached) on TenantDeleted.
//! Both steps are idempotent, so a replay over existing partitions changes nothing.

use sea_orm::DatabaseTransaction;

use crate::{
    config::OnTenantDelete,
    domain::tenant::{TenantEvent, TenantId},
    store::{StoreError, events::RecordedEvent, partitions},
};

use super::Projector;

#[derive(Debug, Clone, Copy)]
pub struct PartitionsProjector {
    pub on_delete: OnTenantDelete,
}

impl Projector for PartitionsProjector {
    const NAME: &'static str = "message_partitions";

    async fn apply(&self, txn: &DatabaseTransaction, event: &RecordedEvent) -> Result<(), StoreError> {
        let tenant = TenantId::from_uuid(event.stream_id);
        match event.decode::<TenantEvent>()? {
            TenantEvent::Created { .. } => partitions::create(txn, tenant).await,
            TenantEvent::Deleted {} => match self.on_delete {
                OnTenantDelete::Drop => partitions::drop(txn, tenant).await,
                OnTenantDelete::Detach => partitions::detach(txn, tenant).await,
            },
            TenantEvent::ConcurrencySet { .. } => Ok(()),
        }
    }

    /// Partitions hold messages, which the log cannot rebuild: a replay keeps them and re-applies the
    /// idempotent DDL.
    async fn reset(&self, _txn: &DatabaseTransaction) -> Result<(), StoreError> {
        Ok(())
    }
}

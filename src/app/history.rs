//! A tenant's history as the event log holds it: readable after the tenant is deleted, for auditors.

use crate::{domain::tenant::TenantId, store::events::EventStore};

pub use crate::store::events::{EventMetadata, RecordedEvent};

use super::AppError;

#[derive(Clone)]
pub struct History {
    events: EventStore,
}

impl History {
    pub fn new(events: EventStore) -> Self {
        Self { events }
    }

    /// Up to `limit` events of the tenant's stream after version `after_version`, oldest first. A tenant
    /// that never existed has no events at all.
    pub async fn events(
        &self,
        tenant: TenantId,
        after_version: i32,
        limit: u64,
    ) -> Result<Vec<RecordedEvent>, AppError> {
        let events = self.events.read_stream(tenant.as_uuid(), after_version, limit).await?;
        if events.is_empty() && after_version == 0 {
            return Err(AppError::NoSuchTenant(tenant));
        }
        Ok(events)
    }
}

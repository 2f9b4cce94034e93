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
    /// that never existed has no events at all, whatever the cursor says.
    pub async fn events(
        &self,
        tenant: TenantId,
        after_version: i32,
        limit: u64,
    ) -> Result<Vec<RecordedEvent>, AppError> {
        let events = self.events.read_stream(tenant.as_uuid(), after_version, limit).await?;
        // Past the end of a stream is an empty page; a stream that is not there at all (a cursor made up for a
        // tenant that never existed) is no tenant.
        let exists = !events.is_empty()
            || (after_version > 0 && !self.events.read_stream(tenant.as_uuid(), 0, 1).await?.is_empty());
        if !exists {
            return Err(AppError::NoSuchTenant(tenant));
        }
        Ok(events)
    }
}

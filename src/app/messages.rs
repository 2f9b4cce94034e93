//! Publishing to a tenant's queue, and reading its persisted messages back a page at a time.

use std::{sync::Arc, time::Duration};

use sea_orm::DatabaseConnection;

use crate::{
    broker::Publisher,
    domain::tenant::TenantId,
    store::{messages, tenants::TenantReadModel},
};

pub use crate::{
    broker::OutgoingMessage,
    store::messages::{MessageKey, MessageRow, Page},
};

use super::{AppError, Quotas, require_live};

#[derive(Clone)]
pub struct Messages {
    tenants: TenantReadModel,
    publisher: Arc<Publisher>,
    quotas: Arc<Quotas>,
    db: DatabaseConnection,
    /// `rabbitmq.publish_timeout`: the longest a publish waits for the broker's confirms.
    publish_timeout: Duration,
    /// `read.max_page_bytes`: most payload bytes in a page.
    max_page_bytes: usize,
}

impl Messages {
    pub fn new(
        db: DatabaseConnection,
        publisher: Arc<Publisher>,
        quotas: Quotas,
        publish_timeout: Duration,
        max_page_bytes: usize,
    ) -> Self {
        let tenants = TenantReadModel::new(db.clone());
        Self { tenants, publisher, quotas: Arc::new(quotas), db, publish_timeout, max_page_bytes }
    }

    /// Publishes persistent messages to the live tenant's queue, within its limits (all of them or none), and
    /// returns once the broker has confirmed all of them. A message the broker returns as unroutable (the queue is not declared yet) is published again
    /// after declaring the tenant's queues, unless the tenant was deleted meanwhile (its retirement deleted
    /// the queues): a publish that raced with the delete fails rather than bring them back.
    #[tracing::instrument(name = "publish", skip_all, fields(%tenant, messages = messages.len()))]
    pub async fn publish(&self, tenant: TenantId, messages: &[OutgoingMessage]) -> Result<(), AppError> {
        let row = require_live(&self.tenants, tenant).await?;
        self.quotas.admit(&row, u32::try_from(messages.len()).unwrap_or(u32::MAX)).await?;
        tokio::time::timeout(self.publish_timeout, self.publish_confirmed(tenant, messages))
            .await
            .map_err(|_| AppError::PublishTimeout(self.publish_timeout))?
    }

    async fn publish_confirmed(&self, tenant: TenantId, messages: &[OutgoingMessage]) -> Result<(), AppError> {
        let returned = self.publisher.send(tenant, &messages.iter().collect::<Vec<_>>()).await?;
        if returned.is_empty() {
            return Ok(());
        }
        if self.tenants.get_active(tenant).await?.is_none() {
            return Err(AppError::TenantDeleted);
        }
        tracing::info!(%tenant, returned = returned.len(), "the broker returned messages as unroutable; declaring the tenant's queues");
        self.publisher.declare(tenant).await?;
        let returned: Vec<_> = returned.iter().map(|&index| &messages[index]).collect();
        let again = self.publisher.send(tenant, &returned).await?;
        if again.is_empty() { Ok(()) } else { Err(AppError::Unroutable) }
    }

    /// Up to `limit` of the live tenant's messages after `after`, in commit order, ending early at
    /// `read.max_page_bytes` of payloads.
    pub async fn page(&self, tenant: TenantId, after: MessageKey, limit: u64) -> Result<Page, AppError> {
        require_live(&self.tenants, tenant).await?;
        Ok(messages::page(&self.db, tenant, after, limit, self.max_page_bytes).await?)
    }
}

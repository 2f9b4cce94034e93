//! Publishing to a tenant's queue, and reading its persisted messages back a page at a time.

use std::{sync::Arc, time::Duration};

use sea_orm::DatabaseConnection;
use tracing::Instrument;

use crate::{
    backoff::Backoff,
    broker::{BrokerError, Publisher},
    config::ReadConfig,
    detach::DetachOnDrop,
    domain::tenant::TenantId,
    store::{messages, tenants::TenantReadModel},
};

pub use crate::{
    broker::OutgoingMessage,
    store::messages::{MessageKey, MessageRow, Page},
};

use super::{AppError, Quotas, read_slots::ReadSlots, require_live};

/// Refused publishes sent again (after 50, 100, 200 and 400 ms) before the refusal is answered.
const REFUSED_PUBLISH_RETRIES: u32 = 4;

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
    /// `read.max_concurrent_per_tenant`: a tenant's page reads that may hold a database connection at once.
    read_slots: Arc<ReadSlots>,
    /// `read.page_timeout`: the longest a page is waited for, its wait for a slot included.
    page_timeout: Duration,
}

impl Messages {
    pub fn new(
        db: DatabaseConnection,
        publisher: Arc<Publisher>,
        quotas: Quotas,
        publish_timeout: Duration,
        read: &ReadConfig,
    ) -> Self {
        Self {
            tenants: TenantReadModel::new(db.clone()),
            publisher,
            quotas: Arc::new(quotas),
            db,
            publish_timeout,
            max_page_bytes: read.max_page_bytes,
            read_slots: Arc::new(ReadSlots::new(read.max_concurrent_per_tenant)),
            page_timeout: read.page_timeout,
        }
    }

    /// Publishes persistent messages to the live tenant's queue, within its limits (all of them or none), and
    /// returns once the broker has confirmed all of them. A message the broker returns as unroutable (the queue
    /// is not declared yet) is published again after declaring the tenant's queues, unless the tenant was
    /// deleted meanwhile (its retirement deleted the queues), before or just after the declare: a publish that
    /// raced with the delete fails rather than send into queues nobody consumes.
    #[tracing::instrument(name = "publish", skip_all, fields(%tenant, messages = messages.len()))]
    pub async fn publish(&self, tenant: TenantId, messages: &[OutgoingMessage]) -> Result<(), AppError> {
        let row = require_live(&self.tenants, tenant).await?;
        self.quotas.admit(&row, u32::try_from(messages.len()).unwrap_or(u32::MAX)).await?;
        tokio::time::timeout(self.publish_timeout, self.publish_confirmed(tenant, messages))
            .await
            .map_err(|_| AppError::PublishTimeout(self.publish_timeout))?
    }

    async fn publish_confirmed(&self, tenant: TenantId, messages: &[OutgoingMessage]) -> Result<(), AppError> {
        let returned = self.send_through_refusals(tenant, &messages.iter().collect::<Vec<_>>()).await?;
        if returned.is_empty() {
            return Ok(());
        }
        if self.tenants.get_active(tenant).await?.is_none() {
            return Err(AppError::TenantDeleted);
        }
        tracing::info!(%tenant, returned = returned.len(), "the broker returned messages as unroutable; declaring the tenant's queues");
        self.publisher.declare(tenant).await?;
        // Deleted between the look above and the declare, its retirement may have deleted the queues first:
        // declared again, they would hold what is sent now, with no consumer, until a sweep deletes them.
        if self.tenants.get_active(tenant).await?.is_none() {
            return Err(AppError::TenantDeleted);
        }
        let returned: Vec<_> = returned.iter().map(|&index| &messages[index]).collect();
        let again = self.send_through_refusals(tenant, &returned).await?;
        if again.is_empty() { Ok(()) } else { Err(AppError::Unroutable) }
    }

    /// Sends `messages`, again after a moment if the broker refuses them: a quorum queue declared a moment
    /// ago (by the tenant's consumer, as the tenant was created) refuses publishes until its leader is
    /// elected, and a tenant's first publish right after its `201` met that about one time in ten on a busy
    /// machine. Sending again is safe: each message keeps its id, and a message id is stored once. A queue
    /// that goes on refusing (one full under a `reject-publish` policy) is answered within a second.
    async fn send_through_refusals(
        &self,
        tenant: TenantId,
        messages: &[&OutgoingMessage],
    ) -> Result<Vec<usize>, BrokerError> {
        let mut pauses = Backoff::starting_at(Duration::from_millis(50));
        for _ in 0..REFUSED_PUBLISH_RETRIES {
            match self.publisher.send(tenant, messages).await {
                Err(BrokerError::Refused) => tokio::time::sleep(pauses.next_delay()).await,
                sent => return sent,
            }
        }
        self.publisher.send(tenant, messages).await
    }

    /// Up to `limit` of the live tenant's messages after `after`, in commit order, ending early at
    /// `read.max_page_bytes` of payloads. Read in one of the tenant's [`ReadSlots`]; waited for, the wait
    /// for the slot included, at most `read.page_timeout`: a page is milliseconds of work, and one that takes
    /// longer waits for a lock on the tenant's partition (an operator's `VACUUM FULL`, `CLUSTER` or `ALTER
    /// TABLE` on it) or for an overloaded database. It then answers 503 rather than wait as long as the lock
    /// is held, and past the HTTP idle timeout be closed unanswered.
    pub async fn page(&self, tenant: TenantId, after: MessageKey, limit: u64) -> Result<Page, AppError> {
        require_live(&self.tenants, tenant).await?;
        let deadline = tokio::time::Instant::now() + self.page_timeout;
        let waited = || {
            tracing::warn!(%tenant, timeout = ?self.page_timeout, "a page read waited too long for the database; answered 503");
            AppError::PageReadsWaiting
        };
        let slot = self.read_slots.acquire(tenant, deadline).await.ok_or_else(waited)?;
        let (db, max_page_bytes) = (self.db.clone(), self.max_page_bytes);
        // Given up on (the deadline, or the client gone), the read finishes detached, still in its slot: its
        // connection waits until its statement ends, behind a lock as long as the lock.
        let mut read = DetachOnDrop::new(
            async move {
                let _slot = slot;
                messages::page(&db, tenant, after, limit, max_page_bytes).await
            }
            // Detached, it still logs under its request.
            .in_current_span(),
        );
        Ok(tokio::time::timeout_at(deadline, &mut read).await.map_err(|_| waited())??)
    }
}

//! A live tenant's dead letters: peek, replay, purge (see [`crate::broker::dead_letters`] for how a queue is
//! peeked without losing messages).

use std::{collections::HashSet, sync::Arc, time::Duration};

use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::{
    broker::{Broker, BrokerError, DeadLetters, Publisher, dead_letters::DeadLetterBounds},
    domain::tenant::TenantId,
    store::{
        tenant_locks::{LockFor, TenantLock},
        tenants::TenantReadModel,
    },
};

pub use crate::broker::dead_letters::{DeadLetter, DeadLetterPage, Replayed};

use super::{AppError, require_live};

/// How long a dead-letter operation waits for the tenant's dead-letter operation under way on another instance
/// before it answers 503.
const OTHER_INSTANCE_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct DeadLetterQueues {
    db: DatabaseConnection,
    tenants: TenantReadModel,
    queues: DeadLetters,
}

impl DeadLetterQueues {
    /// `brokers`: the connection that reads the DLQs, and the publisher replays go through.
    pub fn new(db: DatabaseConnection, brokers: (Broker, Arc<Publisher>), bounds: DeadLetterBounds) -> Self {
        Self { tenants: TenantReadModel::new(db.clone()), db, queues: DeadLetters::new(brokers, bounds) }
    }

    /// Up to `limit` dead letters after the first `skip`, oldest first, leaving them in the queue (fewer when
    /// their bodies fill a page: see [`DeadLetterBounds`]).
    pub async fn peek(&self, tenant: TenantId, skip: usize, limit: usize) -> Result<DeadLetterPage, AppError> {
        self.exclusively(tenant, self.queues.peek(tenant, skip, limit)).await
    }

    /// Moves the selected dead letters (all when `selection` is `None`) back to the tenant's queue.
    pub async fn replay(&self, tenant: TenantId, selection: Option<HashSet<Uuid>>) -> Result<Replayed, AppError> {
        self.exclusively(tenant, self.queues.replay(tenant, selection)).await
    }

    /// Drops every dead letter of the tenant; returns how many there were.
    pub async fn purge(&self, tenant: TenantId) -> Result<u32, AppError> {
        self.exclusively(tenant, self.queues.purge(tenant)).await
    }

    /// Runs `operation` on the live tenant's dead letters, one instance at a time: a peek takes the messages
    /// and gives them back, so a peek or a replay on another instance meanwhile would miss them (a page short,
    /// a replay's ids "not found").
    async fn exclusively<T>(
        &self,
        tenant: TenantId,
        operation: impl Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, AppError> {
        require_live(&self.tenants, tenant).await?;
        let pool = self.db.get_postgres_connection_pool();
        let lock = TenantLock::take_within(pool, LockFor::DeadLetters, tenant, OTHER_INSTANCE_WAIT)
            .await?
            .ok_or(AppError::DeadLettersBusy)?;
        let outcome = operation.await;
        lock.release().await;
        Ok(outcome?)
    }
}

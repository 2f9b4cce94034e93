//! A live tenant's dead letters: peek, replay, purge (see [`crate::broker::dead_letters`] for how a queue is
//! peeked without losing messages).

use std::{collections::HashSet, sync::Arc};

use uuid::Uuid;

use crate::{
    broker::{Broker, DeadLetters, Publisher, dead_letters::DeadLetterBounds},
    domain::tenant::TenantId,
    store::tenants::TenantReadModel,
};

pub use crate::broker::dead_letters::{DeadLetter, DeadLetterPage, Replayed};

use super::{AppError, require_live};

#[derive(Clone)]
pub struct DeadLetterQueues {
    tenants: TenantReadModel,
    queues: DeadLetters,
}

impl DeadLetterQueues {
    /// `brokers`: the connection that reads the DLQs, and the publisher replays go through.
    pub fn new(tenants: TenantReadModel, brokers: (Broker, Arc<Publisher>), bounds: DeadLetterBounds) -> Self {
        Self { tenants, queues: DeadLetters::new(brokers, bounds) }
    }

    /// Up to `limit` dead letters after the first `skip`, oldest first, leaving them in the queue (fewer when
    /// their bodies fill a page: see [`DeadLetterBounds`]).
    pub async fn peek(&self, tenant: TenantId, skip: usize, limit: usize) -> Result<DeadLetterPage, AppError> {
        require_live(&self.tenants, tenant).await?;
        Ok(self.queues.peek(tenant, skip, limit).await?)
    }

    /// Moves the selected dead letters (all when `selection` is `None`) back to the tenant's queue.
    pub async fn replay(&self, tenant: TenantId, selection: Option<HashSet<Uuid>>) -> Result<Replayed, AppError> {
        require_live(&self.tenants, tenant).await?;
        Ok(self.queues.replay(tenant, selection).await?)
    }

    /// Drops every dead letter of the tenant; returns how many there were.
    pub async fn purge(&self, tenant: TenantId) -> Result<u32, AppError> {
        require_live(&self.tenants, tenant).await?;
        Ok(self.queues.purge(tenant).await?)
    }
}

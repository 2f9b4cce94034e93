//! A live tenant's dead letters: peek, replay, purge (see [`crate::broker::dead_letters`] for how a queue is
//! peeked without losing messages).

use std::{collections::HashSet, sync::Arc, time::Duration};

use sea_orm::DatabaseConnection;
use tokio::{
    sync::{Mutex, OwnedMutexGuard, Semaphore},
    time::{Instant, timeout_at},
};
use uuid::Uuid;

use crate::{
    broker::{Broker, BrokerError, DeadLetters, PerTenant, Publisher, dead_letters::DeadLetterBounds},
    domain::tenant::TenantId,
    store::{
        tenant_locks::{LockFor, TenantLock},
        tenants::TenantReadModel,
    },
};

pub use crate::broker::dead_letters::{DeadLetter, DeadLetterPage, Replayed};

use super::{AppError, require_live};

/// How long a dead-letter operation waits for its turn (the tenant's others, here and on other instances, and a
/// free place among [`DeadLetterQueues::running`]) before it answers 503.
const TURN_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct DeadLetterQueues {
    db: DatabaseConnection,
    tenants: TenantReadModel,
    queues: DeadLetters,
    /// One lock per tenant with an operation under way on this instance.
    turns: Arc<PerTenant<Mutex<()>>>,
    /// Operations running at once on this instance, all tenants together: each keeps a database connection
    /// for its whole run (a replay up to its time budget), and many tenants' at once must not take the pool
    /// every other request needs. A quarter of `database.max_connections`, at least one.
    running: Arc<Semaphore>,
}

impl DeadLetterQueues {
    /// `brokers`: the connection that reads the DLQs, and the publisher replays go through.
    pub fn new(
        db: DatabaseConnection,
        max_connections: u32,
        brokers: (Broker, Arc<Publisher>),
        bounds: DeadLetterBounds,
    ) -> Self {
        let running = Arc::new(Semaphore::new((max_connections as usize / 4).max(1)));
        let queues = DeadLetters::new(brokers, bounds);
        Self { tenants: TenantReadModel::new(db.clone()), db, queues, turns: Arc::default(), running }
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

    /// Runs `operation` on the live tenant's dead letters, one at a time: a peek takes the messages and gives
    /// them back, so another peek or a replay meanwhile would miss them (a page short, a replay's ids "not
    /// found"). It waits for this instance's earlier ones in line, and only then, for another instance's, on
    /// the database: a crowd of requests on one instance asks the database once at a time.
    async fn exclusively<T>(
        &self,
        tenant: TenantId,
        operation: impl Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, AppError> {
        require_live(&self.tenants, tenant).await?;
        let deadline = Instant::now() + TURN_WAIT;
        let busy = |_| AppError::DeadLettersBusy;
        let _turn = timeout_at(deadline, self.turn(tenant)).await.map_err(busy)?;
        let running = timeout_at(deadline, self.running.clone().acquire_owned()).await.map_err(busy)?;
        let _running = running.map_err(|_| AppError::DeadLettersBusy)?;
        let pool = self.db.get_postgres_connection_pool();
        let left = deadline.saturating_duration_since(Instant::now());
        let lock = TenantLock::take_within(pool, LockFor::DeadLetters, tenant, left)
            .await?
            .ok_or(AppError::DeadLettersBusy)?;
        let outcome = operation.await;
        lock.release().await;
        Ok(outcome?)
    }

    /// Waits for the tenant's earlier dead-letter operations on this instance; other tenants' never block it.
    async fn turn(&self, tenant: TenantId) -> OwnedMutexGuard<()> {
        self.turns.get(tenant, || Mutex::new(())).lock_owned().await
    }
}

//! A tenant's advisory locks held by a session of their own: a pool connection kept by the holder, for work
//! that spans broker calls and must run on one instance at a time (a deleted tenant's retirement, a tenant's
//! dead-letter operations). A transaction's lock would keep the transaction open and idle across those calls,
//! which `idle_in_transaction_session_timeout` ends. Released, the connection goes back to the pool unlocked;
//! a holder dropped half way closes it, and the lock goes with its session.

use std::time::Duration;

use sea_orm::{
    DatabaseTransaction,
    sqlx::{self, PgPool, Postgres, pool::PoolConnection},
};

use crate::domain::tenant::TenantId;

use super::{
    StoreError,
    events::{scalar, stmt},
    granted_advisory_lock,
};

/// What a tenant's lock is for: each is a lock of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockFor {
    /// Retiring the deleted tenant (the key earlier releases took as a transaction's lock, which conflicts
    /// with this one during a rolling update).
    Retirement,
    /// Peeking, replaying or purging its dead-letter queue: a peek takes the messages and gives them back, so
    /// that another instance's peek or replay at the same time would not see them.
    DeadLetters,
}

impl LockFor {
    fn prefix(self) -> &'static str {
        match self {
            Self::Retirement => "tenantmq.retirement.",
            Self::DeadLetters => "tenantmq.dead_letters.",
        }
    }
}

/// The advisory lock's key for the prefix `$1` and the tenant `$2`.
const KEY: &str = "hashtextextended($1 || $2::text, 0)";

/// How often [`TenantLock::take_within`] tries again.
const TRY_EVERY: Duration = Duration::from_millis(50);

pub struct TenantLock {
    session: Option<PoolConnection<Postgres>>,
    /// The session's backend, to tell whether it still holds the lock.
    pid: i32,
    purpose: LockFor,
    tenant: TenantId,
}

impl TenantLock {
    /// The tenant's lock for `purpose`, unless another session holds it.
    pub async fn try_take(pool: &PgPool, purpose: LockFor, tenant: TenantId) -> Result<Option<Self>, StoreError> {
        let mut session = pool.acquire().await?;
        let (taken, pid): (bool, i32) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT pg_try_advisory_lock({KEY}), pg_backend_pid()")))
                .bind(purpose.prefix())
                .bind(tenant.as_uuid())
                .fetch_one(&mut *session)
                .await?;
        Ok(taken.then_some(Self { session: Some(session), pid, purpose, tenant }))
    }

    /// The tenant's lock for `purpose`, waiting up to `wait` while another session holds it.
    pub async fn take_within(
        pool: &PgPool,
        purpose: LockFor,
        tenant: TenantId,
        wait: Duration,
    ) -> Result<Option<Self>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(lock) = Self::try_take(pool, purpose, tenant).await? {
                return Ok(Some(lock));
            }
            if tokio::time::Instant::now() + TRY_EVERY > deadline {
                return Ok(None);
            }
            tokio::time::sleep(TRY_EVERY).await;
        }
    }

    /// Whether the lock's session still holds it, asked in `txn` (another session).
    pub async fn still_held(&self, txn: &DatabaseTransaction) -> Result<bool, StoreError> {
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = $3 AND {}) AS value",
            granted_advisory_lock(KEY)
        );
        let values = [self.purpose.prefix().into(), self.tenant.as_uuid().into(), self.pid.into()];
        scalar(txn, stmt(&sql, values)).await
    }

    /// Gives the lock up; its connection goes back to the pool, or is closed if the unlock fails.
    pub async fn release(mut self) {
        let Some(mut session) = self.session.take() else { return };
        let unlocked = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT pg_advisory_unlock({KEY})")))
            .bind(self.purpose.prefix())
            .bind(self.tenant.as_uuid())
            .execute(&mut *session)
            .await;
        if unlocked.is_err() {
            session.close_on_drop();
        }
    }
}

impl Drop for TenantLock {
    /// Not released (its holder dropped half way): the session goes, with its lock.
    fn drop(&mut self) {
        if let Some(session) = self.session.as_mut() {
            session.close_on_drop();
        }
    }
}

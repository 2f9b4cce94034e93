//! Queue depths shared between instances: one instance at a time (the one holding a session advisory lock)
//! writes what it read from the broker into `queue_depths`; every instance reads the table. So the broker is
//! asked once per interval whatever the number of instances.

use std::{collections::HashMap, time::Duration};

use sea_orm::sqlx::{self, PgConnection, PgPool, Row, pool::PoolConnection};
use uuid::Uuid;

use crate::domain::tenant::TenantId;

use super::StoreError;

/// Held by the instance that polls the broker.
const POLLER_LOCK: i64 = 0x7175_6575_6564_6570; // "queuedep"

/// Ready messages of a tenant's main, retry and dead-letter queues (`None`: missing or unreadable).
pub type Depths = [Option<u32>; 3];

/// This instance's claim to be the poller: a session advisory lock on a connection of its own, so that it is
/// released when the connection ends, however the instance ends.
#[derive(Default)]
pub struct PollerLease {
    connection: Option<PgConnection>,
    held: bool,
}

impl PollerLease {
    /// Whether this instance polls: keeps the lock it holds, or tries to take it. A broken connection, or one
    /// that does not answer within `limit`, loses it (the server releases the lock with the session), and the
    /// next call starts over on a new connection.
    pub async fn hold(&mut self, pool: &PgPool, limit: Duration) -> bool {
        match tokio::time::timeout(limit, self.try_hold(pool)).await {
            Ok(Ok(held)) => held,
            Ok(Err(error)) => self.lose(&error.to_string()),
            Err(_) => self.lose("no answer in time"),
        }
    }

    /// Drops the lock's connection, and this instance's claim with it; false.
    fn lose(&mut self, why: &str) -> bool {
        tracing::warn!(error = why, "the queue depth poller's lock connection failed");
        self.connection = None;
        self.held = false;
        false
    }

    async fn try_hold(&mut self, pool: &PgPool) -> Result<bool, StoreError> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            // Taken out of the pool for good: the lock lives as long as this session.
            None => self.connection.insert(PoolConnection::detach(pool.acquire().await?)),
        };
        // A held lock lasts as long as its session: a query that goes through proves it is still held.
        let held: bool = sqlx::query_scalar("SELECT CASE WHEN $2 THEN true ELSE pg_try_advisory_lock($1) END")
            .bind(POLLER_LOCK)
            .bind(self.held)
            .fetch_one(&mut *connection)
            .await?;
        self.held = held;
        Ok(held)
    }

    /// Ends the session that holds the poller's lock if it has run no query for `silent_for`, so that this
    /// instance can take the lock at its next interval; true if it did. A holder cut off without a word (a
    /// network partition, a host that froze) keeps its session, and the lock with it, until TCP gives up on
    /// the connection: hours, by default. A holder alive asks every interval; should it come back, it finds
    /// its session gone and starts over.
    pub async fn end_silent_holder(pool: &PgPool, silent_for: Duration) -> Result<bool, StoreError> {
        let sql = format!(
            "SELECT pg_terminate_backend(a.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE {} AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND a.state = 'idle' AND a.state_change < now() - make_interval(secs => $2)",
            super::granted_advisory_lock("$1")
        );
        let ended: Vec<bool> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(POLLER_LOCK)
            .bind(silent_for.as_secs_f64())
            .fetch_all(pool)
            .await?;
        Ok(ended.contains(&true))
    }

    /// Gives the lock up, for another instance to take at its next interval: this one cannot read the broker.
    /// If the unlock fails, the session goes, and the lock with it.
    pub async fn release(&mut self) {
        if !std::mem::take(&mut self.held) {
            return;
        }
        let Some(connection) = self.connection.as_mut() else { return };
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)").bind(POLLER_LOCK).execute(&mut *connection).await;
        if let Err(error) = unlocked {
            tracing::warn!(%error, "cannot give up the queue depth poller's lock; closing its connection");
            self.connection = None;
        }
    }

    /// Records what the poller read: every polled tenant's depths, now; tenants no longer polled are removed.
    /// Written on the lock's connection, so only the holder writes; within `limit`, else the connection goes.
    pub async fn publish(&mut self, depths: &[(TenantId, Depths)], limit: Duration) {
        match tokio::time::timeout(limit, self.write(depths)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "cannot record the queue depths"),
            Err(_) => {
                self.lose("recording the queue depths took too long");
            }
        }
    }

    async fn write(&mut self, depths: &[(TenantId, Depths)]) -> Result<(), StoreError> {
        let Some(connection) = self.connection.as_mut().filter(|_| self.held) else {
            return Ok(());
        };
        let ids: Vec<Uuid> = depths.iter().map(|(tenant, _)| tenant.as_uuid()).collect();
        let column = |queue: usize| depths.iter().map(|(_, d)| d[queue].map(i64::from)).collect::<Vec<_>>();
        let mut transaction = sqlx::Connection::begin(connection).await?;
        sqlx::query(
            "INSERT INTO queue_depths (tenant_id, ready_main, ready_retry, ready_dlq, polled_at) \
             SELECT *, now() FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[]) \
             ON CONFLICT (tenant_id) DO UPDATE SET ready_main = excluded.ready_main, \
             ready_retry = excluded.ready_retry, ready_dlq = excluded.ready_dlq, polled_at = excluded.polled_at",
        )
        .bind(&ids)
        .bind(column(0))
        .bind(column(1))
        .bind(column(2))
        .execute(&mut *transaction)
        .await?;
        sqlx::query("DELETE FROM queue_depths WHERE tenant_id <> ALL($1::uuid[])")
            .bind(&ids)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(())
    }
}

/// Every tenant's depths polled within `fresh` (older rows are left out: no poller has written for a while,
/// and a stale depth would look current).
pub async fn read(pool: &PgPool, fresh: Duration) -> Result<HashMap<TenantId, Depths>, StoreError> {
    let rows = sqlx::query(
        "SELECT tenant_id, ready_main, ready_retry, ready_dlq FROM queue_depths \
         WHERE polled_at > now() - make_interval(secs => $1)",
    )
    .bind(fresh.as_secs_f64())
    .fetch_all(pool)
    .await?;
    let depth = |value: Option<i64>| value.and_then(|v| u32::try_from(v).ok());
    rows.iter()
        .map(|row| {
            let tenant = TenantId::from_uuid(row.try_get("tenant_id")?);
            let depths = [
                depth(row.try_get("ready_main")?),
                depth(row.try_get("ready_retry")?),
                depth(row.try_get("ready_dlq")?),
            ];
            Ok((tenant, depths))
        })
        .collect()
}

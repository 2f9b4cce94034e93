//! A deleted tenant's retirement: once no instance runs a consumer of it any more, its queued messages are
//! persisted (`partitions.on_tenant_delete: detach`) or discarded (`drop`), its queues deleted, and its
//! partition dropped or detached and its publish bucket forgotten.
//!
//! Every instance's reconciler tries, in a task of its own (one pass at a time), for each deleted tenant whose
//! partition is still attached (the database state is the record: see [`partitions::awaiting_retirement`]). A consumer of a deleted
//! tenant keeps its subscription until its pool has committed and acked what it held, so the broker's count
//! of consumers on the tenant's queue reaches zero only when no instance writes for the tenant any more. One
//! instance at a time retires a tenant, under a session advisory lock; the partition's DDL commits last, in the
//! retirement's only transaction, so a failure or a crash at any step leaves the retirement pending, to be done
//! again from the start.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, QueueDeleteOptions};
use sea_orm::{DatabaseConnection, DbErr, TransactionTrait};

use crate::{
    broker::{self, Broker, BrokerError, Inspector, TenantQueues, answered, queues},
    config::{OnTenantDelete, QueueType},
    domain::{payload::PayloadLimits, tenant::TenantId},
    metrics::Metrics,
    store::{
        StoreError,
        messages::{self, MessageWriter, NewMessage},
        partitions, publish_buckets,
        tenant_locks::{LockFor, TenantLock},
    },
};

use super::consumer;

/// Queued messages persisted per insert while retiring with `detach`.
const PERSIST_BATCH: usize = 100;
/// How long one pass persists a deleted tenant's queued messages before it lets the next pass go on: a
/// backlog of millions, or producers still publishing straight to the queue, must not hold the pass.
const PERSIST_PER_PASS: Duration = Duration::from_secs(30);
/// Retirements run at once in one pass (each holds a database connection throughout).
const CONCURRENT_RETIREMENTS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum RetirementError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("a queued message could not be persisted: {0}")]
    Write(sea_orm::sqlx::Error),
}

impl From<DbErr> for RetirementError {
    fn from(error: DbErr) -> Self {
        Self::Store(error.into())
    }
}

impl From<lapin::Error> for RetirementError {
    fn from(error: lapin::Error) -> Self {
        Self::Broker(error.into())
    }
}

pub struct Retirement {
    pub db: DatabaseConnection,
    pub broker: Broker,
    pub on_delete: OnTenantDelete,
    pub queue_type: QueueType,
    pub payload_limits: PayloadLimits,
    pub metrics: Metrics,
}

impl Retirement {
    /// Retires the deleted tenants that no consumer serves any more; `running_here` tells whether this
    /// instance still runs (or stops) a consumer of a tenant. What cannot be retired yet is tried again on a
    /// later pass.
    pub async fn retire_stopped(&self, running_here: impl Fn(TenantId) -> bool) {
        let awaiting = match partitions::awaiting_retirement(&self.db).await {
            Ok(awaiting) => awaiting,
            Err(error) => {
                tracing::warn!(%error, "cannot list the deleted tenants awaiting retirement");
                return;
            }
        };
        let stopped = awaiting.into_iter().filter(|tenant| !running_here(*tenant));
        // Mostly broker round trips: a few at once, so that deleting many tenants does not queue them all.
        futures_util::stream::iter(stopped)
            .for_each_concurrent(CONCURRENT_RETIREMENTS, |tenant| async move {
                match self.retire(tenant).await {
                    Ok(true) => tracing::info!(%tenant, on_delete = ?self.on_delete, "deleted tenant retired"),
                    Ok(false) => tracing::debug!(%tenant, "the deleted tenant cannot be retired yet"),
                    Err(error) => tracing::warn!(%tenant, %error, "cannot retire the deleted tenant yet"),
                }
            })
            .await;
    }

    /// True once retired (here or by another instance); false while it cannot be yet: a consumer of it still
    /// runs somewhere, another instance retires it, or its queued messages take more than a pass to persist.
    async fn retire(&self, tenant: TenantId) -> Result<bool, RetirementError> {
        let pool = self.db.get_postgres_connection_pool();
        let Some(lock) = TenantLock::try_take(pool, LockFor::Retirement, tenant).await? else {
            return Ok(false);
        };
        let retired = self.retire_holding(&lock, tenant).await;
        lock.release().await;
        retired
    }

    async fn retire_holding(&self, lock: &TenantLock, tenant: TenantId) -> Result<bool, RetirementError> {
        if !partitions::is_attached(&self.db, tenant).await? {
            return Ok(true);
        }
        let queues = TenantQueues::of(tenant);
        if self.inspect(&queues.queue).await?.is_some_and(|(_, consumers)| consumers > 0) {
            return Ok(false);
        }
        let keep_messages = self.on_delete == OnTenantDelete::Detach;
        if keep_messages {
            let deadline = Instant::now() + PERSIST_PER_PASS;
            for queue in [&queues.queue, &queues.retry] {
                if !self.persist_queued(tenant, queue, deadline).await? {
                    return Ok(false);
                }
            }
        }
        // A consumer that started since (a race with a reconciler that had not seen the delete yet), or, with
        // `detach`, a message that arrived since, makes the delete fail; the next pass starts again. The broker
        // refuses these guards on quorum queues, and as an error of the whole connection (the one the API
        // publishes on): there, a last look just before the delete stands in for them.
        let guard = match self.queue_type {
            QueueType::Classic => {
                QueueDeleteOptions { if_unused: true, if_empty: keep_messages, ..QueueDeleteOptions::default() }
            }
            QueueType::Quorum => {
                for queue in [&queues.queue, &queues.retry] {
                    let in_use = |(ready, consumers)| consumers > 0 || (keep_messages && ready > 0);
                    if self.inspect(queue).await?.is_some_and(in_use) {
                        return Ok(false);
                    }
                }
                QueueDeleteOptions::default()
            }
        };
        let channel = answered(self.broker.channel()).await??;
        let deleted = async {
            for queue in [&queues.queue, &queues.retry] {
                answered(channel.queue_delete(queue.as_str().into(), guard)).await??;
            }
            answered(queues::delete(&channel, tenant)).await?
        }
        .await;
        // A failed guard has closed the channel already.
        broker::close_channel(&channel, "retired").await;
        deleted?;
        // Last, and the only transaction: a failure or a crash before its commit leaves the retirement pending.
        let txn = self.db.begin().await?;
        // The lock's session may have ended since (a failover, a terminated backend), and another instance
        // taken the lock: it retires the tenant then.
        if !lock.still_held(&txn).await? {
            return Ok(false);
        }
        match self.on_delete {
            OnTenantDelete::Drop => partitions::drop(&txn, tenant).await?,
            OnTenantDelete::Detach => partitions::detach(&txn, tenant).await?,
        }
        publish_buckets::forget(&txn, tenant).await?;
        txn.commit().await?;
        Ok(true)
    }

    /// After a consumer of `tenant` stopped because the tenant was deleted: if its retirement is done already,
    /// deletes the tenant's queues. The consumer may have declared them again after the retirement deleted
    /// them: a start that read the desired runtime before the delete and declared late (it waited for its
    /// connection, for the broker, or its instance was paused). Nothing else would delete them but the
    /// reconciler's sweep, which covers the last hour of deletes only. A retirement still to come deletes them
    /// itself, after this consumer: it waits for the broker to count no consumer of the tenant.
    pub async fn delete_queues_declared_late(&self, tenant: TenantId) {
        match partitions::is_retired(&self.db, tenant).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => {
                tracing::warn!(%tenant, %error, "cannot tell whether a deleted tenant is retired; its queues are left to the sweep");
                return;
            }
        }
        // A failure is logged there; the sweep tries again.
        if queues::delete_of_each(&self.broker, [tenant]).await.is_ok() {
            tracing::info!(%tenant, "deleted the queues a consumer declared again after its tenant's retirement");
        }
    }

    /// Ready messages and consumers of `queue`, never on a channel that does anything else.
    async fn inspect(&self, queue: &str) -> Result<Option<(u32, u32)>, RetirementError> {
        let mut inspector = Inspector::new(&self.broker);
        let counts = inspector.try_counts(queue).await?;
        inspector.close().await;
        Ok(counts)
    }

    /// Writes what waits in `queue` into the tenant's partition and acks it, until the queue is empty (true)
    /// or `deadline` has passed (false: the next pass goes on). A message that cannot be a row (not JSON,
    /// refused by the database) is discarded with a warning: the tenant's dead-letter queue goes too.
    async fn persist_queued(&self, tenant: TenantId, queue: &str, deadline: Instant) -> Result<bool, RetirementError> {
        if self.inspect(queue).await?.is_none() {
            return Ok(true);
        }
        let (_apart, channel) = self.broker.channel_apart().await?;
        let writer = MessageWriter::new(self.db.get_postgres_connection_pool().clone(), tenant, self.metrics.clone());
        let persisted = async {
            let mut persisted = 0;
            while Instant::now() < deadline {
                let mut deliveries = Vec::with_capacity(PERSIST_BATCH);
                while deliveries.len() < PERSIST_BATCH {
                    match broker::get_unacked(&channel, queue).await? {
                        Some(delivery) => deliveries.push(delivery),
                        None => break,
                    }
                }
                let Some(last) = deliveries.last().map(|delivery| delivery.delivery_tag) else { return Ok(true) };
                let rows: Vec<NewMessage> = deliveries
                    .iter()
                    .filter_map(|delivery| {
                        consumer::decode(tenant, delivery, self.payload_limits)
                            .inspect_err(|reason| tracing::warn!(%tenant, reason, "discarding a queued message"))
                            .ok()
                    })
                    .collect();
                for (part, error) in writer.insert_isolating(&rows).await {
                    if !messages::refuses_row(&error) {
                        return Err(RetirementError::Write(error));
                    }
                    tracing::warn!(%tenant, messages = part.len(), %error, "discarding a queued message");
                }
                // Every delivery on this channel is from this loop: one ack covers them all.
                answered(channel.basic_ack(last, BasicAckOptions { multiple: true })).await??;
                persisted += deliveries.len();
            }
            tracing::info!(%tenant, queue, persisted, "persisting the deleted tenant's queued messages goes on at the next pass");
            Ok(false)
        }
        .await;
        // Closing requeues whatever was taken and not acked.
        broker::close_channel(&channel, "persisted").await;
        persisted
    }
}

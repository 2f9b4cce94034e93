//! Reads how many messages are ready in every tenant's queues, for `tenantmq_queue_messages_ready`. There is
//! no management API to ask (RabbitMQ may run without the plugin), so each queue gets a passive declare,
//! which answers its ready count without creating it; at `metrics.queue_poll_interval`, not per scrape, so
//! a busy Prometheus cannot load the broker.
//!
//! Only one instance asks the broker: the one holding the poller's lock in PostgreSQL
//! ([`PollerLease`]). It writes the depths into `queue_depths`, and every instance (itself included) reads
//! that table once per interval. The broker's load grows with the tenants, not with tenants × instances; when
//! the poller stops, its lock goes with its session, and when it loses the broker it gives the lock up:
//! another instance takes over at its next interval. A poller that fell silent (cut off without its
//! connection closing) has its session ended by another instance (see [`SILENT_HOLDER_STEP_LIMITS`]).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use sea_orm::sqlx::PgPool;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::{Broker, Inspector},
    domain::tenant::{QueueKind, TenantId},
    metrics::Metrics,
    store::queue_depths::{self, Depths, PollerLease},
};

use super::{ConsumerRegistry, tenant_stats::TenantStats};

/// Step limits without a query from the poller's session after which another instance ends it: a holder asks
/// at the start of each pass, and between two asks come at most three steps and an interval.
const SILENT_HOLDER_STEP_LIMITS: u32 = 6;

pub struct QueueDepthPoller {
    pub registry: ConsumerRegistry,
    pub broker: Broker,
    pub pool: PgPool,
    pub metrics: Metrics,
    pub interval: Duration,
    /// Whether this instance is the one asking the broker, for `/metrics`.
    pub polling: Arc<AtomicBool>,
}

impl QueueDepthPoller {
    /// Polls until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let mut lease = PollerLease::default();
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = ticker.tick() => {}
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                () = self.pass(&mut lease) => {}
            }
        }
        self.polling.store(false, Ordering::Relaxed);
    }

    /// The longest each step of a pass may take (the lock's query, the broker's reads, the table's write and
    /// read): a step that hangs on a half-dead connection must not stop the next pass.
    fn step_limit(&self) -> Duration {
        self.interval.max(Duration::from_secs(5))
    }

    async fn pass(&self, lease: &mut PollerLease) {
        let tenants = self.registry.tenants_with_stats();
        let limit = self.step_limit();
        // An instance that cannot reach the broker would record every depth as unknown, for every instance:
        // it leaves the polling to one that can.
        let connected = self.broker.is_connected();
        let polling = if connected {
            lease.hold(&self.pool, limit).await
        } else {
            lease.release().await;
            false
        };
        self.polling.store(polling, Ordering::Relaxed);
        if !polling && connected {
            let silent_for = SILENT_HOLDER_STEP_LIMITS * limit;
            match PollerLease::end_silent_holder(&self.pool, silent_for).await {
                Ok(true) => tracing::warn!(
                    ?silent_for,
                    "ended the session of a queue depth poller that was silent; this instance polls from its next interval"
                ),
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "cannot look for a silent queue depth poller"),
            }
        }
        if polling {
            match tokio::time::timeout(limit, read_from_broker(&self.broker, &tenants, &self.metrics)).await {
                Ok(depths) => lease.publish(&depths, limit).await,
                Err(_) => {
                    tracing::warn!(?limit, "reading queue depths took too long; trying again at the next interval")
                }
            }
        }
        // What no poller has written for a few intervals is unknown, so its series disappears instead of going
        // stale.
        let shared = match tokio::time::timeout(limit, queue_depths::read(&self.pool, 3 * self.interval)).await {
            Ok(Ok(shared)) => shared,
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot read the queue depths");
                Default::default()
            }
            Err(_) => {
                tracing::warn!(?limit, "reading the queue depths took too long");
                Default::default()
            }
        };
        for (tenant, stats) in &tenants {
            let depths = shared.get(tenant).copied().unwrap_or_default();
            for queue in QueueKind::ALL {
                stats.set_queue_ready(queue, depths[queue as usize]);
            }
        }
    }
}

/// Asks the broker for every queue of every tenant this instance keeps stats for; a queue that cannot be read
/// (missing, or the broker is down) is unknown.
async fn read_from_broker(
    broker: &Broker,
    tenants: &[(TenantId, Arc<TenantStats>)],
    metrics: &Metrics,
) -> Vec<(TenantId, Depths)> {
    let mut inspector = Inspector::new(broker);
    let mut depths = Vec::with_capacity(tenants.len());
    for (tenant, _) in tenants {
        let mut ready = Depths::default();
        for queue in QueueKind::ALL {
            ready[queue as usize] = inspector.counts(&queue.queue_name(*tenant)).await.map(|(ready, _)| ready);
        }
        metrics.queue_depth_broker_calls(QueueKind::ALL.len() as u64);
        depths.push((*tenant, ready));
    }
    inspector.close().await;
    depths
}

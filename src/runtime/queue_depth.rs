//! Reads how many messages are ready in every tenant's queues, for `tenantmq_queue_messages_ready`. There is
//! no management API to ask (RabbitMQ may run without the plugin), so each queue gets a passive declare,
//! which answers its ready count without creating it; at `metrics.queue_poll_interval`, not per scrape, so
//! a busy Prometheus cannot load the broker.

use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::domain::tenant::QueueKind;

use crate::broker::{Broker, Inspector};

use super::ConsumerRegistry;

/// Polls until `cancel`.
pub async fn poll(registry: ConsumerRegistry, broker: Broker, interval: Duration, cancel: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // A pass that hangs on a half-dead connection must not stop the next one.
    let pass_limit = interval.max(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            passed = tokio::time::timeout(pass_limit, poll_once(&registry, &broker)) => if passed.is_err() {
                tracing::warn!(?pass_limit, "polling queue depths took too long; trying again at the next interval");
            },
        }
    }
}

/// Reads every queue of every tenant this instance keeps stats for; a queue that cannot be read (missing,
/// or the broker is down) is recorded as unknown, so its series disappears instead of going stale.
pub async fn poll_once(registry: &ConsumerRegistry, broker: &Broker) {
    let mut inspector = Inspector::new(broker);
    for (tenant, stats) in registry.tenants_with_stats() {
        for queue in QueueKind::ALL {
            stats.set_queue_ready(queue, inspector.counts(&queue.queue_name(tenant)).await.map(|(ready, _)| ready));
        }
    }
    inspector.close().await;
}

//! The runtime: one consumer with a worker pool per live tenant, kept in step with the tenants projection by
//! the reconciler; the supervised broker connection they run on; retirement of deleted tenants.

pub(crate) mod acks;
pub mod consumer;
pub(crate) mod failure;
pub(crate) mod manager;
pub(crate) mod queue_depth;
pub(crate) mod reconciler;
pub(crate) mod retirement;

use std::sync::Arc;

use sea_orm::DatabaseConnection;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::Broker, config::Config, metrics::Metrics, projectors::Projections, store::tenants::TenantReadModel,
};

pub use manager::TenantManager;

/// Handles to the running runtime, for the API and for shutdown.
#[derive(Clone)]
pub struct Runtime {
    pub broker: Broker,
    pub manager: TenantManager,
}

impl Runtime {
    /// Spawns the broker supervisor and the queue depth poller into `background` (they must outlive the
    /// consumers) and the reconciler into `consumers` (stopped first on shutdown, through `stop_consumers`).
    pub fn spawn(
        config: &Config,
        db: &DatabaseConnection,
        projections: &Projections,
        metrics: &Metrics,
        background: (&mut JoinSet<&'static str>, &CancellationToken),
        consumers: (&mut JoinSet<&'static str>, &CancellationToken),
    ) -> Self {
        let broker = Broker::new(config.rabbitmq.url.clone());
        let manager = TenantManager::default();
        let connections = broker.subscribe();
        metrics.observe_broker(move || connections.borrow().as_ref().map(|connected| connected.generation));
        let stats = manager.clone();
        metrics.observe_tenants(move || stats.snapshot());
        let (tasks, cancel) = background;
        let (supervisor, stop) = (broker.clone(), cancel.clone());
        tasks.spawn(async move {
            supervisor.supervise(stop).await;
            "broker connection"
        });
        let (poller, connection, stop) = (manager.clone(), broker.clone(), cancel.clone());
        let interval = config.metrics.queue_poll_interval;
        tasks.spawn(async move {
            queue_depth::poll(poller, connection, interval, stop).await;
            "queue depth poller"
        });

        let reconciler = reconciler::Reconciler {
            manager: manager.clone(),
            broker: broker.clone(),
            tenants: TenantReadModel::new(db.clone()),
            pool: db.get_postgres_connection_pool().clone(),
            settings: Arc::new(consumer::ConsumerSettings {
                queue_type: config.rabbitmq.queue_type,
                batch_size: config.consumer.batch_size,
                batch_wait: config.consumer.batch_wait,
                batch_max_wait: config.consumer.batch_max_wait(),
                instance_id: config.consumer.instance_id(),
                retry: failure::RetryPolicy {
                    max_retries: config.max_retries,
                    delay: config.consumer.retry_delay,
                    max_delay: config.consumer.retry_max_delay,
                },
                max_payload_depth: config.max_payload_depth,
            }),
            projection: projections.tenants.clone(),
            resync_interval: config.consumer.resync_interval,
            metrics: metrics.clone(),
            retirement: retirement::Retirement {
                db: db.clone(),
                broker: broker.clone(),
                on_delete: config.partitions.on_tenant_delete,
                max_payload_depth: config.max_payload_depth,
                metrics: metrics.clone(),
            },
        };
        let (tasks, stop_consumers) = consumers;
        let stop_consumers = stop_consumers.clone();
        tasks.spawn(async move {
            reconciler.run(stop_consumers).await;
            "reconciler"
        });
        Self { broker, manager }
    }
}

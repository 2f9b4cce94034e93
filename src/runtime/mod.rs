//! The runtime: one consumer with a worker pool per live tenant, kept in step with the tenants projection by
//! the reconciler; the supervised broker connections they run on; retirement of deleted tenants.

pub(crate) mod acks;
pub mod consumer;
pub(crate) mod failure;
pub(crate) mod queue_depth;
pub(crate) mod reconciler;
pub(crate) mod registry;
pub(crate) mod retirement;
pub(crate) mod tenant_runtime;
pub(crate) mod tenant_stats;
pub(crate) mod write_share;

use std::sync::Arc;

use sea_orm::DatabaseConnection;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::{Broker, ConsumerConnections, Publisher},
    config::Config,
    metrics::Metrics,
    projectors::Projections,
    store::tenants::TenantReadModel,
};

pub use registry::ConsumerRegistry;

/// Handles to the running runtime, for the API and for shutdown.
#[derive(Clone)]
pub struct Runtime {
    /// Declaring, inspecting, reading and deleting queues; it never publishes (see `publishing`).
    pub broker: Broker,
    /// Every publish of this instance: the API's, DLQ replays, and the consumers' retry and dead-letter
    /// copies. RabbitMQ blocks a connection that publishes during a memory or disk alarm; on a connection of
    /// their own, publishes never hold back a delete, a DLQ read or a consumer's acks while it lasts.
    pub publishing: Broker,
    pub publisher: Arc<Publisher>,
    /// Where the tenants' consumers run.
    pub consumer_connections: ConsumerConnections,
    pub registry: ConsumerRegistry,
}

impl Runtime {
    /// Spawns the broker connections' supervisors into `background` (they must outlive the consumers) and, where the role
    /// runs consumers (`server.role`), the queue depth poller into `background` and the reconciler into
    /// `consumers` (stopped first on shutdown, through `stop_consumers`). An `api` instance keeps the broker
    /// connections for publishing and managing queues, and an empty registry.
    pub fn spawn(
        config: &Config,
        db: &DatabaseConnection,
        projections: &Projections,
        metrics: &Metrics,
        background: (&mut JoinSet<&'static str>, &CancellationToken),
        consumers: (&mut JoinSet<&'static str>, &CancellationToken),
    ) -> Self {
        let instance = config.consumer.instance_id();
        let url = config.rabbitmq.connection_url();
        let broker = Broker::new(url.clone(), format!("tenantmq ({instance})"));
        let publishing = Broker::new(url.clone(), format!("tenantmq publishing ({instance})"));
        let publisher = Arc::new(Publisher::new(publishing.clone(), &config.rabbitmq));
        let (tasks, cancel) = background;
        let consumer_connections = ConsumerConnections::new(
            url,
            instance,
            config.rabbitmq.channels_per_connection,
            broker.clone(),
            cancel.child_token(),
        );
        let registry = ConsumerRegistry::default();
        let connections = [broker.subscribe(), publishing.subscribe()];
        let blocked = publishing.clone();
        metrics.observe_broker(
            move || connections.each_ref().map(|c| c.borrow().as_ref().map(|connected| connected.generation)),
            move || blocked.is_blocked(),
        );
        let in_flight = publisher.clone();
        metrics.observe_publishing(move || in_flight.bytes_in_flight());
        let consumer_connections_status = consumer_connections.clone();
        metrics.observe_consumer_connections(move || consumer_connections_status.status());
        let stats = registry.clone();
        metrics.observe_tenants(move || stats.snapshot());
        for (supervisor, name) in [(broker.clone(), "broker connection"), (publishing.clone(), "publishing connection")]
        {
            let stop = cancel.clone();
            tasks.spawn(async move {
                supervisor.supervise(stop).await;
                name
            });
        }
        let runtime = Self { broker, publishing, publisher, consumer_connections, registry };
        if !config.server.role.runs_consumers() {
            return runtime;
        }
        runtime.spawn_queue_depth_poller(config, db, metrics, (tasks, cancel));
        runtime.spawn_reconciler(config, db, projections, metrics, consumers);
        runtime
    }

    /// Closes the broker connections (once the consumers have stopped): the consumers', then the others.
    pub async fn close_connections(&self) {
        self.consumer_connections.close().await;
        tokio::join!(self.publishing.close(), self.broker.close());
    }

    fn spawn_queue_depth_poller(
        &self,
        config: &Config,
        db: &DatabaseConnection,
        metrics: &Metrics,
        (tasks, cancel): (&mut JoinSet<&'static str>, &CancellationToken),
    ) {
        let poller = queue_depth::QueueDepthPoller {
            registry: self.registry.clone(),
            broker: self.broker.clone(),
            pool: db.get_postgres_connection_pool().clone(),
            metrics: metrics.clone(),
            interval: config.metrics.queue_poll_interval,
            polling: Arc::default(),
        };
        let polling = poller.polling.clone();
        metrics.observe_queue_depth_poller(move || polling.load(std::sync::atomic::Ordering::Relaxed));
        let stop = cancel.clone();
        tasks.spawn(async move {
            poller.run(stop).await;
            "queue depth poller"
        });
    }

    fn spawn_reconciler(
        &self,
        config: &Config,
        db: &DatabaseConnection,
        projections: &Projections,
        metrics: &Metrics,
        (tasks, stop_consumers): (&mut JoinSet<&'static str>, &CancellationToken),
    ) {
        let reconciler = reconciler::Reconciler {
            registry: self.registry.clone(),
            broker: self.broker.clone(),
            consumer_connections: self.consumer_connections.clone(),
            tenants: TenantReadModel::new(db.clone()),
            pool: db.get_postgres_connection_pool().clone(),
            settings: Arc::new(consumer::ConsumerSettings::from_config(config, self.publisher.clone())),
            projection: projections.tenants.clone(),
            resync_interval: config.consumer.resync_interval,
            database_outage_grace: config.consumer.database_outage_grace,
            metrics: metrics.clone(),
            retirement: Arc::new(retirement::Retirement {
                db: db.clone(),
                broker: self.broker.clone(),
                on_delete: config.partitions.on_tenant_delete,
                queue_type: config.rabbitmq.queue_type,
                payload_limits: config.payload_limits(),
                metrics: metrics.clone(),
            }),
        };
        let stop_consumers = stop_consumers.clone();
        tasks.spawn(async move {
            reconciler.run(stop_consumers).await;
            "reconciler"
        });
    }
}

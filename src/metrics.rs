//! Metrics: OpenTelemetry instruments exported in the Prometheus text format by opentelemetry-prometheus,
//! into a registry of this application's own (tests run many applications in one process).
//!
//! Per-tenant series are *observable* instruments whose callbacks read the runtime's numbers at scrape time.
//! The OpenTelemetry SDK keeps every attribute set a synchronous instrument was ever given, so a deleted
//! tenant's series would stay forever; an observable instrument reports only what its callback observed in
//! the current collection, so a tenant the runtime forgot disappears from `/metrics`. Histograms carry no
//! tenant label for the same reason. Every name is documented in `docs/prometheus-metrics-guide.md`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry::{
    KeyValue,
    metrics::{Counter, Histogram, Meter, MeterProvider},
};
use opentelemetry_sdk::metrics::{Instrument, SdkMeterProvider, Stream};
use prometheus::{Encoder, TextEncoder};
use tokio::sync::watch;

use crate::domain::tenant::{QueueKind, TenantId};

/// Why processing a message failed (`tenantmq_messages_failed_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// It may succeed later (database down): the message is retried.
    Transient,
    /// It can never succeed (not JSON, refused by the database): the message is dead-lettered.
    Permanent,
}

impl FailureReason {
    pub const ALL: [Self; 2] = [Self::Transient, Self::Permanent];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Permanent => "permanent",
        }
    }
}

/// A point-in-time copy of one tenant's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantStatsSnapshot {
    pub tenant: TenantId,
    pub consumed: u64,
    pub persisted: u64,
    pub failed_transient: u64,
    pub failed_permanent: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub workers_desired: u16,
    pub workers_running: u16,
    pub workers_busy: u16,
    /// Of the busy workers, those waiting for a write turn.
    pub workers_waiting_for_write: u16,
    /// Whether this instance's consumer of the tenant is consuming.
    pub consumer_up: bool,
    /// Deliveries this instance holds and has not settled yet.
    pub unacked: u32,
    /// Ready messages per [`QueueKind::ALL`], `None` when unknown.
    pub queue_ready: [Option<u64>; 3],
}

/// What the reconciler did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcilerAction {
    Start,
    Resize,
    Stop,
    /// A consumer failed and is scheduled for a restart.
    Restart,
    /// The database was unreachable for `consumer.database_outage_grace`: a consumer stopped until it is back.
    Pause,
}

impl ReconcilerAction {
    const ALL: [Self; 5] = [Self::Start, Self::Resize, Self::Stop, Self::Restart, Self::Pause];

    const fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Resize => "resize",
            Self::Stop => "stop",
            Self::Restart => "restart",
            Self::Pause => "pause",
        }
    }
}

/// What went wrong in the reconciler (`tenantmq_reconciler_errors_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcilerError {
    /// The desired runtime could not be read from the tenants read model.
    DesiredState,
    /// A tenant's consumer ended with an error (it is restarted after a pause).
    ConsumerFailed,
    /// Queues of deleted tenants could not be swept.
    QueueSweep,
}

impl ReconcilerError {
    const ALL: [Self; 3] = [Self::DesiredState, Self::ConsumerFailed, Self::QueueSweep];

    const fn as_str(self) -> &'static str {
        match self {
            Self::DesiredState => "desired_state",
            Self::ConsumerFailed => "consumer_failed",
            Self::QueueSweep => "queue_sweep",
        }
    }
}

/// Histogram buckets for one batch write, in seconds: 1 ms to 10 s.
const PERSIST_SECONDS_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0];
/// Messages per batch write: up to the largest `consumer.batch_size` worth having.
const BATCH_SIZE_BUCKETS: [f64; 11] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0];
/// HTTP request latency, in seconds: 1 ms to 30 s (a batch publish waits for the broker's confirms).
const HTTP_SECONDS_BUCKETS: [f64; 15] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0];

#[derive(Clone)]
pub struct Metrics {
    registry: prometheus::Registry,
    // Kept so the exporter keeps collecting (and the callbacks stay registered) while the metrics live.
    _provider: SdkMeterProvider,
    meter: Meter,
    reconciler_actions: Counter<u64>,
    reconciler_errors: Counter<u64>,
    reconciler_passes: Counter<u64>,
    persist_duration: Histogram<f64>,
    persist_batch_size: Histogram<u64>,
    persist_delay: Histogram<f64>,
    http_requests: Counter<u64>,
    http_request_duration: Histogram<f64>,
    queue_depth_broker_calls: Counter<u64>,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .scope_info_enabled(false)
            .without_target_info()
            .build()
            .map_err(|e| prometheus::Error::Msg(e.to_string()))?;
        let provider = SdkMeterProvider::builder().with_reader(exporter).with_view(room_for_every_tenant).build();
        let meter = provider.meter("tenantmq");
        let metrics = Self {
            registry,
            reconciler_actions: meter
                .u64_counter("tenantmq.reconciler.actions")
                .with_description("Actions the reconciler took, by action")
                .build(),
            reconciler_errors: meter
                .u64_counter("tenantmq.reconciler.errors")
                .with_description("Errors the reconciler met, by kind")
                .build(),
            reconciler_passes: meter
                .u64_counter("tenantmq.reconciler.passes")
                .with_description("Passes of the reconciler: each reads the desired runtime of every tenant once")
                .build(),
            persist_duration: meter
                .f64_histogram("tenantmq.persist.duration")
                .with_unit("s")
                .with_description("Time to write one batch of messages into a partition (one insert and commit)")
                .with_boundaries(PERSIST_SECONDS_BUCKETS.to_vec())
                .build(),
            persist_batch_size: meter
                .u64_histogram("tenantmq.persist.batch_size")
                .with_description("Messages per batch write")
                .with_boundaries(BATCH_SIZE_BUCKETS.to_vec())
                .build(),
            persist_delay: meter
                .f64_histogram("tenantmq.message.persist_delay")
                .with_unit("s")
                .with_description(
                    "Time from a delivery's arrival at this instance to its row committed: the batching window, \
                     the wait for a write turn and the write",
                )
                .with_boundaries(PERSIST_SECONDS_BUCKETS.to_vec())
                .build(),
            http_requests: meter
                .u64_counter("tenantmq.http.requests")
                .with_description("HTTP requests answered, by method, route template and status")
                .build(),
            http_request_duration: meter
                .f64_histogram("tenantmq.http.request.duration")
                .with_unit("s")
                .with_description("HTTP request latency, by method and route template")
                .with_boundaries(HTTP_SECONDS_BUCKETS.to_vec())
                .build(),
            queue_depth_broker_calls: meter
                .u64_counter("tenantmq.queue_depth.broker_calls")
                .with_description("Questions this instance asked the broker to read queue depths (passive declares)")
                .build(),
            meter,
            _provider: provider,
        };
        // Counters exist at 0 from the start, so `rate()` and alerts see their first increment.
        for action in ReconcilerAction::ALL {
            metrics.reconciler_actions.add(0, &[KeyValue::new("action", action.as_str())]);
        }
        for kind in ReconcilerError::ALL {
            metrics.reconciler_errors.add(0, &[KeyValue::new("kind", kind.as_str())]);
        }
        metrics.reconciler_passes.add(0, &[]);
        metrics.queue_depth_broker_calls.add(0, &[]);
        // The Prometheus convention: one series, always 1, whose label names the release, so that a query can
        // tell which version each instance runs (during a rolling update) and join it to the other series.
        metrics
            .meter
            .u64_observable_gauge("tenantmq.build.info")
            .with_description("Always 1; `version` names the release this instance runs")
            .with_callback(|observer| observer.observe(1, &[KeyValue::new("version", env!("CARGO_PKG_VERSION"))]))
            .build();
        Ok(metrics)
    }

    pub fn reconciler_action(&self, action: ReconcilerAction) {
        self.reconciler_actions.add(1, &[KeyValue::new("action", action.as_str())]);
    }

    pub fn reconciler_error(&self, kind: ReconcilerError) {
        self.reconciler_errors.add(1, &[KeyValue::new("kind", kind.as_str())]);
    }

    pub fn reconciler_pass(&self) {
        self.reconciler_passes.add(1, &[]);
    }

    /// Passive declares sent to read queue depths.
    pub fn queue_depth_broker_calls(&self, calls: u64) {
        self.queue_depth_broker_calls.add(calls, &[]);
    }

    /// One batch written into a partition.
    pub fn batch_persisted(&self, messages: usize, took: Duration) {
        self.persist_duration.record(took.as_secs_f64(), &[]);
        self.persist_batch_size.record(u64::try_from(messages).unwrap_or(u64::MAX), &[]);
    }

    /// A delivery's row is committed, `delay` after the delivery arrived at this instance.
    pub fn message_persisted_after(&self, delay: Duration) {
        self.persist_delay.record(delay.as_secs_f64(), &[]);
    }

    /// One HTTP request answered. `route` must be a route template (bounded), never a raw path.
    pub fn http_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        let (method, route) = (KeyValue::new("method", method.to_owned()), KeyValue::new("route", route.to_owned()));
        self.http_request_duration.record(took.as_secs_f64(), &[method.clone(), route.clone()]);
        self.http_requests.add(1, &[method, route, KeyValue::new("status", i64::from(status))]);
    }

    /// Registers the per-tenant series, read with `tenants` (the runtime's numbers) at every scrape.
    pub fn observe_tenants(&self, tenants: impl Fn() -> Vec<TenantStatsSnapshot> + Clone + Send + Sync + 'static) {
        self.observe_tenant_counters(tenants.clone());
        self.observe_tenant_gauges(tenants);
    }

    /// Message counters per tenant (and failures by reason).
    fn observe_tenant_counters(&self, tenants: impl Fn() -> Vec<TenantStatsSnapshot> + Clone + Send + Sync + 'static) {
        let counters: [(&'static str, &'static str, ReadStat); 4] = [
            (
                "tenantmq.messages.consumed",
                "Deliveries received from the tenant's queue (redeliveries count again)",
                |s| s.consumed,
            ),
            ("tenantmq.messages.persisted", "Messages acked after their row was committed", |s| s.persisted),
            ("tenantmq.messages.retried", "Messages scheduled for another attempt", |s| s.retried),
            ("tenantmq.messages.dead_lettered", "Messages sent to the tenant's dead-letter queue", |s| s.dead_lettered),
        ];
        for (name, description, read) in counters {
            let tenants = tenants.clone();
            self.meter
                .u64_observable_counter(name)
                .with_description(description)
                .with_callback(move |observer| {
                    for stats in tenants() {
                        observer.observe(read(&stats), &[tenant_label(&stats)]);
                    }
                })
                .build();
        }
        let failures = tenants;
        self.meter
            .u64_observable_counter("tenantmq.messages.failed")
            .with_description(
                "Processing attempts that failed, by reason (transient: retried; permanent: dead-lettered)",
            )
            .with_callback(move |observer| {
                for stats in failures() {
                    for reason in FailureReason::ALL {
                        let count = match reason {
                            FailureReason::Transient => stats.failed_transient,
                            FailureReason::Permanent => stats.failed_permanent,
                        };
                        observer.observe(count, &[tenant_label(&stats), KeyValue::new("reason", reason.as_str())]);
                    }
                }
            })
            .build();
    }

    /// Worker, consumer and queue gauges per tenant.
    fn observe_tenant_gauges(&self, tenants: impl Fn() -> Vec<TenantStatsSnapshot> + Clone + Send + Sync + 'static) {
        let gauges: [(&'static str, &'static str, ReadStat); 6] = [
            ("tenantmq.workers.desired", "Worker pool size the tenant is configured with", |s| {
                s.workers_desired.into()
            }),
            ("tenantmq.workers.running", "Workers in the tenant's pool on this instance", |s| s.workers_running.into()),
            (
                "tenantmq.workers.busy",
                "Workers holding a batch right now on this instance (writing it, waiting for a turn, or between tries)",
                |s| s.workers_busy.into(),
            ),
            (
                "tenantmq.workers.waiting_for_write",
                "Of the busy workers, those waiting for the tenant's turn at the shared write connections",
                |s| s.workers_waiting_for_write.into(),
            ),
            ("tenantmq.consumer.up", "1 while the tenant's consumer consumes on this instance, else 0", |s| {
                s.consumer_up.into()
            }),
            (
                "tenantmq.queue.messages_unacked",
                "Deliveries this instance holds unsettled (sum over instances for the queue's total)",
                |s| s.unacked.into(),
            ),
        ];
        for (name, description, read) in gauges {
            let tenants = tenants.clone();
            self.meter
                .u64_observable_gauge(name)
                .with_description(description)
                .with_callback(move |observer| {
                    for stats in tenants() {
                        observer.observe(read(&stats), &[tenant_label(&stats)]);
                    }
                })
                .build();
        }
        let queues = tenants;
        self.meter
            .u64_observable_gauge("tenantmq.queue.messages_ready")
            .with_description("Messages ready in the tenant's queues, by queue (polled from the broker)")
            .with_callback(move |observer| {
                for stats in queues() {
                    for (queue, ready) in QueueKind::ALL.iter().zip(stats.queue_ready) {
                        if let Some(ready) = ready {
                            observer.observe(ready, &[tenant_label(&stats), KeyValue::new("queue", queue.as_str())]);
                        }
                    }
                }
            })
            .build();
    }

    /// Registers the state of the broker connections other than the consumers': `generations` gives each
    /// one's current connection number (each reconnect gets the next one), `None` while it is down; `blocked`,
    /// whether the broker blocks the publishing one.
    pub fn observe_broker<const N: usize>(
        &self,
        generations: impl Fn() -> [Option<u64>; N] + Clone + Send + Sync + 'static,
        blocked: impl Fn() -> bool + Send + Sync + 'static,
    ) {
        let connected = generations.clone();
        self.meter
            .u64_observable_gauge("tenantmq.broker.connected")
            .with_description("1 while the RabbitMQ connections (publishing, and the one that manages queues) are up")
            .with_callback(move |observer| observer.observe(connected().iter().all(Option::is_some).into(), &[]))
            .build();
        self.meter
            .u64_observable_gauge("tenantmq.broker.blocked")
            .with_description(
                "1 while RabbitMQ blocks this instance's publishing connection (a memory or disk alarm: publishes \
                 answer 503), else 0",
            )
            .with_callback(move |observer| observer.observe(blocked().into(), &[]))
            .build();
        // Reconnects are each connection's highest generation seen minus its first; remembered while it is down.
        let highest: Arc<[AtomicU64; N]> = Arc::new(std::array::from_fn(|_| AtomicU64::new(0)));
        self.meter
            .u64_observable_counter("tenantmq.broker.reconnects")
            .with_description("Times a RabbitMQ connection (other than the consumers') was re-established")
            .with_callback(move |observer| {
                let reconnects = generations().into_iter().zip(highest.iter()).map(|(current, highest)| {
                    if let Some(current) = current {
                        highest.fetch_max(current, Ordering::Relaxed);
                    }
                    highest.load(Ordering::Relaxed).saturating_sub(1)
                });
                observer.observe(reconnects.sum(), &[]);
            })
            .build();
    }

    /// Registers the bytes of clients' messages this instance has on their way to the broker, unconfirmed.
    pub fn observe_publishing(&self, bytes_in_flight: impl Fn() -> u64 + Send + Sync + 'static) {
        self.meter
            .u64_observable_gauge("tenantmq.publish.bytes_in_flight")
            .with_description(
                "Bytes of clients' messages on their way to RabbitMQ from this instance, not confirmed yet (at most \
                 rabbitmq.max_publish_bytes_in_flight)",
            )
            .with_callback(move |observer| observer.observe(bytes_in_flight(), &[]))
            .build();
    }

    /// Registers the consumer connections' state: per connection (`connection`, numbered from 1) whether it is up.
    pub fn observe_consumer_connections(&self, status: impl Fn() -> Vec<(usize, bool)> + Send + Sync + 'static) {
        self.meter
            .u64_observable_gauge("tenantmq.broker.consumer_connection.up")
            .with_description("1 while a consumer connection is up, else 0, by connection number")
            .with_callback(move |observer| {
                for (connection, up) in status() {
                    observer.observe(up.into(), &[KeyValue::new("connection", connection as i64)]);
                }
            })
            .build();
    }

    /// Registers whether this instance is the one that reads queue depths from the broker.
    pub fn observe_queue_depth_poller(&self, polling: impl Fn() -> bool + Send + Sync + 'static) {
        self.meter
            .u64_observable_gauge("tenantmq.queue_depth.poller")
            .with_description("1 while this instance is the one reading queue depths from the broker, else 0")
            .with_callback(move |observer| observer.observe(polling().into(), &[]))
            .build();
    }

    /// Registers each projector's position (`positions`: name and position of each) and its distance from
    /// the head of the log.
    pub fn observe_projectors<P>(
        &self,
        positions: impl Fn() -> P + Clone + Send + Sync + 'static,
        head: watch::Receiver<i64>,
    ) where
        P: IntoIterator<Item = (&'static str, i64)>,
    {
        let lags = positions.clone();
        self.meter
            .i64_observable_gauge("tenantmq.projector.position")
            .with_description("Position in the event log up to which the projector has applied events")
            .with_callback(move |observer| {
                for (projector, position) in positions() {
                    observer.observe(position, &[KeyValue::new("projector", projector)]);
                }
            })
            .build();
        self.meter
            .i64_observable_gauge("tenantmq.projector.lag_events")
            .with_description("Events in the log the projector has not applied yet (head minus position)")
            .with_callback(move |observer| {
                let head = *head.borrow();
                for (projector, position) in lags() {
                    observer.observe((head - position).max(0), &[KeyValue::new("projector", projector)]);
                }
            })
            .build();
    }

    /// Registers how long the read side's visibility horizon has been held back (see
    /// [`crate::store::visibility`]); `None` (the horizon cannot be read) leaves the series out.
    pub fn observe_read_visibility(&self, lag: watch::Receiver<Option<Duration>>) {
        self.meter
            .f64_observable_gauge("tenantmq.read.visibility_lag")
            .with_unit("s")
            .with_description(
                "How long the oldest transaction running in the service's database has held back what message pages show",
            )
            .with_callback(move |observer| {
                if let Some(lag) = *lag.borrow() {
                    observer.observe(lag.as_secs_f64(), &[]);
                }
            })
            .build();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "encoding metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// Tenants one instance reports on before their series overflow.
pub const TENANTS_WITH_SERIES: usize = 16_384;

/// The SDK keeps 2,000 series per instrument by default and folds the rest into one
/// `otel_metric_overflow="true"` series without a tenant: past about 700 tenants the queue gauges would lose
/// theirs (three queues each). Per-tenant instruments get room for [`TENANTS_WITH_SERIES`], at the most series
/// a tenant has in one (a series per queue).
fn room_for_every_tenant(instrument: &Instrument) -> Option<Stream> {
    let per_tenant = ["tenantmq.messages.", "tenantmq.workers.", "tenantmq.consumer.", "tenantmq.queue."];
    per_tenant
        .iter()
        .any(|prefix| instrument.name().starts_with(prefix))
        .then(|| Stream::builder().with_cardinality_limit(TENANTS_WITH_SERIES * QueueKind::ALL.len()).build().ok())
        .flatten()
}

/// Reads one number of a tenant's snapshot.
type ReadStat = fn(&TenantStatsSnapshot) -> u64;

fn tenant_label(stats: &TenantStatsSnapshot) -> KeyValue {
    KeyValue::new("tenant_id", stats.tenant.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_tenant_keeps_its_own_series_far_past_the_sdks_default_limit() {
        let metrics = Metrics::new().expect("metrics");
        let tenants: Vec<TenantStatsSnapshot> = (0..2_500)
            .map(|_| TenantStatsSnapshot {
                tenant: TenantId::from_uuid(uuid::Uuid::now_v7()),
                consumed: 1,
                persisted: 1,
                failed_transient: 0,
                failed_permanent: 0,
                retried: 0,
                dead_lettered: 0,
                workers_desired: 3,
                workers_running: 3,
                workers_busy: 0,
                workers_waiting_for_write: 0,
                consumer_up: true,
                unacked: 0,
                queue_ready: [Some(1), Some(0), Some(0)],
            })
            .collect();
        metrics.observe_tenants(move || tenants.clone());
        let rendered = metrics.render();
        assert!(!rendered.contains("otel_metric_overflow"), "no series may overflow");
        for name in ["tenantmq_queue_messages_ready{", "tenantmq_messages_failed_total{", "tenantmq_workers_desired{"] {
            let tenants: HashSet<&str> = rendered
                .lines()
                .filter(|line| line.starts_with(name))
                .filter_map(|line| line.split("tenant_id=\"").nth(1)?.split('"').next())
                .collect();
            assert_eq!(tenants.len(), 2_500, "{name}");
        }
    }
}

//! Prometheus metrics through OpenTelemetry (opentelemetry-prometheus exporter), one registry per
//! application, served at `/metrics`.

use opentelemetry::{
    KeyValue,
    metrics::{Counter, MeterProvider},
};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, TextEncoder};

use crate::domain::tenant::TenantId;

/// What the reconciler did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcilerAction {
    Start,
    Resize,
    Stop,
    /// A consumer failed and is scheduled for a restart.
    Restart,
}

impl ReconcilerAction {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Resize => "resize",
            Self::Stop => "stop",
            Self::Restart => "restart",
        }
    }
}

#[derive(Clone)]
pub struct Metrics {
    registry: prometheus::Registry,
    // Kept so the exporter keeps collecting for as long as the metrics live.
    _provider: SdkMeterProvider,
    reconciler_actions: Counter<u64>,
    messages_persisted: Counter<u64>,
    messages_dead_lettered: Counter<u64>,
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
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        let meter = provider.meter("tenantmq");
        Ok(Self {
            registry,
            reconciler_actions: meter
                .u64_counter("tenantmq.reconciler.actions")
                .with_description("Actions the reconciler took, by action")
                .build(),
            messages_persisted: meter
                .u64_counter("tenantmq.messages.persisted")
                .with_description("Messages committed to their tenant's partition")
                .build(),
            messages_dead_lettered: meter
                .u64_counter("tenantmq.messages.dead_lettered")
                .with_description("Messages rejected to their tenant's dead-letter queue")
                .build(),
            _provider: provider,
        })
    }

    pub fn reconciler_action(&self, action: ReconcilerAction) {
        self.reconciler_actions.add(1, &[KeyValue::new("action", action.as_str())]);
    }

    pub fn persisted(&self, tenant: TenantId, count: u64) {
        self.messages_persisted.add(count, &[KeyValue::new("tenant_id", tenant.to_string())]);
    }

    pub fn dead_lettered(&self, tenant: TenantId) {
        self.messages_dead_lettered.add(1, &[KeyValue::new("tenant_id", tenant.to_string())]);
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

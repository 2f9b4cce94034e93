//! Logs and traces.
//!
//! Logs: human-readable text or JSON lines, filtered by `log.level` (or `RUST_LOG` when set).
//!
//! Traces: the service's spans (`http.request`, `command`, `projector.step`, `publish`, `handle`) are also
//! OpenTelemetry spans, so they carry W3C trace context: an incoming `traceparent` continues the caller's
//! trace, every published message carries the `publish` span's context in its AMQP headers, and the `handle`
//! span of a batch links to the context of each message it handles. With `telemetry.otlp_endpoint` set, the
//! spans are exported over OTLP/HTTP by a batch processor; without it they are only kept in memory while
//! open (ids and a few attributes per span: cheap), so ids still propagate and land in event metadata.

use std::{future::Future, pin::Pin, time::Duration};

use lapin::types::{AMQPValue, FieldTable, ShortString};
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response, hyper::HyperClient};
use opentelemetry_otlp::{SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::Level;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer, Registry, filter::Targets, fmt, layer::SubscriberExt, registry::LookupSpan,
    util::SubscriberInitExt,
};

use crate::config::{LogConfig, LogFormat, TelemetryConfig};

/// How long one export request may take; a collector that does not answer must not hold spans for long.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the last spans to go out.
pub(crate) const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP exporter: {0}")]
pub struct TelemetryError(String);

/// The tracer provider; [`Telemetry::shutdown`] flushes the spans not exported yet.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Builds the tracer provider and sets the W3C trace-context propagator globally. `runtime` runs the
    /// export requests: the SDK's batch processor exports from a thread of its own, without a Tokio runtime,
    /// which the hyper client needs.
    pub fn new(config: &TelemetryConfig, runtime: &tokio::runtime::Handle) -> Result<Self, TelemetryError> {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let resource = Resource::builder().with_service_name(config.service_name.clone()).build();
        let mut builder = SdkTracerProvider::builder().with_resource(resource);
        if let Some(endpoint) = &config.otlp_endpoint {
            let exporter = SpanExporter::builder()
                .with_http()
                .with_endpoint(traces_url(endpoint))
                .with_timeout(EXPORT_TIMEOUT)
                .with_http_client(OnRuntime {
                    runtime: runtime.clone(),
                    client: HyperClient::with_default_connector(EXPORT_TIMEOUT, None),
                })
                .build()
                .map_err(|e| TelemetryError(e.to_string()))?;
            builder = builder.with_batch_exporter(exporter);
        }
        Ok(Self { provider: builder.build() })
    }

    /// A `tracing` layer that makes the service's spans OpenTelemetry spans. Only this crate's spans, at
    /// `info` and above, and the projectors' `debug` `projector.step` (debug so that the log does not show a
    /// step per poll): the log level does not decide what is traced, and dependencies' spans stay out.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        let tracer = self.provider.tracer("tenantmq");
        let traced = Targets::new()
            .with_target(env!("CARGO_CRATE_NAME"), Level::INFO)
            .with_target(concat!(env!("CARGO_CRATE_NAME"), "::projectors"), Level::DEBUG);
        tracing_opentelemetry::layer().with_tracer(tracer).with_filter(traced)
    }

    /// Exports what is left. Call it outside the runtime's `block_on` but before the runtime is dropped:
    /// the export requests run on the runtime's workers.
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(%error, "flushing traces");
        }
    }
}

/// Dependencies' log lines that are always kept out, whatever the level asked for: lapin logs every message
/// the broker returns, body and all, as a warning (tenants' data stays out of the log), and every channel the
/// broker closes as an error, though most are expected (a queue probed that does not exist) and the service
/// logs each with what it means (the connection's supervisor at debug, the operation that failed where it
/// matters); sqlx logs PostgreSQL's NOTICEs, such as "relation … already exists, skipping" from every
/// idempotent migration step, as info (PostgreSQL's warnings and errors still show).
const SILENCED: &[&str] = &["lapin::returned_messages=off", "lapin::channel=off", "sqlx::postgres::notice=warn"];

/// The log filter: `RUST_LOG` when set, else `log.level`, with [`SILENCED`] on top.
pub fn log_filter(level: &str) -> EnvFilter {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    SILENCED.iter().filter_map(|directive| directive.parse().ok()).fold(filter, EnvFilter::add_directive)
}

/// What a caught panic said (its message, when it was a string), for the log.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|message| (*message).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// Installs the global subscriber: the log layer and the trace layer.
pub fn init(log: &LogConfig, telemetry: &Telemetry) {
    let filter = log_filter(&log.level);
    let logs = fmt::layer().with_writer(std::io::stderr);
    let logs = match log.format {
        LogFormat::Json => logs.json().flatten_event(true).with_filter(filter).boxed(),
        LogFormat::Text => logs.with_filter(filter).boxed(),
    };
    // A second init (tests, embedding) keeps the first subscriber.
    let _ = Registry::default().with(logs).with(telemetry.layer()).try_init();
}

/// `endpoint` is the collector's base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` is; the exporter wants the URL of
/// the traces signal itself.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") { base.to_owned() } else { format!("{base}/v1/traces") }
}

/// Sends the exporter's requests on the service's Tokio runtime (see [`Telemetry::new`]).
#[derive(Debug)]
struct OnRuntime {
    runtime: tokio::runtime::Handle,
    client: HyperClient,
}

impl HttpClient for OnRuntime {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move { client.send_bytes(request).await });
        Box::pin(async move { sent.await.map_err(|e| -> HttpError { Box::new(e) })? })
    }
}

/// The trace context of the current span, in the W3C form (`traceparent`, `tracestate`), as AMQP headers.
pub fn inject_current(headers: &mut FieldTable) {
    inject(&tracing::Span::current().context(), headers);
}

pub fn inject(context: &Context, headers: &mut FieldTable) {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(context, &mut AmqpHeaders(headers));
    });
}

/// The trace context a message carries in its AMQP headers (an empty context when it carries none).
pub fn extract(headers: Option<&FieldTable>) -> Context {
    let Some(headers) = headers else { return Context::new() };
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&AmqpHeadersRef(headers)))
}

/// The trace id of the current span, as 32 hex digits, when there is one.
pub fn current_trace_id() -> Option<String> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

struct AmqpHeaders<'a>(&'a mut FieldTable);

impl Injector for AmqpHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(ShortString::from(key), AMQPValue::LongString(value.into()));
    }
}

struct AmqpHeadersRef<'a>(&'a FieldTable);

impl Extractor for AmqpHeadersRef<'_> {
    /// Producers other than this service may send the header as a long string or as bytes.
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.inner().get(key)? {
            AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok(),
            AMQPValue::ShortString(value) => Some(value.as_str()),
            AMQPValue::ByteArray(value) => std::str::from_utf8(value.as_slice()).ok(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    fn propagator() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    }

    #[test]
    fn trace_context_round_trips_through_amqp_headers() {
        propagator();
        let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("trace id");
        let span_id = SpanId::from_hex("00f067aa0ba902b7").expect("span id");
        let state = TraceState::from_key_value([("vendor", "value")]).expect("trace state");
        let sent = SpanContext::new(trace_id, span_id, TraceFlags::SAMPLED, true, state);
        let mut headers = FieldTable::default();
        headers.insert("x-custom".into(), AMQPValue::LongString("kept".into()));
        inject(&Context::new().with_remote_span_context(sent.clone()), &mut headers);

        let traceparent = AmqpHeadersRef(&headers).get("traceparent").map(str::to_owned);
        assert_eq!(traceparent.as_deref(), Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert_eq!(AmqpHeadersRef(&headers).get("tracestate"), Some("vendor=value"));
        assert_eq!(AmqpHeadersRef(&headers).get("x-custom"), Some("kept"));

        let received = extract(Some(&headers));
        let received = received.span().span_context().clone();
        assert_eq!(received.trace_id(), trace_id);
        assert_eq!(received.span_id(), span_id);
        assert!(received.is_sampled() && received.is_remote());
        assert_eq!(received.trace_state().header(), "vendor=value");
    }

    #[test]
    fn messages_without_or_with_a_malformed_traceparent_have_no_context() {
        propagator();
        assert!(!extract(None).span().span_context().is_valid());
        let mut headers = FieldTable::default();
        headers.insert("traceparent".into(), AMQPValue::LongString("00-nothex-00f067aa0ba902b7-01".into()));
        assert!(!extract(Some(&headers)).span().span_context().is_valid());
        // Another producer's header as bytes is read as well.
        let mut headers = FieldTable::default();
        let bytes = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec();
        headers.insert("traceparent".into(), AMQPValue::ByteArray(bytes.into()));
        assert!(extract(Some(&headers)).span().span_context().is_valid());
    }

    #[test]
    fn the_endpoint_is_the_collector_base_url() {
        assert_eq!(traces_url("http://collector:4318"), "http://collector:4318/v1/traces");
        assert_eq!(traces_url("http://collector:4318/"), "http://collector:4318/v1/traces");
        assert_eq!(traces_url("http://collector:4318/v1/traces"), "http://collector:4318/v1/traces");
    }
}

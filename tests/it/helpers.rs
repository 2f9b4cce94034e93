//! Spawns the real application, as `main` does, on a free port and a database of its own.

use std::{future::Future, time::Duration};

use lapin::{BasicProperties, options::BasicPublishOptions};
use reqwest::{Response, StatusCode};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde_json::{Value, json};
use tenantmq::{
    Application,
    auth::{self, Role},
    config::{Config, TelemetryConfig},
    domain::tenant::TenantId,
    telemetry::Telemetry,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::{Layer, layer::SubscriberExt, util::SubscriberInitExt};
use uuid::Uuid;

use crate::services;

pub struct TestApp {
    pub base_url: String,
    /// Set until `stop` has cleaned up: a test that panics first still leaves nothing behind (see `Drop`).
    cleanup: Option<String>,
    /// Sends an admin token with every request.
    pub client: reqwest::Client,
    pub db: DatabaseConnection,
    pub config: Config,
    shutdown: CancellationToken,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

/// A configuration for a test: its own database, a free port, fast polling.
pub fn test_config() -> Config {
    let services = services::get();
    let mut config = Config::default();
    config.server.host = "127.0.0.1".into();
    config.server.port = 0;
    config.database.url = format!("{}/tenantmq_it_{}", services.postgres_server, Uuid::new_v4().simple());
    config.database.max_connections = 10;
    config.rabbitmq.url = services.amqp_url.clone();
    config.projectors.poll_interval = Duration::from_millis(200);
    config.shutdown_timeout = Duration::from_secs(10);
    config.auth.jwt_secret = Some(format!("test-secret-{}", Uuid::new_v4()));
    config
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(test_config()).await
    }

    pub async fn spawn_with(config: Config) -> Self {
        // Logs show with `RUST_LOG=…` (and `--nocapture`).
        // Spans are OpenTelemetry spans as in `main` (trace context in AMQP headers and event metadata),
        // exported nowhere.
        let traces = Telemetry::new(&TelemetryConfig::default(), &tokio::runtime::Handle::current())
            .expect("telemetry without an exporter");
        let logs =
            tracing_subscriber::fmt::layer().with_test_writer().with_filter(tenantmq::telemetry::log_filter("error"));
        let _ = tracing_subscriber::registry().with(logs).with(traces.layer()).try_init();
        let app = Application::build(config.clone()).await.expect("the application starts");
        let base_url = format!("http://{}", app.address());
        let db = app.db().clone();
        let shutdown = app.shutdown_token();
        let server = tokio::spawn(app.run_until_stopped());
        let mut headers = reqwest::header::HeaderMap::new();
        if config.auth.enabled {
            let admin = format!("Bearer {}", mint(&config, Role::Admin));
            headers.insert(reqwest::header::AUTHORIZATION, admin.parse().expect("header value"));
        }
        let client = reqwest::Client::builder().default_headers(headers).build().expect("client");
        let cleanup = Some(config.database.url.clone());
        Self { base_url, cleanup, client, db, config, shutdown, server: Some(server) }
    }

    /// A token of this service for `role`, valid for an hour.
    pub fn token(&self, role: Role) -> String {
        mint(&self.config, role)
    }

    /// Stops the service gracefully, waits for it and removes what the test made: its tenants' queues and its
    /// database.
    pub async fn stop(mut self) {
        self.stop_service().await;
        if let Some(url) = self.cleanup.take() {
            drop_database(&url).await;
        }
    }

    /// Stops the service gracefully and waits for it, leaving the queues and the database for the test to
    /// look at (`stop` then removes them).
    pub async fn stop_service(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server stopped cleanly");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    // The request is built before the future, so these futures borrow nothing and can be joined freely.
    pub fn get(&self, path: &str) -> impl Future<Output = Response> + use<> {
        send(self.client.get(self.url(path)))
    }

    pub fn post_json(&self, path: &str, body: &Value) -> impl Future<Output = Response> + use<> {
        send(self.client.post(self.url(path)).json(body))
    }

    pub fn put_json(&self, path: &str, body: &Value) -> impl Future<Output = Response> + use<> {
        send(self.client.put(self.url(path)).json(body))
    }

    pub fn delete(&self, path: &str) -> impl Future<Output = Response> + use<> {
        send(self.client.delete(self.url(path)))
    }

    /// Creates a tenant and returns its JSON.
    pub async fn create_tenant(&self, name: &str) -> Value {
        let response = self.post_json("/tenants", &json!({ "name": name })).await;
        assert_eq!(response.status(), StatusCode::CREATED, "creating tenant {name}");
        response.json().await.expect("tenant JSON")
    }

    /// Creates a tenant and returns its id.
    pub async fn create_tenant_id(&self, name: &str) -> String {
        self.create_tenant(name).await["id"].as_str().expect("id").to_owned()
    }

    /// A count from SQL (`SELECT count(*) …`) or any single bigint.
    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        scalar_i64(&self.db, sql).await
    }
}

fn mint(config: &Config, role: Role) -> String {
    auth::mint(&config.auth, "tests", role, Duration::from_secs(3600)).expect("token minted")
}

async fn send(request: reqwest::RequestBuilder) -> Response {
    request.send().await.expect("request sent")
}

pub async fn scalar_i64(db: &DatabaseConnection, sql: &str) -> i64 {
    let row =
        db.query_one_raw(Statement::from_string(DbBackend::Postgres, sql)).await.expect("query runs").expect("one row");
    row.try_get_by_index::<i64>(0).expect("a bigint")
}

/// Asserts a problem+json response with `status` and (when given) the `field` it names.
pub async fn assert_problem(response: Response, status: StatusCode, field: Option<&str>) -> Value {
    assert_eq!(response.status(), status);
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    let body: Value = response.json().await.expect("problem JSON");
    assert_eq!(body["status"], status.as_u16());
    assert!(body["type"].as_str().is_some_and(|t| t.starts_with("urn:tenantmq:problem:")), "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
    if let Some(field) = field {
        assert_eq!(body["field"], field, "{body}");
    }
    body
}

/// Polls `check` until it returns `Some`, failing after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for TestApp {
    /// A test that ended without `stop` (it panicked): clean up on a runtime of its own, since this one may be
    /// going away.
    fn drop(&mut self) {
        let Some(url) = self.cleanup.take() else { return };
        self.shutdown.cancel();
        let cleaned = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(drop_database(&url));
        });
        let _ = cleaned.join();
    }
}

/// Deletes the queues of every tenant the test's database knows (live and deleted), then the database: a test
/// leaves nothing behind on either service (the CI script checks; it also sweeps databases a killed run left).
pub async fn drop_database(url: &str) {
    delete_tenant_queues(url).await;
    let (server, name) = url.rsplit_once('/').expect("a database URL");
    let admin = sea_orm::Database::connect(format!("{server}/postgres")).await.expect("admin connection");
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .expect("test database dropped");
    admin.close().await.expect("admin connection closed");
}

async fn delete_tenant_queues(url: &str) {
    let Ok(db) = sea_orm::Database::connect(url).await else { return };
    let ids = db
        .query_all_raw(Statement::from_string(DbBackend::Postgres, "SELECT id::text FROM tenants"))
        .await
        .map(|rows| rows.iter().filter_map(|row| row.try_get_by_index::<String>(0).ok()).collect::<Vec<_>>())
        .unwrap_or_default();
    let _ = db.close().await;
    if ids.is_empty() {
        return;
    }
    let broker = amqp().await;
    let channel = broker.create_channel().await.expect("channel");
    for id in &ids {
        for name in [queue(id), retry_queue(id), dlq(id)] {
            channel.queue_delete(name.as_str().into(), Default::default()).await.expect("queue deleted");
        }
    }
    let _ = broker.close(200, "cleaned up".into()).await;
}

/// A broker connection of the test's own, to ask RabbitMQ directly and to publish as any AMQP producer would.
pub async fn amqp() -> lapin::Connection {
    lapin::Connection::connect(&services::get().amqp_url, lapin::ConnectionProperties::default())
        .await
        .expect("test AMQP connection")
}

/// `(ready messages, consumers)` of a queue as the broker reports them, or `None` if it does not exist.
/// Uses a fresh channel: a passive declare of a missing queue closes its channel.
pub async fn queue_state(connection: &lapin::Connection, queue: impl AsRef<str>) -> Option<(u32, u32)> {
    let channel = connection.create_channel().await.expect("channel");
    let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    let state = channel
        .queue_declare(queue.as_ref().into(), passive, lapin::types::FieldTable::default())
        .await
        .ok()
        .map(|q| (q.message_count(), q.consumer_count()));
    if channel.status().connected() {
        let _ = channel.close(200, "done".into()).await;
    }
    state
}

impl TestApp {
    /// Rows in the tenant's partition.
    pub async fn message_count(&self, tenant: &str) -> i64 {
        self.scalar_i64(&format!("SELECT count(*) FROM messages WHERE tenant_id = '{tenant}'")).await
    }

    /// Waits until the tenant's partition holds `expected` rows, and checks it stays there.
    pub async fn await_messages(&self, tenant: &str, expected: i64) {
        eventually(Duration::from_secs(60), &format!("{expected} rows for tenant {tenant}"), || async {
            let count = self.message_count(tenant).await;
            assert!(count <= expected, "more rows than messages: {count} > {expected}");
            (count == expected).then_some(())
        })
        .await;
    }
}

/// Makes every insert statement into the tenant's partition take at least `seconds` longer (a statement
/// trigger), so that a test can watch messages while they are still flowing.
pub async fn slow_down_inserts(db: &DatabaseConnection, tenant: &str, seconds: f64) {
    let partition = partition(tenant);
    db.execute_unprepared(&format!(
        "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$; \
         CREATE TRIGGER slow AFTER INSERT ON {partition} FOR EACH STATEMENT EXECUTE FUNCTION slow_insert();"
    ))
    .await
    .expect("slow insert trigger");
}

/// The tenant id as the service parses it, so that queue and partition names come from the one place that
/// spells them.
fn tenant_id(tenant: &str) -> TenantId {
    tenant.parse().expect("a tenant id")
}

pub fn queue(tenant: &str) -> String {
    tenant_id(tenant).queue_name()
}

pub fn dlq(tenant: &str) -> String {
    tenant_id(tenant).dead_letter_queue_name()
}

pub fn retry_queue(tenant: &str) -> String {
    tenant_id(tenant).retry_queue_name()
}

pub fn partition(tenant: &str) -> String {
    tenant_id(tenant).partition_name()
}

/// Waits until the tenant's queue has this instance's consumer.
pub async fn await_consumer(broker: &lapin::Connection, tenant: &str) {
    eventually(Duration::from_secs(20), "the consumer", || async {
        queue_state(broker, queue(tenant)).await.filter(|(_, consumers)| *consumers == 1)
    })
    .await;
}

/// Publishes as a plain AMQP producer would, straight to the tenant's queue.
pub async fn publish_raw(channel: &lapin::Channel, tenant: &str, body: &[u8], properties: BasicProperties) {
    channel
        .basic_publish("".into(), queue(tenant).as_str().into(), BasicPublishOptions::default(), body, properties)
        .await
        .expect("publish")
        .await
        .expect("sent");
}

/// Waits until the tenant has exactly `expected` rows, all distinct, never more along the way.
pub async fn await_exactly(db: &DatabaseConnection, tenant: &str, expected: i64, timeout: Duration) {
    let count = format!("SELECT count(*) FROM messages WHERE tenant_id = '{tenant}'");
    eventually(timeout, &format!("exactly {expected} rows"), || async {
        let rows = scalar_i64(db, &count).await;
        assert!(rows <= expected, "duplicates: {rows} rows for {expected} messages");
        (rows == expected).then_some(())
    })
    .await;
    let distinct = format!("SELECT count(DISTINCT id) FROM messages WHERE tenant_id = '{tenant}'");
    assert_eq!(scalar_i64(db, &distinct).await, expected);
}

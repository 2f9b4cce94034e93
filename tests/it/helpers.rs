//! Spawns the real application, as `main` does, on a free port and a database of its own.

use std::{future::Future, ops::Deref, time::Duration};

use lapin::{BasicProperties, options::BasicPublishOptions};
use reqwest::{Response, StatusCode};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::{Value, json};
use tenantmq::{
    auth::Role,
    config::{Config, TelemetryConfig},
    domain::tenant::TenantId,
    telemetry::Telemetry,
};
use tenantmq_testkit::{RunningApp, TestDatabase};
use tracing_subscriber::{Layer, layer::SubscriberExt, util::SubscriberInitExt};
use uuid::Uuid;

use crate::services;

/// The application and its database; both go when it is dropped, even by a test that panics (see
/// `TestDatabase`). Derefs to the running application (`base_url`, `client`, `db`, `config`, `url`).
pub struct TestApp {
    app: RunningApp,
    database: TestDatabase,
}

impl Deref for TestApp {
    type Target = RunningApp;

    fn deref(&self) -> &RunningApp {
        &self.app
    }
}

/// A configuration for a test: its own database (not created yet), a free port, fast polling.
pub fn test_config() -> Config {
    let services = services::get();
    let mut config = Config::default();
    config.server.host = "127.0.0.1".into();
    config.server.port = 0;
    config.database.url = services.database_url(&format!("tenantmq_it_{}", Uuid::new_v4().simple()));
    config.database.max_connections = 10;
    config.rabbitmq.url = services.amqp_url.clone();
    config.projectors.poll_interval = Duration::from_millis(200);
    config.shutdown_timeout = Duration::from_secs(10);
    config.auth.jwt_secret = Some(format!("test-secret-{}", Uuid::new_v4()));
    config
}

/// Creates the configuration's database as a clone of the migrated template. Named by the database alone, it
/// is created (and removed) on the test server directly, even when the configuration reaches it through a
/// test's proxy.
pub async fn create_database(config: &Config) -> TestDatabase {
    TestDatabase::create(services::get(), database_name(config)).await.expect("test database cloned")
}

/// The configuration's database, to be created by what the test runs (the binary, `migrate`) and removed like
/// one of the test's own.
pub fn adopt_database(config: &Config) -> TestDatabase {
    TestDatabase::adopt(services::get(), database_name(config))
}

/// Removes a test's database and its tenants' queues.
pub async fn remove_database(database: TestDatabase) {
    database.remove().await.expect("test database and its tenants' queues removed");
}

/// The configuration's database (adopted, see [`adopt_database`]) migrated up, then rolled back one migration
/// at a time until `table` has no `column`: the schema as it was before the migration that added it.
pub async fn database_before_column(config: &Config, table: &str, column: &str) -> (TestDatabase, DatabaseConnection) {
    use tenantmq::store::database::{self, MigrationDirection};
    let url = &config.database.url;
    let test_database = adopt_database(config);
    database::create_database_if_missing(url, config.database.connect_timeout).await.expect("database created");
    database::migrate(&config.database, MigrationDirection::Up).await.expect("migrated");
    let db = database::connect(&config.database).await.expect("connected");
    let present = format!(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = '{table}' AND column_name = '{column}'"
    );
    while scalar_i64(&db, &present).await > 0 {
        database::migrate(&config.database, MigrationDirection::Down).await.expect("a migration rolled back");
    }
    (test_database, db)
}

fn database_name(config: &Config) -> &str {
    tenantmq_testkit::database_name(&config.database.url).expect("a test database URL")
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
        let database = create_database(&config).await;
        let app = RunningApp::start(config).await.expect("the application starts");
        Self { app, database }
    }

    /// A token of this service for `role`.
    pub fn token(&self, role: Role) -> String {
        tenantmq_testkit::token(&self.config, role).expect("token minted")
    }

    /// Stops the service gracefully, waits for it and removes what the test made: its tenants' queues and its
    /// database.
    pub async fn stop(mut self) {
        self.stop_service().await;
        remove_database(self.database).await;
    }

    /// Stops the service gracefully and waits for it, leaving the queues and the database for the test to
    /// look at (`stop` then removes them).
    pub async fn stop_service(&mut self) {
        self.app.stop().await.expect("server stopped cleanly");
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
        self.create_tenant_from(&json!({ "name": name })).await
    }

    /// Creates a tenant from a request body and returns its JSON.
    pub async fn create_tenant_from(&self, body: &Value) -> Value {
        tenantmq_testkit::create_tenant(&self.client, &self.base_url, body).await.expect("tenant created")
    }

    /// Creates a tenant and returns its id.
    pub async fn create_tenant_id(&self, name: &str) -> String {
        self.create_tenant(name).await["id"].as_str().expect("id").to_owned()
    }

    /// What `GET /tenants/{id}` says runs for the tenant on this instance (its `runtime`).
    pub async fn runtime_of(&self, tenant: &str) -> Value {
        let details: Value = self.get(&format!("/tenants/{tenant}")).await.json().await.expect("tenant JSON");
        details["runtime"].clone()
    }

    /// A count from SQL (`SELECT count(*) …`) or any single bigint.
    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        scalar_i64(&self.db, sql).await
    }
}

async fn send(request: reqwest::RequestBuilder) -> Response {
    request.send().await.expect("request sent")
}

pub async fn scalar_i64(db: &DatabaseConnection, sql: &str) -> i64 {
    tenantmq_testkit::scalar_i64(db, sql).await.expect("a bigint from the query")
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
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    tenantmq_testkit::eventually(timeout, what, check).await.unwrap_or_else(|error| panic!("{error}"))
}

/// A broker connection of the test's own, to ask RabbitMQ directly and to publish as any AMQP producer would.
pub async fn amqp() -> lapin::Connection {
    services::get().amqp().await.expect("test AMQP connection")
}

/// `(ready messages, consumers)` of a queue as the broker reports them, or `None` if it does not exist.
pub async fn queue_state(connection: &lapin::Connection, queue: impl AsRef<str>) -> Option<(u32, u32)> {
    tenantmq_testkit::queue_state(connection, queue.as_ref()).await.expect("a channel to ask on")
}

impl TestApp {
    /// Rows in the tenant's partition.
    pub async fn message_count(&self, tenant: &str) -> i64 {
        self.scalar_i64(&format!("SELECT count(*) FROM messages WHERE tenant_id = '{tenant}'")).await
    }

    /// Publishes one message to each tenant through the API, then waits for each one's row: they all still
    /// consume.
    pub async fn assert_consuming<T: AsRef<str>>(&self, tenants: impl IntoIterator<Item = T>) {
        let tenants: Vec<T> = tenants.into_iter().collect();
        for tenant in &tenants {
            let tenant = tenant.as_ref();
            let response = self.post_json(&format!("/tenants/{tenant}/messages"), &json!({ "payload": 1 })).await;
            assert_eq!(response.status(), StatusCode::ACCEPTED, "a publish to {tenant}");
        }
        for tenant in &tenants {
            self.await_messages(tenant.as_ref(), 1).await;
        }
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
        "CREATE OR REPLACE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$ \
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

//! What the integration tests (`tests/it`) and the bench (`bench/`) share: databases cloned from a migrated
//! template and removed with their tenants' queues, the service in process, tokens, tenants created over HTTP,
//! waiting with a deadline, and the broker's view of a queue.
//!
//! Everything returns errors rather than panicking: the bench reports them, the tests `expect` them.

mod app;
mod broker;
mod database;

use std::{future::Future, time::Duration};

use anyhow::{Context, Result};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde_json::Value;
use tenantmq::{
    auth::{self, Role},
    config::Config,
};

pub use app::RunningApp;
pub use broker::{DeclaredQueues, QueueProbe, queue_state};
pub use database::TestDatabase;

/// PostgreSQL and RabbitMQ on their standard local ports, where the tests and the bench look by default.
pub const LOCAL_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";
pub const LOCAL_AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Where the servers are.
#[derive(Debug, Clone)]
pub struct Services {
    /// A PostgreSQL server URL without a database name (`postgres://user@host:port`).
    pub postgres_server: String,
    pub amqp_url: String,
}

impl Services {
    pub fn database_url(&self, name: &str) -> String {
        format!("{}/{name}", self.postgres_server)
    }

    pub async fn amqp(&self) -> Result<lapin::Connection> {
        lapin::Connection::connect(&self.amqp_url, lapin::ConnectionProperties::default())
            .await
            .context("connecting to RabbitMQ")
    }
}

/// The database a URL names: `postgres://u@h:p/db` → `db`.
pub fn database_name(url: &str) -> Result<&str> {
    url.rsplit_once('/').map(|(_, name)| name).filter(|name| !name.is_empty()).context("a database URL")
}

/// A token of the service configured by `config`, valid for a day. Its subject, `tests`, is the actor that
/// events record.
pub fn token(config: &Config, role: Role) -> Result<String> {
    Ok(auth::mint(&config.auth, "tests", role, Duration::from_secs(24 * 3600))?)
}

/// An HTTP client that sends `token` with every request.
pub fn bearer_client(token: &str) -> Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse()?);
    Ok(reqwest::Client::builder().default_headers(headers).build()?)
}

/// Creates a tenant through the API (`body` is the `POST /tenants` body) and returns its JSON.
pub async fn create_tenant(client: &reqwest::Client, base_url: &str, body: &Value) -> Result<Value> {
    let response = client.post(format!("{base_url}/tenants")).json(body).send().await.context("POST /tenants")?;
    let status = response.status();
    let tenant: Value = response.json().await.context("the tenant's JSON")?;
    anyhow::ensure!(status == reqwest::StatusCode::CREATED, "POST /tenants {body} answered {status}: {tenant}");
    Ok(tenant)
}

/// A single bigint from SQL (`SELECT count(*) …`).
pub async fn scalar_i64(db: &DatabaseConnection, sql: &str) -> Result<i64> {
    let row = db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .with_context(|| sql.to_owned())?
        .with_context(|| format!("no row from {sql}"))?;
    Ok(row.try_get_by_index::<i64>(0)?)
}

/// Runs `cleanup` to its end from a `Drop`: on a thread and runtime of its own, since the caller's runtime may
/// be going away (a test that panicked) or busy. A failure is reported, not raised: a panic in a `Drop` while
/// unwinding would abort the process.
fn clean_up_on_a_runtime_of_its_own(what: &str, cleanup: impl Future<Output = Result<()>> + Send + 'static) {
    let cleaned = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(cleanup)
    });
    match cleaned.join() {
        Ok(Ok(())) => {}
        Ok(Err(error)) => eprintln!("cleaning up {what}: {error:#}"),
        Err(_) => eprintln!("cleaning up {what}: the cleanup panicked"),
    }
}

/// Polls `check` until it returns `Some`; an error once `timeout` has passed.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! What every section shares: the servers, databases of the bench's own, broker connections, the in-process
//! service, and the versions printed with the table.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use lapin::{
    Connection, ConnectionProperties,
    options::{QueueDeclareOptions, QueueDeleteOptions},
    types::FieldTable,
};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use tenantmq::{
    Application,
    auth::{self, Role},
    broker::TenantQueues,
    config::Config,
    domain::tenant::TenantId,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Where the services are.
#[derive(Debug, Clone)]
pub struct Services {
    /// `postgres://user@host:port` without a database.
    pub postgres_server: String,
    pub amqp_url: String,
    /// Prefix of every database and queue the bench creates: `tenantmq_bench_<random>`.
    pub run_id: String,
}

impl Services {
    /// A new database name of this run (never `tenantmq_it_%`, the test suite's).
    pub fn database_url(&self, suffix: &str) -> String {
        format!("{}/{}_{suffix}", self.postgres_server, self.run_id)
    }

    pub async fn amqp(&self) -> Result<Connection> {
        Connection::connect(&self.amqp_url, ConnectionProperties::default()).await.context("connecting to RabbitMQ")
    }

    /// A configuration of the real service on its own database, a free port and a random secret.
    pub fn service_config(&self, suffix: &str) -> Config {
        let mut config = Config::default();
        config.server.host = "127.0.0.1".into();
        config.server.port = 0;
        config.database.url = self.database_url(suffix);
        config.rabbitmq.url = self.amqp_url.clone();
        config.auth.jwt_secret = Some(format!("bench-secret-{}", Uuid::new_v4()));
        config.shutdown_timeout = Duration::from_secs(20);
        config
    }
}

/// Drops a database of the bench (quietly if it is not there).
pub async fn drop_database(url: &str) -> Result<()> {
    let (server, name) = url.rsplit_once('/').context("a database URL")?;
    let admin = sea_orm::Database::connect(format!("{server}/postgres")).await?;
    admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await?;
    admin.close().await?;
    Ok(())
}

/// Drops every database a previous, interrupted bench run left behind.
pub async fn sweep_databases(postgres_server: &str) -> Result<usize> {
    let admin = sea_orm::Database::connect(format!("{postgres_server}/postgres")).await?;
    let rows = admin
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT datname FROM pg_database WHERE datname LIKE 'tenantmq\\_bench\\_%'",
        ))
        .await?;
    let mut dropped = 0;
    for row in rows {
        let name: String = row.try_get_by_index(0)?;
        admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await?;
        dropped += 1;
    }
    admin.close().await?;
    Ok(dropped)
}

/// Lets the previous run's after-effects finish before the next is timed: a CHECKPOINT writes the dirty pages
/// it left (rather than a checkpoint landing in the middle of the next run), then a short pause for the
/// broker's queue deletions and the processes' exits.
pub async fn settle(services: &Services) -> Result<()> {
    let admin = sea_orm::Database::connect(format!("{}/postgres", services.postgres_server)).await?;
    // CHECKPOINT needs a superuser or pg_checkpoint; without it the pause alone has to do.
    if let Err(error) = admin.execute_unprepared("CHECKPOINT").await {
        eprintln!("warning: no CHECKPOINT before the next part ({error})");
    }
    admin.close().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

/// Deletes a tenant's queue and dead-letter queue.
pub async fn delete_tenant_queues(connection: &Connection, tenants: &[TenantId]) -> Result<()> {
    let channel = connection.create_channel().await?;
    for tenant in tenants {
        let queues = TenantQueues::of(*tenant);
        for queue in [queues.queue, queues.dead_letters] {
            channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
        }
    }
    let _ = channel.close(200, "done".into()).await;
    Ok(())
}

/// `(ready, consumers)` of a queue, or `None` if it does not exist. A passive declare of a missing queue
/// closes its channel, so the caller passes a slot that is reopened when needed.
pub async fn queue_state(
    connection: &Connection,
    channel: &mut Option<lapin::Channel>,
    queue: &str,
) -> Result<Option<(u32, u32)>> {
    let open = match channel.take() {
        Some(open) if open.status().connected() => open,
        _ => connection.create_channel().await?,
    };
    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    let state = open.queue_declare(queue.into(), passive, FieldTable::default()).await;
    let state = state.ok().map(|q| (q.message_count(), q.consumer_count()));
    *channel = Some(open);
    Ok(state)
}

/// The real service, in this process.
pub struct InProcess {
    pub base_url: String,
    pub client: reqwest::Client,
    pub db: DatabaseConnection,
    pub config: Config,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
}

impl InProcess {
    pub async fn start(config: Config) -> Result<Self> {
        let app = Application::build(config.clone()).await.context("starting the service")?;
        let base_url = format!("http://{}", app.address());
        let db = app.db().clone();
        let shutdown = app.shutdown_token();
        let server = tokio::spawn(app.run_until_stopped());
        let client = admin_client(&config)?;
        Ok(Self { base_url, client, db, config, shutdown, server })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Stops the service gracefully and drops its database.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.server.await.context("service task")?.context("service stopped")?;
        drop_database(&self.config.database.url).await
    }
}

/// An HTTP client that sends an admin token of `config` with every request.
pub fn admin_client(config: &Config) -> Result<reqwest::Client> {
    let token = auth::mint(&config.auth, "tenantmq-bench", Role::Admin, Duration::from_secs(24 * 3600))?;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse()?);
    Ok(reqwest::Client::builder().default_headers(headers).pool_max_idle_per_host(64).build()?)
}

/// Creates a tenant through the API; returns its id.
pub async fn create_tenant(client: &reqwest::Client, base_url: &str, name: &str) -> Result<TenantId> {
    let response = client
        .post(format!("{base_url}/tenants"))
        .json(&serde_json::json!({ "name": name }))
        .send()
        .await
        .context("POST /tenants")?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.context("tenant JSON")?;
    anyhow::ensure!(status == reqwest::StatusCode::CREATED, "POST /tenants answered {status}: {body}");
    let id = body["id"].as_str().context("tenant id")?;
    Ok(TenantId::from_uuid(Uuid::parse_str(id)?))
}

/// Waits until every tenant's queue has a consumer, as the broker reports it.
pub async fn await_consumers(connection: &Connection, tenants: &[TenantId], timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut channel = None;
    for tenant in tenants {
        loop {
            if let Some((_, consumers)) = queue_state(connection, &mut channel, &tenant.queue_name()).await?
                && consumers > 0
            {
                break;
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "no consumer on {} in time", tenant.queue_name());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// A single bigint from SQL.
pub async fn scalar_i64(db: &DatabaseConnection, sql: &str) -> Result<i64> {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, sql))
        .await?
        .context("one row")?;
    Ok(row.try_get_by_index::<i64>(0)?)
}

/// Polls the row count of `messages` (of `tenants` only, when given: partition pruning keeps the count cheap)
/// until it reaches `expected`; returns when it did. Polls rarely while far from the goal, often near it, so the
/// count itself takes little from the system under test.
pub async fn await_rows(
    db: &DatabaseConnection,
    tenants: Option<&[TenantId]>,
    expected: i64,
    timeout: Duration,
) -> Result<tokio::time::Instant> {
    let sql = match tenants {
        None => "SELECT count(*) FROM messages".to_owned(),
        Some(tenants) => {
            let ids: Vec<String> = tenants.iter().map(|t| format!("'{}'", t.as_uuid())).collect();
            format!("SELECT count(*) FROM messages WHERE tenant_id IN ({})", ids.join(","))
        }
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let count = scalar_i64(db, &sql).await?;
        if count >= expected {
            return Ok(tokio::time::Instant::now());
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "only {count} of {expected} rows after {timeout:?}");
        let near = count as f64 >= expected as f64 * 0.9;
        tokio::time::sleep(Duration::from_millis(if near { 10 } else { 200 })).await;
    }
}

/// A JSON payload of about `bytes` bytes, like a small event.
pub fn payload(n: u64, bytes: usize) -> String {
    let head = format!(r#"{{"n":{n},"kind":"bench","body":""#);
    let fill = bytes.saturating_sub(head.len() + 2).max(1);
    format!("{head}{}\"}}", "x".repeat(fill))
}

/// Versions and machine facts for the table's header.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory: String,
    pub rustc: String,
    pub postgres: String,
    pub rabbitmq: String,
    pub git_rev: String,
}

impl Machine {
    pub async fn probe(services: &Services, workspace: &std::path::Path) -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|info| info.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned()))
            .and_then(|kib| kib.parse::<u64>().ok())
            .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
            .unwrap_or_else(|| "unknown".into());
        let rustc = match std::env::var("TENANTMQ_BENCH_RUSTC") {
            Ok(v) if !v.is_empty() => v,
            _ => command_output("rustc", &["-V"], workspace).await,
        };
        let postgres = async {
            let db = sea_orm::Database::connect(format!("{}/postgres", services.postgres_server)).await.ok()?;
            let row = db
                .query_one_raw(sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, "SHOW server_version"))
                .await
                .ok()??;
            let version: String = row.try_get_by_index(0).ok()?;
            let _ = db.close().await;
            Some(version)
        }
        .await
        .unwrap_or_else(|| "unknown".into());
        let rabbitmq = match std::env::var("TENANTMQ_BENCH_RABBITMQ") {
            Ok(v) if !v.is_empty() => v,
            _ => command_output("rabbitmqctl", &["version"], workspace).await,
        };
        let mut git_rev = command_output("git", &["rev-parse", "--short=12", "HEAD"], workspace).await;
        if !command_output("git", &["status", "--porcelain", "--untracked-files=no"], workspace).await.is_empty() {
            git_rev.push_str("-dirty");
        }
        Self { cores, cpu, memory, rustc, postgres, rabbitmq, git_rev }
    }
}

async fn command_output(program: &str, args: &[&str], dir: &std::path::Path) -> String {
    let run = tokio::process::Command::new(program).args(args).current_dir(dir).output();
    match tokio::time::timeout(Duration::from_secs(30), run).await {
        Ok(Ok(output)) if output.status.success() => String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        _ => "unknown".into(),
    }
}

/// The 1-, 5- and 15-minute load averages (other work on the machine skews the figures).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The workspace root (the bench crate's parent).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
}

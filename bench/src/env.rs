//! What every section shares beyond the test kit: this run's databases and service configuration, the sweep
//! of an interrupted run's databases, settling between parts, row counts, payloads, and the versions printed
//! with the table.

use std::{
    ops::Range,
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use anyhow::{Context, Result};
use lapin::Connection;
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};
use serde_json::json;
use tenantmq::{config::Config, domain::tenant::TenantId, store::partitions};
use tenantmq_testkit::{RunningApp, TestDatabase};
use uuid::Uuid;

/// The servers, and the name of this run.
#[derive(Debug, Clone)]
pub struct Services {
    pub servers: tenantmq_testkit::Services,
    /// Prefix of every database the bench creates: `tenantmq_bench_<random>`.
    pub run_id: String,
    /// `consumer.batch_max_wait` of the services the bench starts (the service's default when `None`).
    pub batch_max_wait: Option<Duration>,
}

impl Services {
    /// A new database of this run (never `tenantmq_it_%`, the test suite's), cloned from the migrated
    /// template; removed with its tenants' queues by `remove`, or when dropped (a part that fails, Ctrl-C).
    pub async fn database(&self, suffix: &str) -> Result<TestDatabase> {
        TestDatabase::create(&self.servers, &format!("{}_{suffix}", self.run_id)).await
    }

    pub async fn amqp(&self) -> Result<Connection> {
        self.servers.amqp().await
    }

    /// A configuration of the real service on `database`, a free port and a random secret.
    pub fn service_config(&self, database: &TestDatabase) -> Config {
        let mut config = Config::default();
        config.server.host = "127.0.0.1".into();
        config.server.port = 0;
        config.database.url = database.url();
        config.rabbitmq.url = self.servers.amqp_url.clone();
        config.auth.jwt_secret = Some(format!("bench-secret-{}", Uuid::new_v4()));
        config.shutdown_timeout = Duration::from_secs(20);
        if let Some(max_wait) = self.batch_max_wait {
            config.consumer.batch_max_wait = Some(max_wait);
            config.consumer.batch_wait = config.consumer.batch_wait.min(max_wait);
        }
        config
    }
}

/// Drops the databases previous, interrupted bench runs left behind (those no session uses).
pub async fn sweep_databases(postgres_server: &str) -> Result<usize> {
    let admin = sea_orm::Database::connect(format!("{postgres_server}/postgres")).await?;
    let rows = admin
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            // Only databases nobody is connected to: another bench run beside this one may be using its own.
            "SELECT datname FROM pg_database d WHERE datname LIKE 'tenantmq\\_bench\\_%' \
             AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)",
        ))
        .await?;
    let mut dropped = 0;
    for row in rows {
        let name: String = row.try_get_by_index(0)?;
        // Without FORCE: a run that connected in the meantime keeps its database.
        match admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\"")).await {
            Ok(_) => dropped += 1,
            Err(error) => eprintln!("leaving database {name}: {error}"),
        }
    }
    admin.close().await?;
    Ok(dropped)
}

/// Lets the previous run's after-effects finish before the next is timed: a CHECKPOINT writes the dirty pages
/// it left (rather than a checkpoint landing in the middle of the next run), then a short pause for the
/// broker's queue deletions and the processes' exits.
pub async fn settle(services: &Services) -> Result<()> {
    let admin = sea_orm::Database::connect(services.servers.database_url("postgres")).await?;
    // CHECKPOINT needs a superuser or pg_checkpoint; without it the pause alone has to do.
    if let Err(error) = admin.execute_unprepared("CHECKPOINT").await {
        eprintln!("warning: no CHECKPOINT before the next part ({error})");
    }
    admin.close().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

/// Creates `count` tenants named `<prefix>-<i>` through the API.
pub async fn create_tenants(app: &RunningApp, prefix: &str, count: usize) -> Result<Vec<TenantId>> {
    let mut tenants = Vec::with_capacity(count);
    for i in 0..count {
        let body = json!({ "name": format!("{prefix}-{i}") });
        let tenant = tenantmq_testkit::create_tenant(&app.client, &app.base_url, &body).await?;
        tenants.push(tenant["id"].as_str().and_then(|id| id.parse().ok()).context("the tenant's id")?);
    }
    Ok(tenants)
}

/// Waits until every tenant's queue has a consumer, as the broker reports it.
pub async fn await_consumers(connection: &Connection, tenants: &[TenantId], timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    for tenant in tenants {
        let queue = tenant.queue_name();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        tenantmq_testkit::eventually(left, &format!("a consumer on {queue}"), || async {
            let state = tenantmq_testkit::queue_state(connection, &queue).await.ok().flatten();
            state.filter(|(_, consumers)| *consumers > 0)
        })
        .await?;
    }
    Ok(())
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
            format!("SELECT count(*) FROM messages WHERE tenant_id IN ({})", sql_ids(tenants))
        }
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let count = tenantmq_testkit::scalar_i64(db, &sql).await?;
        if count >= expected {
            return Ok(tokio::time::Instant::now());
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "only {count} of {expected} rows after {timeout:?}");
        let near = count as f64 >= expected as f64 * 0.9;
        tokio::time::sleep(Duration::from_millis(if near { 10 } else { 200 })).await;
    }
}

/// The tenants' ids as a SQL list (`'…','…'`), for `tenant_id IN (…)`: ids the bench made, safe to splice.
pub fn sql_ids(tenants: &[TenantId]) -> String {
    let ids: Vec<String> = tenants.iter().map(|t| format!("'{}'", t.as_uuid())).collect();
    ids.join(",")
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
            let db = sea_orm::Database::connect(services.servers.database_url("postgres")).await.ok()?;
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

/// The next run of at most `batch` of `total` numbered messages for one of several concurrent writers;
/// `None` once all are taken.
pub fn claim(next: &AtomicU64, batch: u64, total: u64) -> Option<Range<u64>> {
    let start = next.fetch_add(batch, Ordering::Relaxed);
    (start < total).then(|| start..(start + batch).min(total))
}

/// The values of `series` (a metric's name with its labels, as `/metrics` writes them) from the service's
/// `/metrics`.
pub async fn metrics<const N: usize>(client: &reqwest::Client, base_url: &str, series: [&str; N]) -> Result<[f64; N]> {
    let text = client.get(format!("{base_url}/metrics")).send().await?.error_for_status()?.text().await?;
    let mut values = [0.0; N];
    for (value, name) in values.iter_mut().zip(series) {
        let line = text
            .lines()
            .find(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ')))
            .with_context(|| format!("no {name} in /metrics"))?;
        *value = line.rsplit_once(' ').context("a sample")?.1.parse()?;
    }
    Ok(values)
}

/// Creates the tenant's partition of `messages`, as the service's projector does.
pub async fn create_partition(db: &DatabaseConnection, tenant: TenantId) -> Result<()> {
    let txn = db.begin().await?;
    partitions::create(&txn, tenant).await?;
    txn.commit().await?;
    Ok(())
}

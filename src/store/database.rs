//! Connecting to PostgreSQL: create the database when missing, migrate, and open the pool.

use std::{str::FromStr, time::Duration};

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    sqlx::{
        self, Connection, PgConnection,
        postgres::{PgConnectOptions, PgDatabaseError},
    },
};
use sea_orm_migration::MigrationStatus;

use crate::config::DatabaseConfig;

use super::StoreError;

/// Serializes schema changes across instances that start together.
const MIGRATION_LOCK: i64 = 0x7465_6e61_6e74_6d71; // "tenantmq"

/// Creates the database named in `url` if it does not exist, using the server's `postgres` database.
pub async fn create_database_if_missing(url: &str) -> Result<(), StoreError> {
    let options = PgConnectOptions::from_str(url)?;
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin = PgConnection::connect_with(&options.database("postgres")).await?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_optional(&mut admin)
        .await?;
    if exists.is_none() {
        // The name is quoted as an identifier (embedded quotes doubled), so it cannot break out.
        let create = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match sqlx::query(sqlx::AssertSqlSafe(create)).execute(&mut admin).await {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another instance created it between our check and our create.
            Err(sqlx::Error::Database(e)) if is_duplicate_database(e.try_downcast_ref()) => {}
            Err(e) => return Err(e.into()),
        }
    }
    admin.close().await?;
    Ok(())
}

fn is_duplicate_database(error: Option<&PgDatabaseError>) -> bool {
    error.is_some_and(|e| e.code() == "42P04")
}

/// How `pg_stat_activity` names the service's sessions, unless the URL names them otherwise.
const APPLICATION_NAME: &str = "tenantmq";

/// The server probes a connection of the service that went quiet after 30 s, every 10 s, and gives up after
/// three probes unanswered: a host gone (a crash, a partition) loses its sessions, and their locks, within a
/// minute rather than the kernel's two hours. Ignored on a Unix socket.
const KEEPALIVES: &str = "SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; SET tcp_keepalives_count = 3";

/// What every session of the pool (and every connection taken out of it: the NOTIFY listener's, the lock
/// holders') sets first: [`KEEPALIVES`], and `database.idle_in_transaction_timeout`, which covers a process
/// frozen on a host that still answers the probes. Set by statements rather than startup options, which
/// PgBouncer refuses.
fn session_settings(config: &DatabaseConfig) -> String {
    match config.idle_in_transaction_timeout {
        Some(timeout) => {
            format!("{KEEPALIVES}; SET idle_in_transaction_session_timeout = {}", timeout.as_millis().max(1))
        }
        None => KEEPALIVES.to_owned(),
    }
}

pub async fn connect(config: &DatabaseConfig) -> Result<DatabaseConnection, StoreError> {
    let mut options = ConnectOptions::new(config.url.clone());
    options
        .max_connections(config.max_connections)
        .min_connections(1)
        .connect_timeout(config.connect_timeout)
        .acquire_timeout(config.connect_timeout)
        .idle_timeout(Duration::from_secs(300))
        .sqlx_logging(false);
    let statement_timeout = config.statement_timeout.map(|timeout| timeout.as_millis().max(1).to_string());
    options.map_sqlx_postgres_opts(move |mut opts| {
        if opts.get_application_name().is_none() {
            opts = opts.application_name(APPLICATION_NAME);
        }
        match &statement_timeout {
            Some(millis) => opts.options([("statement_timeout", millis.as_str())]),
            None => opts,
        }
    });
    let settings = session_settings(config);
    options.map_sqlx_postgres_pool_opts(move |pool| {
        let settings = settings.clone();
        pool.after_connect(move |connection, _| {
            let settings = settings.clone();
            Box::pin(async move { sqlx::raw_sql(sqlx::AssertSqlSafe(settings)).execute(connection).await.map(drop) })
        })
    });
    Ok(Database::connect(options).await?)
}

/// Which way `migrate` moves the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationDirection {
    Up,
    /// Rolls back the newest applied migration.
    Down,
}

/// How long a migration's statement waits for a table's lock before it gives up. While a schema change waits
/// for its lock (behind a long transaction, say), every later reader and writer of that table queues behind
/// it: bounded, they wait at most this long per attempt.
const MIGRATION_LOCK_WAIT: Duration = Duration::from_secs(5);
/// Attempts of a migration whose lock wait ran out, a [`MIGRATION_LOCK_WAIT`] apart: about two minutes.
const MIGRATION_ATTEMPTS: u32 = 12;

/// Runs migrations under a session advisory lock so that instances starting together do not race.
/// Applies (or rolls back one) migration on a connection of its own, without the pool's
/// `database.statement_timeout`: a schema change that rewrites a table must not be cut off half way by a
/// timeout meant for the service's own statements. Its wait for a lock is bounded ([`MIGRATION_LOCK_WAIT`]);
/// each migration is one transaction (the migrator's default on PostgreSQL, which every migration here keeps:
/// one that opted out would be tried again half applied), so one that gave up is tried again from its start.
pub async fn migrate(url: &str, direction: MigrationDirection) -> Result<(), StoreError> {
    let mut lock = PgConnection::connect_with(&PgConnectOptions::from_str(url)?).await?;
    sqlx::raw_sql(KEEPALIVES).execute(&mut lock).await?;
    sqlx::query("SELECT pg_advisory_lock($1)").bind(MIGRATION_LOCK).execute(&mut lock).await?;
    let mut options = ConnectOptions::new(url.to_owned());
    options.max_connections(1).sqlx_logging(false);
    // Set on the session rather than sent as startup options, which PgBouncer refuses; the migrator runs on
    // this pool's one connection. A migration's statements follow one another: a minute idle inside one is a
    // migrator frozen with the tables' locks.
    let bound_lock_wait = format!(
        "{KEEPALIVES}; SET idle_in_transaction_session_timeout = 60000; SET lock_timeout = {}",
        MIGRATION_LOCK_WAIT.as_millis()
    );
    let result = match Database::connect(options).await {
        Ok(db) => {
            let mut attempt = 1;
            let migrated = loop {
                if let Err(error) = db.execute_unprepared(&bound_lock_wait).await {
                    break Err(error);
                }
                let migrated = match direction {
                    MigrationDirection::Up => Migrator::up(&db, None).await,
                    MigrationDirection::Down => Migrator::down(&db, Some(1)).await,
                };
                match migrated {
                    Err(error) if attempt < MIGRATION_ATTEMPTS && waited_out_a_lock(&error) => {
                        tracing::warn!(%error, attempt, "a migration could not take a lock in time; trying again");
                        tokio::time::sleep(MIGRATION_LOCK_WAIT).await;
                        attempt += 1;
                    }
                    migrated => break migrated,
                }
            };
            let _ = db.close().await;
            migrated
        }
        Err(error) => Err(error),
    };
    sqlx::query("SELECT pg_advisory_unlock($1)").bind(MIGRATION_LOCK).execute(&mut lock).await?;
    lock.close().await?;
    Ok(result?)
}

/// Whether a migration failed on `lock_timeout` (SQLSTATE 55P03; the migrator may hand the error on as text).
fn waited_out_a_lock(error: &sea_orm::DbErr) -> bool {
    use sea_orm::{DbErr, RuntimeErr};
    match error {
        DbErr::Exec(RuntimeErr::SqlxError(error)) | DbErr::Query(RuntimeErr::SqlxError(error)) => {
            super::messages::sqlstate(error) == Some("55P03")
        }
        other => other.to_string().contains("lock timeout"),
    }
}

/// Each known migration with whether it has been applied.
pub async fn migration_status(db: &DatabaseConnection) -> Result<Vec<(String, bool)>, StoreError> {
    Ok(Migrator::get_migration_with_status_read_only(db)
        .await?
        .iter()
        .map(|m| (m.name().to_owned(), m.status() == MigrationStatus::Applied))
        .collect())
}

/// This release's migrations that the database has not applied, oldest first. Migrations applied by a newer
/// release, which this one does not know, are no concern: they only add to the schema.
pub async fn pending_migrations(db: &DatabaseConnection) -> Result<Vec<String>, StoreError> {
    let recorded = super::events::scalar::<_, bool>(
        db,
        super::events::stmt("SELECT to_regclass('seaql_migrations') IS NOT NULL AS value", []),
    )
    .await?;
    let applied: Vec<String> = if recorded {
        let rows = db.query_all_raw(super::events::stmt("SELECT version FROM seaql_migrations", [])).await?;
        rows.iter().map(|row| row.try_get::<String>("", "version")).collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    Ok(Migrator::migrations()
        .iter()
        .map(|migration| migration.name().to_owned())
        .filter(|name| !applied.contains(name))
        .collect())
}

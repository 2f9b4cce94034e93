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

use crate::config::DatabaseConfig;

use super::StoreError;

/// Serializes schema changes across instances that start together.
const MIGRATION_LOCK: i64 = 0x7465_6e61_6e74_6d71; // "tenantmq"

/// Creates the database named in `url` if it does not exist, using the server's `postgres` database. The
/// database is asked first, so that a role that may not connect to `postgres` starts all the same where its
/// database exists; each connection gives up after `connect_timeout`, as the pool's do, rather than when the
/// kernel does (minutes, against a host that drops packets).
pub async fn create_database_if_missing(url: &str, connect_timeout: Duration) -> Result<(), StoreError> {
    let options = PgConnectOptions::from_str(url)?;
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let connect = |options: PgConnectOptions| async move {
        match tokio::time::timeout(connect_timeout, PgConnection::connect_with(&options)).await {
            Ok(connected) => connected,
            Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("PostgreSQL did not answer within {connect_timeout:?} (database.connect_timeout)"),
            ))),
        }
    };
    match connect(options.clone()).await {
        Ok(connection) => return Ok(connection.close().await?),
        Err(sqlx::Error::Database(e)) if has_code(e.try_downcast_ref(), "3D000") => {}
        Err(e) => return Err(e.into()),
    }
    let mut admin = connect(options.database("postgres")).await?;
    // The name is quoted as an identifier (embedded quotes doubled), so it cannot break out.
    let create = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
    match sqlx::query(sqlx::AssertSqlSafe(create)).execute(&mut admin).await {
        Ok(_) => tracing::info!(database = %name, "created database"),
        // Another instance created it between our look and our create.
        Err(sqlx::Error::Database(e)) if has_code(e.try_downcast_ref(), "42P04") => {}
        Err(e) => return Err(e.into()),
    }
    admin.close().await?;
    Ok(())
}

/// Whether `error` has SQLSTATE `code`: `3D000` (no such database), `42P04` (the database exists).
fn has_code(error: Option<&PgDatabaseError>, code: &str) -> bool {
    error.is_some_and(|e| e.code() == code)
}

/// How `pg_stat_activity` names the service's sessions, unless the URL names them otherwise.
const APPLICATION_NAME: &str = "tenantmq";

/// The server probes a connection of the service that went quiet after 30 s, every 10 s, and gives up after
/// three probes unanswered: a host gone (a crash, a partition) loses its sessions, and their locks, within a
/// minute rather than the kernel's two hours. Ignored on a Unix socket.
const KEEPALIVES: &str = "SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; SET tcp_keepalives_count = 3";

/// What every session of the pool (and every connection taken out of it: the NOTIFY listener's, the lock
/// holders') sets first: [`KEEPALIVES`], `database.idle_in_transaction_timeout`, which covers a process frozen
/// on a host that still answers the probes, and `database.statement_timeout`. Set by statements rather than
/// startup options, which PgBouncer refuses.
fn session_settings(config: &DatabaseConfig) -> String {
    let mut settings = KEEPALIVES.to_owned();
    if let Some(timeout) = config.idle_in_transaction_timeout {
        settings.push_str(&format!("; SET idle_in_transaction_session_timeout = {}", timeout.as_millis()));
    }
    if let Some(timeout) = config.statement_timeout {
        settings.push_str(&format!("; SET statement_timeout = {}", timeout.as_millis()));
    }
    settings
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
    options.map_sqlx_postgres_opts(|opts| match opts.get_application_name() {
        Some(_) => opts,
        None => opts.application_name(APPLICATION_NAME),
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
pub async fn migrate(config: &DatabaseConfig, direction: MigrationDirection) -> Result<(), StoreError> {
    let mut lock = PgConnection::connect_with(&PgConnectOptions::from_str(&config.url)?).await?;
    sqlx::raw_sql(KEEPALIVES).execute(&mut lock).await?;
    sqlx::query("SELECT pg_advisory_lock($1)").bind(MIGRATION_LOCK).execute(&mut lock).await?;
    let mut options = ConnectOptions::new(config.url.clone());
    options.max_connections(1).sqlx_logging(false);
    // The session's settings, but for the statement timeout; the migrator runs on this pool's one connection.
    let unbounded = DatabaseConfig { statement_timeout: None, ..config.clone() };
    let bound_lock_wait =
        format!("{}; SET lock_timeout = {}", session_settings(&unbounded), MIGRATION_LOCK_WAIT.as_millis());
    let result = match Database::connect(options).await {
        Ok(db) => {
            let migrated = apply(&db, direction, &bound_lock_wait).await;
            let _ = db.close().await;
            migrated
        }
        Err(error) => Err(error.into()),
    };
    sqlx::query("SELECT pg_advisory_unlock($1)").bind(MIGRATION_LOCK).execute(&mut lock).await?;
    lock.close().await?;
    result
}

/// Migrates `db` one way, under the lock. A schema with migrations of a newer release that has all of this
/// one's needs nothing (a rollback, with `database.migrate_on_start` on); one that lacks some of this
/// release's, or a roll back, is refused: the migrator would stop at the migrations it does not know.
async fn apply(db: &DatabaseConnection, direction: MigrationDirection, session: &str) -> Result<(), StoreError> {
    let schema = Schema::of(db).await?;
    let newer = schema.newer();
    if !newer.is_empty() {
        let pending = schema.pending();
        return match direction {
            MigrationDirection::Down => Err(StoreError::NewerMigrations(newer)),
            MigrationDirection::Up if pending.is_empty() => {
                let newer = newer.join(", ");
                tracing::info!(newer, "the schema is a newer release's, with this one's: nothing to migrate");
                Ok(())
            }
            MigrationDirection::Up => Err(StoreError::NewerSchema { newer, pending }),
        };
    }
    let mut attempt = 1;
    loop {
        db.execute_unprepared(session).await?;
        let migrated = match direction {
            MigrationDirection::Up => Migrator::up(db, None).await,
            MigrationDirection::Down => Migrator::down(db, Some(1)).await,
        };
        match migrated {
            Err(error) if attempt < MIGRATION_ATTEMPTS && waited_out_a_lock(&error) => {
                tracing::warn!(%error, attempt, "a migration could not take a lock in time; trying again");
                tokio::time::sleep(MIGRATION_LOCK_WAIT).await;
                attempt += 1;
            }
            migrated => return Ok(migrated?),
        }
    }
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

/// Each known migration with whether it has been applied, then those applied by a newer release.
pub async fn migration_status(db: &DatabaseConnection) -> Result<Vec<(String, bool)>, StoreError> {
    let schema = Schema::of(db).await?;
    let known = schema.known.iter().map(|name| (name.clone(), schema.applied.contains(name)));
    let newer = schema.newer().into_iter().map(|name| (format!("{name} (a newer release's)"), true));
    Ok(known.chain(newer).collect())
}

/// This release's migrations that the database has not applied, oldest first. Migrations applied by a newer
/// release, which this one does not know, are no concern: they only add to the schema.
pub async fn pending_migrations(db: &DatabaseConnection) -> Result<Vec<String>, StoreError> {
    Ok(Schema::of(db).await?.pending())
}

/// The migrations this release knows, and those the database records as applied (by any release).
struct Schema {
    known: Vec<String>,
    applied: Vec<String>,
}

impl Schema {
    async fn of(db: &DatabaseConnection) -> Result<Self, StoreError> {
        let known = Migrator::migrations().iter().map(|migration| migration.name().to_owned()).collect();
        let recorded = super::events::scalar::<_, bool>(
            db,
            super::events::stmt("SELECT to_regclass('seaql_migrations') IS NOT NULL AS value", []),
        )
        .await?;
        if !recorded {
            return Ok(Self { known, applied: Vec::new() });
        }
        let statement = super::events::stmt("SELECT version FROM seaql_migrations ORDER BY version", []);
        let rows = db.query_all_raw(statement).await?;
        let applied = rows.iter().map(|row| row.try_get::<String>("", "version")).collect::<Result<_, _>>()?;
        Ok(Self { known, applied })
    }

    /// This release's migrations not applied, oldest first.
    fn pending(&self) -> Vec<String> {
        self.known.iter().filter(|name| !self.applied.contains(name)).cloned().collect()
    }

    /// Migrations applied that this release does not know: a newer release's.
    fn newer(&self) -> Vec<String> {
        self.applied.iter().filter(|name| !self.known.contains(name)).cloned().collect()
    }
}

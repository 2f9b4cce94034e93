//! Databases of a test or a bench run: cloned from a template database migrated once per migration set, and
//! dropped, with their tenants' queues, when done or dropped.

use std::str::FromStr;

use anyhow::{Context, Result};
use sea_orm::sqlx::{self, AssertSqlSafe, Connection, PgConnection};
use tenantmq::{domain::tenant::TenantId, store::database::MigrationDirection};

use crate::{Services, broker};

/// Every template's name starts so; the rest is the migrations' fingerprint.
const TEMPLATE_PREFIX: &str = "tenantmq_template_";

/// Held shared while a database is cloned from a template and exclusively while one is built or dropped, so that
/// `scripts/services.sh sweep-test-databases` (which uses the same key) never drops a template mid-clone.
/// Advisory locks belong to a database: both take it on `postgres`.
const TEMPLATE_LOCK: i64 = 0x7465_6d70_6c61_7465; // "template"

fn template_name() -> String {
    format!("{TEMPLATE_PREFIX}{}", env!("MIGRATIONS_FINGERPRINT"))
}

/// A database of its own, removed (with its tenants' queues) by [`TestDatabase::remove`] or, failing that, when
/// dropped: a test that panics leaves nothing behind either.
pub struct TestDatabase {
    services: Services,
    name: String,
    removed: bool,
}

impl TestDatabase {
    /// A new database `name`, cloned from the template (built first if this migration set has none yet).
    pub async fn create(services: &Services, name: &str) -> Result<Self> {
        clone_template(&services.postgres_server, name).await?;
        Ok(Self::adopt(services, name))
    }

    /// A database that something else creates (the `migrate` command, the binary on its first start), to be
    /// removed like one of the kit's own.
    pub fn adopt(services: &Services, name: &str) -> Self {
        Self { services: services.clone(), name: name.to_owned(), removed: false }
    }

    pub fn url(&self) -> String {
        self.services.database_url(&self.name)
    }

    /// Deletes the queues of every tenant the database knows (live and deleted), then the database.
    pub async fn remove(mut self) -> Result<()> {
        self.removed = true;
        remove(&self.services, &self.name).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let (services, name) = (self.services.clone(), self.name.clone());
        crate::clean_up_on_a_runtime_of_its_own(
            &format!("database {name}"),
            async move { remove(&services, &name).await },
        );
    }
}

async fn remove(services: &Services, name: &str) -> Result<()> {
    let tenants = tenants_of(&services.database_url(name)).await;
    if !tenants.is_empty() {
        broker::delete_tenant_queues(&services.amqp().await?, &tenants).await?;
    }
    let mut admin = admin_connection(&services.postgres_server).await?;
    execute(&mut admin, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quoted(name))).await?;
    admin.close().await?;
    Ok(())
}

/// The tenants in the database's read model; none when there is no such database or table (yet).
async fn tenants_of(url: &str) -> Vec<TenantId> {
    let Ok(mut db) = PgConnection::connect(url).await else { return Vec::new() };
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT id::text FROM tenants").fetch_all(&mut db).await.unwrap_or_default();
    let _ = db.close().await;
    ids.iter().filter_map(|id| TenantId::from_str(id).ok()).collect()
}

/// Clones the template into `name` under the shared lock; when the template is missing or half built, builds it
/// under the exclusive lock first (the first of several tests or processes does, the others wait for it).
async fn clone_template(server: &str, name: &str) -> Result<()> {
    let template = template_name();
    let mut admin = admin_connection(server).await?;
    loop {
        lock(&mut admin, "pg_advisory_lock_shared").await?;
        if template_ready(&mut admin, &template).await? {
            execute(&mut admin, &format!("CREATE DATABASE {} TEMPLATE {}", quoted(name), quoted(&template))).await?;
            lock(&mut admin, "pg_advisory_unlock_shared").await?;
            break;
        }
        lock(&mut admin, "pg_advisory_unlock_shared").await?;
        lock(&mut admin, "pg_advisory_lock").await?;
        if !template_ready(&mut admin, &template).await? {
            build_template(server, &mut admin, &template).await?;
        }
        lock(&mut admin, "pg_advisory_unlock").await?;
    }
    admin.close().await?;
    Ok(())
}

/// A template is ready once it no longer allows connections: set after its migration, so a template a killed
/// run left half migrated is built again, and nothing can be connected to it when it is cloned (PostgreSQL
/// refuses to clone a database with sessions on it).
async fn template_ready(admin: &mut PgConnection, template: &str) -> Result<bool> {
    let allows_connections: Option<bool> =
        sqlx::query_scalar("SELECT datallowconn FROM pg_database WHERE datname = $1")
            .bind(template)
            .fetch_optional(admin)
            .await?;
    Ok(allows_connections == Some(false))
}

async fn build_template(server: &str, admin: &mut PgConnection, template: &str) -> Result<()> {
    let quoted_template = quoted(template);
    execute(admin, &format!("DROP DATABASE IF EXISTS {quoted_template} WITH (FORCE)")).await?;
    execute(admin, &format!("CREATE DATABASE {quoted_template}")).await?;
    let database = tenantmq::config::DatabaseConfig { url: format!("{server}/{template}"), ..Default::default() };
    tenantmq::store::database::migrate(&database, MigrationDirection::Up)
        .await
        .with_context(|| format!("migrating the template database {template}"))?;
    execute(admin, &format!("ALTER DATABASE {quoted_template} ALLOW_CONNECTIONS false")).await
}

async fn admin_connection(server: &str) -> Result<PgConnection> {
    PgConnection::connect(&format!("{server}/postgres")).await.context("connecting to PostgreSQL's postgres database")
}

async fn lock(admin: &mut PgConnection, function: &str) -> Result<()> {
    sqlx::query(AssertSqlSafe(format!("SELECT {function}($1)"))).bind(TEMPLATE_LOCK).execute(admin).await?;
    Ok(())
}

async fn execute(admin: &mut PgConnection, statement: &str) -> Result<()> {
    sqlx::raw_sql(AssertSqlSafe(statement.to_owned())).execute(admin).await.with_context(|| statement.to_owned())?;
    Ok(())
}

/// An identifier quoted (embedded quotes doubled), so a name cannot break out of it.
fn quoted(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

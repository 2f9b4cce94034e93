//! Writing messages into a tenant's partition: one multi-row insert per batch, idempotent on
//! `(tenant_id, id)`, straight into the partition (no routing through the parent table).

use sea_orm::sqlx::{self, PgPool, postgres::PgDatabaseError};
use uuid::Uuid;

use crate::domain::tenant::TenantId;

/// A message to persist: its id and its payload as JSON text (already validated).
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: Uuid,
    pub payload: String,
}

/// Inserts into one tenant's partition.
#[derive(Clone)]
pub struct MessageWriter {
    pool: PgPool,
    tenant: TenantId,
    sql: String,
}

impl MessageWriter {
    pub fn new(pool: PgPool, tenant: TenantId) -> Self {
        let sql = format!(
            "INSERT INTO {} (tenant_id, id, payload) \
             SELECT $1, m.id, m.payload::jsonb FROM unnest($2::uuid[], $3::text[]) AS m(id, payload) \
             ON CONFLICT (tenant_id, id) DO NOTHING",
            tenant.partition_name()
        );
        Self { pool, tenant, sql }
    }

    /// Inserts the batch in one statement (one transaction); returns how many rows were new.
    pub async fn insert(&self, messages: &[NewMessage]) -> Result<u64, sqlx::Error> {
        let ids: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
        let payloads: Vec<&str> = messages.iter().map(|m| m.payload.as_str()).collect();
        // The partition name comes from the parsed tenant id: safe to splice.
        let done = sqlx::query(sqlx::AssertSqlSafe(self.sql.as_str()))
            .bind(self.tenant.as_uuid())
            .bind(&ids)
            .bind(&payloads)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// Whether retrying cannot help: the data itself is refused (class 22, e.g. a `\u0000` jsonb rejects), a
/// constraint fails (class 23), or the partition is gone (42P01, the tenant was deleted).
pub fn is_permanent(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(e) => e
            .try_downcast_ref::<PgDatabaseError>()
            .is_some_and(|pg| pg.code().starts_with("22") || pg.code().starts_with("23") || pg.code() == "42P01"),
        _ => false,
    }
}

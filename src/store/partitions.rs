//! DDL for the per-tenant partitions of `messages`. Identifiers come from [`TenantId`] (a parsed UUID), so
//! they are safe to splice into SQL.

use sea_orm::ConnectionTrait;

use crate::domain::tenant::TenantId;

use super::{
    StoreError,
    events::{scalar, stmt},
};

pub async fn create<C: ConnectionTrait>(conn: &C, tenant: TenantId) -> Result<(), StoreError> {
    conn.execute_unprepared(&format!(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF messages FOR VALUES IN ('{}')",
        tenant.partition_name(),
        tenant.as_uuid()
    ))
    .await?;
    Ok(())
}

pub async fn drop<C: ConnectionTrait>(conn: &C, tenant: TenantId) -> Result<(), StoreError> {
    conn.execute_unprepared(&format!("DROP TABLE IF EXISTS {}", tenant.partition_name())).await?;
    Ok(())
}

/// Detaches the partition, keeping its rows in a standalone table of the same name.
pub async fn detach<C: ConnectionTrait>(conn: &C, tenant: TenantId) -> Result<(), StoreError> {
    if is_attached(conn, tenant).await? {
        conn.execute_unprepared(&format!("ALTER TABLE messages DETACH PARTITION {}", tenant.partition_name())).await?;
    }
    Ok(())
}

pub async fn is_attached<C: ConnectionTrait>(conn: &C, tenant: TenantId) -> Result<bool, StoreError> {
    scalar(
        conn,
        stmt(
            "SELECT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'messages'::regclass AND c.relname = $1) AS value",
            [tenant.partition_name().into()],
        ),
    )
    .await
}

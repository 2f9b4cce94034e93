//! Schema migrations for tenantmq (sea-orm-migration).
//!
//! Migrations are plain SQL: the schema leans on PostgreSQL features (identity columns, LIST partitioning,
//! triggers) that read more clearly as SQL than as a query builder.

pub use sea_orm_migration::prelude::*;

/// Implements `MigrationTrait` for the module's `Migration` as one SQL script up and one down.
macro_rules! sql_migration {
    ($up:expr, $down:expr) => {
        #[async_trait::async_trait]
        impl MigrationTrait for Migration {
            async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
                manager.get_connection().execute_unprepared($up).await?;
                Ok(())
            }

            async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
                manager.get_connection().execute_unprepared($down).await?;
                Ok(())
            }
        }
    };
}

mod m20261126_000001_event_log;
mod m20261127_000002_message_cursor;
mod m20261202_000003_event_hashes;
mod m20261202_000004_tenant_limits;
mod m20261202_000005_queue_depths;
mod m20261206_000006_deleted_tenants_by_time;
mod m20261206_000007_bucket_refill_across_clock_steps;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261126_000001_event_log::Migration),
            Box::new(m20261127_000002_message_cursor::Migration),
            Box::new(m20261202_000003_event_hashes::Migration),
            Box::new(m20261202_000004_tenant_limits::Migration),
            Box::new(m20261202_000005_queue_depths::Migration),
            Box::new(m20261206_000006_deleted_tenants_by_time::Migration),
            Box::new(m20261206_000007_bucket_refill_across_clock_steps::Migration),
        ]
    }
}

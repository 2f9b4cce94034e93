//! The tenants deleted lately, by the time of their deletion: the reconciler sweeps their leftover queues
//! every few minutes, and without it the query read every tenant ever deleted.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

sql_migration!(
    "CREATE INDEX tenants_deleted_by_time ON tenants (deleted_at) WHERE status = 'deleted';",
    "DROP INDEX IF EXISTS tenants_deleted_by_time;"
);

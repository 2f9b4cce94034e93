//! Queue depths read from the broker by one instance and shared through the database (docs/operations.md):
//! one row per tenant with the ready messages of its three queues, as last polled.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

sql_migration!(
    "CREATE TABLE queue_depths (
         tenant_id   UUID PRIMARY KEY,
         ready_main  BIGINT,
         ready_retry BIGINT,
         ready_dlq   BIGINT,
         polled_at   TIMESTAMPTZ NOT NULL DEFAULT now()
     );
     COMMENT ON COLUMN queue_depths.ready_main IS 'NULL: the queue is missing or could not be read';",
    "DROP TABLE IF EXISTS queue_depths;"
);

//! Gap-free message paging: each row records the id of the transaction that wrote it (`xid8`), and readers
//! page by `(txid, id)` below the snapshot's xmin horizon (see docs/cursor-pagination.md).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

sql_migration!(
    "ALTER TABLE messages ADD COLUMN txid xid8 NOT NULL DEFAULT pg_current_xact_id();
     CREATE INDEX messages_by_txid ON messages (tenant_id, txid, id);",
    "DROP INDEX IF EXISTS messages_by_txid; ALTER TABLE messages DROP COLUMN IF EXISTS txid;"
);

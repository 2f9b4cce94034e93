//! Writing messages into a tenant's partition: one multi-row insert per batch, idempotent on
//! `(tenant_id, id)`, straight into the partition (no routing through the parent table).

use std::ops::Range;

use chrono::{DateTime, Utc};
use sea_orm::{
    ConnectionTrait, DbErr, FromQueryResult, RuntimeErr,
    sqlx::{self, PgPool, postgres::PgDatabaseError},
};
use uuid::Uuid;

use crate::{domain::tenant::TenantId, metrics::Metrics};

use super::{StoreError, events::stmt, visibility::READ_HORIZON};

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
    metrics: Metrics,
}

impl MessageWriter {
    pub fn new(pool: PgPool, tenant: TenantId, metrics: Metrics) -> Self {
        let sql = format!(
            "INSERT INTO {} (tenant_id, id, payload) \
             SELECT $1, m.id, m.payload::jsonb FROM unnest($2::uuid[], $3::text[]) AS m(id, payload) \
             ON CONFLICT (tenant_id, id) DO NOTHING",
            tenant.partition_name()
        );
        Self { pool, tenant, sql, metrics }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Inserts the batch in one statement (one transaction); returns how many rows were new. Successful writes
    /// are measured (`tenantmq_persist_duration_seconds`, `tenantmq_persist_batch_size`).
    pub async fn insert(&self, messages: &[NewMessage]) -> Result<u64, sqlx::Error> {
        let started = std::time::Instant::now();
        let ids: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
        let payloads: Vec<&str> = messages.iter().map(|m| m.payload.as_str()).collect();
        // The partition name comes from the parsed tenant id: safe to splice.
        let done = sqlx::query(sqlx::AssertSqlSafe(self.sql.as_str()))
            .bind(self.tenant.as_uuid())
            .bind(&ids)
            .bind(&payloads)
            .execute(&self.pool)
            .await?;
        self.metrics.batch_persisted(messages.len(), started.elapsed());
        Ok(done.rows_affected())
    }

    /// Inserts the batch, keeping the database's refusal of one row from failing the others: a statement that
    /// fails on a data error ([`refuses_row`]) is split in halves until each refused row stands alone. Every row outside the returned ranges is committed; each range failed with its error.
    pub async fn insert_isolating(&self, messages: &[NewMessage]) -> Vec<(Range<usize>, sqlx::Error)> {
        let mut failed = Vec::new();
        // Parts still to write, the next one last.
        let mut parts = Vec::new();
        parts.push(0..messages.len());
        while let Some(part) = parts.pop() {
            if part.is_empty() {
                continue;
            }
            let Err(error) = self.insert(&messages[part.clone()]).await else { continue };
            if part.len() > 1 && refuses_row(&error) {
                let middle = part.start + part.len() / 2;
                parts.push(middle..part.end);
                parts.push(part.start..middle);
            } else {
                failed.push((part, error));
            }
        }
        failed
    }
}

/// Whether the database refused a row's data rather than the write: class 22 (e.g. a `\u0000`, which jsonb
/// rejects), a constraint (class 23), or a limit of the server (class 54, e.g. nesting deeper than its stack
/// allows). Such an error is about one row, so [`MessageWriter::insert_isolating`] splits the batch around it.
pub fn refuses_row(error: &sqlx::Error) -> bool {
    sqlstate(error).is_some_and(|code| code.starts_with("22") || code.starts_with("23") || code.starts_with("54"))
}

/// The SQLSTATE of an error the server answered with.
pub fn sqlstate(error: &sqlx::Error) -> Option<&str> {
    match error {
        sqlx::Error::Database(e) => e.try_downcast_ref::<PgDatabaseError>().map(PgDatabaseError::code),
        _ => None,
    }
}

/// A stored message, as the read side returns it.
#[derive(Debug, Clone)]
pub struct MessageRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// The payload as PostgreSQL writes out the stored `jsonb` (`payload::text`).
    pub payload: String,
    pub created_at: DateTime<Utc>,
    /// The writing transaction's id (`xid8` as text): the first part of the sort key.
    pub txid: String,
}

/// A row of [`page`]'s query: the payload is NULL for a row fetched only to tell that more rows follow.
#[derive(Debug, FromQueryResult)]
struct FetchedRow {
    id: Uuid,
    tenant_id: Uuid,
    payload: Option<String>,
    created_at: DateTime<Utc>,
    txid: String,
}

/// Rows of one page, and whether more rows follow it.
#[derive(Debug)]
pub struct Page {
    pub rows: Vec<MessageRow>,
    pub more: bool,
}

/// Where a page starts: after this `(txid, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageKey {
    pub txid: u64,
    pub id: Uuid,
}

impl MessageKey {
    pub const START: Self = Self { txid: 0, id: Uuid::nil() };

    pub fn of(row: &MessageRow) -> Self {
        Self { txid: row.txid.parse().unwrap_or_default(), id: row.id }
    }

    pub fn parse(key: &str) -> Option<Self> {
        let (txid, id) = key.split_once('.')?;
        Some(Self { txid: txid.parse().ok()?, id: Uuid::try_parse(id).ok()? })
    }
}

impl std::fmt::Display for MessageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.txid, self.id)
    }
}

/// The tenant's messages after `after`, oldest first, gap-free while writers commit out of order: only rows
/// of transactions older than every transaction still running in this database ([`READ_HORIZON`]) are
/// returned, in `(txid, id)` order, so a row that commits later always sorts after any cursor already handed
/// out.
///
/// A page holds at most `limit` rows and, from the second row on, at most `max_bytes` of payload text (a
/// single larger payload still makes a page of one). PostgreSQL counts the bytes (a running sum over the
/// rows the index scan reads) and sends only the payloads that fit, plus the next row without its payload,
/// which says more follow: the second row whatever the first weighs, else the row whose bytes before it are
/// at most `max_bytes`.
pub async fn page<C: ConnectionTrait>(
    conn: &C,
    tenant: TenantId,
    after: MessageKey,
    limit: u64,
    max_bytes: usize,
) -> Result<Page, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX - 1);
    let max_bytes = i64::try_from(max_bytes).unwrap_or(i64::MAX);
    // The partition by name, not the parent table: a query on `messages` costs more with every tenant's
    // partition (planning and locking them all), one on the partition does not.
    let sql = format!(
        "SELECT id, tenant_id, CASE WHEN n <= $4 AND (n = 1 OR bytes <= $5) THEN payload END AS payload, \
                created_at, txid::text AS txid \
         FROM (SELECT *, row_number() OVER w AS n, sum(octet_length(payload)) OVER w AS bytes \
               FROM (SELECT id, tenant_id, payload::text AS payload, created_at, txid FROM {partition} \
                     WHERE tenant_id = $1 AND (txid, id) > ($2::text::xid8, $3) \
                       AND txid < {READ_HORIZON} \
                     ORDER BY txid, id LIMIT $4 + 1) AS fetched \
               WINDOW w AS (ORDER BY txid, id ROWS UNBOUNDED PRECEDING)) AS sized \
         WHERE n <= 2 OR bytes - octet_length(payload) <= $5 \
         ORDER BY sized.txid, sized.id",
        partition = tenant.partition_name()
    );
    let statement = stmt(
        &sql,
        [tenant.as_uuid().into(), after.txid.to_string().into(), after.id.into(), limit.into(), max_bytes.into()],
    );
    let fetched = match FetchedRow::find_by_statement(statement).all(conn).await {
        Ok(fetched) => fetched,
        // Dropped by the tenant's retirement since the caller found the tenant live: nothing to read any more.
        Err(DbErr::Query(RuntimeErr::SqlxError(error))) if sqlstate(&error) == Some("42P01") => Vec::new(),
        Err(error) => return Err(error.into()),
    };
    let count = fetched.len();
    let rows: Vec<MessageRow> = fetched
        .into_iter()
        .map_while(|row| {
            let payload = row.payload?;
            Some(MessageRow {
                id: row.id,
                tenant_id: row.tenant_id,
                payload,
                created_at: row.created_at,
                txid: row.txid,
            })
        })
        .collect();
    Ok(Page { more: rows.len() < count, rows })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn message_keys_round_trip() {
        let key = MessageKey { txid: 42, id: Uuid::now_v7() };
        assert_eq!(MessageKey::parse(&key.to_string()), Some(key));
        for bad in ["", "42", "x.y", "-1.00000000-0000-0000-0000-000000000000", "1.not-a-uuid"] {
            assert_eq!(MessageKey::parse(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_keys_never_panics(raw in ".{0,80}") {
            let _ = MessageKey::parse(&raw);
        }
    }
}

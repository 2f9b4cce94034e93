//! Persistence at the edge: the database connection, the event log and the read models.

pub mod audit;
pub(crate) mod checkpoints;
pub mod database;
pub mod events;
pub mod messages;
pub mod partitions;
pub mod publish_buckets;
pub mod queue_depths;
pub mod tenant_locks;
pub mod tenants;
pub(crate) mod visibility;

use sea_orm::DbErr;

/// SQL that holds where the row `l` of `pg_locks` is a granted advisory lock on the bigint `key` (an SQL
/// expression): such a key shows as its high and low halves, each unsigned, in `classid` and `objid`.
fn granted_advisory_lock(key: &str) -> String {
    format!(
        "l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
         AND l.classid = (({key} >> 32) & 4294967295)::oid AND l.objid = (({key}) & 4294967295)::oid"
    )
}

/// Everything that can go wrong talking to the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended to the stream first (optimistic concurrency).
    #[error("the stream is at version {actual}, not the expected {expected}")]
    VersionConflict { expected: i32, actual: i32 },
    /// A stored event's `data` or `metadata` cannot be parsed (changed behind the service's back: nested
    /// deeper than its parser goes).
    #[error("event at position {position} cannot be parsed: {source}")]
    UnparsableEvent { position: i64, source: serde_json::Error },
    /// An event in the log could not be decoded into the domain's events.
    #[error("event at position {position} ({event_type}) cannot be decoded: {source}")]
    UndecodableEvent { position: i64, event_type: String, source: serde_json::Error },
    #[error("an event cannot be encoded: {0}")]
    Encode(serde_json::Error),
    /// A stored `hash` or `prev_hash` is not 32 bytes (the log's check constraint was bypassed).
    #[error("the stored hash of stream {stream_id} version {version} is not 32 bytes")]
    MalformedHash { stream_id: uuid::Uuid, version: i32 },
    /// A stored event that cannot be encoded to be hashed (changed behind the service's back).
    #[error("the event at {0}")]
    Unreadable(crate::domain::audit::Break),
    /// The database has migrations this release does not know (a newer release's) and lacks some of its own:
    /// the migrator would stop at the ones it does not know.
    #[error(
        "the schema has migrations of a newer release ({}) and lacks this release's {}: this release cannot \
         migrate it; the newer release's `migrate up` can",
        newer.join(", "),
        pending.join(", ")
    )]
    NewerSchema { newer: Vec<String>, pending: Vec<String> },
    /// Asked to roll back a schema whose newest migrations are a newer release's.
    #[error("the newest migrations are a newer release's ({}): roll them back with that release", .0.join(", "))]
    NewerMigrations(Vec<String>),
    #[error("database error: {0}")]
    Database(#[from] DbErr),
    #[error("database error: {0}")]
    Sqlx(#[from] sea_orm::sqlx::Error),
}

impl StoreError {
    /// The driver's error a query or statement failed with, if that is what happened.
    pub fn sqlx(&self) -> Option<&sea_orm::sqlx::Error> {
        use sea_orm::RuntimeErr;
        match self {
            Self::Database(DbErr::Query(RuntimeErr::SqlxError(error)) | DbErr::Exec(RuntimeErr::SqlxError(error))) => {
                Some(error)
            }
            Self::Sqlx(error) => Some(error),
            _ => None,
        }
    }
}

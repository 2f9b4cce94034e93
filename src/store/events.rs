//! The append-only event log.
//!
//! Appends are serialized by a transaction-scoped advisory lock: a transaction takes its position only after
//! it holds the lock and releases the lock only after its commit is visible, so positions become visible in
//! order and a reader of `position > checkpoint` never skips an event that commits late. Tenant commands are
//! rare and small, so one append at a time costs nothing that matters (see docs/architecture.md).
//!
//! Every event carries the hash of its canonical encoding and its stream's previous hash (docs/audit.md). The
//! lock makes reading the stream's last hash race-free; the position is drawn before the insert because the
//! hash covers it, and `recorded_at` is set explicitly because the hash covers the exact stored value.

use chrono::{DateTime, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, FromQueryResult, Statement, TransactionTrait,
    Value,
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::watch;
use uuid::Uuid;

use super::StoreError;
use crate::domain::audit::{EventHash, HashedFields, canonical_json};

/// The channel NOTIFY announces new positions on, so projectors on every instance wake at once.
pub const NOTIFY_CHANNEL: &str = "tenantmq_events";

/// The lock appends take turns on (a transaction's advisory lock): "events" in ASCII.
pub const APPEND_LOCK: i64 = 0x6576_656e_7473;

/// How long an append or a stream's read waits for a lock before it fails (55P03, answered 503, nothing
/// recorded): behind an operator's exclusive lock on `events` (a `VACUUM FULL`, `CLUSTER` or `ALTER TABLE`),
/// a command would otherwise wait as long as the lock is held, and past the HTTP idle timeout be closed
/// unanswered. Appends wait for one another on [`APPEND_LOCK`] too, a few milliseconds each.
const LOG_LOCK_WAIT: &str = "SET LOCAL lock_timeout = '10s'";

/// Who caused an event and in answer to what: stored with every event for auditors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct EventMetadata {
    pub actor: String,
    pub request_id: String,
    pub correlation_id: String,
    /// The W3C trace id of the request's trace (32 hex digits), to find its spans; absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// An event as stored in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    pub position: i64,
    pub stream_id: Uuid,
    pub version: i32,
    pub event_type: String,
    pub data: serde_json::Value,
    pub metadata: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
    /// SHA-256 of the event's canonical encoding, lowercase hex.
    pub hash: String,
    /// The hash of the stream's previous event (64 zeros for version 1).
    pub prev_hash: String,
}

impl RecordedEvent {
    /// Decodes into a domain event whose serde form is `{"event_type": …, "data": …}`.
    pub fn decode<E: DeserializeOwned>(&self) -> Result<E, StoreError> {
        let tagged = serde_json::json!({ "event_type": self.event_type, "data": self.data });
        serde_json::from_value(tagged).map_err(|source| StoreError::UndecodableEvent {
            position: self.position,
            event_type: self.event_type.clone(),
            source,
        })
    }
}

/// An event ready to append: its stable type name and its data.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_type: String,
    pub data: serde_json::Value,
}

impl NewEvent {
    /// Encodes a domain event whose serde form is `{"event_type": …, "data": …}`.
    pub fn encode<E: Serialize>(event: &E) -> Result<Self, StoreError> {
        #[derive(serde::Deserialize)]
        struct Tagged {
            event_type: String,
            #[serde(default)]
            data: serde_json::Value,
        }
        let tagged: Tagged =
            serde_json::to_value(event).and_then(serde_json::from_value).map_err(StoreError::Encode)?;
        Ok(Self { event_type: tagged.event_type, data: tagged.data })
    }
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub last_position: i64,
    pub last_version: i32,
}

/// An event's columns as stored: `data` and `metadata` as PostgreSQL's text of their `jsonb` (which keeps every
/// number's digits, and is what the hash covers), parsed here: a value the log was changed to that the service
/// cannot parse (nested deeper than its parser goes) is then an unparsable event at its position, not a
/// failed query.
pub(super) const STORED_COLUMNS: &str = "position, stream_id, version, event_type, data::text AS data, \
                                         metadata::text AS metadata, recorded_at, prev_hash, hash";

#[derive(FromQueryResult)]
pub(super) struct StoredEvent {
    pub(super) position: i64,
    pub(super) stream_id: Uuid,
    pub(super) version: i32,
    pub(super) event_type: String,
    pub(super) data: String,
    pub(super) metadata: String,
    pub(super) recorded_at: DateTime<Utc>,
    pub(super) prev_hash: Vec<u8>,
    pub(super) hash: Vec<u8>,
}

impl TryFrom<StoredEvent> for RecordedEvent {
    type Error = StoreError;

    fn try_from(row: StoredEvent) -> Result<Self, StoreError> {
        let parse = |text: &str| {
            serde_json::from_str(text).map_err(|source| StoreError::UnparsableEvent { position: row.position, source })
        };
        Ok(Self {
            data: parse(&row.data)?,
            metadata: parse(&row.metadata)?,
            position: row.position,
            stream_id: row.stream_id,
            version: row.version,
            event_type: row.event_type,
            recorded_at: row.recorded_at,
            hash: hex::encode(&row.hash),
            prev_hash: hex::encode(&row.prev_hash),
        })
    }
}

/// NOTIFY of `payload` on [`NOTIFY_CHANNEL`], delivered when the transaction that sends it commits.
fn notification(payload: &str) -> Statement {
    stmt("SELECT pg_notify($1, $2)", [NOTIFY_CHANNEL.into(), payload.into()])
}

/// The events a query over [`STORED_COLUMNS`] returns.
async fn recorded<C: ConnectionTrait>(conn: &C, statement: Statement) -> Result<Vec<RecordedEvent>, StoreError> {
    StoredEvent::find_by_statement(statement).all(conn).await?.into_iter().map(RecordedEvent::try_from).collect()
}

/// What an append reads under the lock, in one round trip: the stream's last version and hash, the time to
/// record, the metadata and each event's data as PostgreSQL's text of their `jsonb` (the form the hash covers),
/// and a position per event. One row per event (one row without data when there are no events).
#[derive(FromQueryResult)]
struct StreamTip {
    version: i32,
    hash: Option<Vec<u8>>,
    recorded_at: DateTime<Utc>,
    metadata: String,
    data: Option<String>,
    position: Option<i64>,
}

impl StreamTip {
    /// The hash the stream's next event links to: its last event's, or the genesis value for a new stream.
    fn last_hash(&self, stream_id: Uuid) -> Result<EventHash, StoreError> {
        match &self.hash {
            Some(bytes) => {
                EventHash::from_slice(bytes).ok_or(StoreError::MalformedHash { stream_id, version: self.version })
            }
            None => Ok(EventHash::GENESIS),
        }
    }
}

/// Inserts one event with its place in the chain (`fields`, hashed here) and returns its hash.
async fn insert_chained(
    txn: &impl ConnectionTrait,
    fields: &HashedFields,
    data: &serde_json::Value,
    metadata: &serde_json::Value,
) -> Result<EventHash, StoreError> {
    let hash = fields.hash();
    txn.execute_raw(stmt(
        "INSERT INTO events (position, stream_id, version, event_type, data, metadata, recorded_at, prev_hash, \
         hash) OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        [
            fields.position.into(),
            fields.stream_id.into(),
            fields.version.into(),
            fields.event_type.clone().into(),
            data.clone().into(),
            metadata.clone().into(),
            fields.recorded_at.into(),
            fields.prev_hash.as_bytes().to_vec().into(),
            hash.as_bytes().to_vec().into(),
        ],
    ))
    .await?;
    Ok(hash)
}

/// Positions are drawn before the version check, so a conflicting append leaves a gap, as a rolled-back one
/// always did; only appends draw from the sequence, and only under the lock, so positions still become
/// visible in order.
///
/// The events' time is read under the lock too, once, and never before the last event's: so times follow
/// positions across streams, also after the database's clock was set back, and an auditor's "at T" of several
/// tenants is one prefix of the log. The transaction's start (`now()`) came before the wait for the lock, up
/// to its 10 s, so an append could carry a time before the event it followed. A last event more than a day
/// ahead is no clock step but a row written by hand (`infinity`, which no Rust time holds): it is not followed.
const STREAM_TIP: &str = "SELECT COALESCE(last.version, 0) AS version, last.hash, stamp.recorded_at, \
     $2::jsonb::text AS metadata, element.item::text AS data, \
     CASE WHEN element.item IS NOT NULL THEN nextval(pg_get_serial_sequence('events', 'position')) END AS position \
     FROM (SELECT greatest(clock_timestamp(), (SELECT last.recorded_at \
       FROM (SELECT recorded_at FROM events ORDER BY position DESC LIMIT 1) AS last \
       WHERE last.recorded_at < clock_timestamp() + interval '1 day')) AS recorded_at) AS stamp \
     LEFT JOIN LATERAL (SELECT version, hash FROM events WHERE stream_id = $1 ORDER BY version DESC LIMIT 1) AS last \
     ON true \
     LEFT JOIN LATERAL jsonb_array_elements($3::jsonb) WITH ORDINALITY AS element(item, index) ON true \
     ORDER BY element.index";

#[derive(Clone)]
pub struct EventStore {
    db: DatabaseConnection,
    /// The highest position known to exist; appends here and NOTIFY from other instances raise it.
    head: watch::Sender<i64>,
}

impl EventStore {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db, head: watch::Sender::new(0) }
    }

    /// Follows the head of the log (raised by local appends and by [`EventStore::observe_head`]).
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    pub fn subscribe_head(&self) -> watch::Receiver<i64> {
        self.head.subscribe()
    }

    /// Records that the log reaches at least `position` (from NOTIFY or a poll).
    pub fn observe_head(&self, position: i64) {
        self.head.send_if_modified(|head| {
            let raised = position > *head;
            *head = (*head).max(position);
            raised
        });
    }

    /// Appends `events` to `stream_id`, which must be at `expected_version` (0 for a new stream).
    pub async fn append(
        &self,
        stream_id: Uuid,
        expected_version: i32,
        events: &[NewEvent],
        metadata: &EventMetadata,
    ) -> Result<Appended, StoreError> {
        let metadata = serde_json::to_value(metadata).map_err(StoreError::Encode)?;
        let data = serde_json::Value::Array(events.iter().map(|event| event.data.clone()).collect());
        let txn = self.begin_appending().await?;
        let tips =
            StreamTip::find_by_statement(stmt(STREAM_TIP, [stream_id.into(), metadata.clone().into(), data.into()]))
                .all(&txn)
                .await?;
        let Some(tip) = tips.first() else {
            return Err(StoreError::Database(sea_orm::DbErr::RecordNotFound(
                "the stream tip query returned no row".into(),
            )));
        };
        if tip.version != expected_version {
            return Err(StoreError::VersionConflict { expected: expected_version, actual: tip.version });
        }
        let mut prev_hash = tip.last_hash(stream_id)?;
        let metadata_text = canonical_json(&tip.metadata).map_err(StoreError::Encode)?;
        // Ascending whatever order the rows drew them in, so positions follow versions.
        let mut positions: Vec<i64> = tips.iter().filter_map(|row| row.position).collect();
        positions.sort_unstable();
        let mut appended = Appended { last_position: 0, last_version: tip.version };
        for (event, (row, position)) in events.iter().zip(tips.iter().zip(positions)) {
            appended.last_version += 1;
            appended.last_position = position;
            let fields = HashedFields {
                stream_id,
                version: appended.last_version,
                position,
                event_type: event.event_type.clone(),
                data: canonical_json(row.data.as_deref().unwrap_or_default()).map_err(StoreError::Encode)?,
                metadata: metadata_text.clone(),
                recorded_at: tip.recorded_at,
                prev_hash,
            };
            prev_hash = insert_chained(&txn, &fields, &event.data, &metadata).await?;
        }
        txn.execute_raw(notification(&appended.last_position.to_string())).await?;
        if let Err(error) = txn.commit().await {
            // The reply to a COMMIT can be lost after the database made it durable (the connection cut at that
            // moment): answered with an error, a client would retry, and a create without an id would then be
            // recorded twice. The last event's hash covers its position and time, so finding it says that these
            // very events are in the log.
            // `prev_hash` is now the last event's own hash.
            if !self.holds(stream_id, appended.last_version, prev_hash).await {
                return Err(error.into());
            }
            tracing::warn!(%error, %stream_id, version = appended.last_version, "the commit's reply was lost, but the events are in the log");
        }
        self.observe_head(appended.last_position);
        Ok(appended)
    }

    /// A transaction holding the append lock, which one append at a time holds until it has ended; its wait
    /// for it is bounded by [`LOG_LOCK_WAIT`].
    async fn begin_appending(&self) -> Result<DatabaseTransaction, sea_orm::DbErr> {
        let txn = self.db.begin().await?;
        txn.execute_unprepared(LOG_LOCK_WAIT).await?;
        txn.execute_raw(stmt("SELECT pg_advisory_xact_lock($1)", [APPEND_LOCK.into()])).await?;
        Ok(txn)
    }

    /// Whether the stream's event at `version` has `hash`; false also when the log cannot be read (the outcome
    /// then stays unknown, and the append answers with its error). It first takes the append lock, which the
    /// failed transaction holds until it has ended: a COMMIT still under way (a slow fsync, a synchronous
    /// standby) is waited for rather than taken for one that did not happen.
    async fn holds(&self, stream_id: Uuid, version: i32, hash: EventHash) -> bool {
        let stored = async {
            let txn = self.begin_appending().await?;
            let statement = stmt(
                "SELECT hash FROM events WHERE stream_id = $1 AND version = $2",
                [stream_id.into(), version.into()],
            );
            let row = txn.query_one_raw(statement).await?;
            txn.commit().await?;
            row.map(|row| row.try_get::<Vec<u8>>("", "hash")).transpose()
        };
        match stored.await {
            Ok(stored) => stored.is_some_and(|stored| stored == hash.as_bytes()),
            Err(error) => {
                tracing::warn!(%error, %stream_id, version, "cannot tell whether a commit whose reply was lost took place");
                false
            }
        }
    }

    /// One stream's events with version > `after_version`, oldest first. Its wait for a lock is bounded by
    /// [`LOG_LOCK_WAIT`], as an append's is: it serves commands and requests.
    pub async fn read_stream(
        &self,
        stream_id: Uuid,
        after_version: i32,
        limit: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!(
            "SELECT {STORED_COLUMNS} FROM events WHERE stream_id = $1 AND version > $2 ORDER BY version LIMIT $3"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let txn = self.db.begin().await?;
        txn.execute_unprepared(LOG_LOCK_WAIT).await?;
        let events = recorded(&txn, stmt(&sql, [stream_id.into(), after_version.into(), limit.into()])).await?;
        txn.commit().await?;
        Ok(events)
    }

    /// Sends `payload` on the channel the listeners hear (which take a position from it, or their own echo).
    pub async fn notify(&self, payload: &str) -> Result<(), StoreError> {
        self.db.execute_raw(notification(payload)).await?;
        Ok(())
    }

    /// A read of the whole log, begun once the head was `claimed`, found that the log ends at `tip`. Every
    /// position is observed only once its event is committed, so it was there to be read: a claimed head above
    /// the tip names no event (a NOTIFY on the log's channel from some other session, with any number in it).
    /// The head goes back to the tip, else no real position would raise it again, and the projectors would
    /// wake only at their poll, every command waiting for them until then. Returns whether it went back.
    pub fn disown_head(&self, claimed: i64, tip: i64) -> bool {
        self.head.send_if_modified(|head| {
            let disowned = *head == claimed && claimed > tip;
            if disowned {
                *head = tip;
            }
            disowned
        })
    }

    /// The highest position in the log (0 when empty).
    pub async fn head_position(&self) -> Result<i64, StoreError> {
        let head: i64 = scalar(&self.db, stmt("SELECT COALESCE(MAX(position), 0) AS value FROM events", [])).await?;
        self.observe_head(head);
        Ok(head)
    }
}

/// Events after `position` across all streams, in position order; `conn` may be a projector's transaction.
pub async fn read_all_after<C: ConnectionTrait>(
    conn: &C,
    position: i64,
    limit: u32,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let sql = format!("SELECT {STORED_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2");
    recorded(conn, stmt(&sql, [position.into(), i64::from(limit).into()])).await
}

pub(crate) fn stmt<const N: usize>(sql: &str, values: [Value; N]) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// Runs a query that returns one row with one column named `value`.
pub(crate) async fn scalar<C: ConnectionTrait, T: sea_orm::TryGetable>(
    conn: &C,
    statement: Statement,
) -> Result<T, StoreError> {
    let row = conn.query_one_raw(statement).await?.ok_or_else(|| {
        StoreError::Database(sea_orm::DbErr::RecordNotFound("a query that returns one row returned none".into()))
    })?;
    Ok(row.try_get::<T>("", "value")?)
}

//! The hash chain of the stored log (docs/audit.md): checking one stream or every stream, reading it in chunks
//! of bounded size, and the head of each stream.

use sea_orm::{
    AccessMode, ConnectionTrait, DatabaseConnection, DatabaseTransaction, FromQueryResult, IsolationLevel,
    TransactionTrait,
};
use uuid::Uuid;

use super::{
    StoreError,
    events::{STORED_COLUMNS, StoredEvent, stmt},
};
use crate::domain::audit::{
    Break, BreakReason, ChainCheck, ChainedEvent, EventHash, HashedFields, Head, Intact, Unreadable, canonical_json,
};

/// Events read per query: memory stays bounded however long the log is.
const CHUNK: i64 = 1000;

/// The outcome of checking the stored chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Intact(Intact),
    /// The first event (in stream, then version order) at which the chain breaks.
    Broken(Break),
}

/// Checks the chain of one stream, or of every stream in one snapshot of the log (see [`ChainReader`]).
pub async fn verify(db: &DatabaseConnection, stream: Option<Uuid>) -> Result<Verdict, StoreError> {
    let mut reader = ChainReader::open(db, stream).await?;
    let mut check = ChainCheck::new();
    loop {
        let rows = reader.next_rows().await?;
        if rows.is_empty() {
            return Ok(Verdict::Intact(check.finish()));
        }
        for row in rows {
            if let Err(broken) = chained(row).and_then(|event| check.push(&event)) {
                return Ok(Verdict::Broken(broken));
            }
        }
    }
}

/// Reads the chain of one stream or of every stream (by stream id, then version) in chunks.
///
/// Every stream is read from one repeatable-read snapshot, so that appends to streams already passed that
/// commit meanwhile are not half seen. One stream is read a chunk at a time on the pool, holding no
/// connection in between: it only grows at its end, so each chunk follows on the last, and an export
/// streamed to a slow client (hours for a long history at a few KB/s) must not hold a connection, or a
/// snapshot that keeps VACUUM from cleaning up, for all that time (25 slow exports of one tenant's history
/// took the whole pool).
pub struct ChainReader {
    source: Source,
    stream: Option<Uuid>,
    /// The last `(stream id, version)` read; before the first read, the nil UUID and version 0, which sort
    /// before every event (versions start at 1).
    after: (Uuid, i32),
    done: bool,
}

enum Source {
    Snapshot(DatabaseTransaction),
    Pool(DatabaseConnection),
}

impl ChainReader {
    pub async fn open(db: &DatabaseConnection, stream: Option<Uuid>) -> Result<Self, StoreError> {
        let source = match stream {
            Some(_) => Source::Pool(db.clone()),
            None => Source::Snapshot(
                db.begin_with_config(Some(IsolationLevel::RepeatableRead), Some(AccessMode::ReadOnly)).await?,
            ),
        };
        Ok(Self { source, stream, after: (stream.unwrap_or(Uuid::nil()), 0), done: false })
    }

    /// The next events in order; empty once the chain is read. An event that cannot be encoded is an error
    /// ([`verify`] reports it as a break instead).
    pub async fn next_chunk(&mut self) -> Result<Vec<ChainedEvent>, StoreError> {
        let rows = self.next_rows().await?;
        rows.into_iter().map(|row| chained(row).map_err(StoreError::Unreadable)).collect()
    }

    async fn next_rows(&mut self) -> Result<Vec<StoredEvent>, StoreError> {
        if self.done {
            return Ok(Vec::new());
        }
        let (after_stream, after_version) = self.after;
        let statement = match self.stream {
            Some(stream) => stmt(
                &format!(
                    "SELECT {STORED_COLUMNS} FROM events WHERE stream_id = $1 AND version > $2 \
                     ORDER BY version LIMIT $3"
                ),
                [stream.into(), after_version.into(), CHUNK.into()],
            ),
            None => stmt(
                &format!(
                    "SELECT {STORED_COLUMNS} FROM events WHERE (stream_id, version) > ($1, $2) \
                     ORDER BY stream_id, version LIMIT $3"
                ),
                [after_stream.into(), after_version.into(), CHUNK.into()],
            ),
        };
        let rows = match &self.source {
            Source::Snapshot(snapshot) => StoredEvent::find_by_statement(statement).all(snapshot).await?,
            Source::Pool(db) => StoredEvent::find_by_statement(statement).all(db).await?,
        };
        self.done = i64::try_from(rows.len()).unwrap_or(i64::MAX) < CHUNK;
        if let Some(last) = rows.last() {
            self.after = (last.stream_id, last.version);
        }
        Ok(rows)
    }
}

/// The event as hashed, or a break at it when what is stored cannot be encoded: only a change behind the
/// service's back makes one so, and the check names the event as it names any other change.
fn chained(row: StoredEvent) -> Result<ChainedEvent, Break> {
    let unreadable = |what| Break {
        position: row.position,
        stream_id: row.stream_id,
        version: row.version,
        reason: BreakReason::Unreadable(what),
    };
    // PostgreSQL's text of a `jsonb` value is valid JSON: only its depth can make canonical JSON refuse it.
    let fields = HashedFields {
        stream_id: row.stream_id,
        version: row.version,
        position: row.position,
        event_type: row.event_type,
        data: canonical_json(&row.data).map_err(|_| unreadable(Unreadable::Data))?,
        metadata: canonical_json(&row.metadata).map_err(|_| unreadable(Unreadable::Metadata))?,
        recorded_at: row.recorded_at,
        prev_hash: EventHash::from_slice(&row.prev_hash).ok_or_else(|| unreadable(Unreadable::PrevHash))?,
    };
    let hash = EventHash::from_slice(&row.hash).ok_or_else(|| unreadable(Unreadable::Hash))?;
    Ok(ChainedEvent { fields, hash })
}

#[derive(FromQueryResult)]
struct HeadRow {
    stream_id: Uuid,
    version: i32,
    position: i64,
    hash: Vec<u8>,
}

/// The newest event of every stream (by stream id), or of one: publishing these elsewhere lets a later check
/// notice events cut off a stream's end, or a stream rewritten whole.
pub async fn heads<C: ConnectionTrait>(conn: &C, stream: Option<Uuid>) -> Result<Vec<Head>, StoreError> {
    let rows = HeadRow::find_by_statement(stmt(
        "SELECT DISTINCT ON (stream_id) stream_id, version, position, hash FROM events \
         WHERE $1::uuid IS NULL OR stream_id = $1 ORDER BY stream_id, version DESC",
        [stream.into()],
    ))
    .all(conn)
    .await?;
    rows.into_iter().map(head).collect()
}

/// The heads of up to `limit` streams whose id sorts after `after` (from the first stream when `None`), by
/// stream id: [`heads`] a page at a time.
pub async fn heads_after<C: ConnectionTrait>(
    conn: &C,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<Head>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // Without a cursor there is no lower bound: any id, the nil UUID included, may be a stream's. Two
    // statements rather than one with `$1 IS NULL OR …`, so that each keeps its index range scan.
    let statement = match after {
        Some(after) => stmt(
            "SELECT DISTINCT ON (stream_id) stream_id, version, position, hash FROM events \
             WHERE stream_id > $1 ORDER BY stream_id, version DESC LIMIT $2",
            [after.into(), limit.into()],
        ),
        None => stmt(
            "SELECT DISTINCT ON (stream_id) stream_id, version, position, hash FROM events \
             ORDER BY stream_id, version DESC LIMIT $1",
            [limit.into()],
        ),
    };
    let rows = HeadRow::find_by_statement(statement).all(conn).await?;
    rows.into_iter().map(head).collect()
}

/// The ids of up to `limit` streams after `after` (from the first stream when `None`), in order: the streams
/// of a page that is checked. Only ids, so that a head changed into something unreadable is found by the check
/// of its stream rather than failing the listing.
pub async fn streams_after<C: ConnectionTrait>(
    conn: &C,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<Uuid>, StoreError> {
    #[derive(FromQueryResult)]
    struct StreamRow {
        stream_id: Uuid,
    }
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let statement = match after {
        Some(after) => stmt(
            "SELECT DISTINCT ON (stream_id) stream_id FROM events WHERE stream_id > $1 ORDER BY stream_id LIMIT $2",
            [after.into(), limit.into()],
        ),
        None => {
            stmt("SELECT DISTINCT ON (stream_id) stream_id FROM events ORDER BY stream_id LIMIT $1", [limit.into()])
        }
    };
    let rows = StreamRow::find_by_statement(statement).all(conn).await?;
    Ok(rows.into_iter().map(|row| row.stream_id).collect())
}

fn head(row: HeadRow) -> Result<Head, StoreError> {
    let hash = EventHash::from_slice(&row.hash)
        .ok_or(StoreError::MalformedHash { stream_id: row.stream_id, version: row.version })?;
    Ok(Head { stream_id: row.stream_id, version: row.version, position: row.position, hash })
}

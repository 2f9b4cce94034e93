//! What an auditor asks of the log: is the hash chain intact, what are the streams' heads, what was a tenant
//! at some point in its history, and the whole history as the export file `tenantmq export` writes.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{Stream, stream};
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::{
    domain::{
        audit::{ChainedEvent, Head, Intact},
        tenant::{Tenant, TenantEvent, TenantFacts, TenantId, evolve},
    },
    store::{
        audit::{self, ChainReader},
        events::EventStore,
    },
};

pub use crate::store::audit::Verdict;

use super::AppError;

/// Events read per query while folding a stream.
const FOLD_CHUNK: u64 = 1000;

/// The point in a stream's history a state is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// After the stream's last event at or before this global position.
    Position(i64),
    /// After the stream's last event recorded at or before this time.
    Time(DateTime<Utc>),
}

impl AsOf {
    fn includes(&self, position: i64, recorded_at: DateTime<Utc>) -> bool {
        match *self {
            Self::Position(at) => position <= at,
            Self::Time(at) => recorded_at <= at,
        }
    }
}

/// A tenant as its stream's events up to some point make it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantAsOf {
    pub facts: TenantFacts,
    /// Whether the tenant had been deleted by then.
    pub deleted: bool,
    /// The last event folded in: its version, position, hash and time.
    pub version: i32,
    pub position: i64,
    pub hash: String,
    pub recorded_at: DateTime<Utc>,
}

/// A check of several streams, one page of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamsChecked {
    pub verdict: Verdict,
    /// The last stream checked, when streams after it are still to check.
    pub continue_after: Option<Uuid>,
}

#[derive(Clone)]
pub struct Audit {
    db: DatabaseConnection,
    events: EventStore,
}

impl Audit {
    pub fn new(db: DatabaseConnection, events: EventStore) -> Self {
        Self { db, events }
    }

    /// Checks one tenant's chain; a tenant that never existed has none.
    pub async fn verify_tenant(&self, tenant: TenantId) -> Result<Verdict, AppError> {
        match audit::verify(&self.db, Some(tenant.as_uuid())).await? {
            Verdict::Intact(Intact { events: 0, .. }) => Err(AppError::NoSuchTenant(tenant)),
            verdict => Ok(verdict),
        }
    }

    /// Checks the chains of up to `limit` streams after `after` (by stream id), each read from its start to
    /// its end as it grows. The page ends at the first broken stream, and goes on after it, so that one break
    /// hides no other. The newest event of an intact page pins only its own stream.
    pub async fn verify_streams(&self, after: Option<Uuid>, limit: u64) -> Result<StreamsChecked, AppError> {
        let streams = audit::streams_after(&self.db, after, limit.saturating_add(1)).await?;
        let (streams, continue_after) = page(streams, limit, |stream| *stream);
        let mut checked = Intact::default();
        for (index, &stream) in streams.iter().enumerate() {
            match audit::verify(&self.db, Some(stream)).await? {
                Verdict::Intact(intact) => {
                    checked.streams += intact.streams;
                    checked.events += intact.events;
                    checked.head = checked.head.into_iter().chain(intact.head).max_by_key(|head| head.position);
                }
                broken @ Verdict::Broken(_) => {
                    let more = continue_after.is_some() || index + 1 < streams.len();
                    return Ok(StreamsChecked { verdict: broken, continue_after: more.then_some(stream) });
                }
            }
        }
        Ok(StreamsChecked { verdict: Verdict::Intact(checked), continue_after })
    }

    /// One tenant's head.
    pub async fn tenant_head(&self, tenant: TenantId) -> Result<Head, AppError> {
        audit::heads(&self.db, Some(tenant.as_uuid())).await?.pop().ok_or(AppError::NoSuchTenant(tenant))
    }

    /// The heads of up to `limit` streams after `after` (by stream id), and the last of them when more follow.
    pub async fn head_page(&self, after: Option<Uuid>, limit: u64) -> Result<(Vec<Head>, Option<Uuid>), AppError> {
        let heads = audit::heads_after(&self.db, after, limit.saturating_add(1)).await?;
        Ok(page(heads, limit, |head| head.stream_id))
    }

    /// The tenant as it was at `at`: its stream folded with `evolve` up to that point. Before its first event
    /// there is no tenant.
    pub async fn tenant_as_of(&self, tenant: TenantId, at: AsOf) -> Result<TenantAsOf, AppError> {
        let mut state = Tenant::Absent;
        let mut last = None;
        let mut after_version = 0;
        'read: loop {
            let events = self.events.read_stream(tenant.as_uuid(), after_version, FOLD_CHUNK).await?;
            let read_all = (events.len() as u64) < FOLD_CHUNK;
            for event in events {
                if !at.includes(event.position, event.recorded_at) {
                    break 'read;
                }
                state = evolve(state, &event.decode::<TenantEvent>()?);
                after_version = event.version;
                last = Some(event);
            }
            if read_all {
                break;
            }
        }
        let ((facts, deleted), Some(event)) = (
            match state {
                Tenant::Active(facts) => (facts, false),
                Tenant::Deleted(facts) => (facts, true),
                Tenant::Absent => return Err(AppError::NoSuchTenant(tenant)),
            },
            last,
        ) else {
            return Err(AppError::NoSuchTenant(tenant));
        };
        Ok(TenantAsOf {
            facts,
            deleted,
            version: event.version,
            position: event.position,
            hash: event.hash,
            recorded_at: event.recorded_at,
        })
    }

    /// The tenant's whole stream as JSON Lines, the lines `tenantmq export` writes, read a chunk at a time as
    /// the stream is consumed (only one chunk is held at a time, and no connection in between). A tenant that never existed is
    /// an error before the first byte.
    pub async fn export(
        &self,
        tenant: TenantId,
    ) -> Result<impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static, AppError> {
        let mut reader = ChainReader::open(&self.db, Some(tenant.as_uuid())).await?;
        let first = reader.next_chunk().await?;
        if first.is_empty() {
            return Err(AppError::NoSuchTenant(tenant));
        }
        Ok(stream::try_unfold((reader, Some(first)), |(mut reader, pending)| async move {
            let chunk = match pending {
                Some(chunk) => chunk,
                None => reader.next_chunk().await.map_err(std::io::Error::other)?,
            };
            if chunk.is_empty() {
                return Ok(None);
            }
            Ok(Some((json_lines(&chunk)?, (reader, None))))
        }))
    }
}

/// The first `limit` of `items` (read as `limit + 1`, by stream id), and the last stream kept when more follow.
fn page<T>(mut items: Vec<T>, limit: u64, stream: impl Fn(&T) -> Uuid) -> (Vec<T>, Option<Uuid>) {
    let more = items.len() as u64 > limit;
    items.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let continue_after = more.then(|| items.last().map(stream)).flatten();
    (items, continue_after)
}

/// Events as export lines, each ended by a newline.
fn json_lines(events: &[ChainedEvent]) -> Result<Bytes, std::io::Error> {
    let mut lines = String::new();
    for event in events {
        lines.push_str(&event.to_json_line()?);
        lines.push('\n');
    }
    Ok(Bytes::from(lines))
}

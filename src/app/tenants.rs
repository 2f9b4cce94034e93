//! Tenants: the commands (load the tenant's stream, `decide`, append, and wait until every projection has
//! applied the new events, so the caller reads its own write) and what the tenants read model and this
//! instance's runtime say about a tenant.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use crate::{
    broker::{Broker, Inspector, QueueCounts},
    domain::tenant::{Limits, Policy, Tenant, TenantCommand, TenantError, TenantEvent, TenantId, evolve},
    projectors::Projections,
    runtime::{ConsumerRegistry, registry::ConsumerFailure, tenant_runtime::ConsumerState},
    store::{
        events::{EventMetadata, EventStore, NewEvent},
        partitions,
        tenants::{TenantReadModel, limit_column},
    },
};

pub use crate::store::tenants::TenantRow;

use super::AppError;

/// How often a delete looks whether the tenant's retirement is done: first soon (it takes a consumer's last
/// batch), then less often, so that many deletes at once do not crowd the connection pool.
const RETIREMENT_POLL: Duration = Duration::from_millis(20);
const RETIREMENT_POLL_MAX: Duration = Duration::from_millis(250);
/// Events a command's load reads at a time: a long stream is folded without holding it all.
const LOAD_CHUNK: u64 = 1000;

/// A tenant's stream folded up to `version`: its state, and the log position and hash of its last event.
#[derive(Debug, Clone, Default)]
struct Folded {
    state: Tenant,
    version: i32,
    position: i64,
    hash: String,
}

/// The folds this instance keeps, at most [`Folds::KEPT`]: a cache, the log stays the truth. Bounded, because
/// the fold of a tenant deleted through another instance never leaves by itself: this one is not told. Past
/// the bound the fold kept least lately goes, so that those of tenants deleted elsewhere (never kept again) go
/// before those of tenants in use: with tenants created and deleted all day, an arbitrary choice came to drop
/// live tenants' folds while dead ones filled the cache, and each such command read its whole stream again.
#[derive(Default)]
struct Folds {
    /// Each fold with when it was last kept, in [`Folds::kept`]'s count.
    folds: HashMap<TenantId, (Folded, u64)>,
    kept: u64,
}

impl Folds {
    const KEPT: usize = 10_000;

    fn get(&self, id: TenantId) -> Option<&Folded> {
        self.folds.get(&id).map(|(folded, _)| folded)
    }

    /// Keeps `folded`, unless a further fold of the tenant is kept (a load that raced with another); a new
    /// tenant past [`Folds::KEPT`] takes the place of the one kept least lately, whose next command folds its
    /// stream again.
    fn keep(&mut self, id: TenantId, folded: &Folded) {
        if !self.folds.contains_key(&id)
            && self.folds.len() >= Self::KEPT
            && let Some(stalest) = self.folds.iter().min_by_key(|(_, (_, kept))| *kept).map(|(&other, _)| other)
        {
            self.folds.remove(&stalest);
        }
        self.kept += 1;
        let (kept, at) = self.folds.entry(id).or_default();
        *at = self.kept;
        if folded.version > kept.version {
            *kept = folded.clone();
        }
    }

    fn forget(&mut self, id: TenantId) {
        self.folds.remove(&id);
    }
}

/// What this instance runs for a tenant, and its queues as the broker reports them.
#[derive(Debug, Clone)]
pub struct TenantStatus {
    /// `None`: no consumer on this instance right now.
    pub consumer: Option<ConsumerStatus>,
    /// Why there is none, while it waits to start again after a failure.
    pub failure: Option<ConsumerFailure>,
    pub queues: QueueCounts,
}

#[derive(Debug, Clone)]
pub struct ConsumerStatus {
    pub state: ConsumerState,
    pub running_workers: u16,
    pub busy_workers: u16,
    /// Empty until the consumer has subscribed.
    pub consumer_tag: String,
}

#[derive(Clone)]
pub struct Tenants {
    store: EventStore,
    read_model: TenantReadModel,
    policy: Policy,
    /// `limits.*`: what applies to tenants without limits of their own.
    default_limits: Limits,
    projections: Projections,
    /// `projectors.command_wait`: how long a command waits for the read models.
    wait: Duration,
    registry: ConsumerRegistry,
    broker: Broker,
    /// Each live tenant's stream as far as this instance last folded it. A command reads only the events from
    /// the fold's last one on: folding the whole stream at each command cost time in proportion to its length
    /// (90 ms at 13,000 events, as an autoscaler setting the concurrency every minute makes in nine days).
    /// What follows the fold is read from the log each time, so the log stays the truth on every instance.
    folded: Arc<Mutex<Folds>>,
}

impl Tenants {
    pub fn new(
        store: EventStore,
        (policy, default_limits): (Policy, Limits),
        projections: Projections,
        wait: Duration,
        registry: ConsumerRegistry,
        broker: Broker,
    ) -> Self {
        let read_model = TenantReadModel::new(store.db().clone());
        let folded = Arc::default();
        Self { store, read_model, policy, default_limits, projections, wait, registry, broker, folded }
    }

    /// Creates tenant `id`; returns it as the read model now shows it.
    pub async fn create(
        &self,
        id: TenantId,
        name: String,
        workers: Option<i64>,
        metadata: &EventMetadata,
    ) -> Result<TenantRow, AppError> {
        self.handle(id, TenantCommand::Create { name, workers }, metadata).await?;
        self.live(id).await
    }

    /// Creates a tenant whose id comes from an idempotency key ([`TenantId::for_idempotency_key`]): the same
    /// create sent again (the tenant exists, created with this `name`, and these `workers` if given) is
    /// answered as done once the read models show the tenant (as a command that changes nothing is), with the
    /// tenant as it is now; another request with the same key is refused.
    pub async fn create_once(
        &self,
        id: TenantId,
        name: String,
        workers: Option<i64>,
        metadata: &EventMetadata,
    ) -> Result<TenantRow, AppError> {
        let outcome = match self.create(id, name.clone(), workers, metadata).await {
            // Two at once: the one appended second finds the first one's creation when it tries again.
            Err(AppError::Conflict { .. }) => self.create(id, name.clone(), workers, metadata).await,
            outcome => outcome,
        };
        match outcome {
            Err(AppError::Rejected(TenantError::AlreadyExists)) if self.created_as(id, &name, workers).await? => {
                let Folded { position, .. } = self.load(id).await?;
                self.settled(id, position, false).await?;
                self.live(id).await
            }
            Err(AppError::Rejected(TenantError::AlreadyExists | TenantError::IdReserved)) => {
                Err(AppError::IdempotencyKeyReused)
            }
            created => created,
        }
    }

    /// Whether the tenant's stream starts with its creation with this `name`, and these `workers` if given.
    async fn created_as(&self, id: TenantId, name: &str, workers: Option<i64>) -> Result<bool, AppError> {
        let first = self.store.read_stream(id.as_uuid(), 0, 1).await?;
        let Some(event) = first.first() else { return Ok(false) };
        Ok(match event.decode::<TenantEvent>()? {
            TenantEvent::Created { name: created, workers: created_workers } => {
                created.as_str() == name && workers.is_none_or(|w| w == i64::from(created_workers.get()))
            }
            _ => false,
        })
    }

    /// Sets the tenant's worker pool size; returns it as the read model now shows it.
    pub async fn set_concurrency(
        &self,
        id: TenantId,
        workers: i64,
        metadata: &EventMetadata,
    ) -> Result<TenantRow, AppError> {
        self.handle(id, TenantCommand::SetConcurrency { workers }, metadata).await?;
        self.live(id).await
    }

    /// Sets the tenant's limits (all three; `None` is unlimited); returns it as the read model now shows it.
    pub async fn set_limits(
        &self,
        id: TenantId,
        (publish_rate, publish_burst, max_queue_depth): (Option<i64>, Option<i64>, Option<i64>),
        metadata: &EventMetadata,
    ) -> Result<TenantRow, AppError> {
        self.handle(id, TenantCommand::SetLimits { publish_rate, publish_burst, max_queue_depth }, metadata).await?;
        self.live(id).await
    }

    /// Deletes the tenant: returns once its consumers have stopped and its partition is retired.
    pub async fn delete(&self, id: TenantId, metadata: &EventMetadata) -> Result<(), AppError> {
        self.handle(id, TenantCommand::Delete, metadata).await
    }

    /// The tenant as the read model shows it, unless it does not exist or is deleted; with the limits that
    /// apply to it ([`Tenants::with_limits`]).
    pub async fn live(&self, id: TenantId) -> Result<TenantRow, AppError> {
        let row = self.read_model.get_active(id).await?.ok_or(AppError::NoSuchTenant(id))?;
        Ok(self.with_limits(row))
    }

    /// Up to `limit` live tenants created after the event at `after_position`, oldest first.
    pub async fn list(&self, after_position: i64, limit: u64) -> Result<Vec<TenantRow>, AppError> {
        let rows = self.read_model.list_active(after_position, limit).await?;
        Ok(rows.into_iter().map(|row| self.with_limits(row)).collect())
    }

    /// The row with the configured default limits in place of its own while it has none (`limits_set` tells
    /// which they are).
    fn with_limits(&self, row: TenantRow) -> TenantRow {
        let limits = row.effective_limits(self.default_limits);
        TenantRow {
            publish_rate: limit_column(limits.publish_rate),
            publish_burst: limit_column(limits.publish_burst),
            max_queue_depth: limit_column(limits.max_queue_depth),
            ..row
        }
    }

    /// The live tenant with what runs for it on this instance and its queue depths.
    pub async fn status(&self, id: TenantId) -> Result<(TenantRow, TenantStatus), AppError> {
        let tenant = self.live(id).await?;
        let consumer = self.registry.get(id).map(|running| ConsumerStatus {
            state: running.state(),
            running_workers: running.running(),
            busy_workers: running.busy(),
            consumer_tag: running.consumer_tag(),
        });
        let failure = if consumer.is_none() { self.registry.failure(id) } else { None };
        let mut inspector = Inspector::new(&self.broker);
        let queues = inspector.tenant(id).await;
        inspector.close().await;
        Ok((tenant, TenantStatus { consumer, failure, queues }))
    }

    /// Handles `command` for tenant `id`. Returns once every read model reflects the outcome (the tenants row,
    /// and the partition its messages go to); a delete waits also for the tenant's retirement (its consumers
    /// stopped, its partition dropped or detached), all within one `projectors.command_wait`.
    #[tracing::instrument(name = "command", skip_all, fields(tenant = %id, command = command.name(), request_id = %metadata.request_id))]
    async fn handle(&self, id: TenantId, command: TenantCommand, metadata: &EventMetadata) -> Result<(), AppError> {
        let deleting = command == TenantCommand::Delete;
        let Folded { state, version, position: last_position, .. } = self.load(id).await?;
        let events = crate::domain::tenant::decide(&state, command, &self.policy)?;
        // A command that changes nothing answers from the read model too, which must have caught up with what
        // the log says (an earlier command, perhaps the same one answered `recorded`, may not be in it yet).
        let position = if events.is_empty() {
            last_position
        } else {
            let encoded = events.iter().map(NewEvent::encode).collect::<Result<Vec<_>, _>>()?;
            let appended = self.store.append(id.as_uuid(), version, &encoded, metadata).await?;
            if deleting {
                self.forget(id);
            }
            appended.last_position
        };
        self.settled(id, position, deleting).await
    }

    /// Waits, within one `projectors.command_wait`, until every read model reflects the log up to `position`
    /// (and, `deleting`, the tenant's retirement); else the outcome is recorded, not yet shown.
    async fn settled(&self, id: TenantId, position: i64, deleting: bool) -> Result<(), AppError> {
        // The log reaches it: the projectors step now, not at their next poll if this instance missed the
        // NOTIFY of it (appended by another instance while its listener's connection was silent).
        self.store.observe_head(position);
        let done = async {
            // False if a projector stopped (shutting down).
            self.projections.wait_for(position).await && (!deleting || self.await_retirement(id).await)
        };
        match tokio::time::timeout(self.wait, done).await {
            Ok(true) => Ok(()),
            _ => Err(AppError::ProjectionLagging { tenant: id, position }),
        }
    }

    /// Waits until the tenant's partition is no longer attached to `messages`; false if it cannot be asked.
    async fn await_retirement(&self, id: TenantId) -> bool {
        let mut poll = RETIREMENT_POLL;
        loop {
            match partitions::is_attached(self.store.db(), id).await {
                Ok(false) => return true,
                Ok(true) => {
                    tokio::time::sleep(poll).await;
                    poll = (poll * 2).min(RETIREMENT_POLL_MAX);
                }
                Err(error) => {
                    tracing::warn!(%error, tenant = %id, "cannot tell whether the tenant was retired");
                    return false;
                }
            }
        }
    }

    /// Folds the tenant's stream into its current state and version, with the position of its last event:
    /// the events after this instance's last fold of it, if the log still has that fold's last event as it
    /// was (a log restored to an earlier point, or changed by hand, is folded again from its start).
    async fn load(&self, id: TenantId) -> Result<Folded, AppError> {
        let known = || self.folded.lock().unwrap_or_else(PoisonError::into_inner);
        let mut folded = known().get(id).cloned().unwrap_or_default();
        // The fold's last event is read again, to be compared.
        let mut check_tip = folded.version > 0;
        let mut after = if check_tip { folded.version - 1 } else { 0 };
        loop {
            let recorded = self.store.read_stream(id.as_uuid(), after, LOAD_CHUNK).await?;
            let mut events = recorded.iter().peekable();
            if std::mem::take(&mut check_tip) {
                let tip = events
                    .next_if(|e| (e.version, e.position, &e.hash) == (folded.version, folded.position, &folded.hash));
                if tip.is_none() {
                    tracing::warn!(tenant = %id, version = folded.version, "the log no longer has the tenant's events as this instance folded them; folding its stream again");
                    (folded, after) = (Folded::default(), 0);
                    continue;
                }
            }
            for event in events {
                folded.state = evolve(folded.state, &event.decode::<TenantEvent>()?);
                (folded.version, folded.position, folded.hash) = (event.version, event.position, event.hash.clone());
            }
            if (recorded.len() as u64) < LOAD_CHUNK {
                break;
            }
            after = folded.version;
        }
        // Only live tenants the log has are kept (a command for an id never used, or for a deleted tenant, must
        // not grow the map), and a load that raced with another of the same tenant keeps the further fold.
        if matches!(folded.state, Tenant::Deleted(_)) {
            self.forget(id);
        } else if folded.version > 0 {
            known().keep(id, &folded);
        }
        Ok(folded)
    }

    /// Drops the tenant's fold: it was deleted, and its id is never used again.
    fn forget(&self, id: TenantId) {
        self.folded.lock().unwrap_or_else(PoisonError::into_inner).forget(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(version: i32) -> Folded {
        Folded { version, ..Folded::default() }
    }

    #[test]
    fn folds_are_kept_up_to_a_bound_and_a_further_fold_wins() {
        let mut folds = Folds::default();
        let ids: Vec<TenantId> = (0..=Folds::KEPT).map(|_| TenantId::generate()).collect();
        for &id in &ids[..Folds::KEPT] {
            folds.keep(id, &fold(1));
        }
        // The first tenant is in use again; the second was not kept since (deleted through another instance).
        folds.keep(ids[0], &fold(2));
        let last = ids[Folds::KEPT];
        folds.keep(last, &fold(1));
        assert_eq!(folds.folds.len(), Folds::KEPT, "a new tenant past the bound takes another's place");
        assert_eq!(folds.get(ids[1]).map(|f| f.version), None, "the fold kept least lately goes");
        assert_eq!(folds.get(ids[0]).map(|f| f.version), Some(2), "a fold kept lately stays");
        assert_eq!(folds.get(last).map(|f| f.version), Some(1));
        folds.keep(last, &fold(3));
        folds.keep(last, &fold(2));
        assert_eq!(folds.get(last).map(|f| f.version), Some(3), "an older fold never replaces a further one");
        assert_eq!(folds.folds.len(), Folds::KEPT);
        folds.forget(last);
        assert_eq!(folds.get(last).map(|f| f.version), None);
    }
}

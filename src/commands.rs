//! The command side: load a tenant's stream, `decide`, append, and wait until every projection has applied
//! the new events, so the caller reads its own write.

use std::time::Duration;

use crate::{
    domain::tenant::{Policy, Tenant, TenantCommand, TenantError, TenantEvent, TenantId, evolve},
    projectors::Projections,
    store::{
        StoreError,
        events::{EventMetadata, EventStore, NewEvent},
        partitions,
    },
};

/// How often a delete looks whether the tenant's retirement is done: first soon (it takes a consumer's last
/// batch), then less often, so that many deletes at once do not crowd the connection pool.
const RETIREMENT_POLL: Duration = Duration::from_millis(20);
const RETIREMENT_POLL_MAX: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Rejected(#[from] TenantError),
    /// Another command on the same tenant was appended first.
    #[error("the tenant was changed concurrently (expected version {expected}, found {actual}); retry")]
    Conflict { expected: i32, actual: i32 },
    /// The event is in the log, but the read model has not caught up within the wait.
    #[error("the command was recorded at position {position}, but the read model has not caught up yet")]
    ProjectionLagging { position: i64 },
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for CommandError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::VersionConflict { expected, actual } => Self::Conflict { expected, actual },
            other => Self::Store(other),
        }
    }
}

#[derive(Clone)]
pub struct TenantCommands {
    store: EventStore,
    policy: Policy,
    projections: Projections,
    wait: Duration,
}

impl TenantCommands {
    pub fn new(store: EventStore, policy: Policy, projections: Projections, wait: Duration) -> Self {
        Self { store, policy, projections, wait }
    }

    /// Handles `command` for tenant `id`. Returns once every read model reflects the outcome (the tenants row,
    /// and the partition its messages go to); a delete waits also for the tenant's retirement (its consumers
    /// stopped, its partition dropped or detached), all within one `projectors.command_wait`.
    #[tracing::instrument(name = "command", skip_all, fields(tenant = %id, command = command.name(), request_id = %metadata.request_id))]
    pub async fn handle(
        &self,
        id: TenantId,
        command: TenantCommand,
        metadata: &EventMetadata,
    ) -> Result<(), CommandError> {
        let deleting = command == TenantCommand::Delete;
        let (state, version) = self.load(id).await?;
        let events = crate::domain::tenant::decide(&state, command, &self.policy)?;
        if events.is_empty() {
            return Ok(());
        }
        let encoded = events.iter().map(NewEvent::encode).collect::<Result<Vec<_>, _>>()?;
        let appended = self.store.append(id.as_uuid(), version, &encoded, metadata).await?;
        let position = appended.last_position;
        let done = async {
            // False if a projector stopped (shutting down).
            self.projections.wait_for(position).await && (!deleting || self.await_retirement(id).await)
        };
        match tokio::time::timeout(self.wait, done).await {
            Ok(true) => Ok(()),
            _ => Err(CommandError::ProjectionLagging { position }),
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

    /// Folds the tenant's stream into its current state and version.
    async fn load(&self, id: TenantId) -> Result<(Tenant, i32), CommandError> {
        let recorded = self.store.read_stream(id.as_uuid(), 0, u64::MAX).await?;
        let mut state = Tenant::Absent;
        let mut version = 0;
        for event in &recorded {
            state = evolve(state, &event.decode::<TenantEvent>()?);
            version = event.version;
        }
        Ok((state, version))
    }
}

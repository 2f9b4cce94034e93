//! The use cases the API offers, one module each: tenant commands and the tenants read model
//! ([`tenants`]), publishing and reading messages ([`messages`]), dead letters ([`dead_letters`]), a tenant's
//! history ([`history`]), the auditor's questions to the log ([`audit`]), and readiness. Handlers call these and nothing below them; authorization stays in
//! the API, which knows who is asking.

pub mod audit;
pub mod dead_letters;
pub mod history;
pub mod messages;
pub mod quotas;
pub mod read_slots;
pub mod tenants;

use std::time::Duration;

use sea_orm::DatabaseConnection;

use crate::{
    broker::{Broker, BrokerError, dead_letters::DeadLetterBounds},
    config::Config,
    domain::tenant::{TenantError, TenantId},
    projectors::Projections,
    runtime::Runtime,
    store::{
        StoreError,
        events::EventStore,
        tenants::{TenantReadModel, TenantRow},
    },
};

pub use audit::Audit;
pub use dead_letters::DeadLetterQueues;
pub use history::History;
pub use messages::Messages;
pub use quotas::Quotas;
pub use tenants::Tenants;

/// How long readiness waits for the database to answer.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a use case could not be carried out; `api/problem.rs` maps each to its problem document.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The tenant does not exist, or has been deleted.
    #[error("no tenant {0}")]
    NoSuchTenant(TenantId),
    /// An `Idempotency-Key` sent again with another request than the create it was first sent with.
    #[error(
        "this Idempotency-Key was used for another create (another name or workers), or for a tenant since deleted"
    )]
    IdempotencyKeyReused,
    /// The tenant was deleted while a publish was under way: its queue must not come back.
    #[error("the tenant has been deleted")]
    TenantDeleted,
    #[error(transparent)]
    Rejected(#[from] TenantError),
    /// Another command on the same tenant was appended first.
    #[error("the tenant was changed concurrently (expected version {expected}, found {actual}); retry")]
    Conflict { expected: i32, actual: i32 },
    /// The command's outcome is in the log (its events, or for a command that changes nothing, the events it
    /// found), but the read models have not caught up to `position` within the wait.
    #[error(
        "the outcome of the command on tenant {tenant} is in the event log (up to position {position}), but the \
         read models have not caught up yet; it takes effect when they do, without being sent again"
    )]
    ProjectionLagging { tenant: TenantId, position: i64 },
    #[error("the broker did not confirm within {0:?}")]
    PublishTimeout(Duration),
    /// The broker returned the messages as unroutable even after the tenant's queues were declared.
    #[error("the message could not be routed to the tenant's queue")]
    Unroutable,
    /// The tenant is over its publish rate; tokens for the publish refill within `retry_after`.
    #[error("the tenant's publish rate is exhausted; retry after {retry_after:?}")]
    RateLimited { retry_after: Duration },
    /// The tenant's queue holds its `max_queue_depth` of ready messages or more.
    #[error("the tenant's queue holds {max} ready messages or more (its max_queue_depth)")]
    QueueFull { max: u32 },
    /// A batch that no bucket of the tenant's size could ever admit.
    #[error("a batch of {size} messages is more than the tenant's publish_burst of {burst}: split it")]
    BatchOverBurst { size: u32, burst: u32 },
    /// The page read, or one of the tenant's page-read slots, was waited for too long: its reads wait for the
    /// database.
    #[error(
        "the tenant's page reads are waiting for the database (a lock on its messages, or an overloaded \
         database); retry"
    )]
    PageReadsWaiting,
    /// The tenant's other dead-letter operations (here or on another instance: a long replay), or other
    /// tenants' filling this instance's places, for the whole wait.
    #[error("other operations on dead letters are under way; retry")]
    DeadLettersBusy,
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for AppError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::VersionConflict { expected, actual } => Self::Conflict { expected, actual },
            other => Self::Store(other),
        }
    }
}

/// The tenant, if it exists and is not deleted.
async fn require_live(tenants: &TenantReadModel, id: TenantId) -> Result<TenantRow, AppError> {
    tenants.get_active(id).await?.ok_or(AppError::NoSuchTenant(id))
}

/// Every use case, for the API.
#[derive(Clone)]
pub struct App {
    pub tenants: Tenants,
    pub messages: Messages,
    pub dead_letters: DeadLetterQueues,
    pub history: History,
    pub audit: Audit,
    pub readiness: Readiness,
}

impl App {
    pub fn new(
        config: &Config,
        db: &DatabaseConnection,
        store: EventStore,
        projections: Projections,
        runtime: &Runtime,
    ) -> Self {
        let broker = &runtime.broker;
        Self {
            tenants: Tenants::new(
                store.clone(),
                (config.tenant_policy(), config.default_limits()),
                projections.clone(),
                config.projectors.command_wait,
                runtime.registry.clone(),
                broker.clone(),
            ),
            messages: Messages::new(
                db.clone(),
                runtime.publisher.clone(),
                Quotas::new(db.clone(), broker, config.default_limits()),
                config.rabbitmq.publish_timeout,
                &config.read,
            ),
            dead_letters: DeadLetterQueues::new(
                db.clone(),
                config.database.max_connections,
                (broker.clone(), runtime.publisher.clone()),
                DeadLetterBounds {
                    max_page_bytes: config.read.max_page_bytes,
                    max_body_bytes: config.max_payload_bytes,
                    replay_time_budget: config.read.replay_time_budget,
                },
            ),
            audit: Audit::new(db.clone(), store.clone()),
            history: History::new(store),
            readiness: Readiness { db: db.clone(), brokers: [broker.clone(), runtime.publishing.clone()], projections },
        }
    }
}

/// Whether the service can serve: each dependency's state.
#[derive(Clone)]
pub struct Readiness {
    pub db: DatabaseConnection,
    /// The connection that manages queues and the publishing one.
    pub brokers: [Broker; 2],
    pub projections: Projections,
}

/// Each dependency's state; ready when all are true.
#[derive(Debug, Clone, Copy)]
pub struct ReadinessReport {
    pub database: bool,
    pub broker: bool,
    pub projectors: bool,
}

impl ReadinessReport {
    pub fn ready(&self) -> bool {
        self.database && self.broker && self.projectors
    }
}

impl Readiness {
    pub async fn check(&self) -> ReadinessReport {
        ReadinessReport {
            // A database that is down can make a ping wait for the pool's acquire timeout: answer sooner.
            database: tokio::time::timeout(PING_TIMEOUT, self.db.ping()).await.is_ok_and(|pinged| pinged.is_ok()),
            broker: self.brokers.iter().all(Broker::is_connected),
            projectors: self.projections.all_caught_up(),
        }
    }
}

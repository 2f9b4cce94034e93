//! The `tenants` read model: the entity, and the queries the API reads it with.

use std::{num::NonZeroU32, time::Duration};

use crate::domain::tenant::{Limits, TenantId};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};

use super::{StoreError, partitions};

pub mod entity {
    use sea_orm::entity::prelude::*;

    /// A tenant's lifecycle; the `status` column holds its string value.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
    #[sea_orm(rs_type = "String", db_type = "Text")]
    pub enum TenantStatus {
        #[sea_orm(string_value = "active")]
        Active,
        /// Its events stay in the log; the row stays, so its id is never reused.
        #[sea_orm(string_value = "deleted")]
        Deleted,
    }

    impl TenantStatus {
        pub const fn as_str(self) -> &'static str {
            match self {
                Self::Active => "active",
                Self::Deleted => "deleted",
            }
        }
    }

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "tenants")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub name: String,
        pub workers: i32,
        pub status: TenantStatus,
        pub version: i32,
        /// Position of its TenantCreated event: a stable, gap-free order for paging.
        pub created_position: i64,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        pub deleted_at: Option<DateTimeUtc>,
        /// False until the tenant's limits are first set (the configured defaults apply until then).
        pub limits_set: bool,
        pub publish_rate: Option<i32>,
        pub publish_burst: Option<i32>,
        pub max_queue_depth: Option<i32>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub use entity::{Entity as Tenants, Model as TenantRow};

impl TenantRow {
    /// The limits set on the tenant; `None` when none were ever set.
    pub fn limits(&self) -> Option<Limits> {
        let limit = |column: Option<i32>| column.and_then(|n| u32::try_from(n).ok()).and_then(NonZeroU32::new);
        self.limits_set.then(|| Limits {
            publish_rate: limit(self.publish_rate),
            publish_burst: limit(self.publish_burst),
            max_queue_depth: limit(self.max_queue_depth),
        })
    }

    /// The limits in force: the tenant's own, or `defaults` (the configured `limits.*`) while it has none.
    pub fn effective_limits(&self, defaults: Limits) -> Limits {
        self.limits().unwrap_or(defaults)
    }
}

/// A limit as its column holds it (the domain's maxima fit an `INTEGER`).
pub fn limit_column(limit: Option<NonZeroU32>) -> Option<i32> {
    limit.and_then(|n| i32::try_from(n.get()).ok())
}

#[derive(Clone)]
pub struct TenantReadModel {
    db: DatabaseConnection,
}

impl TenantReadModel {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// A live (not deleted) tenant.
    pub async fn get_active(&self, id: TenantId) -> Result<Option<TenantRow>, StoreError> {
        Ok(Tenants::find_by_id(id.as_uuid())
            .filter(entity::Column::Status.eq(entity::TenantStatus::Active))
            .one(&self.db)
            .await?)
    }

    /// Live tenants created after `after_position`, in creation order.
    pub async fn list_active(&self, after_position: i64, limit: u64) -> Result<Vec<TenantRow>, StoreError> {
        Ok(Tenants::find()
            .filter(entity::Column::Status.eq(entity::TenantStatus::Active))
            .filter(entity::Column::CreatedPosition.gt(after_position))
            .order_by_asc(entity::Column::CreatedPosition)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// The desired runtime: every live tenant with its pool size. The server cancels the read after `limit`
    /// (a lock on `tenants` held that long): a read its client gave up on would wait there for the lock,
    /// holding a server connection, a new one at each pass.
    pub async fn desired_runtime(&self, limit: Duration) -> Result<Vec<(TenantId, i32)>, StoreError> {
        let txn = self.db.begin().await?;
        txn.execute_unprepared(&format!("SET LOCAL statement_timeout = {}", limit.as_millis())).await?;
        let rows: Vec<(uuid::Uuid, i32)> = Tenants::find()
            .select_only()
            .column(entity::Column::Id)
            .column(entity::Column::Workers)
            .filter(entity::Column::Status.eq(entity::TenantStatus::Active))
            .into_tuple()
            .all(&txn)
            .await?;
        txn.commit().await?;
        Ok(rows.into_iter().map(|(id, workers)| (TenantId::from_uuid(id), workers)).collect())
    }

    /// Ids of tenants retired and deleted within `window` ([`partitions::retired_within`]). Their queues must
    /// not exist (those of a deleted tenant still awaiting retirement may hold messages to persist).
    pub async fn retired_ids(&self, window: Duration) -> Result<Vec<TenantId>, StoreError> {
        partitions::retired_within(&self.db, window).await
    }

    /// Every row, deleted ones included, ordered by id (for comparing states, e.g. after a replay).
    pub async fn all(&self) -> Result<Vec<TenantRow>, StoreError> {
        Ok(Tenants::find().order_by_asc(entity::Column::Id).all(&self.db).await?)
    }
}

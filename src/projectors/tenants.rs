//! The `tenants` read model.

use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter,
    sea_query::{Expr, OnConflict},
};

use crate::{
    domain::tenant::TenantEvent,
    store::{
        StoreError,
        events::RecordedEvent,
        tenants::{Tenants, entity, limit_column},
    },
};

use super::Projector;

#[derive(Debug, Clone, Copy, Default)]
pub struct TenantsProjector;

impl Projector for TenantsProjector {
    const NAME: &'static str = "tenants";

    async fn apply(&self, txn: &DatabaseTransaction, event: &RecordedEvent) -> Result<(), StoreError> {
        let id = event.stream_id;
        let at = event.recorded_at;
        match event.decode::<TenantEvent>()? {
            TenantEvent::Created { name, workers } => {
                Tenants::insert(entity::ActiveModel {
                    id: Set(id),
                    name: Set(name.into()),
                    workers: Set(i32::from(workers.get())),
                    status: Set(entity::TenantStatus::Active),
                    version: Set(event.version),
                    created_position: Set(event.position),
                    created_at: Set(at),
                    updated_at: Set(at),
                    deleted_at: Set(None),
                    limits_set: Set(false),
                    publish_rate: Set(None),
                    publish_burst: Set(None),
                    max_queue_depth: Set(None),
                })
                // Applied again (a checkpoint lost or reset by hand), a creation leaves the row alone: the events
                // after it set what they set again, and the model converges instead of the projector stopping.
                .on_conflict(OnConflict::column(entity::Column::Id).do_nothing().to_owned())
                .exec_without_returning(txn)
                .await?;
            }
            TenantEvent::ConcurrencySet { workers, .. } => {
                Tenants::update_many()
                    .col_expr(entity::Column::Workers, Expr::value(i32::from(workers.get())))
                    .col_expr(entity::Column::Version, Expr::value(event.version))
                    .col_expr(entity::Column::UpdatedAt, Expr::value(at))
                    .filter(entity::Column::Id.eq(id))
                    .exec(txn)
                    .await?;
            }
            TenantEvent::LimitsSet(limits) => {
                Tenants::update_many()
                    .col_expr(entity::Column::LimitsSet, Expr::value(true))
                    .col_expr(entity::Column::PublishRate, Expr::value(limit_column(limits.publish_rate)))
                    .col_expr(entity::Column::PublishBurst, Expr::value(limit_column(limits.publish_burst)))
                    .col_expr(entity::Column::MaxQueueDepth, Expr::value(limit_column(limits.max_queue_depth)))
                    .col_expr(entity::Column::Version, Expr::value(event.version))
                    .col_expr(entity::Column::UpdatedAt, Expr::value(at))
                    .filter(entity::Column::Id.eq(id))
                    .exec(txn)
                    .await?;
            }
            TenantEvent::Deleted {} => {
                Tenants::update_many()
                    .col_expr(entity::Column::Status, Expr::value(entity::TenantStatus::Deleted))
                    .col_expr(entity::Column::Version, Expr::value(event.version))
                    .col_expr(entity::Column::UpdatedAt, Expr::value(at))
                    .col_expr(entity::Column::DeletedAt, Expr::value(Some(at)))
                    .filter(entity::Column::Id.eq(id))
                    .exec(txn)
                    .await?;
            }
        }
        Ok(())
    }

    async fn reset(&self, txn: &DatabaseTransaction) -> Result<(), StoreError> {
        Tenants::delete_many().exec(txn).await?;
        Ok(())
    }
}

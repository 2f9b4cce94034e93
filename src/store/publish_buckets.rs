//! The shared token buckets behind a tenant's publish rate: one row per rate-limited tenant, leased from by
//! every instance (`lease_publish_tokens`, in the migration that made the table).

use std::num::NonZeroU32;

use sea_orm::{ConnectionTrait, FromQueryResult};

use crate::domain::tenant::TenantId;

use super::{StoreError, events::stmt};

/// What a lease got.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Leased {
    /// This many tokens (at least the ones wanted) are the instance's to spend.
    Granted(u32),
    /// Fewer than wanted were there: the bucket held `available`.
    Refused { available: f64 },
}

#[derive(Debug, FromQueryResult)]
struct LeaseRow {
    granted: i32,
    available: f64,
}

/// Takes `wanted` tokens, and up to `most` if the bucket has them, from the tenant's bucket of `burst`
/// tokens refilling at `rate` a second; nothing unless all `wanted` are there.
pub async fn lease<C: ConnectionTrait>(
    db: &C,
    tenant: TenantId,
    (rate, burst): (NonZeroU32, NonZeroU32),
    wanted: u32,
    most: u32,
) -> Result<Leased, StoreError> {
    let count = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let statement = stmt(
        "SELECT granted, available FROM lease_publish_tokens($1, $2, $3, $4, $5)",
        [
            tenant.as_uuid().into(),
            f64::from(rate.get()).into(),
            f64::from(burst.get()).into(),
            count(wanted).into(),
            count(most.max(wanted)).into(),
        ],
    );
    let row = LeaseRow::find_by_statement(statement).one(db).await?;
    Ok(match row {
        Some(LeaseRow { granted, .. }) if granted > 0 => Leased::Granted(u32::try_from(granted).unwrap_or(0)),
        Some(LeaseRow { available, .. }) => Leased::Refused { available },
        None => Leased::Refused { available: 0.0 },
    })
}

/// Forgets a retired tenant's bucket (its id can never publish again).
pub async fn forget<C: ConnectionTrait>(db: &C, tenant: TenantId) -> Result<(), StoreError> {
    db.execute_raw(stmt("DELETE FROM publish_buckets WHERE tenant_id = $1", [tenant.as_uuid().into()])).await?;
    Ok(())
}

/// Forgets the buckets of every deleted tenant, which no publish takes tokens from: a publish that raced the
/// delete may have made one again after its retirement forgot it.
pub async fn forget_deleted<C: ConnectionTrait>(db: &C) -> Result<(), StoreError> {
    db.execute_unprepared(
        "DELETE FROM publish_buckets b USING tenants t WHERE t.id = b.tenant_id AND t.status = 'deleted'",
    )
    .await?;
    Ok(())
}

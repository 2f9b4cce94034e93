//! `tenantmq replay --check`: rebuilds the read models from the log inside a transaction that is rolled back,
//! and lists where the live ones differ. A read model changed behind the projectors' back (by hand, by a bug)
//! shows here, while the live data stays as it is.

use std::{collections::BTreeMap, fmt};

use sea_orm::{DatabaseConnection, EntityTrait, QueryOrder, TransactionTrait};
use uuid::Uuid;

use crate::{
    domain::tenant::TenantId,
    store::{
        StoreError, checkpoints, partitions,
        tenants::{TenantRow, Tenants, entity},
    },
};

use super::{PartitionsProjector, Projector, TenantsProjector, rebuild};

/// One way a live read model is not what the log makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// A column of a tenant's row holds another value than the log gives it.
    TenantColumn { id: Uuid, column: &'static str, live: String, rebuilt: String },
    /// The log has the tenant; the live read model has no row for it.
    MissingTenant(Uuid),
    /// The live read model has a row for a tenant the log does not have.
    UnknownTenant(Uuid),
    /// A live tenant has no partition of `messages`.
    MissingPartition(TenantId),
    /// A partition of `messages` belongs to no tenant of the log.
    UnknownPartition(String),
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TenantColumn { id, column, live, rebuilt } => {
                write!(f, "tenants {id}: {column} is {live}, the log gives {rebuilt}")
            }
            Self::MissingTenant(id) => write!(f, "tenants {id}: no row, the log has the tenant"),
            Self::UnknownTenant(id) => write!(f, "tenants {id}: a row for a tenant the log does not have"),
            Self::MissingPartition(tenant) => {
                write!(f, "partition {}: missing for live tenant {tenant}", tenant.partition_name())
            }
            Self::UnknownPartition(name) => write!(f, "partition {name}: belongs to no tenant in the log"),
        }
    }
}

/// Compares the live read models with ones rebuilt from the log, without changing the live ones: the rebuild
/// happens in a transaction that is rolled back. Each read model is rebuilt up to its own checkpoint, which the
/// check holds locked meanwhile (running projectors wait, as for a replay), so a projector that merely lags is
/// no difference.
pub async fn check_all(db: &DatabaseConnection, batch_size: u32) -> Result<Vec<Difference>, StoreError> {
    let txn = db.begin().await?;
    let tenants_at = checkpoints::lock(&txn, TenantsProjector::NAME).await?;
    let partitions_at = checkpoints::lock(&txn, PartitionsProjector::NAME).await?;
    let live_rows = Tenants::find().order_by_asc(entity::Column::Id).all(&txn).await?;
    let live_partitions = partitions::attached_names(&txn).await?;
    TenantsProjector.reset(&txn).await?;
    rebuild(&txn, &TenantsProjector, tenants_at, batch_size).await?;
    let rebuilt_rows = Tenants::find().order_by_asc(entity::Column::Id).all(&txn).await?;
    txn.rollback().await?;

    let mut differences = compare_tenants(&live_rows, &rebuilt_rows);
    differences.extend(compare_partitions(&rebuilt_rows, partitions_at, &live_partitions));
    Ok(differences)
}

fn compare_tenants(live: &[TenantRow], rebuilt: &[TenantRow]) -> Vec<Difference> {
    let live: BTreeMap<Uuid, &TenantRow> = live.iter().map(|row| (row.id, row)).collect();
    let rebuilt: BTreeMap<Uuid, &TenantRow> = rebuilt.iter().map(|row| (row.id, row)).collect();
    let mut differences = Vec::new();
    for (id, expected) in &rebuilt {
        let Some(actual) = live.get(id) else {
            differences.push(Difference::MissingTenant(*id));
            continue;
        };
        for ((column, live), (_, rebuilt)) in columns(actual).into_iter().zip(columns(expected)) {
            if live != rebuilt {
                differences.push(Difference::TenantColumn { id: *id, column, live, rebuilt });
            }
        }
    }
    differences.extend(live.keys().filter(|id| !rebuilt.contains_key(id)).map(|id| Difference::UnknownTenant(*id)));
    differences
}

/// Every column of a row but its id, as text to compare and show.
fn columns(row: &TenantRow) -> [(&'static str, String); 12] {
    let limit = |n: Option<i32>| n.map_or_else(|| "null".to_owned(), |n| n.to_string());
    [
        ("name", format!("{:?}", row.name)),
        ("workers", row.workers.to_string()),
        ("status", row.status.as_str().to_owned()),
        ("version", row.version.to_string()),
        ("created_position", row.created_position.to_string()),
        ("created_at", row.created_at.to_rfc3339()),
        ("updated_at", row.updated_at.to_rfc3339()),
        ("deleted_at", row.deleted_at.map_or_else(|| "null".to_owned(), |at| at.to_rfc3339())),
        ("limits_set", row.limits_set.to_string()),
        ("publish_rate", limit(row.publish_rate)),
        ("publish_burst", limit(row.publish_burst)),
        ("max_queue_depth", limit(row.max_queue_depth)),
    ]
}

/// The log implies a partition for every live tenant the partitions projector has reached; a deleted tenant's
/// may still be attached until its retirement drops or detaches it.
fn compare_partitions(rebuilt: &[TenantRow], partitions_at: i64, attached: &[String]) -> Vec<Difference> {
    let known: BTreeMap<String, &TenantRow> =
        rebuilt.iter().map(|row| (TenantId::from_uuid(row.id).partition_name(), row)).collect();
    let missing = rebuilt
        .iter()
        .filter(|row| row.status == entity::TenantStatus::Active && row.created_position <= partitions_at)
        .map(|row| TenantId::from_uuid(row.id))
        .filter(|tenant| !attached.contains(&tenant.partition_name()))
        .map(Difference::MissingPartition);
    let unknown = attached
        .iter()
        .filter(|name| !known.contains_key(*name))
        .map(|name| Difference::UnknownPartition(name.clone()));
    missing.chain(unknown).collect()
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;

    fn row(id: Uuid, status: entity::TenantStatus, created_position: i64) -> TenantRow {
        let at = DateTime::<Utc>::UNIX_EPOCH;
        TenantRow {
            id,
            name: "acme".into(),
            workers: 3,
            status,
            version: 1,
            created_position,
            created_at: at,
            updated_at: at,
            deleted_at: None,
            limits_set: false,
            publish_rate: None,
            publish_burst: None,
            max_queue_depth: None,
        }
    }

    #[test]
    fn a_changed_column_a_missing_row_and_an_unknown_row_are_each_named() {
        let (kept, lost, stray) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let rebuilt = [row(kept, entity::TenantStatus::Active, 1), row(lost, entity::TenantStatus::Active, 2)];
        let live = [TenantRow { workers: 9, ..rebuilt[0].clone() }, row(stray, entity::TenantStatus::Active, 3)];
        assert_eq!(
            compare_tenants(&live, &rebuilt),
            [
                Difference::TenantColumn { id: kept, column: "workers", live: "9".into(), rebuilt: "3".into() },
                Difference::MissingTenant(lost),
                Difference::UnknownTenant(stray),
            ]
        );
        assert!(compare_tenants(&rebuilt, &rebuilt).is_empty());
    }

    #[test]
    fn partitions_awaiting_retirement_or_not_yet_projected_are_no_difference() {
        let (live, deleted, fresh, missing) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let rebuilt = [
            row(live, entity::TenantStatus::Active, 1),
            row(deleted, entity::TenantStatus::Deleted, 2),
            row(missing, entity::TenantStatus::Active, 3),
            row(fresh, entity::TenantStatus::Active, 9),
        ];
        let name = |id| TenantId::from_uuid(id).partition_name();
        let attached = [name(live), name(deleted), "messages_stray".to_owned()];
        assert_eq!(
            compare_partitions(&rebuilt, 5, &attached),
            [
                Difference::MissingPartition(TenantId::from_uuid(missing)),
                Difference::UnknownPartition("messages_stray".into())
            ]
        );
    }
}

//! `projector_checkpoints`: how far each projector has applied the log.

use sea_orm::{ConnectionTrait, DatabaseTransaction};

use super::{
    StoreError,
    events::{scalar, stmt},
};

/// Locks the projector's checkpoint row for the rest of `txn` and returns its position. Creating the row on
/// first use and locking it make concurrent runners of one projector (on several instances) take turns, so
/// no event is applied twice.
pub async fn lock(txn: &DatabaseTransaction, projector: &str) -> Result<i64, StoreError> {
    txn.execute_raw(stmt(
        "INSERT INTO projector_checkpoints (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
        [projector.into()],
    ))
    .await?;
    scalar(
        txn,
        stmt("SELECT position AS value FROM projector_checkpoints WHERE name = $1 FOR UPDATE", [projector.into()]),
    )
    .await
}

/// The projector's checkpoint if it has reached the head of the log, read without a lock. A runner asks this
/// before each step, so that a projector with nothing to apply (every poll of an idle service) takes no row
/// lock, no transaction id and writes nothing, and keeps polling quietly on a database that only reads.
pub async fn at_head<C: ConnectionTrait>(conn: &C, projector: &str) -> Result<Option<i64>, StoreError> {
    scalar(
        conn,
        stmt(
            "SELECT (SELECT position FROM projector_checkpoints WHERE name = $1 \
                       AND position >= (SELECT coalesce(max(position), 0) FROM events)) AS value",
            [projector.into()],
        ),
    )
    .await
}

pub async fn save(txn: &DatabaseTransaction, projector: &str, position: i64) -> Result<(), StoreError> {
    txn.execute_raw(stmt(
        "UPDATE projector_checkpoints SET position = $2, updated_at = now() WHERE name = $1",
        [projector.into(), position.into()],
    ))
    .await?;
    Ok(())
}

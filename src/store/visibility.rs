//! How long ago the read side's visibility horizon stopped moving.
//!
//! A message page ends below [`READ_HORIZON`]: the oldest transaction still running in the service's own
//! database. One write transaction left open there holds every tenant's newer messages back until it ends.
//! This measures that delay without any privilege: it samples the next transaction id (`pg_snapshot_xmax`)
//! over time, and the oldest running transaction began before the first sample whose next id had passed it.
//! The lag is known to within one sampling interval.

use std::{collections::VecDeque, time::Duration};

use sea_orm::{DatabaseConnection, FromQueryResult};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{StoreError, events::stmt};

/// Most samples kept while the horizon stands still (one per interval); past it the middle ones go, and the
/// oldest, which dates the horizon, stays.
const MAX_SAMPLES: usize = 10_000;

/// Samples of the next transaction id, oldest first.
#[derive(Debug, Default)]
pub struct HorizonHistory {
    samples: VecDeque<(Instant, u64)>,
}

impl HorizonHistory {
    /// Records a sample (`xmin`: the oldest running transaction id, `xmax`: the next id to be assigned) and
    /// returns how long the oldest running transaction has been holding the horizon back.
    pub fn observe(&mut self, now: Instant, xmin: u64, xmax: u64) -> Duration {
        if self.samples.back().is_none_or(|&(_, last)| last != xmax) {
            self.samples.push_back((now, xmax));
        }
        // Samples taken before the oldest running transaction began say nothing about it any more.
        while self.samples.len() > 1 && self.samples.front().is_some_and(|&(_, next)| next <= xmin) {
            self.samples.pop_front();
        }
        if self.samples.len() > MAX_SAMPLES {
            self.samples.remove(1);
        }
        match self.samples.front() {
            // The oldest running transaction had begun by the first sample whose next id had passed it.
            Some(&(since, next)) if xmin < xmax && next > xmin => now.duration_since(since),
            _ => Duration::ZERO,
        }
    }
}

#[derive(Debug, FromQueryResult)]
struct Horizon {
    xmin: String,
    xmax: String,
}

/// The transaction id below which every transaction of this database has ended, as a SQL expression of
/// type `xid8`: rows written below it are all committed (or rolled back) and visible to the statement.
///
/// The snapshot's own `xmin` would do, but transaction ids are shared by every database of the PostgreSQL
/// cluster, so a transaction left open in another database (a psql session, a batch job, another service)
/// would hold back what this one shows. A running transaction belongs to exactly one database, and
/// `pg_stat_activity` names the database of every backend's transaction id to any user, so the ids known to
/// be another database's are skipped. One that cannot be placed (a backend that ended meanwhile, a prepared
/// transaction) still counts: the horizon errs towards holding rows back, never towards a gap.
pub(crate) const READ_HORIZON: &str = "(SELECT coalesce(min(running), pg_snapshot_xmax(pg_current_snapshot())) \
       FROM pg_snapshot_xip(pg_current_snapshot()) AS running \
      WHERE running::xid NOT IN (SELECT backend_xid FROM pg_stat_activity \
                                  WHERE backend_xid IS NOT NULL AND datid <> \
                                        (SELECT oid FROM pg_database WHERE datname = current_database())))";

/// The read horizon and the next transaction id to be assigned: `(horizon, xmax)`.
async fn horizon(db: &DatabaseConnection) -> Result<(u64, u64), StoreError> {
    let sql = format!("SELECT {READ_HORIZON}::text AS xmin, pg_snapshot_xmax(pg_current_snapshot())::text AS xmax");
    let statement = stmt(&sql, []);
    let row = Horizon::find_by_statement(statement).one(db).await?;
    let parse = |text: &str| text.parse::<u64>().map_err(|e| StoreError::Sqlx(sea_orm::sqlx::Error::Decode(e.into())));
    match row {
        Some(row) => Ok((parse(&row.xmin)?, parse(&row.xmax)?)),
        None => Ok((0, 0)),
    }
}

/// Samples the horizon every `interval` until `cancel`, publishing the lag on `lag`: `None` while the horizon
/// cannot be read, so that a lag measured before is not reported as if it still held.
pub async fn watch_horizon(
    db: DatabaseConnection,
    interval: Duration,
    lag: watch::Sender<Option<Duration>>,
    cancel: CancellationToken,
) {
    let mut history = HorizonHistory::default();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match horizon(&db).await {
            Ok((xmin, xmax)) => {
                lag.send_replace(Some(history.observe(Instant::now(), xmin, xmax)));
            }
            Err(error) => {
                tracing::debug!(%error, "cannot read the visibility horizon");
                lag.send_replace(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_idle_cluster_has_no_lag() {
        let mut history = HorizonHistory::default();
        for _ in 0..10 {
            assert_eq!(history.observe(Instant::now(), 100, 100), Duration::ZERO);
            tokio::time::advance(Duration::from_secs(5)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_transaction_left_open_is_dated_by_the_first_sample_after_it_began() {
        let mut history = HorizonHistory::default();
        let start = Instant::now();
        assert_eq!(history.observe(start, 100, 100), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(5)).await;
        // Transaction 100 began and stays open while others come and go.
        let first_seen = Instant::now();
        assert_eq!(history.observe(first_seen, 100, 105), Duration::ZERO);
        for step in 1..=6_u64 {
            tokio::time::advance(Duration::from_secs(5)).await;
            assert_eq!(history.observe(Instant::now(), 100, 105 + step * 10), Duration::from_secs(5 * step));
        }
        // It ends: the horizon moves to the next oldest, which began after the last sample.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(history.observe(Instant::now(), 200, 201), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn busy_short_transactions_show_at_most_one_interval() {
        let mut history = HorizonHistory::default();
        let mut next = 1000;
        for _ in 0..20 {
            let lag = history.observe(Instant::now(), next - 3, next);
            assert!(lag <= Duration::from_secs(5), "{lag:?}");
            next += 50;
            tokio::time::advance(Duration::from_secs(5)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_history_stays_bounded_and_keeps_the_oldest_sample() {
        let mut history = HorizonHistory::default();
        let start = Instant::now();
        history.observe(start, 10, 11);
        for step in 1..=(MAX_SAMPLES as u64 + 100) {
            tokio::time::advance(Duration::from_secs(1)).await;
            history.observe(Instant::now(), 10, 11 + step);
        }
        assert!(history.samples.len() <= MAX_SAMPLES);
        assert_eq!(history.observe(Instant::now(), 10, 1_000_000), Instant::now().duration_since(start));
    }
}

//! A tenant's limits on publishing, checked before a publish reaches the broker: its backlog cap (the depth
//! of its queue) and its rate (a token bucket in PostgreSQL that every instance leases from).
//!
//! Leases come in small chunks so that a busy tenant costs one round trip per chunk, not per message: an
//! instance takes what a publish needs plus up to [`CHUNK_SHARE`] of a second of the rate, and keeps at most
//! one chunk for [`LEASE_LIFETIME`]; tokens it does not spend by then, or beyond the chunk, are dropped, never
//! returned. Every token spent was taken from the shared bucket first, so over any window the tenant gets at
//! most what its rate and burst allow there, plus the tokens the instances held when the window began: at
//! most one chunk each (5 % of a second of the rate). Dropped tokens can only make it get less.
//!
//! A refused lease is remembered with what the bucket held: until the bucket can have refilled enough for a
//! publish, that publish is refused without a round trip, so a tenant hammering past its rate costs no
//! database writes (each lease locks and updates the bucket's row).

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::Mutex,
    time::{Duration, Instant},
};

use sea_orm::DatabaseConnection;

use crate::{
    broker::{Broker, Inspector},
    domain::tenant::{Limits, TenantId},
    store::publish_buckets::{self, Leased},
};

use super::{AppError, tenants::TenantRow};

/// A lease takes up to this share of a second of the rate beyond what the publish needs.
const CHUNK_SHARE: u32 = 20;
/// How long an instance may spend the tokens it leased.
const LEASE_LIFETIME: Duration = Duration::from_secs(1);
/// How long a queue depth read from the broker stands for the backlog cap.
const DEPTH_MAX_AGE: Duration = Duration::from_millis(100);
/// The longest a publish waits to read its queue's depth; then the depth is unknown.
const DEPTH_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// What an instance knows of one tenant's bucket between leases, for the rate and burst it was leased at.
#[derive(Debug, Clone, Copy)]
struct Local {
    bucket: (NonZeroU32, NonZeroU32),
    /// Tokens leased and not spent yet, at most one chunk; spendable until `until`.
    held: u32,
    until: Instant,
    /// The last lease was refused: the bucket then held `.0` tokens, read by a lease that started at `.1`.
    /// Until the bucket can have refilled enough for a publish, that publish is refused here without a round
    /// trip: other instances only take tokens, so the bucket holds at most this much plus the refill since.
    short: Option<(f64, Instant)>,
}

impl Local {
    fn new(bucket: (NonZeroU32, NonZeroU32), now: Instant) -> Self {
        Self { bucket, held: 0, until: now, short: None }
    }

    /// The tenant's entry for this bucket: a new one if there was none, or if the limits changed (what was
    /// leased or refused under the old ones says nothing now).
    fn of(
        leases: &mut HashMap<TenantId, Local>,
        tenant: TenantId,
        bucket: (NonZeroU32, NonZeroU32),
        now: Instant,
    ) -> &mut Self {
        let local = leases.entry(tenant).or_insert_with(|| Self::new(bucket, now));
        if local.bucket != bucket {
            *local = Self::new(bucket, now);
        }
        local
    }

    /// Most tokens the shared bucket can hold now, if a lease was refused since the last grant.
    fn at_most(&self, now: Instant) -> Option<f64> {
        let (rate, burst) = self.bucket;
        self.short.map(|(available, at)| {
            let refilled = available.max(0.0) + f64::from(rate.get()) * now.duration_since(at).as_secs_f64();
            refilled.min(f64::from(burst.get()))
        })
    }

    /// Adds tokens to those held, keeping at most one chunk (the error bound counts one chunk per instance;
    /// dropping the rest only lowers what the tenant gets) and the earliest deadline.
    fn keep(&mut self, tokens: u32, until: Instant) {
        if tokens == 0 {
            return;
        }
        self.until = if self.held == 0 { until } else { self.until.min(until) };
        self.held = self.held.saturating_add(tokens).min(chunk(self.bucket.0));
    }

    /// Still worth keeping: tokens to spend, or a refusal whose bucket may not have refilled yet.
    fn live(&self, now: Instant) -> bool {
        (self.held > 0 && self.until > now)
            || self.at_most(now).is_some_and(|most| most < f64::from(self.bucket.1.get()))
    }
}

/// The most tokens an instance keeps from its leases for a tenant: a 20th of a second of the rate, at least 1.
fn chunk(rate: NonZeroU32) -> u32 {
    (rate.get() / CHUNK_SHARE).max(1)
}

pub struct Quotas {
    db: DatabaseConnection,
    /// `limits.*`: the limits of tenants without their own.
    defaults: Limits,
    leases: Mutex<HashMap<TenantId, Local>>,
    depths: Mutex<HashMap<TenantId, (Instant, Option<u32>)>>,
    inspector: tokio::sync::Mutex<Inspector>,
}

impl Quotas {
    pub fn new(db: DatabaseConnection, broker: &Broker, defaults: Limits) -> Self {
        Self {
            db,
            defaults,
            leases: Mutex::default(),
            depths: Mutex::default(),
            inspector: tokio::sync::Mutex::new(Inspector::new(broker)),
        }
    }

    /// Admits `count` messages of the tenant, or says why not and when to try again. A batch the burst can
    /// never admit is refused first: waiting for its queue to drain would not help it.
    pub async fn admit(&self, tenant: &TenantRow, count: u32) -> Result<(), AppError> {
        let limits = tenant.effective_limits(self.defaults);
        let id = TenantId::from_uuid(tenant.id);
        let bucket = limits.publish_bucket();
        if let Some((_, burst)) = bucket
            && count > burst.get()
        {
            return Err(AppError::BatchOverBurst { size: count, burst: burst.get() });
        }
        if let Some(max) = limits.max_queue_depth
            && let Some(depth) = self.depth(id).await
            && depth >= max.get()
        {
            return Err(AppError::QueueFull { max: max.get() });
        }
        match bucket {
            Some(bucket) => self.take(id, bucket, count).await,
            None => Ok(()),
        }
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Local>> {
        self.leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn take(&self, tenant: TenantId, bucket: (NonZeroU32, NonZeroU32), count: u32) -> Result<(), AppError> {
        let (rate, burst) = bucket;
        let now = Instant::now();
        // The tokens held are taken out while the lease runs: concurrent publishes then lease their own.
        let (held, until) = {
            let mut leases = self.leases();
            let local = Local::of(&mut leases, tenant, bucket, now);
            let held = if local.until > now { local.held } else { 0 };
            if held >= count {
                local.held = held - count;
                return Ok(());
            }
            let wanted = f64::from(count - held);
            if let Some(most) = local.at_most(now)
                && most < wanted
            {
                return Err(AppError::RateLimited { retry_after: retry_after(wanted - most, rate) });
            }
            local.held = 0;
            (held, local.until)
        };
        let wanted = count - held;
        let most = wanted.saturating_add(chunk(rate)).min(burst.get());
        let leased = publish_buckets::lease(&self.db, tenant, bucket, wanted, most).await;
        let mut leases = self.leases();
        leases.retain(|_, local| local.live(now));
        let local = Local::of(&mut leases, tenant, bucket, now);
        match leased {
            Ok(Leased::Granted(granted)) => {
                local.short = None;
                local.keep(granted.saturating_sub(wanted), now + LEASE_LIFETIME);
                Ok(())
            }
            Ok(Leased::Refused { available }) => {
                local.short = Some((available, now));
                local.keep(held, until);
                Err(AppError::RateLimited { retry_after: retry_after(f64::from(wanted) - available.max(0.0), rate) })
            }
            Err(error) => {
                local.keep(held, until);
                Err(error.into())
            }
        }
    }

    /// The tenant's ready messages, as the broker said at most [`DEPTH_MAX_AGE`] ago; `None` when it cannot
    /// tell (the publish that follows then meets the same broker, under its own timeout). A broker that does
    /// not answer is given up on after [`DEPTH_READ_TIMEOUT`], also by the publishes waiting for the inspection
    /// channel meanwhile, and its silence stands for [`DEPTH_MAX_AGE`] too.
    async fn depth(&self, tenant: TenantId) -> Option<u32> {
        let fresh = |depths: &HashMap<TenantId, (Instant, Option<u32>)>| {
            depths.get(&tenant).filter(|(at, _)| at.elapsed() < DEPTH_MAX_AGE).map(|&(_, depth)| depth)
        };
        let depths = || self.depths.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(depth) = fresh(&depths()) {
            return depth;
        }
        let read = async {
            let mut inspector = self.inspector.lock().await;
            // Another publish may have read it while this one waited.
            if let Some(depth) = fresh(&depths()) {
                return depth;
            }
            inspector.counts(&tenant.queue_name()).await.map(|(ready, _)| ready)
        };
        let depth = tokio::time::timeout(DEPTH_READ_TIMEOUT, read).await.ok().flatten();
        let mut depths = depths();
        depths.retain(|_, (at, _)| at.elapsed() < DEPTH_MAX_AGE);
        depths.insert(tenant, (Instant::now(), depth));
        depth
    }
}

/// Whole seconds until `missing` tokens have refilled at `rate` (at least 1: `Retry-After` has no fractions).
fn retry_after(missing: f64, rate: NonZeroU32) -> Duration {
    let seconds = (missing / f64::from(rate.get())).ceil();
    Duration::from_secs(if seconds >= 1.0 { seconds.min(86_400.0) as u64 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_the_refill_time_in_whole_seconds() {
        let rate = |n| NonZeroU32::new(n).expect("nonzero");
        assert_eq!(retry_after(0.5, rate(10)), Duration::from_secs(1));
        assert_eq!(retry_after(10.0, rate(10)), Duration::from_secs(1));
        assert_eq!(retry_after(10.5, rate(10)), Duration::from_secs(2));
        assert_eq!(retry_after(1000.0, rate(1)), Duration::from_secs(1000));
        assert_eq!(retry_after(f64::MAX, rate(1)), Duration::from_secs(86_400));
    }
}

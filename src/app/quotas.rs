//! A tenant's limits on publishing, checked before a publish reaches the broker: its backlog cap (the depth
//! of its queue) and its rate (a token bucket in PostgreSQL that every instance leases from).
//!
//! Leases come in small chunks so that a busy tenant costs one round trip per chunk, not per message: an
//! instance takes what a publish needs plus up to [`CHUNK_SHARE`] of a second of the rate, and keeps the
//! remainder for [`LEASE_LIFETIME`]; tokens it does not spend by then are dropped, never returned. Every token
//! spent was taken from the shared bucket first, so over any window the tenant gets at most what its rate
//! and burst allow there, plus the remainders the instances held when the window began: at most one chunk
//! each (5 % of a second of the rate). Dropped remainders can only make it get less.

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

/// Tokens an instance holds for a tenant.
#[derive(Debug, Clone, Copy)]
struct Lease {
    tokens: u32,
    until: Instant,
}

pub struct Quotas {
    db: DatabaseConnection,
    /// `limits.*`: the limits of tenants without their own.
    defaults: Limits,
    leases: Mutex<HashMap<TenantId, Lease>>,
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

    /// Admits `count` messages of the tenant, or says why not and when to try again.
    pub async fn admit(&self, tenant: &TenantRow, count: u32) -> Result<(), AppError> {
        let limits = tenant.effective_limits(self.defaults);
        let id = TenantId::from_uuid(tenant.id);
        if let Some(max) = limits.max_queue_depth
            && let Some(depth) = self.depth(id).await
            && depth >= max.get()
        {
            return Err(AppError::QueueFull { max: max.get() });
        }
        match limits.publish_bucket() {
            Some(bucket) => self.take(id, bucket, count).await,
            None => Ok(()),
        }
    }

    async fn take(
        &self,
        tenant: TenantId,
        (rate, burst): (NonZeroU32, NonZeroU32),
        count: u32,
    ) -> Result<(), AppError> {
        if count > burst.get() {
            return Err(AppError::BatchOverBurst { size: count, burst: burst.get() });
        }
        let now = Instant::now();
        let held = {
            let mut leases = self.leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match leases.remove(&tenant).filter(|lease| lease.until > now) {
                Some(mut lease) if lease.tokens >= count => {
                    lease.tokens -= count;
                    leases.insert(tenant, lease);
                    return Ok(());
                }
                Some(lease) => lease.tokens,
                None => 0,
            }
        };
        let wanted = count - held;
        let most = wanted.saturating_add((rate.get() / CHUNK_SHARE).max(1)).min(burst.get());
        match publish_buckets::lease(&self.db, tenant, (rate, burst), wanted, most).await {
            Ok(Leased::Granted(granted)) => {
                self.keep(tenant, granted.saturating_sub(wanted), Instant::now() + LEASE_LIFETIME);
                Ok(())
            }
            Ok(Leased::Refused { available }) => {
                self.keep(tenant, held, now + LEASE_LIFETIME);
                let missing = f64::from(wanted) - available.max(0.0);
                Err(AppError::RateLimited { retry_after: retry_after(missing, rate) })
            }
            Err(error) => {
                self.keep(tenant, held, now + LEASE_LIFETIME);
                Err(error.into())
            }
        }
    }

    /// Adds leased tokens to what the instance holds for the tenant.
    fn keep(&self, tenant: TenantId, tokens: u32, until: Instant) {
        if tokens == 0 {
            return;
        }
        let mut leases = self.leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let lease = leases.entry(tenant).or_insert(Lease { tokens: 0, until });
        lease.tokens = lease.tokens.saturating_add(tokens);
        lease.until = lease.until.min(until);
    }

    /// The tenant's ready messages, as the broker said at most [`DEPTH_MAX_AGE`] ago; `None` when it cannot
    /// tell (the publish that follows then meets the same broker).
    async fn depth(&self, tenant: TenantId) -> Option<u32> {
        let fresh = |depths: &HashMap<TenantId, (Instant, Option<u32>)>| {
            depths.get(&tenant).filter(|(at, _)| at.elapsed() < DEPTH_MAX_AGE).map(|&(_, depth)| depth)
        };
        if let Some(depth) = fresh(&self.depths.lock().unwrap_or_else(std::sync::PoisonError::into_inner)) {
            return depth;
        }
        let mut inspector = self.inspector.lock().await;
        // Another publish may have read it while this one waited.
        if let Some(depth) = fresh(&self.depths.lock().unwrap_or_else(std::sync::PoisonError::into_inner)) {
            return depth;
        }
        let depth = inspector.counts(&tenant.queue_name()).await.map(|(ready, _)| ready);
        let mut depths = self.depths.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
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

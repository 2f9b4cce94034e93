//! Fair shares of the database between tenants: the workers of every tenant write through at most
//! `database.write_connections` connections at once, and when tenants wait for one, each gets a share in
//! proportion to its configured workers, however much it has queued.
//!
//! The turn order is start-time fair queuing: each tenant carries a virtual start tag that advances by
//! 1/workers for every write it is given; the waiting tenant with the smallest tag goes next, and a tenant that
//! has been idle starts at the current virtual time (it neither saved up credit while idle nor owes any).
//! So a quiet tenant's write waits for at most the writes already running plus one turn, and a flooding
//! tenant with many workers gets more turns, never all of them.
//!
//! Nor may one tenant hold every connection at once: a write can take long for reasons of its tenant alone (its
//! partition locked by `VACUUM FULL` or an `ALTER TABLE`, a trigger, a row another transaction holds), and a
//! tenant with more workers than there are connections would then stop every other tenant's writes. A quarter of
//! the connections (rounded down) is held back from whichever tenant holds the rest.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::oneshot;

use crate::domain::tenant::TenantId;

/// One write's cost in virtual time for a tenant of one worker (a tenant of `w` workers pays `COST / w`).
const COST: u64 = 1 << 32;

/// Past this many tenants remembered, idle ones are forgotten also while others wait.
const FORGET_ABOVE: usize = 1024;

/// The shared gate; cheap to clone.
#[derive(Clone)]
pub struct WriteShare {
    scheduler: Arc<Mutex<Scheduler<oneshot::Sender<WritePermit>>>>,
}

/// A write connection's turn; the next waiter gets it when this is dropped.
pub struct WritePermit {
    share: WriteShare,
    tenant: TenantId,
}

impl Drop for WritePermit {
    fn drop(&mut self) {
        self.share.release(self.tenant);
    }
}

impl WriteShare {
    pub fn new(permits: usize) -> Self {
        Self { scheduler: Arc::new(Mutex::new(Scheduler::new(permits))) }
    }

    /// Waits for the tenant's turn to write; `workers` is its weight.
    pub async fn acquire(&self, tenant: TenantId, workers: u16) -> WritePermit {
        loop {
            let (sender, receiver) = oneshot::channel();
            if self.lock().arrive(tenant, workers, sender).is_some() {
                return WritePermit { share: self.clone(), tenant };
            }
            // The scheduler keeps every sender until it grants through it, so this only fails if it was
            // dropped altogether; then queue again.
            if let Ok(permit) = receiver.await {
                return permit;
            }
        }
    }

    fn release(&self, tenant: TenantId) {
        // Handed over outside the lock: a waiter that gave up drops the permit, which releases it again.
        let next = self.lock().release(tenant);
        if let Some((tenant, waiter)) = next {
            let _ = waiter.send(WritePermit { share: self.clone(), tenant });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Scheduler<oneshot::Sender<WritePermit>>> {
        self.scheduler.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A tenant's place in the turn order.
#[derive(Debug)]
struct Queue<W> {
    /// Its weight: the tenant's workers.
    weight: u16,
    /// The virtual start tag of its next write.
    next_start: u64,
    /// Its writes running now.
    holding: usize,
    waiters: VecDeque<W>,
}

/// The turn order, without the waiting: `W` is whatever stands for a waiting writer.
#[derive(Debug)]
struct Scheduler<W> {
    free: usize,
    /// Most connections one tenant may hold at once: all but a quarter of them (rounded down).
    most_per_tenant: usize,
    /// The start tag of the last write let through.
    now: u64,
    queues: HashMap<TenantId, Queue<W>>,
}

impl<W> Scheduler<W> {
    fn new(permits: usize) -> Self {
        let permits = permits.max(1);
        Self { free: permits, most_per_tenant: permits - permits / 4, now: 0, queues: HashMap::new() }
    }

    /// A writer of `tenant` arrives: gives it back when it may write at once, else queues it.
    ///
    /// A connection is free only while every waiter's tenant holds its most (a release hands a connection to
    /// any other waiter), so a free one goes to this writer unless its own tenant holds its most too.
    fn arrive(&mut self, tenant: TenantId, workers: u16, waiter: W) -> Option<W> {
        let now = self.now;
        let most = self.most_per_tenant;
        let queue = self.queues.entry(tenant).or_insert_with(|| Queue {
            weight: workers,
            next_start: now,
            holding: 0,
            waiters: VecDeque::new(),
        });
        queue.weight = workers.max(1);
        if queue.waiters.is_empty() {
            // Idle tenants neither save up turns nor owe them.
            queue.next_start = queue.next_start.max(now);
        }
        if self.free > 0 && queue.holding < most {
            self.free -= 1;
            self.grant(tenant);
            return Some(waiter);
        }
        queue.waiters.push_back(waiter);
        None
    }

    /// A write of `tenant` finished: the next waiter in turn order among the tenants that may take another
    /// connection, with its tenant, or the connection becomes free.
    fn release(&mut self, tenant: TenantId) -> Option<(TenantId, W)> {
        if let Some(queue) = self.queues.get_mut(&tenant) {
            queue.holding = queue.holding.saturating_sub(1);
        }
        let most = self.most_per_tenant;
        let next = self
            .queues
            .iter()
            .filter(|(_, queue)| !queue.waiters.is_empty() && queue.holding < most)
            .min_by_key(|(tenant, queue)| (queue.next_start, **tenant))
            .map(|(tenant, _)| *tenant);
        let Some(next) = next else {
            self.free += 1;
            self.forget_idle();
            return None;
        };
        let waiter = self.queues.get_mut(&next).and_then(|queue| queue.waiters.pop_front());
        self.grant(next);
        if self.queues.len() > FORGET_ABOVE {
            self.forget_idle();
        }
        waiter.map(|waiter| (next, waiter))
    }

    /// Lets a write of `tenant` through: time moves to its start tag, and its next one comes later.
    fn grant(&mut self, tenant: TenantId) {
        if let Some(queue) = self.queues.get_mut(&tenant) {
            self.now = self.now.max(queue.next_start);
            queue.next_start += COST / u64::from(queue.weight);
            queue.holding += 1;
        }
    }

    /// Drops tenants with no write running or waiting whose tag has been reached: they would start at `now`
    /// anyway.
    fn forget_idle(&mut self) {
        let now = self.now;
        self.queues.retain(|_, queue| queue.holding > 0 || !queue.waiters.is_empty() || queue.next_start > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(n: u128) -> TenantId {
        TenantId::from_uuid(uuid::Uuid::from_u128(n))
    }

    /// Two tenants keep `waiting` writers queued each (as busy workers do); returns how many of `turns` writes
    /// each got, with `permits` connections.
    fn compete(permits: usize, (a, b): (u16, u16), turns: usize) -> (usize, usize) {
        let mut scheduler = Scheduler::new(permits);
        let (ta, tb) = (tenant(1), tenant(2));
        // Each tenant's writers all wait from the start.
        let mut running = Vec::new();
        for _ in 0..a {
            if let Some(w) = scheduler.arrive(ta, a, ta) {
                running.push(w);
            }
        }
        for _ in 0..b {
            if let Some(w) = scheduler.arrive(tb, b, tb) {
                running.push(w);
            }
        }
        let mut got = HashMap::<TenantId, usize>::new();
        for _ in 0..turns {
            // The oldest running write finishes, its worker queues again, and the next one goes.
            let done = running.remove(0);
            if let Some(w) = scheduler.arrive(done, if done == ta { a } else { b }, done) {
                running.push(w);
            }
            if let Some((next, w)) = scheduler.release(done) {
                *got.entry(next).or_default() += 1;
                running.push(w);
            }
        }
        (got.get(&ta).copied().unwrap_or(0), got.get(&tb).copied().unwrap_or(0))
    }

    #[test]
    fn competing_tenants_get_turns_in_proportion_to_their_workers() {
        let (a, b) = compete(2, (8, 2), 10_000);
        let share = a as f64 / (a + b) as f64;
        assert!((0.78..=0.82).contains(&share), "8 against 2 workers should get 80 %: {a} / {b}");
        let (a, b) = compete(2, (4, 4), 10_000);
        assert!(a.abs_diff(b) <= 2, "equal workers, equal turns: {a} / {b}");
    }

    #[test]
    fn a_tenant_of_one_worker_is_never_starved_by_one_of_sixty_four() {
        let (a, b) = compete(2, (64, 1), 6_500);
        assert!(b >= 90, "one worker against 64 should get about 1/65 of 6,500 turns: {a} / {b}");
    }

    #[test]
    fn a_quiet_tenant_goes_next_however_long_the_flooding_queue() {
        let mut scheduler = Scheduler::new(1);
        let (flood, quiet) = (tenant(1), tenant(2));
        assert_eq!(scheduler.arrive(flood, 4, 0), Some(0), "a free connection is taken at once");
        for i in 1..=1000 {
            assert_eq!(scheduler.arrive(flood, 4, i), None);
        }
        // The flood has had many turns before the quiet tenant shows up.
        for _ in 0..500 {
            assert!(matches!(scheduler.release(flood), Some((holder, _)) if holder == flood));
            assert_eq!(scheduler.arrive(flood, 4, 9999), None);
        }
        assert_eq!(scheduler.arrive(quiet, 1, 7), None);
        let mut before = 0;
        while scheduler.release(flood) != Some((quiet, 7)) {
            before += 1;
        }
        assert!(before <= 1, "the quiet tenant waited {before} turns of the flood");
    }

    #[test]
    fn an_idle_tenant_saves_up_no_turns() {
        let mut scheduler = Scheduler::new(1);
        let (busy, idle) = (tenant(1), tenant(2));
        assert!(scheduler.arrive(idle, 1, 0).is_some());
        assert_eq!(scheduler.release(idle), None);
        assert!(scheduler.arrive(busy, 1, 1).is_some());
        for i in 2..100 {
            assert_eq!(scheduler.arrive(busy, 1, i), None);
            assert!(scheduler.release(busy).is_some());
        }
        // Back after 98 turns of the other: it alternates with it, it does not take 98 in a row.
        for i in 0..10 {
            assert_eq!(scheduler.arrive(idle, 1, 1000 + i), None);
            assert_eq!(scheduler.arrive(busy, 1, 2000 + i), None);
        }
        let mut holder = busy;
        let mut order = Vec::new();
        while let Some((next, w)) = scheduler.release(holder) {
            holder = next;
            order.push(w >= 2000);
        }
        assert_eq!(order.len(), 20);
        assert!(order.windows(3).all(|w| w.iter().any(|&busy| busy) && w.iter().any(|&busy| !busy)), "{order:?}");
    }

    #[test]
    fn connections_are_never_over_given_and_come_back_when_nobody_waits() {
        let mut scheduler = Scheduler::new(3);
        let mut holders: Vec<TenantId> =
            (0..10).filter_map(|i| scheduler.arrive(tenant(i % 2), 1, tenant(i % 2))).collect();
        assert_eq!(holders.len(), 3);
        let mut handed = 0;
        while let Some(done) = holders.pop() {
            if let Some((next, _)) = scheduler.release(done) {
                handed += 1;
                holders.insert(0, next);
            }
        }
        assert_eq!(handed, 7, "each finished write hands its connection to the next waiter");
        assert_eq!(scheduler.free, 3, "then they are free again");
        assert!(scheduler.queues.values().all(|queue| queue.waiters.is_empty() && queue.holding == 0));
    }

    #[test]
    fn a_tenant_whose_writes_hang_leaves_a_quarter_of_the_connections_to_the_others() {
        let mut scheduler = Scheduler::new(15);
        let (stuck, others) = (tenant(1), [tenant(2), tenant(3), tenant(4), tenant(5)]);
        // 64 workers with a batch each, and every write waits for a lock that is not released.
        let granted = (0..64).filter(|i| scheduler.arrive(stuck, 64, *i).is_some()).count();
        assert_eq!(granted, 12, "all but a quarter of 15");
        for other in &others[..3] {
            assert!(scheduler.arrive(*other, 1, 100).is_some(), "another tenant writes at once");
        }
        assert_eq!(scheduler.arrive(others[3], 1, 200), None, "all 15 in use");
        // A write of another tenant ends: its connection goes to the other tenant waiting, not to the stuck one.
        assert_eq!(scheduler.release(others[0]), Some((others[3], 200)));
        // When one of the stuck tenant's writes ends at last, it may have its connection back.
        assert_eq!(scheduler.release(stuck).map(|(next, _)| next), Some(stuck));
        let mut small = Scheduler::new(3);
        assert_eq!((0..3).filter(|i| small.arrive(stuck, 8, *i).is_some()).count(), 3, "no quarter of 3 to keep");
    }

    #[tokio::test]
    async fn a_writer_that_gives_up_passes_its_turn_on() {
        let share = WriteShare::new(1);
        let first = share.acquire(tenant(1), 1).await;
        let gave_up = tokio::time::timeout(std::time::Duration::from_millis(10), share.acquire(tenant(2), 1)).await;
        assert!(gave_up.is_err(), "no connection while the first holds it");
        let third = tokio::spawn({
            let share = share.clone();
            async move {
                drop(share.acquire(tenant(3), 1).await);
            }
        });
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(5), third)
            .await
            .expect("the turn of the one that gave up goes on to the next")
            .expect("joined");
        assert_eq!(share.lock().free, 1);
    }
}

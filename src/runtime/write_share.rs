//! Fair shares of the database between tenants: the workers of every tenant write through at most
//! `database.write_connections` connections at once, and when tenants wait for one, each gets a share in
//! proportion to its configured workers, however much it has queued.
//!
//! The turn order is start-time fair queuing: each tenant carries a virtual start tag that advances by
//! 1/workers for every write it is given; the waiting tenant with the smallest tag goes next, and a tenant that
//! has been idle starts at the current virtual time (it neither saved up credit while idle nor owes any).
//! So a quiet tenant's write waits for at most the writes already running plus one turn, and a flooding
//! tenant with many workers gets more turns, never all of them.

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
}

impl Drop for WritePermit {
    fn drop(&mut self) {
        self.share.release();
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
                return WritePermit { share: self.clone() };
            }
            // The scheduler keeps every sender until it grants through it, so this only fails if it was
            // dropped altogether; then queue again.
            if let Ok(permit) = receiver.await {
                return permit;
            }
        }
    }

    fn release(&self) {
        // Handed over outside the lock: a waiter that gave up drops the permit, which releases it again.
        let next = self.lock().release();
        if let Some(waiter) = next {
            let _ = waiter.send(WritePermit { share: self.clone() });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Scheduler<oneshot::Sender<WritePermit>>> {
        self.scheduler.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A tenant's place in the turn order.
#[derive(Debug)]
struct Queue<W> {
    /// The virtual start tag of its next write.
    next_start: u64,
    waiters: VecDeque<W>,
}

/// The turn order, without the waiting: `W` is whatever stands for a waiting writer.
#[derive(Debug)]
struct Scheduler<W> {
    free: usize,
    /// Writers queued, of all tenants.
    waiting: usize,
    /// The start tag of the last write let through.
    now: u64,
    queues: HashMap<TenantId, (u16, Queue<W>)>,
}

impl<W> Scheduler<W> {
    fn new(permits: usize) -> Self {
        Self { free: permits.max(1), waiting: 0, now: 0, queues: HashMap::new() }
    }

    /// A writer of `tenant` arrives: gives it back when it may write at once, else queues it.
    fn arrive(&mut self, tenant: TenantId, workers: u16, waiter: W) -> Option<W> {
        let now = self.now;
        let (weight, queue) =
            self.queues.entry(tenant).or_insert_with(|| (workers, Queue { next_start: now, waiters: VecDeque::new() }));
        *weight = workers.max(1);
        if queue.waiters.is_empty() {
            // Idle tenants neither save up turns nor owe them.
            queue.next_start = queue.next_start.max(now);
        }
        if self.free > 0 && self.waiting == 0 {
            self.free -= 1;
            self.charge(tenant);
            return Some(waiter);
        }
        queue.waiters.push_back(waiter);
        self.waiting += 1;
        None
    }

    /// A write finished: the next waiter in turn order, or the connection becomes free.
    fn release(&mut self) -> Option<W> {
        let next = self
            .queues
            .iter()
            .filter(|(_, (_, queue))| !queue.waiters.is_empty())
            .min_by_key(|(tenant, (_, queue))| (queue.next_start, **tenant))
            .map(|(tenant, _)| *tenant);
        let Some(tenant) = next else {
            self.free += 1;
            self.forget_idle();
            return None;
        };
        let waiter = self.queues.get_mut(&tenant).and_then(|(_, queue)| queue.waiters.pop_front());
        self.waiting -= 1;
        self.charge(tenant);
        if self.queues.len() > FORGET_ABOVE {
            self.forget_idle();
        }
        waiter
    }

    /// Lets a write of `tenant` through: time moves to its start tag, and its next one comes later.
    fn charge(&mut self, tenant: TenantId) {
        if let Some((weight, queue)) = self.queues.get_mut(&tenant) {
            self.now = self.now.max(queue.next_start);
            queue.next_start += COST / u64::from(*weight);
        }
    }

    /// Drops tenants with nobody waiting whose tag has been reached: they would start at `now` anyway.
    fn forget_idle(&mut self) {
        let now = self.now;
        self.queues.retain(|_, (_, queue)| !queue.waiters.is_empty() || queue.next_start > now);
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
            if let Some(next) = scheduler.release() {
                *got.entry(next).or_default() += 1;
                running.push(next);
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
            assert!(scheduler.release().is_some());
            assert_eq!(scheduler.arrive(flood, 4, 9999), None);
        }
        assert_eq!(scheduler.arrive(quiet, 1, 7), None);
        let mut before = 0;
        while scheduler.release() != Some(7) {
            before += 1;
        }
        assert!(before <= 1, "the quiet tenant waited {before} turns of the flood");
    }

    #[test]
    fn an_idle_tenant_saves_up_no_turns() {
        let mut scheduler = Scheduler::new(1);
        let (busy, idle) = (tenant(1), tenant(2));
        assert!(scheduler.arrive(idle, 1, 0).is_some());
        assert_eq!(scheduler.release(), None);
        assert!(scheduler.arrive(busy, 1, 1).is_some());
        for i in 2..100 {
            assert_eq!(scheduler.arrive(busy, 1, i), None);
            assert!(scheduler.release().is_some());
        }
        // Back after 98 turns of the other: it alternates with it, it does not take 98 in a row.
        for i in 0..10 {
            assert_eq!(scheduler.arrive(idle, 1, 1000 + i), None);
            assert_eq!(scheduler.arrive(busy, 1, 2000 + i), None);
        }
        let order: Vec<_> = (0..10).filter_map(|_| scheduler.release()).map(|w| w >= 2000).collect();
        assert!(order.windows(3).all(|w| w.iter().any(|&busy| busy) && w.iter().any(|&busy| !busy)), "{order:?}");
    }

    #[test]
    fn connections_are_never_over_given_and_come_back_when_nobody_waits() {
        let mut scheduler = Scheduler::new(3);
        let granted = (0..10).filter(|i| scheduler.arrive(tenant(*i % 2), 1, *i).is_some()).count();
        assert_eq!(granted, 3);
        let handed = (0..10).filter(|_| scheduler.release().is_some()).count();
        assert_eq!(handed, 7, "each finished write hands its connection to the next waiter");
        assert_eq!(scheduler.free, 3, "then they are free again");
        assert!(scheduler.queues.is_empty() || scheduler.queues.values().all(|(_, q)| q.waiters.is_empty()));
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
